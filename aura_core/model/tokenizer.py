"""The Multi-Modal LLM's tokenizer and its LLaVA-v1 prompt template.

Two tokenizers can sit behind the MLLM: the one shipped in a local HF-format LLaVA directory (paper
scale), or, for the tiny random-init model, the word-level tokenizer shipped as a file,
aura_core/assets/tiny_tokenizer/tokenizer.json (the default model's ids; remade only on purpose, by
`python -m training.tiny_tokenizer`). Both gain `[SEG]` (one id each, asserted) and `<image>`. The
template turns (question, answer) rounds into token ids and answer-only labels:

    {system} USER: <image>\n{question} ASSISTANT: {answer}</s>USER: {question 2} ASSISTANT: ...

`<image>` is expanded to one id per image feature, as transformers' LLaVA expects. Questions are
text: a special token typed in one ("<image> what?", "[SEG]", "</s>") is encoded as plain words,
never as a control token (see `PromptTemplate.build`).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from aura_core.model.tokens import BOS, EOS, IMAGE_TOKEN, PAD, SEG_TOKEN, UNK

LOG = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of every token that is not part of the answer being trained

Round = Tuple[str, str]  # (question, answer) of one earlier round of a conversation

TINY_TOKENIZER_FILE = Path(__file__).resolve().parents[1] / "assets" / "tiny_tokenizer" / "tokenizer.json"

# Everything the template itself writes, so the word-level vocabulary always covers it.
_TEMPLATE_TEXT = "USER: ASSISTANT: A chat between a curious human and an artificial intelligence assistant."


def build_word_tokenizer(corpus: Iterable[str], *, with_aura_tokens: bool = True) -> PreTrainedTokenizerFast:
    """A lower-case word-level tokenizer (whitespace + punctuation split, [UNK]) trained on `corpus`.

    Decoding joins words with spaces and glues punctuation back ("the knife [SEG], the cup [SEG].").
    `with_aura_tokens` False leaves out [SEG]/<image> (to mimic a plain LLM tokenizer in tests).
    """
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    # WordPiece decoding with a prefix no word can carry: plain space-joining plus punctuation clean-up.
    tok.decoder = decoders.Sequence(
        [decoders.WordPiece(prefix="##", cleanup=True), decoders.Replace(" ;", ";"), decoders.Replace(" :", ":")]
    )
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, UNK, BOS, EOS], min_frequency=1)
    tok.train_from_iterator(list(corpus) + [_TEMPLATE_TEXT], trainer=trainer)
    return _wrap(tok, with_aura_tokens)


def _wrap(tok: Tokenizer, with_aura_tokens: bool = True) -> PreTrainedTokenizerFast:
    """transformers view of a word-level `tokenizers.Tokenizer` (saved/loaded like any HF tokenizer)."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD, padding_side="right"
    )
    if with_aura_tokens:
        add_aura_tokens(wrapped)
    return wrapped


