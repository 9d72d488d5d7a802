"""Mask primitives, each defined once: box, intersection/union, IoU and occlusion rate of bool HxW masks.

Plain numpy + pycocotools (no torch), so the data format, the metrics, the pipeline's result and the ROS side all share
them. The torch mask losses (BCE, Dice) live with the other training losses in aura_core/model/losses.py.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from pycocotools import mask as mask_utils


def mask_box(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """Tightest (x, y, width, height) box around the True pixels of a HxW mask, in pixels; None for an empty mask."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    if int(mask_utils.area(rle)) == 0:
        return None
    x, y, width, height = (int(v) for v in mask_utils.toBbox(rle))
    return x, y, width, height


def intersection_union(a: np.ndarray, b: np.ndarray) -> Tuple[int, int]:
    """(|a ∩ b|, |a ∪ b|) in pixels of two same-shape masks."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of shapes {a.shape} and {b.shape} cannot be compared")
    return int(np.logical_and(a, b).sum()), int(np.logical_or(a, b).sum())


def iou_of_counts(intersection: int, union: int) -> float:
    """IoU from pixel counts; 1.0 for an empty union (both masks empty: nothing to find, nothing found)."""
    return 1.0 if union == 0 else intersection / union


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two same-shape masks (1.0 when both are empty)."""
    return iou_of_counts(*intersection_union(a, b))


def occlusion_rate(visible: np.ndarray, amodal: np.ndarray) -> float:
    """r = 1 - |V ∩ A| / |A|: the share of the amodal (whole-object) area that is hidden, in [0, 1].

    Only the part of the visible mask inside the amodal one counts, so a visible mask that leaks outside the amodal
    mask cannot give a negative rate. An empty amodal mask hides nothing: r = 0.
    """
    visible, amodal = np.asarray(visible, dtype=bool), np.asarray(amodal, dtype=bool)
    if visible.shape != amodal.shape:
        raise ValueError(f"visible mask {visible.shape} and amodal mask {amodal.shape} differ in shape")
    area = int(amodal.sum())
    if area == 0:
        return 0.0
    return 1.0 - int(np.logical_and(visible, amodal).sum()) / area
