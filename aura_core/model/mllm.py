"""Multi-Modal LLM (paper Fig. 2): LLaVA reads the image and the question and writes the answer with [SEG]s.

transformers' `LlavaForConditionalGeneration` (CLIP tower + projector + Llama), built from the sizes
in `MLLMConfig` or loaded from a local HF-format LLaVA directory, with peft LoRA on the language
model's attention projections only. What trains follows LISA: LoRA, plus full `lm_head` and
`embed_tokens` copies (peft `modules_to_save`, where the new [SEG] rows live); CLIP and the
projector stay frozen (`train_projector` opts the projector in).

[SEG] embedding convention (as LISA): e_mlm is the last-layer hidden state (after the final norm)
at the position whose next-token prediction is [SEG], i.e. the state that *emits* [SEG]. `forward`
(teacher forcing) and `generate` (greedy, KV cache) both take exactly that state.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import (
    AutoImageProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaModel,
    PreTrainedTokenizerBase,
)

from aura_core.model.config import MLLMConfig, WeightsError
from aura_core.model.tokenizer import (
    IGNORE_INDEX,
    PromptTemplate,
    Round,
    add_aura_tokens,
    default_word_tokenizer,
    load_tokenizer,
    seg_phrases,
)

LOG = logging.getLogger(__name__)
# transformers 5.24 renamed LlavaModel's `past_key_values` argument and output to `cache`; older 5.x has the first
_CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlavaModel.forward).parameters else "past_key_values"


@dataclass
class MLLMOutput:
    """Teacher-forced pass: next-token loss on the answers and each sample's [SEG] embeddings."""

    text_loss: torch.Tensor  # scalar, mean over answer tokens of the batch
    seg_hidden: List[torch.Tensor]  # per sample (K_i, hidden), in answer order


@dataclass
class MLLMGeneration:
    """Greedy answer to one question."""

    answer: str  # decoded text, [SEG] tokens kept
    seg_hidden: torch.Tensor  # (K, hidden), one row per generated [SEG]
    phrases: List[str]  # the words naming the object before each [SEG]
    token_ids: List[int]  # generated ids (without </s>)


def lora_target_pattern(modules: Sequence[str]) -> str:
    """peft regex matching `modules` inside the language model only (CLIP also has q_proj/v_proj)."""
    if not modules:
        raise ValueError("MLLMConfig.lora_target_modules is empty")
    names = "|".join(sorted(set(modules)))
    return rf"^(?:.*\.)?language_model\.(?:.*\.)?({names})$"


def _llava_config(config: MLLMConfig, tokenizer: PreTrainedTokenizerBase, image_token_id: int) -> LlavaConfig:
    """transformers LlavaConfig for a random-init LLaVA of the configured sizes."""
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=max(config.max_length, 2048),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden_size,
        intermediate_size=config.vision_intermediate_size,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        image_size=config.vision_image_size,
        patch_size=config.vision_patch_size,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=(config.vision_image_size // config.vision_patch_size) ** 2,
        pad_token_id=tokenizer.pad_token_id,
    )


def _clip_processor(image_size: int) -> CLIPImageProcessor:
    """CLIP preprocessing (shortest side resize, centre crop, CLIP mean/std) at the tower's input size."""
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def _image_seq_length(llava: LlavaForConditionalGeneration) -> int:
    """How many image features the projector emits, hence how many <image> ids a prompt needs."""
    vision = llava.config.vision_config
    n = (vision.image_size // vision.patch_size) ** 2
    return n if llava.config.vision_feature_select_strategy == "default" else n + 1


ORIGINAL_LLAVA_ARCHITECTURES = ("LlavaLlamaForCausalLM", "LISAForCausalLM", "LlavaMptForCausalLM", "LlavaMistralForCausalLM")


def check_llava_hf_dir(path: Path) -> None:
    """WeightsError when `path` is not an llava-hf directory, e.g. an original LLaVA-repo or LISA checkpoint (which
    llava-hf would load as a default-sized model matching none of its keys)."""
    import json

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"MLLMConfig.pretrained_path {path}: no config.json (expected an HF-format LLaVA directory)")
    try:
        meta = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as error:
        raise WeightsError(f"{path / 'config.json'}: invalid JSON: {error}") from error
    architectures = meta.get("architectures") or []
    original = [a for a in architectures if a in ORIGINAL_LLAVA_ARCHITECTURES]
    if original or "mm_vision_tower" in meta or "text_config" not in meta:
        what = original[0] if original else "not llava-hf (no text_config)"
        raise WeightsError(
            f"MLLMConfig.pretrained_path {path} is an original LLaVA-repo/LISA checkpoint ({what}); convert it first: "
            f"aura-convert-weights {path} OUT (see docs/TRAINING.md), then use OUT/llava"
        )


