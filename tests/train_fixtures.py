"""Shared fixtures for the trainer tests: a very small synthetic set and a model config that trains in seconds."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pytest

from aura_core.data.synthetic import generate_dataset

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


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("aura_small_data")
    generate_dataset(root, train=4, val=1, seed=3, size=64)
    return root
