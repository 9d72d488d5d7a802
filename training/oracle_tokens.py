"""Would the tiny language model answer the relational questions if its image tokens were perfect?

A diagnostic for the pretrained tiny LLaVA, not a training stage: the projector's output (the image tokens the
language model reads) is replaced by a learned linear map of each patch's ground truth, the area shares of the
visible category, of the amodal masks and of the hidden parts (what pretrain_mllm.py's pretext heads try to read off
the tower's tokens); the language model of a pretrain_mllm.py state then trains on the pretext questions, and its
greedy answers to held-out scenes' questions are scored by kind. If it still cannot answer "what covers X", the
language model, not the vision tower, is what limits. `--tokens tower` runs the same with the real CLIP tower, every
tensor trained (the control); `--kinds in_front,behind` trains on those kinds' questions only.

    python training/oracle_tokens.py --init runs/pretrain_mllm10g1/state.pt --steps 1500 --out runs/oracle/oracle.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from aura_core.matching import objects_named
from aura_core.model.mllm import MultiModalLLM
from aura_core.model.tokenizer import seg_phrases
from training.command import command_line
from training.pretrain_mllm import (NUM_CATEGORIES, PretextText, Sample, build_pretext_model, load_growing_depth, mllm_config,
                                    pretext_scene, state_width, text_loss)
from training.schedule import warmup_decay_lr

LOG = logging.getLogger("aura.oracle_tokens")
ORACLE_FEATURES = (1 + NUM_CATEGORIES) + NUM_CATEGORIES + (1 + NUM_CATEGORIES)  # visible, amodal, hidden shares
# Where training starts in the pretext streams, past every pretrain_mllm.py stage so far (up to batch 28000, scene
# 448000): batch 40000 of the stream, or scene 900000 for the --kinds stream.
TRAIN_START = 40000
KINDS_START = 900000


def oracle_features(samples: Sequence[Sample]) -> torch.Tensor:
    """(B, N, ORACLE_FEATURES): per patch, the visible-class, amodal and hidden-class area shares of its scene."""
    return torch.from_numpy(np.stack([np.concatenate([s[4], s[5], s[7]], -1) for s in samples])).float()


class OracleTokens(nn.Module):
    """A linear map of each patch's ground truth that stands in for the projector's output while `replacing`."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(ORACLE_FEATURES, hidden_size)

    @contextlib.contextmanager
    def replacing(self, mllm: MultiModalLLM) -> Iterator[Dict[str, torch.Tensor]]:
        """Inside, the projector's output is `linear(features["now"])`: set "now" to `oracle_features` of the batch."""
        features: Dict[str, torch.Tensor] = {}
        hook = mllm.core.model.multi_modal_projector.register_forward_hook(
            lambda module, args, out: self.linear(features["now"]).to(out.dtype))
        try:
            yield features
        finally:
            hook.remove()


def kind_batches(seed: int, size: int, batch_size: int, kinds: Sequence[str], grid: int,
                 start: int = KINDS_START) -> Iterator[List[Sample]]:
    """Endless batches of the pretext scenes' questions of the given kinds only (no descriptions), scene `start` on."""
    index, out = start, []
    while True:
        while len(out) < batch_size:
            scene, samples = pretext_scene(seed, index, size, 0.0, grid)
            out += [s for s, qa in zip(samples, scene.qa) if qa.kind in kinds]
            index += 1
        yield out[:batch_size]
        out = out[batch_size:]


