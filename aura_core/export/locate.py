"""Where an exported backend's ONNX files come from: a given directory, `<checkpoint>/onnx`, or a per-user cache.

`AuraPipeline.from_pretrained(ckpt, backend="onnxruntime")` looks for an export of that checkpoint in `<ckpt>/onnx`
(what `training/export.py --checkpoint ckpt --out ckpt/onnx` writes); without one it exports once into a per-user
cache keyed by the checkpoint's fingerprint, so a retrained checkpoint never reuses old graphs. The backends themselves
are registered in aura_core/backends.py.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Tuple

from aura_core.export.manifest import MANIFEST_FILE, CheckpointFingerprint
from aura_core.export.onnx_export import export_model
from aura_core.model.aura import AuraModel

LOGGER = logging.getLogger(__name__)

CHECKPOINT_EXPORT_SUBDIR = "onnx"
CACHE_ENV = "AURA_EXPORT_CACHE"  # overrides the cache root (default ~/.cache/aura_ros/exports)


def export_cache_root() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "aura_ros" / "exports"


def find_or_export(model: AuraModel, checkpoint_dir: Path, fingerprint: CheckpointFingerprint) -> Path:
    """An export directory of this checkpoint: `<ckpt>/onnx` if present, else the cache (exporting on first use)."""
    beside = checkpoint_dir / CHECKPOINT_EXPORT_SUBDIR
    if (beside / MANIFEST_FILE).is_file():
        return beside
    cached = export_cache_root() / fingerprint.sha256[:24]
    if not (cached / MANIFEST_FILE).is_file():
        LOGGER.info("no ONNX export of %s yet: exporting into %s", checkpoint_dir, cached)
        export_model(model, cached, fingerprint)
    return cached


def locate_export(
    model: AuraModel, checkpoint_dir: Optional[Path], export_dir: Optional[Path], backend: str
) -> Tuple[Path, CheckpointFingerprint]:
    """(export directory, checkpoint fingerprint) for `backend`; `export_dir` overrides the lookup.

    The fingerprint lets the backend refuse an export of another checkpoint, so the checkpoint directory the model was
    loaded from is required.
    """
    if checkpoint_dir is None:
        raise ValueError(f"the {backend} backend needs the checkpoint directory the model was loaded from")
    checkpoint_dir = Path(checkpoint_dir)
    fingerprint = CheckpointFingerprint.of(checkpoint_dir)
    directory = Path(export_dir) if export_dir is not None else find_or_export(model, checkpoint_dir, fingerprint)
    return directory, fingerprint
