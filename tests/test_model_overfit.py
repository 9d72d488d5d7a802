"""The tiny AURA model overfits a handful of synthetic samples: amodal IoU > 0.9 on each of their masks.

Then the pipeline answers one of the training questions with its two [SEG]s and returns two matching instances.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from aura_core.data.dataset import collate
from aura_core.model.build import build_aura_model
from aura_core.model.config import get_config
from aura_core.model.losses import aura_losses
from aura_core.pipeline import AuraPipeline
from tests.model_fixtures import one_thread, synthetic_items  # noqa: F401 (autouse fixture)

SAMPLES = (9, 17, 0, 1)  # seed 4: two answers with two [SEG]s (occluded objects) and two single-object answers
MAX_STEPS = 400
TIME_LIMIT_S = 150


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    return float((pred & gt).sum() / max((pred | gt).sum(), 1))


@pytest.mark.timeout(240)
def test_tiny_model_overfits_a_handful_of_samples(tmp_path):
    items = synthetic_items(tmp_path, max(SAMPLES) + 1, seed=4)
    items = [items[i] for i in SAMPLES]
    assert sum(it["answer"].count("[SEG]") for it in items) >= 6
    config = get_config("tiny")
    torch.manual_seed(0)
    model = build_aura_model(config)
    batch = collate(items)
    batch["image_embeddings"] = model.encode_image(batch["sam_images"])  # frozen backbone: embed once
    optimiser = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=3e-3)

    def amodal_ious():
        with torch.no_grad():
            output = model(batch)
        return [
            _iou((pred > 0).numpy()[j], gt.numpy()[j])
            for pred, gt in zip(output.amodal_logits, batch["amodal_masks"])
            for j in range(len(gt))
        ]

    start = time.perf_counter()
    ious = amodal_ious()
    first_total = None
    for step in range(1, MAX_STEPS + 1):
        terms = aura_losses(model(batch), batch, config.loss)
        first_total = first_total if first_total is not None else float(terms["total"].detach())
        optimiser.zero_grad()
        terms["total"].backward()
        optimiser.step()
        if step % 10 == 0:
            ious = amodal_ious()
            if min(ious) > 0.92 or time.perf_counter() - start > TIME_LIMIT_S:
                break
    assert min(ious) > 0.9, f"amodal IoUs after {step} steps: {ious}"
    assert float(terms["total"].detach()) < 0.2 * first_total

    # The trained pipeline: greedy answer with the KV cache, two [SEG]s -> two instances matching the ground truth.
    pipeline = AuraPipeline(model=model, max_new_tokens=40)
    item = items[0]
    result = pipeline.ask(item["image"], item["question"])
    assert result.answer.count("[SEG]") == 2, result.answer
    assert len(result.instances) == 2
    assert [i.phrase.lower() for i in result.instances] == [p.lower() for p in item["phrases"]]
    for instance, gt, rate in zip(result.instances, item["amodal_masks"].numpy(), item["occlusion_rates"]):
        assert instance.amodal_mask.shape == gt.shape
        assert _iou(instance.amodal_mask, gt) > 0.8
        assert instance.occlusion_rate == pytest.approx(float(rate), abs=0.1)
