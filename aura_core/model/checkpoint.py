"""AURA checkpoints: one directory with config.json, model.safetensors and tokenizer/.

What is saved: every tensor of the model except those that come back from a local pretrained file on load, i.e.
the Vision Backbone when `config.vision.checkpoint` names a SAM .pth (unless `include_vision_backbone=True`, which
makes the directory self-contained), and the frozen LLaVA weights when `config.mllm.pretrained_path` is set (then only
LoRA, the new token rows and the other trainable MLLM tensors are saved). A tiny random-init model is saved whole, so
it reloads to identical outputs. Loading reads safetensors only; nothing is unpickled.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Set, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aura_core.model.aura import AuraModel
from aura_core.model.build import build_aura_model
from aura_core.model.config import ConfigError, config_from_dict, config_to_dict
from aura_core.model.tokenizer import load_tokenizer

LOGGER = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
FORMAT = "aura-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint directory that is incomplete or does not match the model its config builds."""


def _saved_keys(model: AuraModel, include_vision_backbone: bool, include_pretrained_mllm: bool = False) -> Set[str]:
    """State-dict keys a checkpoint of `model` holds (see the module docstring)."""
    config = model.config
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    keys = set()
    for key in model.state_dict():
        if key.startswith("vision_backbone.") and config.vision.checkpoint and not include_vision_backbone:
            continue
        if key.startswith("mllm.") and config.mllm.pretrained_path and key not in trainable and not include_pretrained_mllm:
            continue
        keys.add(key)
    return keys


def save_checkpoint(
    model: AuraModel,
    directory: Union[str, Path],
    *,
    extra: Optional[Mapping[str, Any]] = None,
    dtype: Optional[torch.dtype] = None,
    include_vision_backbone: bool = False,
    include_pretrained_mllm: bool = False,
    state: Optional[Mapping[str, torch.Tensor]] = None,
) -> Path:
    """Write `model` to `directory` (created if needed) and return it.

    Arguments:
      extra: JSON-able metadata stored in config.json (e.g. training step, metrics); read back by `read_metadata`.
      dtype: e.g. torch.float16 to halve the size of a shipped model; floating tensors are cast, load restores the
        model's own dtype.
      include_vision_backbone: also store a backbone that came from `config.vision.checkpoint`; the saved config then
        names no .pth, so the directory works on its own (used for the small embedded default model).
      include_pretrained_mllm: also store the frozen LLaVA weights that came from `config.mllm.pretrained_path`; the
        saved config then names no LLaVA directory and carries the loaded LLaVA's sizes (for the small tiny LLaVA of
        the embedded default model; a 7B would be copied whole).
      state: the model's full state dict where `model.state_dict()` is not (an FSDP-sharded model; the trainer
        gathers it).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    keys = _saved_keys(model, include_vision_backbone, include_pretrained_mllm)
    full = state if state is not None else model.state_dict()
    state = {}
    for key, value in full.items():
        if key in keys:
            value = value.detach().to("cpu")
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            state[key] = value.contiguous().clone()  # clone: safetensors refuses tensors that share storage
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    config = model.config
    if include_vision_backbone and config.vision.checkpoint:
        config = dataclasses.replace(config, vision=dataclasses.replace(config.vision, checkpoint=None))
    if include_pretrained_mllm and config.mllm.pretrained_path:
        config = dataclasses.replace(config, mllm=_sizes_of(model, config.mllm))
    if config.prompt_projection:  # the (trainable) projection is in the weights file; the source file is not needed
        config = dataclasses.replace(config, prompt_projection=None)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": config_to_dict(config),
        "saved_dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "extra": dict(extra or {}),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    model.mllm.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))
    LOGGER.info("saved checkpoint %s (%d tensors)", directory, len(state))
    return directory


def _sizes_of(model: AuraModel, mllm: Any) -> Any:
    """`mllm` (an MLLMConfig) with no pretrained path and the sizes of the LLaVA actually loaded, so that a random-init
    build of the saved config has exactly the shapes of the saved tensors."""
    core = model.mllm.core.config
    text, vision = core.text_config, core.vision_config
    if (core.vision_feature_layer, core.vision_feature_select_strategy) != (-2, "default") or \
            getattr(core, "projector_hidden_act", "gelu") != "gelu" or text.num_key_value_heads != text.num_attention_heads:
        raise ValueError("include_pretrained_mllm: this LLaVA differs from a random-init one in more than its sizes")
    return dataclasses.replace(
        mllm, pretrained_path=None, hidden_size=text.hidden_size, num_layers=text.num_hidden_layers,
        num_heads=text.num_attention_heads, intermediate_size=text.intermediate_size,
        vision_hidden_size=vision.hidden_size, vision_layers=vision.num_hidden_layers,
        vision_heads=vision.num_attention_heads, vision_intermediate_size=vision.intermediate_size,
        vision_image_size=vision.image_size, vision_patch_size=vision.patch_size,
    )


def read_metadata(directory: Union[str, Path]) -> Dict[str, Any]:
    """The parsed config.json of a checkpoint directory ("config", "extra", ...), with clear errors."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (not an AURA checkpoint directory)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: invalid JSON: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"{path}: not an AURA checkpoint config (expected format '{FORMAT}' and a 'config' entry)")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')}, this code reads {FORMAT_VERSION}")
    return meta


def load_checkpoint(directory: Union[str, Path], device: Union[str, torch.device] = "cpu") -> AuraModel:
    """Rebuild the model of a checkpoint directory (pretrained parts from their local paths) in eval mode."""
    directory = Path(directory)
    meta = read_metadata(directory)
    try:
        config = config_from_dict(meta["config"])
    except ConfigError as error:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {error}") from error
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    if not (directory / TOKENIZER_DIR).is_dir():
        raise CheckpointError(f"{directory / TOKENIZER_DIR} is missing")
    tokenizer = load_tokenizer(directory / TOKENIZER_DIR)
    # The weights file supplies every tensor the named local files do not (checked strictly below), so a part without
    # a local path is not a random init here.
    model = build_aura_model(dataclasses.replace(config, allow_random_init=True), tokenizer=tokenizer, base_dir=directory)
    model.config = config
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{weights}: cannot read safetensors: {error}") from error
    own = model.state_dict()
    expected = _saved_keys(model, include_vision_backbone=False)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match the model built from {CONFIG_FILE}: "
            f"{len(missing)} missing ({', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}), "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:10])}{', ...' if len(unexpected) > 10 else ''})"
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"{weights}: '{key}' has shape {tuple(value.shape)}, the config builds {tuple(own[key].shape)}"
            )
        state[key] = value.to(own[key].dtype)  # an fp16 file loads back into the model's dtype (fp32 on CPU)
    model.load_state_dict(state, strict=False)
    model.to(device)
    model.eval()
    return model