@torch.no_grad()
def answers_by_kind(mllm: MultiModalLLM, oracle: Optional[OracleTokens], features: Dict[str, torch.Tensor],
                    seed: int, scenes: int, size: int, grid: int) -> Dict[str, List[float]]:
    """Greedy answers to every question of held-out scenes 0..scenes-1 of `seed`: {kind: [% right objects, n]}, and
    "all"; right = the right [SEG] count and the right objects named, as the end-to-end evaluation scores it."""
    right: Dict[str, List[bool]] = {}
    for index in range(scenes):
        scene, samples = pretext_scene(seed, index, size, 0.0, grid)
        for sample, qa in zip(samples, scene.qa):
            if oracle is not None:
                features["now"] = oracle_features([sample])
            predicted = seg_phrases(mllm.generate(scene.image, qa.question, max_new_tokens=64).answer)
            ok = objects_named(predicted, qa.phrases)  # a multiset: the right count too
            right.setdefault(qa.kind, []).append(bool(ok))
    right["all"] = [ok for kind in list(right) for ok in right[kind]]
    return {kind: [round(100 * float(np.mean(v)), 1), len(v)] for kind, v in right.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", type=Path, required=True, help="a pretrain_mllm.py state.pt")
    parser.add_argument("--tokens", choices=("oracle", "tower"), default="oracle",
                        help="oracle: the patch ground truth stands in for the image tokens; tower: the real ones")
    parser.add_argument("--kinds", default="", help="train on these question kinds only (comma-separated QA_KINDS)")
    parser.add_argument("--image-size", type=int, default=128, help="the state's CLIP input side")
    parser.add_argument("--vision-layers", type=int, default=3, help="the state's CLIP layers")
    parser.add_argument("--language-layers", type=int, default=None,
                        help="more language-model layers than the state has (appended as identity, as pretrain_mllm.py grows it)")
    parser.add_argument("--scene-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--eval-scenes", type=int, default=120, help="held-out scenes whose questions are answered")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from aura_core.data.synthetic import QA_KINDS

    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in QA_KINDS]
    if unknown:
        raise SystemExit(f"--kinds: unknown {unknown}; the kinds are {sorted(QA_KINDS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    state = torch.load(args.init, map_location="cpu", weights_only=False)
    mllm = build_pretext_model(mllm_config("tiny", args.image_size, args.vision_layers, args.language_layers,
                                           state_width(state)))  # the state's width (stage 11: 256)
    load_growing_depth(mllm, state["model"])
    grid = args.image_size // mllm.core.config.vision_config.patch_size
    oracle = OracleTokens(mllm.hidden_size) if args.tokens == "oracle" else None
    if oracle is not None:  # the language model and the map train; the tower's output is not read
        params = list(mllm.core.model.language_model.parameters()) + list(mllm.core.lm_head.parameters())
        params += list(oracle.parameters())
    else:
        params = list(mllm.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    if kinds:
        batches = kind_batches(0, args.scene_size, args.batch_size, kinds, grid)
    else:
        stream = PretextText(seed=0, size=args.scene_size, batch_size=args.batch_size, describe_share=0.5, grid=grid)
        batches = (stream.batch(TRAIN_START + step) for step in range(args.steps))
    t0, losses = time.time(), []
    with (oracle.replacing(mllm) if oracle is not None else contextlib.nullcontext({})) as features:
        mllm.train()
        for step, batch in zip(tqdm(range(args.steps), desc=f"LM on {args.tokens} tokens", mininterval=10.0), batches):
            for group in optimizer.param_groups:
                group["lr"] = warmup_decay_lr(step, base_lr=args.lr, warmup_steps=args.warmup, total_steps=args.steps)
            if oracle is not None:
                features["now"] = oracle_features(batch)
            loss = text_loss(mllm, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(loss.item())
        mllm.eval()
        scores = answers_by_kind(mllm, oracle, features, 1, args.eval_scenes, args.scene_size, grid)
    report = {"init": str(args.init), "tokens": args.tokens, "language_layers": mllm.core.config.text_config.num_hidden_layers,
              "language_width": mllm.hidden_size, "kinds_trained": kinds or "all (pretext stream)",
              "steps": args.steps, "lr": args.lr, "train_text_loss_last_100": float(np.mean(losses[-100:])),
              "held_out_scenes": args.eval_scenes, "right_objects_named_by_kind": scores,
              "seconds": round(time.time() - t0, 1), "command": command_line("training/oracle_tokens.py", argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    LOG.info("right objects named by kind (%%, n): %s", json.dumps(scores))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
