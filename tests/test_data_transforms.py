"""SAM preprocessing (resize longest side, normalise, pad) and postprocess_masks round trip."""
import numpy as np
import pytest
import torch

from aura_core.data.transforms import PIXEL_MEAN, PIXEL_STD, postprocess_masks, preprocess_image, resize_masks
from aura_core.masks import iou


def test_preprocess_shape_normalise_pad():
    img = np.zeros((60, 100, 3), np.uint8)
    img[..., 0] = 200
    x, hw = preprocess_image(img, 64)
    assert x.shape == (3, 64, 64) and hw == (38, 64)
    assert torch.allclose(x[0, :38, :], torch.full((38, 64), (200 - PIXEL_MEAN[0]) / PIXEL_STD[0]))
    assert torch.allclose(x[1, :38, :], torch.full((38, 64), -PIXEL_MEAN[1] / PIXEL_STD[1]))
    assert torch.count_nonzero(x[:, 38:, :]) == 0  # bottom padding
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        preprocess_image(img.astype(np.float32), 64)


def test_postprocess_round_trip():
    h, w, size = 90, 150, 64
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 10:60, 20:100] = True
    masks[1, 40:85, 90:145] = True
    framed = resize_masks(masks, size)  # (2, 64, 64) on the padded SAM frame
    assert framed.shape == (2, size, size) and framed[:, 39:, :].sum() == 0  # 90x150 -> 38x64, padded below
    low_res = torch.nn.functional.interpolate((framed * 20 - 10)[:, None], (16, 16), mode="bilinear", align_corners=False)[:, 0]
    out = postprocess_masks(low_res, (38, 64), (h, w), size)
    assert out.shape == (2, h, w)
    pred = out > 0
    for k in range(2):
        assert iou(pred[k].numpy(), masks[k].numpy()) > 0.85
