"""SAM-side boxes and losses with plain tensors: shapes, SAM .pth loading, ablation of loss terms, loss behaviour."""
from __future__ import annotations

import dataclasses
import datetime

import pytest
import torch

from aura_core.model.aura import AuraOutput
from aura_core.model.config import LossWeights, get_config
from aura_core.model.losses import aura_losses
from aura_core.model.mask_decoder import MaskDecoder
from aura_core.model.occlusion_condition_encoder import OcclusionConditionEncoder
from aura_core.model.prompt_encoder import PromptEncoder
from aura_core.model.sam_checkpoint import SamCheckpointError, read_sam_checkpoint
from aura_core.model.spatial_occlusion_encoder import SpatialOcclusionEncoder
from aura_core.model.vision_backbone import build_vision_backbone
from tests.model_fixtures import masks_to_logits, one_hot_logits, random_masks, write_tiny_sam_pth

TINY = get_config("tiny")


def _parts():
    dec = TINY.mask_decoder
    backbone = build_vision_backbone(TINY.vision, out_channels=dec.prompt_embed_dim)
    prompt = PromptEncoder(hidden_size=32, prompt_embed_dim=dec.prompt_embed_dim, embedding_size=backbone.embedding_size)
    return backbone, prompt, MaskDecoder(config=dec)


