"""Training run settings: one dataclass (defaults = the tiny CPU run), YAML files and `--set key=value` on top.

The model's shapes are not here: `model` names an entry of aura_core.model.config's registry and
`model_overrides` changes its fields. Every unknown key is an error naming the file and the dotted key.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import yaml

from aura_core.model.config import (
    AuraConfig,
    ConfigError,
    check_weights,
    dataclass_from_mapping,
    get_config,
    json_ready,
    merge_nested,
)

ASSETS_DIR = Path(__file__).resolve().parents[1] / "aura_core" / "assets"  # relative model paths resolve here first
TINY_BACKBONE = "tiny_sam_vit.pth"  # pretrained tiny SAM (training/pretrain_backbone.py), shipped like SAM's .pth
TINY_LLAVA = "tiny_llava"  # pretrained tiny LLaVA directory (training/pretrain_mllm.py), shipped like an llava-hf model
# The default run's model: the tiny config on top of the two shipped pretrained parts. The tiny LLaVA was pretrained at
# 128 px (64 image tokens) with a 3-layer CLIP tower; the sizes are repeated here so the recorded config says so.
TINY_PRETRAINED: Dict[str, Any] = {
    "vision": {"checkpoint": TINY_BACKBONE},
    "mllm": {"pretrained_path": TINY_LLAVA, "vision_image_size": 128, "vision_layers": 3},
}


@dataclass(frozen=True)
class SyntheticDataConfig:
    """The synthetic set generated (once, then cached) when no `data_dir` is given."""

    train_images: int = 1200
    val_images: int = 100
    seed: int = 0
    image_size: int = 256
    cache_dir: Optional[str] = None  # None -> $AURA_CACHE or ~/.cache/aura_ros


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the tiny model on the synthetic set (the no-argument run)."""

    model: str = "tiny"  # aura_core.model.config registry name
    # Nested overrides of the model config; the default run trains on top of the pretrained tiny SAM and tiny LLaVA
    # in ASSETS_DIR (TINY_PRETRAINED).
    model_overrides: Dict[str, Any] = field(default_factory=lambda: copy.deepcopy(TINY_PRETRAINED))
    data_dir: Optional[str] = None  # AmodalReasonSeg-format directory; None -> the cached synthetic set
    train_split: str = "train"
    val_split: str = "val"
    output_dir: str = "runs/default"
    seed: int = 0
    # Optimiser and schedule (paper Sec. 5.1: AdamW, lr 1e-3, 100 warm-up its, linear decay to 0, 5000 its).
    iterations: int = 1500  # optimiser steps
    warmup_iterations: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: Tuple[float, float] = (0.9, 0.95)
    batch_size: int = 8  # per process and micro-step
    grad_accumulation: int = 1  # micro-steps per optimiser step
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    # auto (bf16 autocast on CUDA, fp16 + loss scaling on GPUs without bf16, fp32 on CPU) | bf16 | fp16 | fp32;
    # trainable tensors are fp32 master weights in every mode (training/precision.py)
    precision: str = "auto"
    strategy: str = "ddp"  # several processes: ddp (replicate the model) | fsdp (shard it, FSDP2 fully_shard)
    # What a person sees.
    log_every: int = 10  # optimiser steps between JSONL records
    eval_every: int = 500  # optimiser steps between evaluations (0: only at the end)
    eval_samples: int = 100  # validation QA pairs per intermediate evaluation (0: all)
    final_eval_samples: int = 0  # validation QA pairs in the final evaluation (0: all)
    final_eval_generation: bool = True  # also score the model's own answers end to end at the end
    final_eval_end_to_end_samples: int = 100  # QA pairs answered and scored end to end at the end (0: all, ~0.4 s each on CPU)
    overlays: int = 8  # validation samples drawn as PNG after each evaluation
    checkpoint_every: int = 500  # optimiser steps between checkpoints of output_dir/checkpoints/last (0: only at the end)
    num_workers: int = 1  # DataLoader workers per process (decoding PNG/RLE next to the training thread)
    threads: int = 1  # torch CPU threads per process (0: torch's default; >1 thrashes on a busy 2-core CPU)
    # Memory (MiB, per process) for the frozen SAM encoder's output per training image, computed once and reused every
    # epoch (training/data.py, ImageEmbeddingCache; 64 KiB per image for the tiny model); 0 encodes every batch again.
    image_embedding_cache_mb: int = 2048
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)

    def __post_init__(self) -> None:
        checks = {
            "iterations": self.iterations >= 1,
            "warmup_iterations": 0 <= self.warmup_iterations < self.iterations,
            "lr": self.lr > 0,
            "betas": len(self.betas) == 2,
            "batch_size": self.batch_size >= 1,
            "grad_accumulation": self.grad_accumulation >= 1,
            "grad_clip": self.grad_clip >= 0,
            "precision": self.precision in ("auto", "bf16", "fp16", "fp32"),
            "strategy": self.strategy in ("ddp", "fsdp"),
            "log_every": self.log_every >= 1,
            "eval_every": self.eval_every >= 0,
            "checkpoint_every": self.checkpoint_every >= 0,
            "final_eval_end_to_end_samples": self.final_eval_end_to_end_samples >= 0,
            "image_embedding_cache_mb": self.image_embedding_cache_mb >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError("invalid training setting(s): " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))

    def model_config(self) -> AuraConfig:
        """The AuraConfig this run trains (registry entry + overrides)."""
        return get_config(self.model, self.model_overrides)


def train_config_to_dict(config: TrainConfig) -> Dict[str, Any]:
    """JSON/YAML-ready dict (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def parse_set_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """['lr=3e-4', 'synthetic.train_images=50'] -> nested dict; values are parsed as YAML scalars/lists."""
    nested: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r} conflicts with an earlier --set of '{part}'")
        node[parts[-1]] = yaml.safe_load(raw)
    return nested


def load_train_config(path: Optional[os.PathLike] = None, overrides: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """Defaults, then the YAML file at `path` (if any), then `overrides` (a nested dict, e.g. from flags)."""
    values: Dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"training config file {file} not found")
        with open(file, encoding="utf-8") as f:
            try:
                loaded = yaml.safe_load(f)
            except yaml.YAMLError as err:
                raise ConfigError(f"{file}: not valid YAML ({err})") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: must hold a mapping of training settings")
        values = loaded
        source = str(file)
    if overrides:
        values = merge_nested(values, overrides)
        source = f"{source} + command-line flags" if path is not None else "command-line flags"
    config = dataclass_from_mapping(TrainConfig, values, source=source)
    try:
        # unknown model name or model key, or empty weight paths without allow_random_init -> error now, before any data
        check_weights(config.model_config())
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
    return config
