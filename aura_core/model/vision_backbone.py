"""Vision Backbone (Fig. 2): SAM's ViT image encoder, giving the image features F_I the mask decoders read.

It is frozen, as in the paper. Weights come from a local segment-anything `.pth` (vit_b / vit_l / vit_h, or a
tiny-shaped file in the same format), read by aura_core/model/sam_checkpoint.py.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Mapping, Optional

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from aura_core.model.config import VisionBackboneConfig
from aura_core.model.sam_checkpoint import SamCheckpointError, load_prefixed

LOGGER = logging.getLogger(__name__)

SAM_IMAGE_ENCODER_PREFIX = "image_encoder."


def build_sam_image_encoder(config: VisionBackboneConfig, out_channels: int) -> ImageEncoderViT:
    """segment_anything's ImageEncoderViT at the config's size, with SAM's fixed choices (MLP ratio, rel-pos, eps)."""
    return ImageEncoderViT(
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=4.0,
        out_chans=out_channels,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        global_attn_indexes=tuple(config.global_attn_indexes),
        window_size=config.window_size,
    )


class VisionBackbone(nn.Module):
    """Frozen SAM ImageEncoderViT: (B, 3, S, S) normalised, padded images -> (B, C, S/16, S/16) image embeddings."""

    def __init__(self, *, config: VisionBackboneConfig, out_channels: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_sam_image_encoder(config, out_channels)
        self.requires_grad_(False)

    @property
    def embedding_size(self) -> int:
        """Side of the (square) image embedding grid."""
        return self.config.image_size // self.config.patch_size

    def load_sam_weights(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Load `image_encoder.*` from a SAM state dict; the file must contain them."""
        if not load_prefixed(self.encoder, state, SAM_IMAGE_ENCODER_PREFIX, source):
            raise SamCheckpointError(f"{source}: no '{SAM_IMAGE_ENCODER_PREFIX}*' weights in the SAM checkpoint")
        LOGGER.info("vision backbone: loaded %s*", SAM_IMAGE_ENCODER_PREFIX)

    def train(self, mode: bool = True) -> "VisionBackbone":
        """Stay in eval mode: the backbone is frozen (no dropout/batch-stat changes during training)."""
        return super().train(False)

    def forward(self, sam_images: torch.Tensor) -> torch.Tensor:
        if sam_images.dim() != 4 or sam_images.shape[1] != 3:
            raise ValueError(f"sam_images must be (B, 3, S, S), got {tuple(sam_images.shape)}")
        size = self.config.image_size
        if sam_images.shape[-2:] != (size, size):
            raise ValueError(f"sam_images must be {size}x{size} (config.vision.image_size), got {tuple(sam_images.shape)}")
        return self.encoder(sam_images)


def build_vision_backbone(
    config: VisionBackboneConfig, *, out_channels: int, sam_state: Optional[Mapping[str, torch.Tensor]] = None
) -> VisionBackbone:
    """A VisionBackbone from its config; `sam_state` (a read SAM .pth) fills its weights when given."""
    backbone = VisionBackbone(config=config, out_channels=out_channels)
    if sam_state is not None:
        backbone.load_sam_weights(sam_state, source=str(config.checkpoint))
    return backbone
