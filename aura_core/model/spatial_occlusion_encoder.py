"""Spatial Occlusion Encoder E_SO (Fig. 3): predicted visible + amodal masks -> 3-class spatial map M_sp_hat.

Classes: 0 background, 1 visible, 2 hidden part (amodal but not visible). It runs on the decoders' low-resolution
mask probabilities, so its cross-entropy (eq. 3) pushes the two decoders towards consistent masks: visible inside
amodal, hidden part where they differ.
"""
from __future__ import annotations

import torch
from torch import nn

SPATIAL_CLASSES = 3  # background, visible, hidden part


class SpatialOcclusionEncoder(nn.Module):
    """(K, h, w) visible logits + (K, h, w) amodal logits -> (K, 3, h, w) spatial-map logits."""

    def __init__(self, *, hidden_channels: int, layers: int) -> None:
        super().__init__()
        blocks = []
        in_channels = 2
        for _ in range(layers):
            blocks += [nn.Conv2d(in_channels, hidden_channels, kernel_size=3, padding=1), nn.GELU()]
            in_channels = hidden_channels
        blocks.append(nn.Conv2d(in_channels, SPATIAL_CLASSES, kernel_size=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, visible_logits: torch.Tensor, amodal_logits: torch.Tensor) -> torch.Tensor:
        if visible_logits.shape != amodal_logits.shape or visible_logits.dim() != 3:
            raise ValueError(
                f"visible and amodal logits must both be (K, h, w), got {tuple(visible_logits.shape)} "
                f"and {tuple(amodal_logits.shape)}"
            )
        masks = torch.stack([visible_logits.sigmoid(), amodal_logits.sigmoid()], dim=1)  # (K, 2, h, w)
        return self.net(masks)
