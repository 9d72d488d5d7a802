"""Where the training data comes from: a given AmodalReasonSeg directory, or the synthetic set, generated once and cached;
and `ImageEmbeddingCache`, the frozen SAM encoder's output per training image, computed once per run.

The synthetic set lives in $AURA_CACHE (default ~/.cache/aura_ros)/synthetic-<train>x<val>-seed<seed>-<size>px-v<N>; it
is written to a temporary folder and renamed when complete, so an interrupted generation is never mistaken for a set.
N is SYNTHETIC_VERSION, raised whenever the generator writes something new, so an older cached set is not reused.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from aura_core.data.format import IMAGES_DIR, annotations_path, qa_path
from aura_core.data.synthetic import generate_dataset
from training.config import SyntheticDataConfig

LOG = logging.getLogger(__name__)

SYNTHETIC_VERSION = 2  # 2: QA entries carry their question kind


class DataDirError(ValueError):
    """A data directory that lacks the files of the AmodalReasonSeg format (docs/DATASET.md)."""


def cache_root(config: SyntheticDataConfig) -> Path:
    return Path(config.cache_dir or os.environ.get("AURA_CACHE") or "~/.cache/aura_ros").expanduser()


def synthetic_data_dir(config: SyntheticDataConfig) -> Path:
    """The cache folder of the synthetic set these settings describe."""
    name = f"synthetic-{config.train_images}x{config.val_images}-seed{config.seed}-{config.image_size}px-v{SYNTHETIC_VERSION}"
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


class ImageEmbeddingCache:
    """F_I of each training image, computed once by the frozen SAM image encoder and reused in later epochs.

    The training set has no augmentation, so an image's preprocessed SAM input, hence its embedding, is the same every
    epoch. Keyed by image id (one cache per data set split) and checked against a fingerprint of the backbone's weights:
    a change of them (in place, or another backbone) empties the cache. Each missing image is encoded on its own, so an
    entry does not depend on which batch first saw it (a resumed run sees the same numbers). Embeddings are held on the
    CPU up to `max_bytes`; images beyond it are encoded every time. Switched off by `image_embedding_cache_mb: 0`.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = self.misses = 0
        self._store: Dict[int, torch.Tensor] = {}
        self._versions: Optional[Tuple[Tuple[int, int], ...]] = None
        self._fingerprint: Optional[str] = None

    @staticmethod
    def fingerprint(backbone: torch.nn.Module) -> str:
        """SHA-1 of the backbone's parameters and buffers (names, shapes, dtypes, values)."""
        digest = hashlib.sha1()
        for name, tensor in sorted(backbone.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return digest.hexdigest()

    def _check(self, backbone: torch.nn.Module) -> None:
        """Empty the cache when the backbone's weights are not the ones its entries were computed with."""
        versions = tuple((id(t), t._version) for t in backbone.state_dict(keep_vars=True).values())
        if versions == self._versions:
            return
        fingerprint = self.fingerprint(backbone)
        if fingerprint != self._fingerprint:
            if self._store:
                LOG.info("image embedding cache: backbone weights changed, %d entries dropped", len(self._store))
            self._store.clear()
            self.bytes = 0
            self._fingerprint = fingerprint
        self._versions = versions

    def embeddings(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        """(B, C, h, w) image embeddings of a `collate` batch (its "image_id" and "sam_images"), from the cache where
        present; `model` is the bare AuraModel (its `encode_image` and `vision_backbone`)."""
        self._check(model.vision_backbone)
        rows = []
        for i, image_id in enumerate(batch["image_id"]):
            key = int(image_id)
            cached = self._store.get(key)
            if cached is None:
                self.misses += 1
                cached = model.encode_image(batch["sam_images"][i : i + 1])[0].detach()
                size = cached.numel() * cached.element_size()
                if self.bytes + size <= self.max_bytes:
                    cached = cached.cpu()
                    self._store[key] = cached
                    self.bytes += size
            else:
                self.hits += 1
            rows.append(cached.to(model.device))
        return torch.stack(rows)
