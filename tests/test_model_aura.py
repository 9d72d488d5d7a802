"""AuraModel end to end on the tiny config: what trains, the Table 2 switches, SAM weights, checkpoints."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from aura_core.data.dataset import collate
from aura_core.model.build import build_aura_model
from aura_core.model.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from aura_core.model.config import get_config
from aura_core.model.losses import aura_losses
from tests.model_fixtures import synthetic_items, write_tiny_sam_pth

TINY = get_config("tiny")


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return synthetic_items(tmp_path_factory.mktemp("synth_model"), 3)


def _model(config=TINY, seed=0):
    torch.manual_seed(seed)
    return build_aura_model(config)


def test_gradients_reach_exactly_the_trainable_parts(items):
    model = _model()
    batch = collate(items[:2])
    terms = aura_losses(model(batch), batch, TINY.loss)
    terms["total"].backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    for box in ("prompt_encoder", "visible_mask_decoder", "amodal_mask_decoder", "occlusion_condition_encoder",
                "spatial_occlusion_encoder"):
        assert any(n.startswith(box + ".") for n in trainable), box
    assert not any(n.startswith("vision_backbone.") for n in trainable)  # SAM image encoder frozen
    assert not any("vision_tower" in n for n in trainable)  # CLIP frozen
    assert any("lora_" in n for n in trainable)
    assert any("lm_head" in n for n in trainable) and any("embed_tokens" in n for n in trainable)  # new token rows
    counts = model.parameter_counts()
    assert counts["vision_backbone"][0] == 0 and counts["total"][0] == sum(p.numel() for _, p in model.trainable_parameters())


@pytest.mark.parametrize("use_oc,use_so", [(False, True), (True, False), (False, False)])
def test_ablation_switch_removes_box_output_and_loss_term(items, use_oc, use_so):
    config = dataclasses.replace(TINY, use_occlusion_condition_encoder=use_oc, use_spatial_occlusion_encoder=use_so)
    model = _model(config)
    assert (model.occlusion_condition_encoder is not None) == use_oc
    assert (model.spatial_occlusion_encoder is not None) == use_so
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("occlusion_condition_encoder.") for n in names) == use_oc
    assert any(n.startswith("spatial_occlusion_encoder.") for n in names) == use_so
    batch = collate(items[:1])
    output = model(batch)
    assert (output.occlusion_rates is not None) == use_oc and (output.spatial_logits is not None) == use_so
    terms = aura_losses(output, batch, config.loss)
    assert ("occlusion_rate" in terms) == use_oc and ("spatial" in terms) == use_so
    expected = terms["text"] + terms["bce"] + terms["dice"]
    expected = expected + (terms["occlusion_rate"] if use_oc else 0) + (terms["spatial"] if use_so else 0)
    assert torch.allclose(terms["total"], expected)


def test_output_shapes_follow_the_batch(items):
    model = _model()
    batch = collate(items)
    output = model(batch)
    for i, item in enumerate(items):
        k = item["answer"].count("[SEG]")
        h, w = item["original_hw"]
        assert output.visible_logits[i].shape == output.amodal_logits[i].shape == (k, h, w)
        assert output.spatial_logits[i].shape == (k, 3, h, w)
        assert output.occlusion_rates[i].shape == (k,)
    with pytest.raises(KeyError, match="sam_images"):
        model({k: v for k, v in batch.items() if k != "sam_images"})


def test_sam_pth_fills_backbone_prompt_encoder_and_both_decoders(tmp_path):
    path = write_tiny_sam_pth(tmp_path / "sam.pth", TINY)
    state = torch.load(path, weights_only=True)
    model = _model(dataclasses.replace(TINY, vision=dataclasses.replace(TINY.vision, checkpoint=str(path))))
    for key, value in model.vision_backbone.encoder.state_dict().items():
        assert torch.equal(value, state["image_encoder." + key])
    for decoder in (model.visible_mask_decoder, model.amodal_mask_decoder):
        for key, value in decoder.decoder.state_dict().items():
            assert torch.equal(value, state["mask_decoder." + key])
    assert torch.equal(model.prompt_encoder.no_mask_embed.weight, state["prompt_encoder.no_mask_embed.weight"])


def _outputs(model, batch):
    with torch.no_grad():
        out = model(batch)
    return [out.text_loss] + out.visible_logits + out.amodal_logits + out.occlusion_rates + out.spatial_logits


def test_checkpoint_round_trip_gives_identical_outputs(items, tmp_path):
    model = _model().eval()
    batch = collate(items[:2])
    save_checkpoint(model, tmp_path / "ckpt", extra={"step": 7})
    assert read_metadata(tmp_path / "ckpt")["extra"] == {"step": 7}
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert not loaded.training
    for a, b in zip(_outputs(model, batch), _outputs(loaded, batch)):
        assert torch.equal(a, b)
    question, image = items[0]["question"], items[0]["image"]
    assert model.mllm.generate(image, question, max_new_tokens=6).answer == loaded.mllm.generate(
        image, question, max_new_tokens=6
    ).answer
    # fp16 on disk (small shipped model) loads back as fp32 on the CPU.
    save_checkpoint(model, tmp_path / "half", dtype=torch.float16)
    half = load_checkpoint(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in half.parameters())
    size = lambda d: (d / "model.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "half") < 0.6 * size(tmp_path / "ckpt")
    for a, b in zip(_outputs(model, batch), _outputs(half, batch)):
        assert torch.allclose(a, b, atol=0.05 * (1 + float(a.abs().max())))


def test_checkpoint_leaves_out_a_pretrained_backbone_unless_asked(items, tmp_path):
    sam = write_tiny_sam_pth(tmp_path / "sam.pth", TINY, backbone_only=True)
    config = dataclasses.replace(TINY, vision=dataclasses.replace(TINY.vision, checkpoint=str(sam)))
    model = _model(config).eval()
    batch = collate(items[:1])
    save_checkpoint(model, tmp_path / "lean")
    save_checkpoint(model, tmp_path / "full", include_vision_backbone=True)
    lean_size = (tmp_path / "lean" / "model.safetensors").stat().st_size
    assert lean_size < (tmp_path / "full" / "model.safetensors").stat().st_size
    for a, b in zip(_outputs(model, batch), _outputs(load_checkpoint(tmp_path / "lean"), batch)):
        assert torch.equal(a, b)
    sam.unlink()  # the self-contained checkpoint no longer needs the .pth
    assert read_metadata(tmp_path / "full")["config"]["vision"]["checkpoint"] is None
    for a, b in zip(_outputs(model, batch), _outputs(load_checkpoint(tmp_path / "full"), batch)):
        assert torch.equal(a, b)


def test_checkpoint_bad_input(items, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    model = _model()
    directory = save_checkpoint(model, tmp_path / "ckpt")
    meta = json.loads((directory / "config.json").read_text())
    meta["config"]["mask_decoder"]["colour"] = 3
    (directory / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="mask_decoder.colour"):
        load_checkpoint(directory)
    meta["config"]["mask_decoder"].pop("colour")
    meta["config"]["occlusion"]["condition_hidden_dim"] = 32
    (directory / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="occlusion_condition_encoder.*shape"):
        load_checkpoint(directory)
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_checkpoint(directory)


def test_checkpoint_of_a_pretrained_model_keeps_only_what_the_files_do_not_have(items, tmp_path):
    """Paper-scale path on tiny files: HF-format LLaVA dir + SAM .pth; the checkpoint holds the trained parts only."""
    from safetensors import safe_open
    from transformers import LlavaForConditionalGeneration

    from aura_core.model.mllm import _clip_processor, _llava_config
    from aura_core.model.tokenizer import IMAGE_TOKEN, build_word_tokenizer
    from training.tiny_tokenizer import synthetic_corpus

    tok = build_word_tokenizer(synthetic_corpus(scenes=20), with_aura_tokens=False)
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(_llava_config(TINY.mllm, tok, tok.convert_tokens_to_ids(IMAGE_TOKEN)))
    llava.save_pretrained(tmp_path / "llava")
    tok.save_pretrained(tmp_path / "llava")
    _clip_processor(TINY.mllm.vision_image_size).save_pretrained(tmp_path / "llava")
    sam = write_tiny_sam_pth(tmp_path / "sam.pth", TINY)
    config = dataclasses.replace(
        TINY,
        mllm=dataclasses.replace(TINY.mllm, pretrained_path=str(tmp_path / "llava")),
        vision=dataclasses.replace(TINY.vision, checkpoint=str(sam)),
    )
    model = _model(config)
    batch = collate(items[:2])
    optimiser = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=1e-2)
    for _ in range(2):  # move every trained part away from its pretrained / initial value
        optimiser.zero_grad()
        aura_losses(model(batch), batch, config.loss)["total"].backward()
        optimiser.step()
    model.eval()
    save_checkpoint(model, tmp_path / "ckpt")
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    trainable = {n for n, _ in model.trainable_parameters()}
    assert not any(k.startswith("vision_backbone.") or "vision_tower" in k for k in saved)
    assert {k for k in saved if k.startswith("mllm.")} == {k for k in trainable if k.startswith("mllm.")}
    assert trainable <= saved
    loaded = load_checkpoint(tmp_path / "ckpt")
    for a, b in zip(_outputs(model, batch), _outputs(loaded, batch)):
        assert torch.equal(a, b)
