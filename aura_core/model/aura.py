"""AuraModel (Fig. 2): the Multi-Modal LLM, the Vision Backbone and the SAM-side boxes composed into one module.

The model is a pure function of its inputs; the pipeline (aura_core/pipeline.py) owns caching across calls. Its SAM-side
stages (`encode_image`, `decode_visible`, `decode_amodal`) are the `SamBackend` protocol, which the ONNX Runtime and
TensorRT backends of aura_core/export also implement; `decode_prompts` is the one decode sequence that training and
the pipeline share, on whichever backend.

The two Table 2 switches (`use_occlusion_condition_encoder`, `use_spatial_occlusion_encoder`) decide whether E_OC and
E_SO exist at all: an ablated box is `None`, has no parameters and produces no output (and, in losses.py, no loss term).
Without E_OC the Amodal Mask Decoder is prompted with e_r directly and no occlusion rate is predicted.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from functools import lru_cache
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from aura_core.model.config import AuraConfig
from aura_core.model.mask_decoder import MaskDecoder
from aura_core.model.occlusion_condition_encoder import OcclusionConditionEncoder
from aura_core.model.prompt_encoder import PromptEncoder
from aura_core.model.spatial_occlusion_encoder import SpatialOcclusionEncoder
from aura_core.model.vision_backbone import VisionBackbone

LOGGER = logging.getLogger(__name__)


@dataclass
class AuraOutput:
    """Training-time output; every list has one entry per sample, each with one row per [SEG] (K_i)."""

    text_loss: torch.Tensor  # scalar, L_text
    visible_logits: List[torch.Tensor]  # (K, H, W) at the sample's original size
    amodal_logits: List[torch.Tensor]  # (K, H, W)
    visible_scores: List[torch.Tensor]  # (K,)
    amodal_scores: List[torch.Tensor]  # (K,)
    occlusion_rates: Optional[List[torch.Tensor]]  # (K,) r_hat; None without E_OC
    spatial_logits: Optional[List[torch.Tensor]]  # (K, 3, H, W); None without E_SO


class SamBackend(Protocol):
    """The SAM-side stages, batch-first tensors on the backend's device. AuraModel is one (its own torch modules); the
    ONNX Runtime / TensorRT backends of aura_core/export run exported graphs of the same stages."""

    def encode_image(self, sam_images: torch.Tensor) -> torch.Tensor:
        """(1, 3, S, S) preprocessed image -> (1, C, h, w) image embedding F_I."""

    def decode_visible(self, image_embedding: torch.Tensor, e_r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """D_V: (1, C, h, w), (K, C) -> low-res visible logits (K, h', w'), scores (K,)."""

    def decode_amodal(
        self, image_embedding: torch.Tensor, e_r: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """E_OC then D_A: (1, C, h, w), (K, C) -> low-res amodal logits, scores (K,), r_hat (K,) or None without E_OC."""


@lru_cache(maxsize=64)
def _linear_resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) float32 matrix R with R @ x == F.interpolate(x, size_out, mode="linear", align_corners=False)
    along one axis: two non-zero weights per row, exactly the weights of PyTorch's (bi)linear kernels."""
    eye = torch.eye(size_in, dtype=torch.float32)[:, None, :]  # (size_in, 1, size_in): batch of unit signals
    return F.interpolate(eye, size=size_out, mode="linear", align_corners=False)[:, 0, :].t().contiguous()


