"""Where the training data comes from: a given AmodalReasonSeg directory, or the synthetic set, generated once and cached.

The synthetic set lives in $AURA_CACHE (default ~/.cache/aura_ros)/synthetic-<train>x<val>-seed<seed>-<size>px; it is
written to a temporary folder and renamed when complete, so an interrupted generation is never mistaken for a set.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

from aura_core.data.format import IMAGES_DIR, annotations_path, qa_path
from aura_core.data.synthetic import generate_dataset
from training.config import SyntheticDataConfig

LOG = logging.getLogger(__name__)


class DataDirError(ValueError):
    """A data directory that lacks the files of the AmodalReasonSeg format (docs/DATASET.md)."""


def cache_root(config: SyntheticDataConfig) -> Path:
    return Path(config.cache_dir or os.environ.get("AURA_CACHE") or "~/.cache/aura_ros").expanduser()


def synthetic_data_dir(config: SyntheticDataConfig) -> Path:
    """The cache folder of the synthetic set these settings describe."""
    name = f"synthetic-{config.train_images}x{config.val_images}-seed{config.seed}-{config.image_size}px"
    return cache_root(config) / name


def ensure_synthetic(config: SyntheticDataConfig) -> Path:
    """Generate the synthetic set unless it is cached; returns its directory."""
    target = synthetic_data_dir(config)
    if (target / annotations_path(target, "val").name).is_file() and (target / annotations_path(target, "train").name).is_file():
        return target
    LOG.info("generating the synthetic set (%d train + %d val images) into %s", config.train_images, config.val_images, target)
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    generate_dataset(tmp, config.train_images, config.val_images, config.seed, config.image_size)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def check_data_dir(root: os.PathLike, splits: Sequence[str]) -> Path:
    """Fail early, naming what is missing, when `root` is not an AmodalReasonSeg directory with these splits."""
    root = Path(root)
    if not root.is_dir():
        raise DataDirError(f"data directory {root} does not exist")
    missing = [str(p) for split in splits for p in (annotations_path(root, split), qa_path(root, split)) if not p.is_file()]
    if not (root / IMAGES_DIR).is_dir():
        missing.append(str(root / IMAGES_DIR) + "/")
    if missing:
        raise DataDirError(
            f"data directory {root} lacks the expected file(s) {', '.join(missing)} "
            "(format: docs/DATASET.md; make one with aura-synth or aura-convert-cocoa)"
        )
    return root
