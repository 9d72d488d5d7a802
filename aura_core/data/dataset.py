"""AmodalReasonSegDataset: one item per question/answer pair, with everything the AURA losses need.

Masks are decoded per item from RLE; images are decoded per item (optionally cached) and SAM-preprocessed.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from aura_core.data.format import AmodalSplit, QARecord, load_split
from aura_core.data.transforms import preprocess_image

# Spatial-map classes (paper: E_SO ground truth).
SPATIAL_BACKGROUND, SPATIAL_VISIBLE, SPATIAL_HIDDEN = 0, 1, 2


def spatial_map(visible: np.ndarray, amodal: np.ndarray) -> np.ndarray:
    """int64 HxW: 1 on the visible mask, 2 on the hidden part (amodal minus visible), 0 elsewhere."""
    out = np.zeros(amodal.shape, dtype=np.int64)
    out[amodal] = SPATIAL_HIDDEN
    out[visible] = SPATIAL_VISIBLE
    return out


class AmodalReasonSegDataset(Dataset):
    """Items for one split of a data set in the format of docs/DATASET.md.

    Arguments:
      root: data set directory; split: "train", "val" or "test"; image_size: SAM input side S;
      skip_invalid: drop bad entries with a warning instead of raising; cache_images: keep up to this
      many decoded images (0 = none).
    """

    def __init__(self, root: Union[str, Path], split: str, image_size: int = 256, skip_invalid: bool = False, *, cache_images: int = 0) -> None:
        self.data: AmodalSplit = load_split(root, split, skip_invalid=skip_invalid)
        self.image_size = image_size
        self.cache_images = cache_images
        self._cache: "OrderedDict[int, np.ndarray]" = OrderedDict()

    def __len__(self) -> int:
        return len(self.data.qa)

    @property
    def categories(self) -> Dict[int, str]:
        return self.data.categories

    def _image(self, image_id: int) -> np.ndarray:
        if image_id in self._cache:
            self._cache.move_to_end(image_id)
            return self._cache[image_id]
        image = self.data.load_image(image_id)
        if self.cache_images > 0:
            self._cache[image_id] = image
            while len(self._cache) > self.cache_images:
                self._cache.popitem(last=False)
        return image

    def item_for(self, qa: QARecord) -> Dict[str, Any]:
        """Build the sample dict of one QA record (see the module doc of docs/DATASET.md for keys)."""
        image = self._image(qa.image_id)
        sam_image, resize_hw = preprocess_image(image, self.image_size)
        vis, amo = [], []
        for oid in qa.object_ids:
            v, a = self.data.masks(oid)
            vis.append(v)
            amo.append(a)
        h, w = image.shape[:2]
        visible = np.stack(vis) if vis else np.zeros((0, h, w), bool)
        amodal = np.stack(amo) if amo else np.zeros((0, h, w), bool)
        spatial = np.stack([spatial_map(v, a) for v, a in zip(vis, amo)]) if vis else np.zeros((0, h, w), np.int64)
        rates = [self.data.objects[o].occlude_rate for o in qa.object_ids]  # the data set's own (checked on load)
        phrases = qa.phrases if qa.phrases is not None else [self.data.categories[self.data.objects[o].category_id] for o in qa.object_ids]
        return {
            "image": image,
            "sam_image": sam_image,
            "resize_hw": resize_hw,
            "original_hw": (h, w),
            "question": qa.question,
            "answer": qa.answer,
            "phrases": list(phrases),
            "visible_masks": torch.from_numpy(visible),
            "amodal_masks": torch.from_numpy(amodal),
            "occlusion_rates": torch.tensor(rates, dtype=torch.float32),
            "spatial_maps": torch.from_numpy(spatial),
            "category_ids": [self.data.objects[o].category_id for o in qa.object_ids],
            "object_ids": list(qa.object_ids),
            "image_id": qa.image_id,
            "qa_id": qa.id,
        }

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.item_for(self.data.qa[index])

    def image_groups(self) -> Dict[int, List[int]]:
        """image id -> indices of its QA pairs, in file order (for multi-round conversations)."""
        groups: Dict[int, List[int]] = {}
        for i, qa in enumerate(self.data.qa):
            groups.setdefault(qa.image_id, []).append(i)
        return groups

    def iter_images(self) -> Iterator[List[Dict[str, Any]]]:
        """Yield, per image, the items of all its QA pairs (one conversation per image)."""
        for indices in self.image_groups().values():
            yield [self[i] for i in indices]


def collate(items: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack the SAM images to (B, 3, S, S); every other key becomes a list of length B (K varies per item)."""
    if not items:
        raise ValueError("collate needs at least one item")
    out: Dict[str, Any] = {"sam_images": torch.stack([it["sam_image"] for it in items])}
    for key in items[0]:
        if key != "sam_image":
            out[key] = [it[key] for it in items]
    return out
