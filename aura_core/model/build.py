"""build_aura_model(config): every box of Fig. 2 from one AuraConfig, with local pretrained weights where configured.

Sizes come only from the config. `config.vision.checkpoint` (a segment-anything .pth, or a tiny-shaped file in the
same format) fills the Vision Backbone and, when the file has them, SAM's prompt-encoder and mask-decoder weights for
the Prompt Encoder and *both* mask decoders. `config.mllm.pretrained_path` is handled by MultiModalLLM.build.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Optional, Union

from aura_core.model.aura import AuraModel
from aura_core.model.config import AuraConfig, check_weights
from aura_core.model.mask_decoder import MaskDecoder
from aura_core.model.mllm import MultiModalLLM
from aura_core.model.occlusion_condition_encoder import OcclusionConditionEncoder
from aura_core.model.prompt_encoder import PromptEncoder
from aura_core.model.sam_checkpoint import SamCheckpointError, read_sam_checkpoint
from aura_core.model.spatial_occlusion_encoder import SpatialOcclusionEncoder
from aura_core.model.vision_backbone import build_vision_backbone

LOGGER = logging.getLogger(__name__)


def resolve_sam_checkpoint(config: AuraConfig, base_dir: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """The SAM .pth path of the config; a relative path is taken relative to `base_dir` (e.g. a checkpoint directory)."""
    if not config.vision.checkpoint:
        return None
    path = Path(config.vision.checkpoint).expanduser()
    if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path
    return path


SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


def resolve_local_path(path: Optional[str], base_dir: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """A configured local file; a relative path is taken relative to `base_dir` when it exists there."""
    if not path:
        return None
    resolved = Path(path).expanduser()
    if not resolved.is_absolute() and base_dir is not None and (Path(base_dir) / resolved).exists():
        resolved = Path(base_dir) / resolved
    return resolved


ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"  # shipped tiny pretrained parts (tiny_llava/, tiny_sam_vit.pth)


def resolve_mllm_path(config: AuraConfig, base_dir: Optional[Union[str, Path]] = None) -> AuraConfig:
    """`config` with a relative `mllm.pretrained_path` made absolute: taken relative to `base_dir` (e.g. a checkpoint
    directory) when it exists there, else to aura_core/assets when it exists there (the shipped tiny LLaVA), else
    left as given (relative to the working directory)."""
    path = config.mllm.pretrained_path
    if not path or Path(path).expanduser().is_absolute():
        return config
    for root in (base_dir, ASSETS_DIR):
        if root is not None and (Path(root) / path).exists():
            mllm = dataclasses.replace(config.mllm, pretrained_path=str(Path(root) / path))
            return dataclasses.replace(config, mllm=mllm)
    return config


def load_prompt_projection(prompt_encoder: PromptEncoder, path: Path) -> None:
    """Fill the Prompt Encoder's `projection.*` from a safetensors file (e.g. LISA's, via aura-convert-weights); strict."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from aura_core.model.config import ConfigError

    if not path.is_file():
        raise ConfigError(f"prompt_projection {path} not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ConfigError(f"prompt_projection {path}: cannot read safetensors: {error}") from error
    own = {k: v for k, v in prompt_encoder.state_dict().items() if k.startswith("projection.")}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ConfigError(f"prompt_projection {path}: missing {missing}, unexpected {unexpected}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ConfigError(f"prompt_projection {path}: '{key}' has shape {tuple(value.shape)}, the model "
                              f"{tuple(own[key].shape)} (a projection for another LLM or SAM size?)")
    prompt_encoder.load_state_dict(state, strict=False)
    LOGGER.info("prompt encoder: loaded projection.* from %s", path)


def build_aura_model(
    config: AuraConfig, *, tokenizer: Any = None, base_dir: Optional[Union[str, Path]] = None
) -> AuraModel:
    """A complete AuraModel in train mode; random init wherever the config names no local weights.

    Empty weight paths are an error (config.WeightsError) unless `config.allow_random_init`; a SAM file with tensors
    outside segment-anything's three parts is an error naming them (e.g. a LISA file not converted).
    """
    check_weights(config)
    mllm = MultiModalLLM.build(resolve_mllm_path(config, base_dir).mllm, tokenizer=tokenizer)
    dec = config.mask_decoder
    sam_path = resolve_sam_checkpoint(config, base_dir)
    sam_state = read_sam_checkpoint(sam_path) if sam_path is not None else None
    if sam_state is not None:
        foreign = sorted(k for k in sam_state if not k.startswith(SAM_PARTS))
        if foreign:
            raise SamCheckpointError(
                f"{sam_path}: {len(foreign)} tensor(s) outside segment-anything's image_encoder/prompt_encoder/"
                f"mask_decoder, e.g. {foreign[:5]} (a LISA checkpoint? convert it with aura-convert-weights)"
            )
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
    projection = resolve_local_path(config.prompt_projection, base_dir)
    if projection is not None:
        load_prompt_projection(prompt_encoder, projection)
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
