"""Helpers for the export tests: a saved tiny checkpoint, its ONNX export, loading it back (the shared export itself,
`exported`, is a fixture in conftest.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from aura_core.export.manifest import CheckpointFingerprint, Manifest
from aura_core.export.onnx_export import export_model
from aura_core.model.aura import AuraModel
from aura_core.model.build import build_aura_model
from aura_core.model.checkpoint import load_checkpoint, save_checkpoint
from aura_core.model.config import get_config


def make_checkpoint(directory: Path, *, seed: int = 0, overrides: Optional[Dict[str, Any]] = None) -> Path:
    """A random-init tiny AURA saved as a checkpoint directory."""
    torch.manual_seed(seed)
    model = build_aura_model(get_config("tiny", overrides))
    return save_checkpoint(model.eval(), directory)


def export_checkpoint_dir(checkpoint: Path, out: Path, **options: Any) -> Manifest:
    model = load_checkpoint(checkpoint)
    return export_model(model, out, CheckpointFingerprint.of(checkpoint), progress=False, **options)


def load(checkpoint: Path) -> AuraModel:
    return load_checkpoint(checkpoint).eval()
