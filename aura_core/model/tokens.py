"""The MLLM's special tokens, defined once here; the tokenizer, the template and the data layer import them.

`[SEG]` asks for a mask (one id, whose hidden state feeds the decoders); `<image>` is the slot the
image features fill; BOS/EOS/UNK/PAD are the tiny word-level tokenizer's own. Plain strings, no
imports: the data layer (which writes `[SEG]` into answers) can read them without loading transformers.
"""
from __future__ import annotations

SEG_TOKEN = "[SEG]"
IMAGE_TOKEN = "<image>"
BOS, EOS, UNK, PAD = "<s>", "</s>", "[UNK]", "[PAD]"
