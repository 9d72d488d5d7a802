"""Helpers for the model tests (plain functions; the fixtures are in conftest.py): tiny SAM-format .pth files,
perfect logits for given masks, and dataset items from a small synthetic set."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from segment_anything.modeling import PromptEncoder, Sam

from aura_core.model.config import AuraConfig
from aura_core.model.mask_decoder import build_sam_mask_decoder
from aura_core.model.vision_backbone import build_sam_image_encoder


def write_tiny_sam_pth(path: Path, config: AuraConfig, *, backbone_only: bool = False, seed: int = 1) -> Path:
    """A random segment-anything `Sam` with the config's shapes, saved as `torch.save(sam.state_dict())` like SAM's files."""
    torch.manual_seed(seed)
    vis, dec = config.vision, config.mask_decoder
    grid = vis.image_size // vis.patch_size
    sam = Sam(
        image_encoder=build_sam_image_encoder(vis, dec.prompt_embed_dim),
        prompt_encoder=PromptEncoder(
            embed_dim=dec.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(vis.image_size, vis.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=build_sam_mask_decoder(dec),
    )
    state = sam.state_dict()
    if backbone_only:
        state = {k: v for k, v in state.items() if k.startswith("image_encoder.")}
    torch.save(state, path)
    return path


def masks_to_logits(masks: torch.Tensor, margin: float = 30.0) -> torch.Tensor:
    """A 'perfect' prediction of bool masks: +margin inside, -margin outside."""
    return masks.float() * 2 * margin - margin


def one_hot_logits(labels: torch.Tensor, classes: int = 3, margin: float = 30.0) -> torch.Tensor:
    """(K, H, W) int labels -> (K, classes, H, W) logits that put all mass on the label."""
    return torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float() * 2 * margin - margin


def random_masks(k: int, h: int, w: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    amodal = torch.zeros(k, h, w, dtype=torch.bool)
    for i in range(k):
        y, x = torch.randint(0, h // 2, (2,), generator=generator).tolist()
        amodal[i, y : y + h // 2, x : x + w // 2] = True
    return amodal


def synthetic_items(root: Path, count: int, *, size: int = 96, seed: int = 3, image_size: int = 256) -> list:
    """`count` dataset items from a small synthetic set written under `root` (data helper's generator + loader)."""
    from aura_core.data.dataset import AmodalReasonSegDataset
    from aura_core.data.synthetic import generate_dataset

    generate_dataset(root, train=max(2, count // 3 + 1), val=1, seed=seed, size=size)
    dataset = AmodalReasonSegDataset(root, "train", image_size=image_size)
    return [dataset[i] for i in range(count)]