def default_word_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny model's tokenizer, read from TINY_TOKENIZER_FILE (a fresh object per call).

    The file fixes the ids the shipped default model's embedding rows were trained with; the synthetic
    generator's wording does not change it (training/tiny_tokenizer.py remakes it, on purpose only).
    """
    if not TINY_TOKENIZER_FILE.is_file():
        raise FileNotFoundError(f"{TINY_TOKENIZER_FILE} is missing (remake it: python -m training.tiny_tokenizer)")
    return _wrap(Tokenizer.from_file(str(TINY_TOKENIZER_FILE)))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a local directory (never a hub id), with [SEG] and <image> ensured."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    add_aura_tokens(tokenizer)
    return tokenizer


def add_aura_tokens(tokenizer: PreTrainedTokenizerBase) -> Tuple[int, int]:
    """Add `[SEG]` and `<image>` as special tokens when missing, a pad token too; return their ids.

    Each must encode to exactly one id: the mask decoders read one hidden state per `[SEG]`.
    """
    missing = [t for t in (SEG_TOKEN, IMAGE_TOKEN) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    ids = []
    for token in (SEG_TOKEN, IMAGE_TOKEN):
        encoded = tokenizer.encode(token, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"tokenizer splits {token} into {len(encoded)} ids {encoded}; it must be one token")
        ids.append(encoded[0])
    return ids[0], ids[1]


@dataclass(frozen=True)
class PromptTemplate:
    """LLaVA-v1 conversation format; builds ids and answer-only labels for one sample.

    Training (`MultiModalLLM.forward` batches) and inference (`generate`) both build their ids here, so
    a question tokenises the same way in both.
    """

    tokenizer: PreTrainedTokenizerBase
    image_seq_length: int  # number of image features = number of <image> ids after expansion
    system_prompt: str = ""

    def __post_init__(self) -> None:
        seg_id, image_id = add_aura_tokens(self.tokenizer)
        object.__setattr__(self, "seg_token_id", seg_id)
        object.__setattr__(self, "image_token_id", image_id)
        tok = self.tokenizer
        control = {seg_id, image_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id} - {tok.unk_token_id, None}
        object.__setattr__(self, "_control_ids", frozenset(control))

    def _ids(self, text: str) -> List[int]:
        """The template's own text: its special tokens are control tokens."""
        return list(self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=False))

    def _text_ids(self, text: str) -> List[int]:
        """Text from outside the template: a special token written in it is split into plain words."""
        ids = list(self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)) if text else []
        leaked = sorted(set(ids) & self._control_ids)
        if leaked:  # e.g. a non-special added token, which split_special_tokens does not split
            tokens = self.tokenizer.convert_ids_to_tokens(leaked)
            raise ValueError(f"the tokenizer reads {tokens} in plain text as control tokens; make them special tokens")
        return ids

    def _answer_ids(self, answer: str) -> List[int]:
        """An answer's ids: each `[SEG]` is the [SEG] id, every other special token is plain words."""
        pieces = answer.split(SEG_TOKEN)
        ids = self._text_ids(pieces[0])
        for piece in pieces[1:]:
            ids += [self.seg_token_id] + self._text_ids(piece)
        return ids

    def build(self, question: str, answer: Optional[str] = None, history: Sequence[Round] = ()) -> Tuple[List[int], List[int]]:
        """(input_ids, labels) of a conversation: earlier rounds, then `question` and its `answer`.

        Only the last answer (and its </s>) is labelled; earlier rounds are context. Without an
        answer the ids end with "ASSISTANT:", ready for generation, and labels are all ignored.

        Questions (this one and the history's) are user text: `<image>`, `[SEG]`, `<s>`, `</s>`, the pad
        token... written in one are encoded as plain words, so the prompt has exactly one image slot
        (`image_seq_length` ids) and no [SEG] id from a question. Answers (the training target, and the
        history's, which are the model's own earlier answers) keep `[SEG]` as the [SEG] id, since that is
        what the model writes and reads back, and encode every other special token as plain words. The
        role markers "USER:"/"ASSISTANT:" are ordinary words in LLaVA-v1 (no tokenizer has a control
        token for them), so typed ones reach the model as the same plain words the template writes.
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question is empty")
        rounds = list(history) + [(question, answer)]
        ids: List[int] = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        labels: List[int] = [IGNORE_INDEX] * len(ids)
        for k, (q, a) in enumerate(rounds):
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"history round {k}: question is empty")
            head = f"{self.system_prompt} USER: " if k == 0 and self.system_prompt else "USER: "
            prompt = self._ids(head)
            if k == 0:
                prompt += [self.image_token_id] * self.image_seq_length + self._ids("\n")
            prompt += self._text_ids(f"{q} ASSISTANT:")  # "ASSISTANT:" holds no special token: plain either way
            ids += prompt
            labels += [IGNORE_INDEX] * len(prompt)
            if a is None:
                if k != len(rounds) - 1:
                    raise ValueError(f"history round {k}: answer is missing")
                break
            reply = self._answer_ids(a) + [self.tokenizer.eos_token_id]
            ids += reply
            labels += reply if k == len(rounds) - 1 else [IGNORE_INDEX] * len(reply)
        return ids, labels

    def decode(self, ids: Sequence[int]) -> str:
        """Readable answer text with [SEG] kept and </s>/padding dropped."""
        drop = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, self.tokenizer.bos_token_id}
        text = self.tokenizer.decode([i for i in ids if i not in drop], skip_special_tokens=False)
        return " ".join(text.split())


_ARTICLES = ("the", "a", "an", "this", "that", "these", "those", "my", "your", "its", "their", "his", "her")
_BOUNDARY = re.compile(r"[.,;:!?]")


def seg_phrases(answer: str) -> List[str]:
    """The words naming the object before each [SEG]: since the previous [SEG] or punctuation,
    starting at the last article when there is one ("you can use the knife [SEG]" -> "the knife")."""
    chunks = answer.split(SEG_TOKEN)[:-1]
    phrases = []
    for chunk in chunks:
        words = _BOUNDARY.split(chunk)[-1].split()
        starts = [i for i, w in enumerate(words) if w.lower() in _ARTICLES]
        phrases.append(" ".join(words[starts[-1]:] if starts else words))
    return phrases
