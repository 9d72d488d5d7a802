"""AuraPipeline on the tiny random-init model: input checks, embedding cache, batched [SEG] decoding, loading."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from aura_core.model.build import build_aura_model
from aura_core.model.checkpoint import save_checkpoint
from aura_core.model.config import get_config
from aura_core.pipeline import DEFAULT_MODEL_DIR, AuraPipeline, TorchSamBackend, occlusion_rate_from_masks
from aura_core.result import AuraResult
from tests.model_fixtures import one_thread  # noqa: F401 (autouse fixture)


class CountingBackend(TorchSamBackend):
    """The torch backend, counting how often each stage runs and with how many prompts."""

    def __init__(self, model):
        super().__init__(model)
        self.encodes = 0
        self.decode_batches = []

    def encode(self, sam_image):
        self.encodes += 1
        return super().encode(sam_image)

    def decode_visible(self, image_embedding, e_r):
        self.decode_batches.append(int(e_r.shape[0]))
        return super().decode_visible(image_embedding, e_r)


@pytest.fixture(scope="module")
def pipeline():
    return AuraPipeline.from_config("tiny", seed=0, max_new_tokens=6)


def _image(h=50, w=70, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_ask_returns_a_result_with_timings_and_caches_the_embedding(pipeline):
    backend = CountingBackend(pipeline.model)
    pipe = AuraPipeline(model=pipeline.model, backend=backend, max_new_tokens=6)
    image = _image()
    first = pipe.ask(image, "what can i use to cut bread?")
    assert isinstance(first, AuraResult) and first.image_size == (50, 70)
    assert {"vision_backbone", "mllm", "total"} <= set(first.timings)
    assert len(first.instances) == first.answer.count("[SEG]")
    follow_up = pipe.ask(image.copy(), "and what is behind it?", history=[("what can i use to cut bread?", first.answer)])
    assert backend.encodes == 1  # same pixels: the SAM embedding is reused for the follow-up question
    assert follow_up.timings["vision_backbone"] < first.timings["vision_backbone"]
    pipe.ask(_image(seed=1), "what can i use to cut bread?")
    assert backend.encodes == 2


@pytest.mark.parametrize("k", [0, 1, 3])
def test_k_seg_states_give_k_instances_decoded_in_one_batch(pipeline, k):
    backend = CountingBackend(pipeline.model)
    pipe = AuraPipeline(model=pipeline.model, backend=backend)
    pipe.set_image(_image(37, 81))
    hidden = torch.randn(k, pipeline.model.mllm.hidden_size, generator=torch.Generator().manual_seed(k))
    instances = pipe.segment(hidden, [f"object {i}" for i in range(k)])
    assert len(instances) == k
    assert backend.decode_batches == ([k] if k else [])
    for i, inst in enumerate(instances):
        assert inst.phrase == f"object {i}"
        assert inst.visible_mask.shape == inst.amodal_mask.shape == (37, 81)
        assert inst.visible_mask.dtype == np.bool_ and inst.amodal_mask.dtype == np.bool_
        assert 0.0 <= inst.occlusion_rate <= 1.0
        if inst.amodal_mask.any():
            assert inst.amodal_box is not None and inst.amodal_box.width <= 81


def test_mask_threshold_is_applied_to_logits(pipeline):
    hidden = torch.randn(2, pipeline.model.mllm.hidden_size, generator=torch.Generator().manual_seed(5))
    low = AuraPipeline(model=pipeline.model, mask_threshold=-1e9)
    high = AuraPipeline(model=pipeline.model, mask_threshold=1e9)
    for pipe in (low, high):
        pipe.set_image(_image())
    assert all(i.amodal_mask.all() and i.visible_mask.all() for i in low.segment(hidden, ["a", "b"]))
    assert not any(i.amodal_mask.any() for i in high.segment(hidden, ["a", "b"]))


def test_without_occlusion_condition_encoder_the_rate_comes_from_the_masks():
    torch.manual_seed(0)
    config = dataclasses.replace(get_config("tiny"), use_occlusion_condition_encoder=False)
    pipe = AuraPipeline(model=build_aura_model(config))
    pipe.set_image(_image())
    hidden = torch.randn(3, pipe.model.mllm.hidden_size, generator=torch.Generator().manual_seed(2))
    for inst in pipe.segment(hidden, ["a", "b", "c"]):
        assert inst.occlusion_rate == pytest.approx(occlusion_rate_from_masks(inst.visible_mask, inst.amodal_mask))
    visible = np.zeros((4, 4), bool)
    amodal = np.zeros((4, 4), bool)
    assert occlusion_rate_from_masks(visible, amodal) == 0.0
    amodal[:2] = True
    visible[:1] = True
    assert occlusion_rate_from_masks(visible, amodal) == pytest.approx(0.5)


def test_bad_input_gives_clear_errors(pipeline):
    image = _image()
    with pytest.raises(ValueError, match="uint8"):
        pipeline.ask(image.astype(np.float32), "what is this?")
    with pytest.raises(ValueError, match="HxWx3"):
        pipeline.ask(image[..., 0], "what is this?")
    with pytest.raises(ValueError, match="HxWx3"):
        pipeline.ask(np.zeros((8, 8, 4), np.uint8), "what is this?")
    with pytest.raises(ValueError, match="numpy"):
        pipeline.ask(image.tolist(), "what is this?")
    with pytest.raises(ValueError, match="non-empty"):
        pipeline.ask(image, "   ")
    counting = AuraPipeline(model=pipeline.model, backend=CountingBackend(pipeline.model))
    with pytest.raises(ValueError, match="max_length"):
        counting.ask(image, "what is behind the cup? " * 200)
    assert counting.backend.encodes == 0  # rejected before any SAM work
    with pytest.raises(ValueError, match="unknown backend 'onnx'"):
        AuraPipeline._make_backend("onnx", pipeline.model, None, "cpu")
    with pytest.raises(RuntimeError, match="set_image"):
        AuraPipeline(model=pipeline.model).segment(torch.zeros(1, pipeline.model.mllm.hidden_size), ["x"])


def test_from_pretrained_round_trip(pipeline, tmp_path):
    save_checkpoint(pipeline.model, tmp_path / "ckpt")
    loaded = AuraPipeline.from_pretrained(tmp_path / "ckpt", max_new_tokens=6)
    image = _image(64, 48, seed=3)
    a, b = pipeline.ask(image, "which fruit is hidden?"), loaded.ask(image, "which fruit is hidden?")
    assert a.answer == b.answer and len(a.instances) == len(b.instances)
    for x, y in zip(a.instances, b.instances):
        assert np.array_equal(x.amodal_mask, y.amodal_mask) and x.occlusion_rate == pytest.approx(y.occlusion_rate)


def test_default_model_loads_or_says_how_to_get_one():
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        assert AuraPipeline.from_pretrained(None).model.config.name
    else:
        with pytest.raises(FileNotFoundError, match="default model"):
            AuraPipeline.from_pretrained(None)
