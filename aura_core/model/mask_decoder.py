"""Visible Mask Decoder D_V and Amodal Mask Decoder D_A (Fig. 2): two segment_anything MaskDecoders.

Both read the same image embedding F_I; D_V is prompted with e_r, D_A with the occlusion-aware e_oa (or e_r when the
Occlusion Condition Encoder is ablated). Only SAM's single-mask output is used (multimask_output=False). The three
multimask hypernetwork heads and the IoU head receive no gradient from eqs. 1-4, so they are frozen (with SAM weights
the IoU head keeps SAM's quality estimate, which the pipeline reports as the mask score).
"""
from __future__ import annotations

import logging
from typing import Mapping, Tuple

import torch
from segment_anything.modeling import MaskDecoder as SamMaskDecoder
from segment_anything.modeling import TwoWayTransformer
from torch import nn

from aura_core.model.config import MaskDecoderConfig
from aura_core.model.sam_checkpoint import load_prefixed

LOGGER = logging.getLogger(__name__)

SAM_MASK_DECODER_PREFIX = "mask_decoder."


def build_sam_mask_decoder(config: MaskDecoderConfig) -> SamMaskDecoder:
    """segment_anything's MaskDecoder (with its TwoWayTransformer) at the config's size."""
    return SamMaskDecoder(
        transformer_dim=config.prompt_embed_dim,
        transformer=TwoWayTransformer(
            depth=config.transformer_depth,
            embedding_dim=config.prompt_embed_dim,
            num_heads=config.transformer_heads,
            mlp_dim=config.transformer_mlp_dim,
        ),
        num_multimask_outputs=config.num_multimask_outputs,
        iou_head_depth=config.iou_head_depth,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )


class MaskDecoder(nn.Module):
    """(image embedding, K prompt embeddings) -> K low-resolution mask logits and K scores."""

    def __init__(self, *, config: MaskDecoderConfig) -> None:
        super().__init__()
        self.decoder = build_sam_mask_decoder(config)
        # Unused by the single-mask output and by the losses: frozen, so "trainable" means "gets a gradient".
        self.decoder.output_hypernetworks_mlps[1:].requires_grad_(False)
        self.decoder.iou_prediction_head.requires_grad_(False)

    def load_sam_weights(self, state: Mapping[str, torch.Tensor], source: str) -> bool:
        """Load SAM's `mask_decoder.*`; False when the file has none (e.g. a backbone-only tiny .pth)."""
        loaded = load_prefixed(self.decoder, state, SAM_MASK_DECODER_PREFIX, source)
        if loaded:
            LOGGER.info("mask decoder: loaded %s*", SAM_MASK_DECODER_PREFIX)
        return loaded

    def forward(
        self,
        image_embedding: torch.Tensor,
        prompts: torch.Tensor,
        dense_embedding: torch.Tensor,
        dense_pe: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Arguments: image_embedding (1, C, h, w); prompts (K, C); dense_embedding and dense_pe (1, C, h, w).

        Returns: low-resolution logits (K, 4h, 4w) and scores (K,).
        """
        if image_embedding.dim() != 4 or image_embedding.shape[0] != 1:
            raise ValueError(f"image_embedding must be (1, C, h, w), got {tuple(image_embedding.shape)}")
        if prompts.dim() != 2 or prompts.shape[1] != image_embedding.shape[1]:
            raise ValueError(f"prompts must be (K, {image_embedding.shape[1]}), got {tuple(prompts.shape)}")
        h, w = image_embedding.shape[-2:]
        if prompts.shape[0] == 0:
            return image_embedding.new_zeros((0, 4 * h, 4 * w)), image_embedding.new_zeros((0,))
        masks, scores = self.decoder(
            image_embeddings=image_embedding,
            image_pe=dense_pe,
            sparse_prompt_embeddings=prompts.unsqueeze(1),  # (K, 1, C): one sparse token per object
            dense_prompt_embeddings=dense_embedding,
            multimask_output=False,
        )
        return masks[:, 0], scores[:, 0]
