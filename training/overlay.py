"""Overlay PNGs of validation samples: image | ground truth | prediction, one row per [SEG] object.

Visible part in green, hidden (amodal-only) part in red, so a reader sees at a glance whether the model
completed the occluded part. The question and the object's phrase are written above each sample.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

VISIBLE_RGB = np.array([40, 220, 60], dtype=np.float32)
HIDDEN_RGB = np.array([235, 40, 40], dtype=np.float32)
ALPHA = 0.55
HEADER = 14  # pixels of caption per text line


def paint(image: np.ndarray, visible: np.ndarray, amodal: np.ndarray) -> np.ndarray:
    """RGB uint8 HxWx3 with the visible mask in green and amodal-minus-visible in red."""
    out = image.astype(np.float32).copy()
    hidden = amodal & ~visible
    out[visible] = (1 - ALPHA) * out[visible] + ALPHA * VISIBLE_RGB
    out[hidden] = (1 - ALPHA) * out[hidden] + ALPHA * HIDDEN_RGB
    return np.clip(out, 0, 255).astype(np.uint8)


def overlay_panel(
    image: np.ndarray,
    *,
    question: str,
    phrases: Sequence[str],
    gt_visible: np.ndarray,
    gt_amodal: np.ndarray,
    pred_visible: np.ndarray,
    pred_amodal: np.ndarray,
) -> Image.Image:
    """A PIL image with K rows (one per object) of [image | GT | prediction]; masks are bool KxHxW."""
    h, w = image.shape[:2]
    k = len(phrases)
    if not (len(gt_visible) == len(gt_amodal) == len(pred_visible) == len(pred_amodal) == k):
        raise ValueError(f"overlay_panel: {k} phrases but mask counts {len(gt_visible)}/{len(gt_amodal)}/{len(pred_visible)}/{len(pred_amodal)}")
    gap = 4
    row_h = HEADER + h + gap
    panel = Image.new("RGB", (3 * w + 2 * gap, HEADER * 2 + max(k, 1) * row_h), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    draw.text((2, 1), question[:120], fill=(0, 0, 0))
    draw.text((2, 1 + HEADER), "image | ground truth | prediction   (green: visible, red: hidden part)", fill=(90, 90, 90))
    for i in range(k):
        top = HEADER * 2 + i * row_h
        draw.text((2, top), f"[SEG] {i + 1}: {phrases[i]}", fill=(0, 0, 160))
        tiles = [image, paint(image, gt_visible[i], gt_amodal[i]), paint(image, pred_visible[i], pred_amodal[i])]
        for j, tile in enumerate(tiles):
            panel.paste(Image.fromarray(tile), (j * (w + gap), top + HEADER))
    return panel


def save_overlay(path: Path, panel: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    panel.save(path, format="PNG")
    return path
