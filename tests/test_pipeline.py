"""AuraPipeline on the tiny random-init model: input checks, embedding cache, batched [SEG] decoding, loading."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from aura_core.masks import mask_box, occlusion_rate
from aura_core import pipeline as pipeline_module
from aura_core.data.synthetic import generate_scene
from aura_core.model.build import build_aura_model
from aura_core.model.checkpoint import save_checkpoint
from aura_core.model.config import get_config
from aura_core.pipeline import DEFAULT_MODEL_DIR, AuraPipeline
from aura_core.result import AuraResult


class CountingBackend:
    """The torch backend (the model itself), counting how often each stage runs and with how many prompts."""

    def __init__(self, model):
        self.model = model
        self.encodes = 0
        self.decode_batches = []

    def encode_image(self, sam_image):
        self.encodes += 1
        return self.model.encode_image(sam_image)

    def decode_visible(self, image_embedding, e_r):
        self.decode_batches.append(int(e_r.shape[0]))
        return self.model.decode_visible(image_embedding, e_r)

    def decode_amodal(self, image_embedding, e_r):
        return self.model.decode_amodal(image_embedding, e_r)


class DisagreeingBackend(CountingBackend):
    """Decoders that disagree: the visible mask is the left half of the frame, the amodal mask the top half."""

    def __init__(self, model, rates=None):
        super().__init__(model)
        self.rates = rates

    def _halves(self, image_embedding, e_r):
        k, (h, w) = int(e_r.shape[0]), image_embedding.shape[-2:]
        logits = torch.full((k, 4 * h, 4 * w), -10.0)
        return logits, torch.ones(k)

    def decode_visible(self, image_embedding, e_r):
        logits, scores = self._halves(image_embedding, e_r)
        logits[:, :, : logits.shape[-1] // 2] = 10.0
        return logits, scores

    def decode_amodal(self, image_embedding, e_r):
        logits, scores = self._halves(image_embedding, e_r)
        logits[:, : logits.shape[-2] // 2, :] = 10.0
        return logits, scores, (None if self.rates is None else torch.tensor(self.rates[: len(scores)]))


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
    assert len(follow_up.instances) == follow_up.answer.count("[SEG]")
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
        assert inst.occlusion_rate == pytest.approx(occlusion_rate(inst.visible_mask, inst.amodal_mask))


@pytest.mark.parametrize("rates", [None, [0.25, 0.75]])
def test_published_amodal_mask_contains_the_visible_one_when_the_decoders_disagree(pipeline, rates):
    """Visible = left half, amodal decoder = top half: the instance's amodal mask is their union, and its box and
    (without E_OC's rate) its occlusion rate come from that union, not from the raw amodal decoder."""
    pipe = AuraPipeline(model=pipeline.model, backend=DisagreeingBackend(pipeline.model, rates))
    pipe.set_image(_image(64, 64))  # square: the low-res frame maps onto the image without padding
    hidden = torch.randn(2, pipeline.model.mllm.hidden_size, generator=torch.Generator().manual_seed(1))
    instances = pipe.segment(hidden, ["a", "b"])
    left = np.zeros((64, 64), bool)
    left[:, :32] = True
    top = np.zeros((64, 64), bool)
    top[:32, :] = True
    for i, inst in enumerate(instances):
        assert np.array_equal(inst.visible_mask, left)
        assert np.array_equal(inst.amodal_mask, left | top)  # the bottom-left quarter came from the visible mask
        assert (inst.amodal_box.x, inst.amodal_box.y, inst.amodal_box.width, inst.amodal_box.height) == (0, 0, 64, 64)
        assert mask_box(inst.visible_mask) == (0, 0, 32, 64)
        if rates is None:  # no r_hat: 1 - |V ∩ A| / |A| of the published masks = 1 - 2/3 (not 1 - |V| / |A_raw| = 0)
            assert inst.occlusion_rate == pytest.approx(1 / 3)
        else:
            assert inst.occlusion_rate == pytest.approx(rates[i])


def test_inference_decodes_as_training_does(pipeline):
    """segment() and the training forward's decode() run the same sequence (AuraModel.decode_prompts): same masks,
    scores and rates; the pipeline then publishes amodal | visible."""
    model = pipeline.model
    timings = {}
    pipe = AuraPipeline(model=model)
    image = _image(40, 60, seed=4)
    pipe.set_image(image)
    hidden = torch.randn(3, model.mllm.hidden_size, generator=torch.Generator().manual_seed(8))
    instances = pipe.segment(hidden, ["a", "b", "c"], timings)
    assert {"prompt_encoder", "visible_mask_decoder", "amodal_mask_decoder", "postprocess"} <= set(timings)
    with torch.no_grad():
        trained = model.decode(pipe._embedding, hidden, pipe._resize_hw, (40, 60))
    visible = (trained["visible_logits"] > 0).numpy()
    amodal = (trained["amodal_logits"] > 0).numpy()
    for i, inst in enumerate(instances):
        assert np.array_equal(inst.visible_mask, visible[i])
        assert np.array_equal(inst.amodal_mask, amodal[i] | visible[i])
        assert inst.visible_score == pytest.approx(float(trained["visible_scores"][i]))
        assert inst.occlusion_rate == pytest.approx(float(trained["occlusion_rates"][i]))


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
        AuraPipeline.from_pretrained(None, backend="onnx")  # checked before any model is loaded
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


def test_the_shipped_default_model_loads_and_names_an_object():
    """aura_core ships a trained tiny model (git-tracked): it loads with no arguments and answers a question about a
    synthetic scene with at least one [SEG], each giving an instance at the image's size."""
    assert (DEFAULT_MODEL_DIR / "config.json").is_file() and (DEFAULT_MODEL_DIR / "model.safetensors").is_file()
    pipe = AuraPipeline.from_pretrained(None, max_new_tokens=24)
    assert pipe.model.config.name == "tiny"
    scene = generate_scene(np.random.default_rng(7), 128)
    result = pipe.ask(scene.image, "what can I use to cut bread?")
    assert result.answer.count("[SEG]") >= 1 and len(result.instances) == result.answer.count("[SEG]"), result.answer
    assert all(i.amodal_mask.shape == (128, 128) and i.amodal_mask.any() for i in result.instances)


def test_without_a_default_model_the_error_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline_module, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    with pytest.raises(FileNotFoundError, match="no embedded default model.*docs/TRAINING.md"):
        AuraPipeline.from_pretrained(None)


@pytest.mark.parametrize("typed", ["<image>", "[SEG]", "<s>", "</s>", "[PAD]", "[UNK]", "USER:", "ASSISTANT:"])
def test_a_special_token_typed_in_a_question_is_plain_text(pipeline, monkeypatch, typed):
    """Asking "<image> what?" used to add a second image slot, and LLaVA failed: image features != image tokens."""
    from aura_core.model.mllm import MultiModalLLM

    prompts = []
    encode = MultiModalLLM.encode

    def spy(self, *args, **kwargs):
        batch = encode(self, *args, **kwargs)
        prompts.append(batch["input_ids"][0].tolist())
        return batch

    monkeypatch.setattr(MultiModalLLM, "encode", spy)
    mllm = pipeline.model.mllm
    history = [(f"{typed} where is the cup?", f"the cup [SEG] {typed}")]
    for question, hist in ((f"{typed} what?", None), (f"what {typed}?", history)):
        result = pipeline.ask(_image(), question, history=hist)
        assert result.question == question
        ids = prompts[-1]
        first = ids.index(mllm.image_token_id)
        assert ids.count(mllm.image_token_id) == mllm.image_seq_length  # exactly one image slot...
        assert ids[first : first + mllm.image_seq_length] == [mllm.image_token_id] * mllm.image_seq_length
        expected_segs = sum(a.count("[SEG]") for _, a in hist or ())  # ...and no [SEG] id from a question
        assert ids.count(mllm.seg_token_id) == expected_segs