def test_sam_side_shapes_and_frozen_backbone():
    torch.manual_seed(0)
    backbone, prompt, decoder = _parts()
    size = TINY.vision.image_size
    emb = backbone(torch.randn(2, 3, size, size))
    grid = size // TINY.vision.patch_size
    assert emb.shape == (2, TINY.mask_decoder.prompt_embed_dim, grid, grid)
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training  # frozen backbone stays in eval mode
    e_r = prompt(torch.randn(3, 32))
    logits, scores = decoder(emb[:1], e_r, prompt.dense_embedding(), prompt.dense_pe())
    assert logits.shape == (3, 4 * grid, 4 * grid) and scores.shape == (3,)
    empty, empty_scores = decoder(emb[:1], e_r[:0], prompt.dense_embedding(), prompt.dense_pe())
    assert empty.shape == (0, 4 * grid, 4 * grid) and empty_scores.shape == (0,)
    e_oa, rate = OcclusionConditionEncoder(prompt_embed_dim=e_r.shape[1], hidden_dim=16)(e_r)
    assert e_oa.shape == e_r.shape and rate.shape == (3,) and bool(((rate > 0) & (rate < 1)).all())
    spatial = SpatialOcclusionEncoder(hidden_channels=8, layers=2)(logits, logits)
    assert spatial.shape == (3, 3, 4 * grid, 4 * grid)
    with pytest.raises(ValueError, match="sam_images must be"):
        backbone(torch.randn(1, 3, size // 2, size // 2))


def test_sam_pth_loads_into_backbone_prompt_encoder_and_both_decoders(tmp_path):
    path = write_tiny_sam_pth(tmp_path / "sam_tiny.pth", TINY)
    state = read_sam_checkpoint(path)
    backbone = build_vision_backbone(TINY.vision, out_channels=TINY.mask_decoder.prompt_embed_dim, sam_state=state)
    for key, value in backbone.encoder.state_dict().items():
        assert torch.equal(value, state["image_encoder." + key])
    _, prompt, decoder = _parts()
    assert prompt.load_sam_weights(state, str(path)) and decoder.load_sam_weights(state, str(path))
    assert torch.equal(prompt.no_mask_embed.weight, state["prompt_encoder.no_mask_embed.weight"])
    assert torch.equal(
        prompt.pe_layer.positional_encoding_gaussian_matrix,
        state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"],
    )
    for key, value in decoder.decoder.state_dict().items():
        assert torch.equal(value, state["mask_decoder." + key])
    # A backbone-only file (the tiny pretrained backbone the trainer ships) loads the backbone and leaves the rest.
    only = read_sam_checkpoint(write_tiny_sam_pth(tmp_path / "backbone.pth", TINY, backbone_only=True))
    build_vision_backbone(TINY.vision, out_channels=TINY.mask_decoder.prompt_embed_dim, sam_state=only)
    assert not prompt.load_sam_weights(only, "backbone.pth") and not decoder.load_sam_weights(only, "backbone.pth")


def test_sam_pth_bad_input(tmp_path):
    with pytest.raises(SamCheckpointError, match="not found"):
        read_sam_checkpoint(tmp_path / "missing.pth")
    bigger = dataclasses.replace(TINY, vision=dataclasses.replace(TINY.vision, embed_dim=192))
    state = read_sam_checkpoint(write_tiny_sam_pth(tmp_path / "big.pth", bigger))
    with pytest.raises(SamCheckpointError, match="image_encoder.*shape"):
        build_vision_backbone(TINY.vision, out_channels=TINY.mask_decoder.prompt_embed_dim, sam_state=state)
    with pytest.raises(SamCheckpointError, match="no 'image_encoder"):
        build_vision_backbone(TINY.vision, out_channels=64, sam_state={"mask_decoder.x": torch.zeros(1)})
    (tmp_path / "pickle.pth").write_bytes(b"not a torch file")
    with pytest.raises(SamCheckpointError, match="cannot read"):
        read_sam_checkpoint(tmp_path / "pickle.pth")
    torch.save({"image_encoder.x": datetime.date(2020, 1, 1)}, tmp_path / "evil.pth")
    with pytest.raises(SamCheckpointError):
        read_sam_checkpoint(tmp_path / "evil.pth")  # weights_only=True refuses arbitrary objects


def _perfect_output_and_batch(k=(2, 1), hw=(24, 20), with_rate=True, with_spatial=True):
    gen = torch.Generator().manual_seed(0)
    batch = {key: [] for key in ("visible_masks", "amodal_masks", "occlusion_rates", "spatial_maps")}
    for n in k:
        amodal = random_masks(n, *hw, generator=gen)
        visible = amodal.clone()
        visible[:, : hw[0] // 3] = False
        batch["visible_masks"].append(visible)
        batch["amodal_masks"].append(amodal)
        batch["occlusion_rates"].append(1 - visible.flatten(1).sum(1) / amodal.flatten(1).sum(1).clamp(min=1))
        batch["spatial_maps"].append(visible.long() + 2 * (amodal & ~visible).long())
    output = AuraOutput(
        text_loss=torch.tensor(0.0),
        visible_logits=[masks_to_logits(m) for m in batch["visible_masks"]],
        amodal_logits=[masks_to_logits(m) for m in batch["amodal_masks"]],
        visible_scores=[torch.ones(n) for n in k],
        amodal_scores=[torch.ones(n) for n in k],
        occlusion_rates=[r.clone() for r in batch["occlusion_rates"]] if with_rate else None,
        spatial_logits=[one_hot_logits(s) for s in batch["spatial_maps"]] if with_spatial else None,
    )
    return output, batch


def test_losses_vanish_on_perfect_predictions_and_grow_with_error():
    output, batch = _perfect_output_and_batch()
    terms = aura_losses(output, batch, LossWeights())
    assert set(terms) == {"text", "bce_visible", "bce_amodal", "bce", "dice_visible", "dice_amodal", "dice",
                          "occlusion_rate", "spatial", "total"}
    for name, value in terms.items():
        assert float(value) < 1e-6, name
    previous = None
    for corruption in (0.1, 0.3, 0.6):
        noisy, _ = _perfect_output_and_batch()
        gen = torch.Generator().manual_seed(1)
        for field in ("visible_logits", "amodal_logits", "spatial_logits"):
            for tensor in getattr(noisy, field):
                flip = torch.rand(tensor.shape, generator=gen) < corruption
                tensor[flip] = -tensor[flip]
        noisy.occlusion_rates = [r + corruption for r in noisy.occlusion_rates]
        noisy.text_loss = torch.tensor(corruption)
        current = aura_losses(noisy, batch, LossWeights())
        if previous is not None:
            for name in current:
                assert float(current[name]) > float(previous[name]), name
        previous = current


def test_ablated_boxes_have_no_loss_term_and_weights_apply():
    output, batch = _perfect_output_and_batch(with_rate=False, with_spatial=False)
    output.text_loss = torch.tensor(2.0)
    terms = aura_losses(output, batch, LossWeights(text=0.5))
    assert "occlusion_rate" not in terms and "spatial" not in terms
    assert float(terms["total"]) == pytest.approx(1.0, abs=1e-5)


def test_loss_bad_input_names_the_key():
    output, batch = _perfect_output_and_batch()
    batch["amodal_masks"][1] = batch["amodal_masks"][1][:, :5]
    with pytest.raises(ValueError, match="sample 1: batch\\['amodal_masks'\\]"):
        aura_losses(output, batch, LossWeights())
    output, batch = _perfect_output_and_batch()
    del batch["spatial_maps"]
    with pytest.raises(KeyError, match="spatial_maps"):
        aura_losses(output, batch, LossWeights())


@pytest.mark.parametrize(
    "name,builder", [("paper-7b", "vit_h"), ("paper-7b-vit-l", "vit_l"), ("paper-7b-vit-b", "vit_b")]
)
def test_paper_configs_match_the_official_sam_state_dict_shapes(name, builder):
    """Built on the meta device (no memory): every SAM tensor our boxes load has the same name and shape."""
    from segment_anything import sam_model_registry

    config = get_config(name)
    dec = config.mask_decoder
    with torch.device("meta"):
        sam = sam_model_registry[builder]().state_dict()
        backbone = build_vision_backbone(config.vision, out_channels=dec.prompt_embed_dim)
        prompt = PromptEncoder(hidden_size=64, prompt_embed_dim=dec.prompt_embed_dim, embedding_size=backbone.embedding_size)
        decoder = MaskDecoder(config=dec)
    ours = {"image_encoder." + k: v for k, v in backbone.encoder.state_dict().items()}
    ours.update({"mask_decoder." + k: v for k, v in decoder.decoder.state_dict().items()})
    ours.update({"prompt_encoder." + k: v for k, v in prompt.state_dict().items() if not k.startswith("projection.")})
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(sam[k].shape) for k in ours}
    assert set(k for k in sam if k.startswith(("image_encoder.", "mask_decoder."))) <= set(ours)
