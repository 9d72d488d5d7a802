"""aura_core.masks: the one definition of each mask primitive (box, intersection/union, IoU, occlusion rate)."""
from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from aura_core.masks import intersection_union, iou, iou_of_counts, mask_box, occlusion_rate
from aura_core.result import Box


def _mask(shape=(6, 8), rows=slice(0, 0), cols=slice(0, 0)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def test_box_is_the_tightest_xywh_box_and_none_when_empty():
    mask = _mask(rows=slice(1, 3), cols=slice(2, 6))
    mask[5, 7] = True  # a far pixel widens the box to the corner
    assert mask_box(mask) == (2, 1, 6, 5)
    assert mask_box(_mask()) is None
    assert mask_box(np.ones((3, 4), bool)) == (0, 0, 4, 3)
    assert Box.from_mask(mask) == Box(x=2, y=1, width=6, height=5)  # the result's boxes are the same function's
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert list(mask_utils.toBbox(rle)) == list(mask_box(mask))  # pycocotools' COCO box


def test_iou_and_counts():
    a = _mask(rows=slice(0, 2), cols=slice(0, 4))  # 8 pixels
    b = _mask(rows=slice(1, 3), cols=slice(0, 4))  # 8 pixels, 4 shared
    assert intersection_union(a, b) == (4, 12)
    assert iou(a, b) == pytest.approx(4 / 12)
    assert iou(a, a) == 1.0
    assert iou(_mask(), _mask()) == 1.0  # nothing to find, nothing found
    assert iou(a, _mask()) == 0.0
    assert iou_of_counts(0, 0) == 1.0 and iou_of_counts(3, 6) == 0.5
    with pytest.raises(ValueError, match="shapes"):
        intersection_union(a, a[:, :3])


def test_occlusion_rate_counts_only_the_visible_part_inside_the_amodal_mask():
    amodal = _mask(rows=slice(0, 4), cols=slice(0, 4))  # 16 pixels
    visible = _mask(rows=slice(0, 1), cols=slice(0, 4))  # 4 pixels inside
    assert occlusion_rate(visible, amodal) == pytest.approx(0.75)
    assert occlusion_rate(amodal, amodal) == 0.0
    assert occlusion_rate(_mask(), amodal) == 1.0
    leaking = visible | _mask(rows=slice(5, 6), cols=slice(0, 8))  # 8 more visible pixels outside the amodal mask
    assert occlusion_rate(leaking, amodal) == pytest.approx(0.75)  # 1 - |V|/|A| would say 1 - 12/16 = 0.25
    assert occlusion_rate(visible, _mask()) == 0.0  # an empty amodal mask hides nothing
    with pytest.raises(ValueError, match="shape"):
        occlusion_rate(visible, amodal[:3])