def check_loading_info(path: Path, info: Dict[str, object]) -> None:
    """WeightsError naming the missing / unexpected / mismatched tensors of a from_pretrained load (strict loading)."""
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in (info.get(kind) or ()))
        if keys:
            problems.append(f"{len(keys)} {kind.replace('_keys', '')} ({', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''})")
    if problems:
        raise WeightsError(f"MLLMConfig.pretrained_path {path}: the checkpoint does not match llava-hf: " + "; ".join(problems))


def check_image(image: object, where: str = "image") -> np.ndarray:
    """An RGB uint8 HxWx3 array, or a ValueError saying what is wrong with it."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{where}: expected a numpy uint8 HxWx3 array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"{where}: expected dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{where}: expected shape HxWx3 (RGB), got {image.shape}")
    return image


class MultiModalLLM(nn.Module):
    """LLaVA + LoRA + [SEG]: encodes (image, question, answer) batches, trains on text, emits e_mlm."""

    def __init__(
        self,
        *,
        llava: LlavaForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: CLIPImageProcessor,
        config: MLLMConfig,
    ) -> None:
        """Wraps an already-built LLaVA; use `build` to get one from a config (it also applies LoRA)."""
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.seg_token_id, self.image_token_id = add_aura_tokens(tokenizer)
        if llava.config.image_token_id != self.image_token_id:
            raise ValueError(
                f"LLaVA config image_token_index {llava.config.image_token_id} != tokenizer <image> id {self.image_token_id}"
            )
        self.image_seq_length = _image_seq_length(llava)
        self.truncated = 0  # samples shortened to max_length by the "fit" truncation policy (see encode)
        self.template = PromptTemplate(
            tokenizer=tokenizer, image_seq_length=self.image_seq_length, system_prompt=config.system_prompt
        )
        self.llava = self._apply_training_plan(llava, config)

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(cls, config: MLLMConfig, tokenizer: Optional[PreTrainedTokenizerBase] = None) -> "MultiModalLLM":
        """Random-init LLaVA of the configured sizes, or the one in `config.pretrained_path` (local only).

        `tokenizer` None: the tokenizer of the pretrained directory, or the tiny word-level one shipped as
        a file (`default_word_tokenizer`). The embedding grows when the tokenizer gained [SEG]/<image>.
        """
        dtype = getattr(torch, config.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"MLLMConfig.dtype '{config.dtype}' is not a torch dtype")
        if config.pretrained_path:
            path = Path(config.pretrained_path)
            check_llava_hf_dir(path)
            tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path)
            _, image_token_id = add_aura_tokens(tokenizer)
            try:
                llava, info = LlavaForConditionalGeneration.from_pretrained(
                    str(path), dtype=dtype, local_files_only=True, output_loading_info=True
                )
            except RuntimeError as error:  # transformers raises on shape mismatches
                raise WeightsError(f"MLLMConfig.pretrained_path {path}: {error}") from error
            check_loading_info(path, info)
            if (path / "preprocessor_config.json").is_file():
                image_processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
            else:
                image_processor = _clip_processor(llava.config.vision_config.image_size)
            llava.config.image_token_id = image_token_id
        else:
            tokenizer = tokenizer if tokenizer is not None else default_word_tokenizer()
            _, image_token_id = add_aura_tokens(tokenizer)
            # built directly in `dtype`: a 7B body in float32 first would need twice the memory
            llava = LlavaForConditionalGeneration._from_config(_llava_config(config, tokenizer, image_token_id), dtype=dtype)
            image_processor = _clip_processor(config.vision_image_size)
        if len(tokenizer) > llava.get_input_embeddings().weight.shape[0]:
            llava.resize_token_embeddings(len(tokenizer))
        return cls(llava=llava, tokenizer=tokenizer, image_processor=image_processor, config=config)

    @staticmethod
    def _apply_training_plan(llava: LlavaForConditionalGeneration, config: MLLMConfig) -> nn.Module:
        """LoRA on the LM attention + trainable modules_to_save; everything else (CLIP) frozen."""
        to_save = list(config.modules_to_save) + (["multi_modal_projector"] if config.train_projector else [])
        if config.lora_r > 0:
            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=lora_target_pattern(config.lora_target_modules),
                modules_to_save=to_save or None,
                bias="none",
            )
            model = get_peft_model(llava, lora)
        else:  # Table 3's "w/o LoRA": only modules_to_save train
            model = llava
            model.requires_grad_(False)
            for name, module in model.named_modules():
                if any(name == m or name.endswith("." + m) for m in to_save):
                    module.requires_grad_(True)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        LOG.info("MLLM: %d trainable of %d parameters (%.2f%%)", trainable, total, 100.0 * trainable / max(total, 1))
        return model

    @property
    def core(self) -> LlavaForConditionalGeneration:
        """The transformers LLaVA (LoRA layers injected in place when LoRA is on)."""
        return self.llava.get_base_model() if hasattr(self.llava, "get_base_model") else self.llava

    @property
    def hidden_size(self) -> int:
        return int(self.core.config.text_config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the CLIP tower, hence of pixel_values."""
        return next(self.core.model.vision_tower.parameters()).dtype

    # ------------------------------------------------------------------ encode / forward / generate

    def encode(
        self,
        images: Sequence[np.ndarray],
        questions: Sequence[str],
        answers: Optional[Sequence[str]] = None,
        histories: Optional[Sequence[Optional[Sequence[Round]]]] = None,
    ) -> Dict[str, torch.Tensor]:
        """Batch tensors: input_ids, attention_mask (right padding), pixel_values, and labels when
        `answers` are given (answer tokens only, IGNORE_INDEX elsewhere). `histories[i]` lists sample
        i's earlier (question, answer) rounds; only the first round carries the image."""
        n = len(images)
        if n == 0:
            raise ValueError("encode needs at least one image")
        for name, seq in (("questions", questions), ("answers", answers), ("histories", histories)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} entries for {n} images")
        for i, image in enumerate(images):
            check_image(image, f"image {i}")
        rows, label_rows = [], []
        for i in range(n):
            answer = answers[i] if answers is not None else None
            history = (histories[i] if histories is not None else None) or ()
            try:
                ids, labels = self.template.build(questions[i], answer, history)
                if len(ids) > self.config.max_length:
                    ids, labels = self._fit(i, questions[i], answer, history, len(ids))
            except ValueError as err:
                raise ValueError(f"sample {i}: {err}") from None
            rows.append(ids)
            label_rows.append(labels)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((n, width), pad, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, lab) in enumerate(zip(rows, label_rows)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            labels[i, : len(lab)] = torch.tensor(lab)
        pixel_values = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        out = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention.to(self.device),
            "pixel_values": pixel_values.to(device=self.device, dtype=self.dtype),
        }
        if answers is not None:
            out["labels"] = labels.to(self.device)
        return out

    def _fit(self, i: int, question: str, answer: Optional[str], history: Sequence[Round], length: int) -> tuple:
        """Truncation policy for a conversation longer than max_length (MLLMConfig.truncation):

        "fit": (1) drop the oldest history rounds; (2) keep only the first words of the question; (3) cut the answer
        after its last [SEG] (its masks stay aligned; the cut tail and </s> get no loss). Counted in `self.truncated`.
        A sample whose image, first question word and answer up to its last [SEG] do not fit is still an error.
        "error": raise.
        """
        limit = self.config.max_length
        what = "question and answer" if answer is not None else "question"
        if self.config.truncation != "fit":
            raise ValueError(f"{what} take {length} tokens ({self.image_seq_length} of them image features), more "
                             f"than max_length={limit} (mllm.truncation: error)")
        self.truncated += 1
        history = list(history)
        while history:
            history = history[1:]
            ids, labels = self.template.build(question, answer, history)
            if len(ids) <= limit:
                return ids, labels
        words = question.split()
        lo, hi = 1, len(words)  # binary search: the longest prefix of the question's words that fits
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            ids, labels = self.template.build(" ".join(words[:mid]), answer, ())
            if len(ids) <= limit:
                best, lo = (ids, labels), mid + 1
            else:
                hi = mid - 1
        if best is not None:
            return best
        ids, labels = self.template.build(words[0] if words else question, answer, ())
        seg_positions = [p for p, t in enumerate(ids) if t == self.seg_token_id]
        if answer is not None and (not seg_positions or seg_positions[-1] < limit):
            return ids[:limit], labels[:limit]
        raise ValueError(f"{what} cannot be fitted into max_length={limit}: the image features "
                         f"({self.image_seq_length}) and the answer up to its last [SEG] alone take more")

    def _hidden(self, **kwargs) -> tuple:
        """Last-layer hidden states (B, T, hidden) and the KV cache of the LLaVA body."""
        if "cache" in kwargs and _CACHE_ARGUMENT != "cache":
            kwargs[_CACHE_ARGUMENT] = kwargs.pop("cache")
        out = self.core.model(**kwargs)
        return out.last_hidden_state, out["cache"] if "cache" in out else out.get("past_key_values")

    def forward(self, inputs: Dict[str, torch.Tensor]) -> MLLMOutput:
        """Teacher-forced pass over an `encode(..., answers=...)` batch: text loss and [SEG] states."""
        if "labels" not in inputs:
            raise ValueError("forward needs labels: call encode(images, questions, answers=...)")
        hidden, _ = self._hidden(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"]
        )
        states = hidden[:, :-1]  # (B, T-1, hidden): state t predicts token t+1
        targets = inputs["labels"][:, 1:]  # (B, T-1)
        answer = targets != IGNORE_INDEX
        logits = self.core.lm_head(states[answer])  # (N, vocab): only answer positions
        text_loss = F.cross_entropy(logits.float(), targets[answer])
        emits_seg = answer & (targets == self.seg_token_id)
        seg_hidden = [states[b][emits_seg[b]] for b in range(states.shape[0])]
        return MLLMOutput(text_loss=text_loss, seg_hidden=seg_hidden)

    @torch.no_grad()
    def generate(
        self,
        image: np.ndarray,
        question: str,
        history: Optional[Sequence[Round]] = None,
        max_new_tokens: Optional[int] = None,
    ) -> MLLMGeneration:
        """Greedy decoding with the KV cache (eval mode for the call); stops at </s>, max_new_tokens (None: the config's,
        512 for the paper configs as LISA) or max_length."""
        if max_new_tokens is None:
            max_new_tokens = self.config.max_new_tokens
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        inputs = self.encode([image], [question], None, [history] if history else None)
        room = self.config.max_length - inputs["input_ids"].shape[1]
        if room < 1:
            raise ValueError(f"question fills the whole context (max_length={self.config.max_length}); no room for an answer")
        was_training = self.training
        self.eval()
        try:
            hidden, cache = self._hidden(**inputs, use_cache=True)
            last = hidden[:, -1]  # (1, hidden)
            generated: List[int] = []
            seg_states: List[torch.Tensor] = []
            for step in range(min(max_new_tokens, room)):
                next_id = int(self.core.lm_head(last).argmax(-1))
                if next_id == self.tokenizer.eos_token_id:
                    break
                generated.append(next_id)
                if next_id == self.seg_token_id:
                    seg_states.append(last[0])
                if step + 1 == min(max_new_tokens, room):
                    break
                step_ids = torch.tensor([[next_id]], device=self.device)
                hidden, cache = self._hidden(input_ids=step_ids, cache=cache, use_cache=True)
                last = hidden[:, -1]
        finally:
            self.train(was_training)
        answer = self.template.decode(generated)
        seg_hidden = torch.stack(seg_states) if seg_states else hidden.new_zeros((0, self.hidden_size))
        return MLLMGeneration(answer=answer, seg_hidden=seg_hidden, phrases=seg_phrases(answer), token_ids=generated)
