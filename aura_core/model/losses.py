"""The paper's training objective (eqs. 1-4), every term returned separately for logging.

    L_text = CE(y_text_hat, y_text)                                    (from the MLLM's forward)
    L_mask = BCE(M_v_hat, M_v) + BCE(M_a_hat, M_a) + Dice(M_v_hat, M_v) + Dice(M_a_hat, M_a)
    L_occ  = MSE(r_hat, r) + CE(M_sp_hat, M_sp)
    L      = L_text + L_mask + L_occ        (each term times its LossWeights entry; the paper uses 1)

Mask terms are per-mask means averaged over every [SEG] of the batch, at the original image size. With E_OC ablated
there is no r_hat, so the "occlusion_rate" key is absent; with E_SO ablated the "spatial" key is absent.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

import torch
import torch.nn.functional as F

from aura_core.model.aura import AuraOutput
from aura_core.model.config import LossWeights

DICE_SMOOTH = 1.0  # keeps Dice defined (and 0 for a perfect prediction) on empty masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask soft Dice loss, 1 - (2|P.T| + s) / (|P| + |T| + s): (K, H, W) logits and 0/1 targets -> (K,)."""
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1).to(probs.dtype)
    inter = (probs * targets).sum(-1)
    return 1.0 - (2.0 * inter + DICE_SMOOTH) / (probs.sum(-1) + targets.sum(-1) + DICE_SMOOTH)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask mean binary cross-entropy: (K, H, W) logits and 0/1 targets -> (K,)."""
    loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return loss.flatten(1).mean(-1)


def _targets(batch: Mapping[str, Any], key: str, predictions: List[torch.Tensor]) -> List[torch.Tensor]:
    """Ground truth of `key` per sample, checked against the predictions' shapes and moved to their device."""
    if key not in batch:
        raise KeyError(f"batch lacks '{key}', needed by the loss")
    values = batch[key]
    if len(values) != len(predictions):
        raise ValueError(f"batch['{key}'] has {len(values)} samples, the model output {len(predictions)}")
    out = []
    for i, (target, pred) in enumerate(zip(values, predictions)):
        target = torch.as_tensor(target, device=pred.device)
        expected = pred.shape if key != "spatial_maps" else pred.shape[:1] + pred.shape[2:]
        if key == "occlusion_rates":
            expected = pred.shape[:1]
        if tuple(target.shape) != tuple(expected):
            raise ValueError(
                f"sample {i}: batch['{key}'] has shape {tuple(target.shape)} but the prediction needs {tuple(expected)} "
                "(number of [SEG]s in the answer vs. ground-truth objects, or mask size vs. original_hw)"
            )
        out.append(target)
    return out


def _mean_over_masks(per_sample: List[torch.Tensor], reference: torch.Tensor) -> torch.Tensor:
    """Mean of per-mask losses over all masks of the batch; 0 (on the right device) when there are none."""
    values = torch.cat([v.reshape(-1) for v in per_sample]) if per_sample else reference.new_zeros(0)
    return values.mean() if values.numel() else reference.new_zeros(())


def aura_losses(output: AuraOutput, batch: Mapping[str, Any], weights: LossWeights) -> Dict[str, torch.Tensor]:
    """Eqs. 1-4 on a training output and its `collate` batch.

    Returns "text", "bce_visible", "bce_amodal", "bce", "dice_visible", "dice_amodal", "dice", "occlusion_rate"
    (only with E_OC), "spatial" (only with E_SO) and "total" = the weighted sum of text, bce, dice, occlusion_rate
    and spatial. All are unweighted except "total".
    """
    text = output.text_loss
    terms: Dict[str, torch.Tensor] = {"text": text}
    for name in ("visible", "amodal"):
        logits = getattr(output, f"{name}_logits")
        targets = _targets(batch, f"{name}_masks", logits)
        terms[f"bce_{name}"] = _mean_over_masks([bce_loss(p, t) for p, t in zip(logits, targets) if len(p)], text)
        terms[f"dice_{name}"] = _mean_over_masks([dice_loss(p, t) for p, t in zip(logits, targets) if len(p)], text)
    terms["bce"] = terms["bce_visible"] + terms["bce_amodal"]
    terms["dice"] = terms["dice_visible"] + terms["dice_amodal"]
    total = weights.text * text + weights.bce * terms["bce"] + weights.dice * terms["dice"]
    if output.occlusion_rates is not None:
        targets = _targets(batch, "occlusion_rates", output.occlusion_rates)
        errors = [(r - t.to(r.dtype)) ** 2 for r, t in zip(output.occlusion_rates, targets)]
        terms["occlusion_rate"] = _mean_over_masks(errors, text)
        total = total + weights.occlusion_rate * terms["occlusion_rate"]
    if output.spatial_logits is not None:
        targets = _targets(batch, "spatial_maps", output.spatial_logits)
        per_mask = [
            F.cross_entropy(p, t.long(), reduction="none").flatten(1).mean(-1)
            for p, t in zip(output.spatial_logits, targets)
            if len(p)
        ]
        terms["spatial"] = _mean_over_masks(per_mask, text)
        total = total + weights.spatial * terms["spatial"]
    terms["total"] = total
    return terms
