"""SAM preprocessing and its inverse: the image goes in resized/normalised/padded, masks come back at full size.

`preprocess_image` (data set, pipeline, pretext trainer) and `postprocess_masks` (model, pipeline) are the pair SAM
defines; `resized_shape` is the size rule both follow; `resize_masks` puts masks onto the padded SAM frame.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

# SAM's pixel statistics (ImageNet mean/std in 0..255 units).
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def resized_shape(height: int, width: int, size: int) -> Tuple[int, int]:
    """(h, w) after scaling the longest side to `size`, rounded as SAM does."""
    return ResizeLongestSide.get_preprocess_shape(height, width, size)


def preprocess_image(image: np.ndarray, size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """RGB uint8 HxWx3 -> (float 3xSxS tensor: resized, normalised, zero-padded bottom/right; (h, w) before padding)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"preprocess_image expects a uint8 HxWx3 RGB array, got {image.dtype} {image.shape}")
    resized = ResizeLongestSide(size).apply_image(image)
    h, w = int(resized.shape[0]), int(resized.shape[1])
    x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float()
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    x = (x - mean) / std
    x = F.pad(x, (0, size - w, 0, size - h))
    return x, (h, w)


def postprocess_masks(
    low_res_logits: torch.Tensor, input_size: Tuple[int, int], original_size: Tuple[int, int], size: int
) -> torch.Tensor:
    """(K, h', w') mask logits on the padded SxS frame (any resolution) -> (K, H, W) logits on the original image.

    Upsample to SxS, crop away the padding (the resized image's (h, w)), resize to the original (H, W).
    """
    if low_res_logits.dim() != 3:
        raise ValueError(f"postprocess_masks expects (K, h, w) logits, got shape {tuple(low_res_logits.shape)}")
    x = F.interpolate(low_res_logits[:, None].float(), (size, size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    x = F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)
    return x[:, 0]


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Bool/float (K, H, W) masks onto the padded SxS SAM frame (nearest), for losses at the model's resolution."""
    if masks.dim() != 3:
        raise ValueError(f"resize_masks expects (K, H, W), got shape {tuple(masks.shape)}")
    h, w = resized_shape(int(masks.shape[1]), int(masks.shape[2]), size)
    x = F.interpolate(masks[:, None].float(), (h, w), mode="nearest")
    return F.pad(x, (0, size - w, 0, size - h))[:, 0]
