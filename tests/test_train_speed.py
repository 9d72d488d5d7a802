"""The trainer's shortcuts give the same training: the image-embedding cache, the batched decode of all [SEG]s of a
batch and the matrix form of the mask upsampling each match the plain computation up to float rounding."""
from __future__ import annotations

import pytest
import torch

from aura_core.data.dataset import AmodalReasonSegDataset, collate
from aura_core.data.transforms import postprocess_masks
from aura_core.model.aura import upsample_logits
from aura_core.model.build import build_aura_model
from aura_core.model.losses import aura_losses
from training.config import load_train_config
from training.data import ImageEmbeddingCache
from training.distributed import DistContext
from training.train import train_step
from tests.train_fixtures import small_settings


@pytest.mark.parametrize("low, resize_hw, original_hw, size", [
    ((16, 16), (64, 64), (64, 64), 64),  # square image at the SAM size: the second resize is the identity
    ((16, 16), (48, 64), (60, 80), 64),  # padded and resized back
    ((16, 16), (64, 40), (480, 300), 64),
])
def test_upsample_logits_matches_postprocess_masks_and_its_gradient(low, resize_hw, original_hw, size):
    torch.manual_seed(0)
    x = (torch.randn(3, *low) * 5).requires_grad_()
    y = x.detach().clone().requires_grad_()
    expected, got = postprocess_masks(x, resize_hw, original_hw, size), upsample_logits(y, resize_hw, original_hw, size)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(expected)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    torch.testing.assert_close(y.grad, x.grad, rtol=1e-4, atol=1e-4)


def _model_and_batch(small_data, tmp_path):
    config = load_train_config(None, small_settings(small_data, tmp_path, batch_size=3))
    torch.manual_seed(0)
    model = build_aura_model(config.model_config())
    model.train()
    data = AmodalReasonSegDataset(small_data, "train", image_size=config.model_config().vision.image_size)
    return config, model, data, collate([data[i] for i in range(3)])


def test_batched_decode_matches_decoding_each_sample(small_data, tmp_path):
    _, model, _, batch = _model_and_batch(small_data, tmp_path)
    with torch.no_grad():
        embeddings = model.encode_image(batch["sam_images"])
        inputs = model.mllm.encode(batch["image"], batch["question"], batch["answer"])
        seg_hidden = model.mllm(inputs).seg_hidden
        assert sum(len(h) for h in seg_hidden) > len(seg_hidden) - 1 >= 1
        batched = model._decode_batch(embeddings, seg_hidden, batch["resize_hw"], batch["original_hw"])
        for i, out in enumerate(batched):
            single = model.decode(embeddings[i : i + 1], seg_hidden[i], batch["resize_hw"][i], batch["original_hw"][i])
            assert out.keys() == single.keys()
            for key, value in single.items():
                torch.testing.assert_close(out[key], value, rtol=1e-4, atol=1e-4, msg=f"sample {i} {key}")


def test_cached_and_uncached_steps_give_the_same_loss_and_gradients(small_data, tmp_path):
    config, model, _, batch = _model_and_batch(small_data, tmp_path)
    cache = ImageEmbeddingCache(max_bytes=2**30)

    def step(embedding_cache):
        model.zero_grad(set_to_none=True)
        logs = train_step(model, iter([batch]), config, DistContext(), None, embedding_cache)
        return logs, {n: p.grad.clone() for n, p in model.trainable_parameters() if p.grad is not None}

    plain_logs, plain = step(None)
    for _ in range(2):  # a first step fills the cache, a second one reads it
        logs, grads = step(cache)
        assert logs["total"] == pytest.approx(plain_logs["total"], rel=1e-5)
        assert grads.keys() == plain.keys()
        for name in plain:
            torch.testing.assert_close(grads[name], plain[name], rtol=1e-4, atol=1e-5, msg=name)
    n, unique = len(batch["image_id"]), len(set(batch["image_id"]))
    assert (cache.misses, cache.hits) == (unique, 2 * n - unique)  # each image encoded once
    torch.testing.assert_close(cache.embeddings(model, batch), model.encode_image(batch["sam_images"]), rtol=1e-5, atol=1e-5)


def test_cache_follows_the_backbone_weights_and_can_be_off(small_data, tmp_path):
    config, model, _, batch = _model_and_batch(small_data, tmp_path)
    cache = ImageEmbeddingCache(max_bytes=2**30)
    before = cache.embeddings(model, batch)
    with torch.no_grad():  # the weights change (another checkpoint loaded in place): the entries are stale
        for p in model.vision_backbone.parameters():
            p.mul_(1.5)
    after = cache.embeddings(model, batch)
    torch.testing.assert_close(after, model.encode_image(batch["sam_images"]), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before)
    small = ImageEmbeddingCache(max_bytes=0)  # no room: every image is encoded each time, nothing is kept
    small.embeddings(model, batch)
    small.embeddings(model, batch)
    assert small.bytes == 0 and small.hits == 0
    assert load_train_config(None, {"image_embedding_cache_mb": 0}).image_embedding_cache_mb == 0
