"""build_aura_model(config): every box of Fig. 2 from one AuraConfig, with local pretrained weights where configured.

Sizes come only from the config. `config.vision.checkpoint` (a segment-anything .pth, or a tiny-shaped file in the
same format) fills the Vision Backbone and, when the file has them, SAM's prompt-encoder and mask-decoder weights for
the Prompt Encoder and *both* mask decoders. `config.mllm.pretrained_path` is handled by MultiModalLLM.build.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Union

from aura_core.model.aura import AuraModel
from aura_core.model.config import AuraConfig
from aura_core.model.mask_decoder import MaskDecoder
from aura_core.model.mllm import MultiModalLLM
from aura_core.model.occlusion_condition_encoder import OcclusionConditionEncoder
from aura_core.model.prompt_encoder import PromptEncoder
from aura_core.model.spatial_occlusion_encoder import SpatialOcclusionEncoder
from aura_core.model.vision_backbone import build_vision_backbone, read_sam_checkpoint

LOGGER = logging.getLogger(__name__)


def resolve_sam_checkpoint(config: AuraConfig, base_dir: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """The SAM .pth path of the config; a relative path is taken relative to `base_dir` (e.g. a checkpoint directory)."""
    if not config.vision.checkpoint:
        return None
    path = Path(config.vision.checkpoint).expanduser()
    if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path
    return path


def build_aura_model(
    config: AuraConfig, *, tokenizer: Any = None, base_dir: Optional[Union[str, Path]] = None
) -> AuraModel:
    """A complete AuraModel in train mode; random init wherever the config names no local weights."""
    mllm = MultiModalLLM.build(config.mllm, tokenizer=tokenizer)
    dec = config.mask_decoder
    sam_path = resolve_sam_checkpoint(config, base_dir)
    sam_state = read_sam_checkpoint(sam_path) if sam_path is not None else None
    backbone = build_vision_backbone(config.vision, out_channels=dec.prompt_embed_dim, sam_state=sam_state)
    prompt_encoder = PromptEncoder(
        hidden_size=mllm.hidden_size, prompt_embed_dim=dec.prompt_embed_dim, embedding_size=backbone.embedding_size
    )
    visible = MaskDecoder(config=dec)
    amodal = MaskDecoder(config=dec)
    if sam_state is not None:
        source = str(sam_path)
        prompt_encoder.load_sam_weights(sam_state, source)
        # Both decoders start from SAM's decoder, as the paper's two SAM mask decoders do.
        if visible.load_sam_weights(sam_state, source):
            amodal.load_sam_weights(sam_state, source)
    occ = config.occlusion
    model = AuraModel(
        config=config,
        mllm=mllm,
        vision_backbone=backbone,
        prompt_encoder=prompt_encoder,
        visible_mask_decoder=visible,
        amodal_mask_decoder=amodal,
        occlusion_condition_encoder=(
            OcclusionConditionEncoder(prompt_embed_dim=dec.prompt_embed_dim, hidden_dim=occ.condition_hidden_dim)
            if config.use_occlusion_condition_encoder
            else None
        ),
        spatial_occlusion_encoder=(
            SpatialOcclusionEncoder(hidden_channels=occ.spatial_hidden_channels, layers=occ.spatial_layers)
            if config.use_spatial_occlusion_encoder
            else None
        ),
    )
    model.log_parameter_counts()
    return model
