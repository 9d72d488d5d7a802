"""Helpers for the trainer tests: a model config and settings that train in seconds (the data set, `small_data`,
is a fixture in conftest.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

# Tiny SAM side at 64 px (4x4 embedding grid), random init; no LoRA dropout so runs are deterministic.
SMALL_MODEL: Dict[str, Any] = {
    "vision": {"checkpoint": None, "image_size": 64, "window_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2,
               "global_attn_indexes": [0]},
    "mllm": {"lora_dropout": 0.0},
}


def small_settings(data_dir: Path, output_dir: Path, **extra: Any) -> Dict[str, Any]:
    settings: Dict[str, Any] = {
        "model_overrides": SMALL_MODEL,
        "data_dir": str(data_dir),
        "output_dir": str(output_dir),
        "iterations": 4,
        "warmup_iterations": 1,
        "batch_size": 2,
        "grad_accumulation": 1,
        "log_every": 1,
        "eval_every": 0,
        "checkpoint_every": 0,
        "overlays": 0,
        "final_eval_generation": False,
        "threads": 1,
        "num_workers": 0,
    }
    settings.update(extra)
    return settings