@lru_cache(maxsize=64)
def _postprocess_matrices(low_hw: Tuple[int, int], input_size: Tuple[int, int], original_size: Tuple[int, int],
                          size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row and column matrices (H, h'), (W, w') of `postprocess_masks` (upsample to SxS, crop, resize): both steps are
    separable linear maps, so the whole of it is rows @ logits @ cols.T."""
    mats = []
    for low, crop, original in zip(low_hw, input_size, original_size):
        m = _linear_resize_matrix(low, size)[:crop]  # upsample to S, keep the resized image's rows
        if original != crop:  # (the same size is the identity, exactly)
            m = _linear_resize_matrix(crop, original) @ m
        mats.append(m)
    return mats[0], mats[1]


def upsample_logits(low_res_logits: torch.Tensor, input_size: Sequence[int], original_size: Sequence[int], size: int) -> torch.Tensor:
    """`postprocess_masks` (aura_core.data.transforms) as two matrix products: the same (K, H, W) logits up to float
    rounding, and a much cheaper backward on the CPU than bilinear interpolation's (training computes the mask losses
    at the original size, so every step upsamples and back-propagates through each mask)."""
    if low_res_logits.dim() != 3:
        raise ValueError(f"upsample_logits expects (K, h, w) logits, got shape {tuple(low_res_logits.shape)}")
    rows, cols = _postprocess_matrices(tuple(low_res_logits.shape[-2:]), tuple(int(v) for v in input_size),
                                       tuple(int(v) for v in original_size), int(size))
    x = low_res_logits.float()
    rows, cols = rows.to(x.device), cols.to(x.device)
    with torch.autocast(device_type=x.device.type, enabled=False):  # float32, as F.interpolate on .float() logits
        return torch.matmul(torch.matmul(rows, x), cols.t())


# Wraps each stage of `decode_prompts` by name ("prompt_encoder", "visible_mask_decoder", "amodal_mask_decoder"),
# e.g. to time it; the default does nothing.
StageContext = Callable[[str], ContextManager[Any]]


def _no_stage_context(stage: str) -> ContextManager[Any]:
    return nullcontext()


@dataclass
class PromptDecoding:
    """Low-resolution output of the two mask decoders for K [SEG]s of one image (before `postprocess_masks`)."""

    visible_logits: torch.Tensor  # (K, h', w')
    visible_scores: torch.Tensor  # (K,)
    amodal_logits: torch.Tensor  # (K, h', w')
    amodal_scores: torch.Tensor  # (K,)
    occlusion_rates: Optional[torch.Tensor]  # (K,) r_hat; None without E_OC


class AuraModel(nn.Module):
    """The full AURA model; build it with aura_core.model.build.build_aura_model(config)."""

    def __init__(
        self,
        *,
        config: AuraConfig,
        mllm: nn.Module,
        vision_backbone: VisionBackbone,
        prompt_encoder: PromptEncoder,
        visible_mask_decoder: MaskDecoder,
        amodal_mask_decoder: MaskDecoder,
        occlusion_condition_encoder: Optional[OcclusionConditionEncoder],
        spatial_occlusion_encoder: Optional[SpatialOcclusionEncoder],
    ) -> None:
        super().__init__()
        if (occlusion_condition_encoder is None) == config.use_occlusion_condition_encoder:
            raise ValueError("occlusion_condition_encoder must be given exactly when config enables E_OC")
        if (spatial_occlusion_encoder is None) == config.use_spatial_occlusion_encoder:
            raise ValueError("spatial_occlusion_encoder must be given exactly when config enables E_SO")
        self.config = config
        self.mllm = mllm
        self.vision_backbone = vision_backbone
        self.prompt_encoder = prompt_encoder
        self.visible_mask_decoder = visible_mask_decoder
        self.amodal_mask_decoder = amodal_mask_decoder
        self.occlusion_condition_encoder = occlusion_condition_encoder
        self.spatial_occlusion_encoder = spatial_occlusion_encoder

    @property
    def device(self) -> torch.device:
        return self.prompt_encoder.no_mask_embed.weight.device

    # --- SAM-side stages: this model is the pipeline's "torch" SamBackend -------------------------------------------
    def encode_image(self, sam_images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> (B, C, h, w) image embeddings F_I (frozen backbone, no graph)."""
        with torch.no_grad():
            return self.vision_backbone(sam_images.to(self.device))

    def decode_visible(
        self, image_embedding: torch.Tensor, e_r: torch.Tensor, dense: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """D_V(F_I, e_r) -> (low-res visible logits (K, h', w'), scores (K,)). `dense`: the dense prompt, SAM's "no
        mask" embedding unless given (`_decode_batch` passes one per prompt)."""
        pe = self.prompt_encoder
        return self.visible_mask_decoder(image_embedding, e_r, pe.dense_embedding() if dense is None else dense, pe.dense_pe())

    def decode_amodal(
        self, image_embedding: torch.Tensor, e_r: torch.Tensor, dense: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """E_OC then D_A(F_I, e_oa) -> (low-res amodal logits, scores, r_hat (K,) or None without E_OC); `dense` as in
        `decode_visible`."""
        rates: Optional[torch.Tensor] = None
        prompt = e_r
        if self.occlusion_condition_encoder is not None:
            prompt, rates = self.occlusion_condition_encoder(e_r)
        pe = self.prompt_encoder
        logits, scores = self.amodal_mask_decoder(image_embedding, prompt, pe.dense_embedding() if dense is None else dense,
                                                  pe.dense_pe())
        return logits, scores, rates

    def decode_prompts(
        self,
        image_embedding: torch.Tensor,
        seg_hidden: torch.Tensor,
        *,
        sam: Optional[SamBackend] = None,
        stage: StageContext = _no_stage_context,
    ) -> PromptDecoding:
        """The SAM decode sequence for one image: E_P on the [SEG] states, then D_V on e_r, then E_OC and D_A.

        Arguments: image_embedding (1, C, h, w) F_I; seg_hidden (K, hidden) [SEG] states; sam runs the two decoder
        stages (default: this model's torch modules; the pipeline passes its backend); stage wraps each stage by name.
        Training (`decode`) and inference (`AuraPipeline.segment`) both run this.
        """
        sam = self if sam is None else sam
        with stage("prompt_encoder"):
            e_r = self.prompt_encoder(seg_hidden.to(self.device))
        with stage("visible_mask_decoder"):
            visible_logits, visible_scores = sam.decode_visible(image_embedding, e_r)
        with stage("amodal_mask_decoder"):
            amodal_logits, amodal_scores, rates = sam.decode_amodal(image_embedding, e_r)
        return PromptDecoding(visible_logits, visible_scores, amodal_logits, amodal_scores, rates)

    def decode(
        self,
        image_embedding: torch.Tensor,
        seg_hidden: torch.Tensor,
        resize_hw: Sequence[int],
        original_hw: Sequence[int],
    ) -> Dict[str, Optional[torch.Tensor]]:
        """All SAM-side boxes for one image: (1, C, h, w) F_I and (K, hidden) [SEG] states -> outputs at original size.

        `decode_prompts`, then E_SO on the low-resolution masks (training only), all upsampled to the original size
        (`upsample_logits`: `postprocess_masks` as matrix products, equal up to float rounding).
        Keys: visible_logits, amodal_logits (K, H, W); visible_scores, amodal_scores (K,); occlusion_rates (K,) or
        None; spatial_logits (K, 3, H, W) or None.
        """
        low = self.decode_prompts(image_embedding, seg_hidden)
        spatial_low = None
        if self.spatial_occlusion_encoder is not None:
            spatial_low = self.spatial_occlusion_encoder(low.visible_logits, low.amodal_logits)  # (K, 3, h', w')
        return self._at_original_size(low, spatial_low, resize_hw, original_hw)

    def _at_original_size(
        self,
        low: PromptDecoding,
        spatial_low: Optional[torch.Tensor],
        resize_hw: Sequence[int],
        original_hw: Sequence[int],
    ) -> Dict[str, Optional[torch.Tensor]]:
        """One image's low-resolution decoder (and E_SO) outputs -> the `decode` dict, masks upsampled to original size."""
        size = self.config.vision.image_size
        resize_hw, original_hw = tuple(resize_hw), tuple(original_hw)
        spatial = None
        if spatial_low is not None:
            k, classes, h, w = spatial_low.shape
            spatial = upsample_logits(spatial_low.reshape(k * classes, h, w), resize_hw, original_hw, size)
            spatial = spatial.reshape(k, classes, *spatial.shape[-2:])
        return {
            "visible_logits": upsample_logits(low.visible_logits, resize_hw, original_hw, size),
            "amodal_logits": upsample_logits(low.amodal_logits, resize_hw, original_hw, size),
            "visible_scores": low.visible_scores,
            "amodal_scores": low.amodal_scores,
            "occlusion_rates": low.occlusion_rates,
            "spatial_logits": spatial,
        }

    def _decode_batch(
        self,
        embeddings: torch.Tensor,
        seg_hidden: Sequence[torch.Tensor],
        resize_hw: Sequence[Sequence[int]],
        original_hw: Sequence[Sequence[int]],
    ) -> List[Dict[str, Optional[torch.Tensor]]]:
        """`decode` for every sample of a batch, with the [SEG]s of all samples through each box in one call.

        The same numbers as `decode` per sample (up to float rounding) at a fraction of the per-call overhead: SAM's
        decoder adds the dense prompt to the image embedding repeated per prompt, so each prompt's own image embedding
        goes in as its dense prompt (image + "no mask" embedding, the sum SAM forms) next to a zero image embedding.
        """
        counts = [int(h.shape[0]) for h in seg_hidden]
        if len(counts) != embeddings.shape[0]:
            raise ValueError(f"{embeddings.shape[0]} image embeddings for {len(counts)} samples")
        if sum(counts) == 0 or len(counts) == 1:
            return [self.decode(embeddings[i : i + 1], seg_hidden[i], resize_hw[i], original_hw[i]) for i in range(len(counts))]
        pe = self.prompt_encoder
        e_r = pe(torch.cat([h.to(self.device) for h in seg_hidden]))  # (N, C)
        owner = torch.repeat_interleave(torch.arange(len(counts), device=embeddings.device),
                                        torch.tensor(counts, device=embeddings.device))
        dense = embeddings[owner] + pe.dense_embedding()  # (N, C, h, w): what SAM's decoder forms as src
        zero = embeddings.new_zeros((1,) + tuple(embeddings.shape[1:]))
        visible_low, visible_scores = self.decode_visible(zero, e_r, dense)
        amodal_low, amodal_scores, rates = self.decode_amodal(zero, e_r, dense)
        spatial_low = self.spatial_occlusion_encoder(visible_low, amodal_low) if self.spatial_occlusion_encoder is not None else None
        out: List[Dict[str, Optional[torch.Tensor]]] = []
        start = 0
        for i, k in enumerate(counts):
            part = slice(start, start + k)
            start += k
            low = PromptDecoding(visible_low[part], visible_scores[part], amodal_low[part], amodal_scores[part],
                                 rates[part] if rates is not None else None)
            spatial_part = spatial_low[part] if spatial_low is not None else None
            out.append(self._at_original_size(low, spatial_part, resize_hw[i], original_hw[i]))
        return out

    # --- training forward ----------------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]) -> AuraOutput:
        """Teacher-forced forward over a `collate` batch: text loss plus both masks for every [SEG] of every answer.

        Optional batch keys: "history" (per sample, earlier (question, answer) rounds) and "image_embeddings"
        ((B, C, h, w) output of `encode_image`, reused instead of running the frozen backbone again).
        """
        for key in ("image", "question", "answer", "resize_hw", "original_hw"):
            if key not in batch:
                raise KeyError(f"batch lacks '{key}' (expected aura_core.data collate output)")
        inputs = self.mllm.encode(
            list(batch["image"]), list(batch["question"]), list(batch["answer"]), batch.get("history")
        )
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        mllm_out = self.mllm(inputs)
        if "image_embeddings" in batch:  # the backbone is frozen, so a trainer may compute F_I once per image
            embeddings = batch["image_embeddings"].to(self.device)
        elif "sam_images" in batch:
            embeddings = self.encode_image(batch["sam_images"])  # (B, C, h, w)
        else:
            raise KeyError("batch lacks 'sam_images' (or precomputed 'image_embeddings')")
        per_sample = self._decode_batch(embeddings, mllm_out.seg_hidden, batch["resize_hw"], batch["original_hw"])

        def gather(key: str) -> Optional[List[torch.Tensor]]:
            values = [sample[key] for sample in per_sample]
            return None if any(v is None for v in values) else values

        return AuraOutput(
            text_loss=mllm_out.text_loss,
            visible_logits=gather("visible_logits"),
            amodal_logits=gather("amodal_logits"),
            visible_scores=gather("visible_scores"),
            amodal_scores=gather("amodal_scores"),
            occlusion_rates=gather("occlusion_rates"),
            spatial_logits=gather("spatial_logits"),
        )

    # --- what trains -----------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        """(name, parameter) of everything the optimiser updates: LoRA, new token rows, E_P, D_V, D_A, E_OC, E_SO."""
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def parameter_counts(self) -> Dict[str, Tuple[int, int]]:
        """{box name: (trainable, total)} for every top-level box, plus "total"."""
        counts: Dict[str, Tuple[int, int]] = {}
        for name, child in self.named_children():
            params = list(child.parameters())
            counts[name] = (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
        counts["total"] = (sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values()))
        return counts

    def log_parameter_counts(self) -> None:
        for name, (trainable, total) in self.parameter_counts().items():
            LOGGER.info("%-28s trainable %12s / %12s", name, f"{trainable:,}", f"{total:,}")
