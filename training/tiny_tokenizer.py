"""Remake the tiny model's tokenizer file from the synthetic generator's questions and answers.

The tiny MLLM reads aura_core/assets/tiny_tokenizer/tokenizer.json (`default_word_tokenizer`); the shipped
default model's embedding rows are indexed by its ids. Nothing rebuilds it at import or at training time, so a
change of wording in aura_core/data/synthetic.py leaves the vocabulary alone. A developer who wants the new words
runs, on purpose:

    python -m training.tiny_tokenizer            # rewrite the file
    python -m training.tiny_tokenizer --check    # exit 1 when the generator no longer gives the shipped file

and then retrains and reships the default model (training/ship_default_model.py): new ids mean new embedding rows.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from transformers import PreTrainedTokenizerFast

from aura_core.data.synthetic import generate_scene
from aura_core.model.tokenizer import TINY_TOKENIZER_FILE, build_word_tokenizer

LOG = logging.getLogger("aura.tiny_tokenizer")

CORPUS_SCENES = 100  # the synthetic vocabulary saturates after ~50 scenes
CORPUS_SEED = 1234
SCENE_SIZE = 64  # the wording does not depend on the image size; small is fast


def synthetic_corpus(scenes: int = CORPUS_SCENES, seed: int = CORPUS_SEED) -> List[str]:
    """Questions and answers of `scenes` small synthetic scenes: the tiny tokenizer's corpus."""
    rng = np.random.default_rng(seed)
    texts: List[str] = []
    for _ in range(scenes):
        for qa in generate_scene(rng, SCENE_SIZE).qa:
            texts += [qa.question, qa.answer]
    return texts


def build_tiny_tokenizer(scenes: int = CORPUS_SCENES, seed: int = CORPUS_SEED) -> PreTrainedTokenizerFast:
    """The word-level tokenizer of the synthetic corpus, with [SEG] and <image> (what the file holds)."""
    return build_word_tokenizer(synthetic_corpus(scenes, seed))


def tokenizer_json(tokenizer: PreTrainedTokenizerFast) -> str:
    """The HF `tokenizer.json` text of `tokenizer` (pretty, so a vocabulary change reads well in a diff)."""
    return tokenizer.backend_tokenizer.to_str(pretty=True) + "\n"


def write_tiny_tokenizer(
    path: Path = TINY_TOKENIZER_FILE, scenes: int = CORPUS_SCENES, seed: int = CORPUS_SEED
) -> Path:
    """Write the tokenizer built from the generator to `path` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tokenizer_json(build_tiny_tokenizer(scenes, seed)), encoding="utf-8")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=TINY_TOKENIZER_FILE)
    parser.add_argument("--scenes", type=int, default=CORPUS_SCENES)
    parser.add_argument("--seed", type=int, default=CORPUS_SEED)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.check:
        built = build_tiny_tokenizer(args.scenes, args.seed).get_vocab()
        shipped = PreTrainedTokenizerFast(tokenizer_file=str(args.out)).get_vocab() if args.out.is_file() else {}
        if built == shipped:
            LOG.info("%s matches the generator (%d tokens)", args.out, len(built))
            return 0
        new, gone = sorted(set(built) - set(shipped)), sorted(set(shipped) - set(built))
        moved = sorted(t for t in set(built) & set(shipped) if built[t] != shipped[t])
        LOG.error("%s differs from the generator: new %s, gone %s, other id %s", args.out, new, gone, moved)
        return 1
    LOG.info("wrote %s", write_tiny_tokenizer(args.out, args.scenes, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
