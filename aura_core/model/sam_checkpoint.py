"""Reading segment-anything `.pth` files: the state dict, and loading its `prefix.*` part into one box.

SAM's file holds three parts (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`) that fill four boxes (the
Vision Backbone, the Prompt Encoder and both mask decoders), so these helpers sit beside the boxes rather than in one of
them. The file is read with `torch.load(weights_only=True)`, so it is never unpickled.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Dict, Mapping

import torch
from torch import nn


class SamCheckpointError(ValueError):
    """A SAM .pth that is missing, unreadable or does not fit the configured shapes."""


def read_sam_checkpoint(path: str | Path) -> Dict[str, torch.Tensor]:
    """Read a segment-anything `.pth` state dict without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise SamCheckpointError(f"SAM checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as error:  # corrupt or unsafe file
        raise SamCheckpointError(f"cannot read SAM checkpoint {path}: {error}") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SamCheckpointError(f"SAM checkpoint {path} is not a flat state dict of tensors")
    return dict(state)


def load_prefixed(module: nn.Module, state: Mapping[str, torch.Tensor], prefix: str, source: str) -> bool:
    """Load `prefix*` keys of a SAM state dict into `module`; False if the file has none of them.

    Keys present but not matching the module (missing, unexpected or wrong shape) raise SamCheckpointError naming them,
    so a vit_h file given to a vit_b config fails loudly instead of half-loading.
    """
    part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not part:
        return False
    own = module.state_dict()
    missing = sorted(set(own) - set(part))
    unexpected = sorted(set(part) - set(own))
    if missing or unexpected:
        raise SamCheckpointError(
            f"{source}: '{prefix}*' keys do not match the model (missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
    for key, value in part.items():
        if own[key].shape != value.shape:
            raise SamCheckpointError(
                f"{source}: '{prefix}{key}' has shape {tuple(value.shape)}, the config expects {tuple(own[key].shape)}"
            )
    module.load_state_dict(part)
    return True
