"""Prompt Encoder E_P (Fig. 2): turns each [SEG] hidden state e_mlm into the refined prompt embedding e_r.

As in LISA, an MLP projects the LLM hidden state to SAM's prompt dimension; e_r is then fed to both mask decoders as a
one-token sparse prompt, next to SAM's dense "no mask" embedding and SAM's random-Fourier positional encoding of the
image grid. pip segment-anything's PromptEncoder has no text input, so the pieces it would contribute (no_mask_embed,
pe_layer) live here under the same names and load from a SAM .pth's `prompt_encoder.*` weights.
"""
from __future__ import annotations

import logging
from typing import Mapping

import torch
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom
from torch import nn

from aura_core.model.sam_checkpoint import SamCheckpointError

LOGGER = logging.getLogger(__name__)

SAM_PROMPT_ENCODER_PREFIX = "prompt_encoder."


class PromptEncoder(nn.Module):
    """e_mlm (K, hidden) -> e_r (K, C), plus the dense prompt and positional encoding the SAM decoders need."""

    def __init__(self, *, hidden_size: int, prompt_embed_dim: int, embedding_size: int) -> None:
        super().__init__()
        self.embedding_size = (embedding_size, embedding_size)
        self.projection = nn.Sequential(
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_size, prompt_embed_dim),
        )
        self.no_mask_embed = nn.Embedding(1, prompt_embed_dim)
        self.pe_layer = PositionEmbeddingRandom(prompt_embed_dim // 2)

    def forward(self, seg_hidden: torch.Tensor) -> torch.Tensor:
        """(K, hidden) [SEG] hidden states -> (K, C) e_r."""
        if seg_hidden.dim() != 2:
            raise ValueError(f"seg_hidden must be (K, hidden), got {tuple(seg_hidden.shape)}")
        return self.projection(seg_hidden.to(self.no_mask_embed.weight.dtype))

    def dense_embedding(self) -> torch.Tensor:
        """SAM's dense prompt when no mask is given: (1, C, h, w), broadcast over the K prompts."""
        h, w = self.embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)

    def dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid: (1, C, h, w)."""
        return self.pe_layer(self.embedding_size).unsqueeze(0)

    def load_sam_weights(self, state: Mapping[str, torch.Tensor], source: str) -> bool:
        """Load no_mask_embed and pe_layer from `prompt_encoder.*`; False when the file has no prompt-encoder weights."""
        own = self.state_dict()
        wanted = {key: SAM_PROMPT_ENCODER_PREFIX + key for key in own if not key.startswith("projection.")}
        present = {key: name for key, name in wanted.items() if name in state}
        if not present:
            return False
        if len(present) != len(wanted):
            missing = sorted(set(wanted.values()) - set(present.values()))
            raise SamCheckpointError(f"{source}: SAM checkpoint lacks {missing}")
        for key, name in present.items():
            if state[name].shape != own[key].shape:
                raise SamCheckpointError(
                    f"{source}: '{name}' has shape {tuple(state[name].shape)}, the config expects {tuple(own[key].shape)}"
                )
        self.load_state_dict({key: state[name] for key, name in present.items()}, strict=False)
        LOGGER.info("prompt encoder: loaded %s{no_mask_embed,pe_layer}", SAM_PROMPT_ENCODER_PREFIX)
        return True
