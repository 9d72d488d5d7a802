"""Occlusion Condition Encoder E_OC (Fig. 3): e_r -> occlusion-aware embedding e_oa, and the occlusion rate r_hat.

e_oa prompts the Amodal Mask Decoder. It is e_r plus a learned MLP correction (a residual: E_OC only has to learn how
the amodal prompt differs from the visible one). A Linear + Sigmoid head on e_r predicts r_hat in [0, 1], supervised by
MSE against r = 1 - |M_v ∩ M_a| / |M_a| (aura_core.masks.occlusion_rate).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class OcclusionConditionEncoder(nn.Module):
    """(K, C) e_r -> ((K, C) e_oa, (K,) r_hat)."""

    def __init__(self, *, prompt_embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.condition = nn.Sequential(
            nn.Linear(prompt_embed_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, prompt_embed_dim),
        )
        self.rate_head = nn.Sequential(nn.Linear(prompt_embed_dim, 1), nn.Sigmoid())

    def forward(self, e_r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if e_r.dim() != 2:
            raise ValueError(f"e_r must be (K, C), got {tuple(e_r.shape)}")
        e_oa = e_r + self.condition(e_r)
        rate = self.rate_head(e_r)[:, 0]
        return e_oa, rate
