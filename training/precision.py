"""Mixed precision for training: fp32 master weights under bf16 autocast, or fp16 autocast with loss scaling.

`precision` (TrainConfig) is one of:
- `auto`: bf16 on a CUDA GPU that supports it, fp16 on one that does not (V100, the paper's GPU), fp32 on CPU;
- `bf16`: autocast to bfloat16 (CPU too, when asked explicitly);
- `fp16`: autocast to float16 with dynamic loss scaling (torch.amp.GradScaler); CUDA only;
- `fp32`: no autocast.

Whatever the mode, every *trainable* tensor (LoRA, the lm_head/embed_tokens copies that hold [SEG], the Prompt
Encoder, both decoders, E_OC, E_SO) is kept in float32: these are the optimiser's master weights, so late in the
linear decay an update of 1e-3 x lr is not rounded away as it would be in bf16 (8 bits of mantissa). The frozen LLaVA
body stays in its load dtype (bf16) and autocast runs the matmuls in the low precision.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager, Optional

import torch
from torch import nn

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_precision(precision: str, device: torch.device) -> str:
    """The concrete mode ("bf16", "fp16" or "fp32") of a TrainConfig.precision on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 (with loss scaling) needs a CUDA device; use bf16 or fp32 on the CPU")
    return precision


def autocast(mode: str, device: torch.device) -> ContextManager:
    """The autocast context of a resolved mode (a no-op for fp32)."""
    if mode == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if mode == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return nullcontext()


def keep_trainable_fp32(model: nn.Module) -> int:
    """Cast every trainable parameter to float32 in place (master weights); returns how many were cast."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


def grad_scaler(mode: str, device: torch.device) -> Optional[torch.amp.GradScaler]:
    """torch.amp.GradScaler for fp16 (dynamic loss scaling), None otherwise."""
    if mode != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
