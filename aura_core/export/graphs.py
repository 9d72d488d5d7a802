"""The three exported graphs: the SAM image encoder, the visible branch and the amodal branch.

Each is a thin nn.Module over the AuraModel's own boxes, with plain tensor inputs and outputs, so the ONNX files (and
TensorRT engines built from them) compute exactly what `AuraModel.encode_image / decode_visible / decode_amodal` do.
The dense "no mask" prompt and the positional encoding do not depend on the input, so they are baked in as constants.
The number of [SEG]s K is the graphs' one dynamic axis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import nn

from aura_core.model.aura import AuraModel

IMAGE_ENCODER = "image_encoder"
VISIBLE_BRANCH = "visible_branch"
AMODAL_BRANCH = "amodal_branch"
GRAPH_NAMES: Tuple[str, ...] = (IMAGE_ENCODER, VISIBLE_BRANCH, AMODAL_BRANCH)
NUM_SEG = "num_seg"  # name of the dynamic [SEG]-count axis in the ONNX graphs and the manifest


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (ints, or NUM_SEG for the dynamic axis) and dtype of one graph input or output."""

    name: str
    shape: Tuple[object, ...]
    dtype: str = "float32"

    def to_dict(self) -> Dict[str, object]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


class ImageEncoderGraph(nn.Module):
    """sam_image (1, 3, S, S) -> image_embedding (1, C, h, w): the Vision Backbone."""

    def __init__(self, model: AuraModel) -> None:
        super().__init__()
        self.encoder = model.vision_backbone.encoder

    def forward(self, sam_image: torch.Tensor) -> torch.Tensor:
        return self.encoder(sam_image)


class _BranchGraph(nn.Module):
    """Shared part of the two decoder graphs: the constant dense prompt/PE and one SAM mask decoder."""

    def __init__(self, model: AuraModel, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        with torch.no_grad():
            self.register_buffer("dense_embedding", model.prompt_encoder.dense_embedding().detach().clone())
            self.register_buffer("dense_pe", model.prompt_encoder.dense_pe().detach().clone())

    def _decode(self, image_embedding: torch.Tensor, prompts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # (K, C) prompts -> (K, 4h, 4w) logits, (K,) scores; the same call as MaskDecoder.forward without its checks.
        masks, scores = self.decoder.decoder(
            image_embeddings=image_embedding,
            image_pe=self.dense_pe,
            sparse_prompt_embeddings=prompts.unsqueeze(1),
            dense_prompt_embeddings=self.dense_embedding,
            multimask_output=False,
        )
        return masks[:, 0], scores[:, 0]


class VisibleBranchGraph(_BranchGraph):
    """image_embedding (1, C, h, w), e_r (K, C) -> visible_logits (K, 4h, 4w), visible_scores (K,): D_V."""

    def __init__(self, model: AuraModel) -> None:
        super().__init__(model, model.visible_mask_decoder)

    def forward(self, image_embedding: torch.Tensor, e_r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._decode(image_embedding, e_r)


class AmodalBranchGraph(_BranchGraph):
    """image_embedding, e_r -> amodal_logits, amodal_scores[, occlusion_rates]: E_OC (when configured) then D_A."""

    def __init__(self, model: AuraModel) -> None:
        super().__init__(model, model.amodal_mask_decoder)
        self.occlusion_condition_encoder = model.occlusion_condition_encoder

    def forward(self, image_embedding: torch.Tensor, e_r: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.occlusion_condition_encoder is None:  # Table 2 ablation: D_A prompted with e_r, no rate head
            return self._decode(image_embedding, e_r)
        e_oa, rates = self.occlusion_condition_encoder(e_r)
        logits, scores = self._decode(image_embedding, e_oa)
        return logits, scores, rates


def graph_specs(model: AuraModel) -> Dict[str, Tuple[List[TensorSpec], List[TensorSpec]]]:
    """{graph name: (inputs, outputs)} with the shapes the model's config fixes."""
    size = model.config.vision.image_size
    grid = model.vision_backbone.embedding_size
    channels = model.config.mask_decoder.prompt_embed_dim
    low = 4 * grid  # SAM's decoder upsamples the embedding grid 4x
    embedding = TensorSpec("image_embedding", (1, channels, grid, grid))
    e_r = TensorSpec("e_r", (NUM_SEG, channels))
    amodal_outputs = [TensorSpec("amodal_logits", (NUM_SEG, low, low)), TensorSpec("amodal_scores", (NUM_SEG,))]
    if model.occlusion_condition_encoder is not None:
        amodal_outputs.append(TensorSpec("occlusion_rates", (NUM_SEG,)))
    return {
        IMAGE_ENCODER: ([TensorSpec("sam_image", (1, 3, size, size))], [embedding]),
        VISIBLE_BRANCH: (
            [embedding, e_r],
            [TensorSpec("visible_logits", (NUM_SEG, low, low)), TensorSpec("visible_scores", (NUM_SEG,))],
        ),
        AMODAL_BRANCH: ([embedding, e_r], amodal_outputs),
    }


def build_graph(name: str, model: AuraModel) -> nn.Module:
    """The exportable module for one of GRAPH_NAMES, in eval mode."""
    graphs = {IMAGE_ENCODER: ImageEncoderGraph, VISIBLE_BRANCH: VisibleBranchGraph, AMODAL_BRANCH: AmodalBranchGraph}
    if name not in graphs:
        raise ValueError(f"unknown graph '{name}' (known: {', '.join(GRAPH_NAMES)})")
    return graphs[name](model).eval()
