"""aura-convert-weights: tiny random checkpoints in the original LLaVA / LISA key layouts convert exactly.

The sources are written as the original repositories save them (HF-style directories, `LlavaLlamaForCausalLM` keys,
sharded pytorch_model.bin or safetensors, rotary inv_freq buffers, a CLIP directory with its text half), then loaded
back through our own loaders (MultiModalLLM.build, build_aura_model) and compared tensor by tensor.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest
import torch
import yaml
from safetensors.torch import save_file
from segment_anything.modeling import Sam

from aura_core.model.config import MLLMConfig, get_config
from aura_core.model.tokenizer import build_word_tokenizer
from training.convert_weights import ConversionError, convert, main

H, LAYERS, HEADS, FF = 32, 2, 2, 48  # tiny Llama
CLIP = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=1, image_size=28, patch_size=14)


def _llama_state(vocab: int, seed: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    state = {"model.embed_tokens.weight": r(vocab, H), "model.norm.weight": r(H), "lm_head.weight": r(vocab, H)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[p + f"self_attn.{name}.weight"] = r(H, H)
        state[p + "self_attn.rotary_emb.inv_freq"] = r(H // HEADS // 2)  # saved by transformers 4.28-era models
        state[p + "mlp.gate_proj.weight"], state[p + "mlp.up_proj.weight"] = r(FF, H), r(FF, H)
        state[p + "mlp.down_proj.weight"] = r(H, FF)
        state[p + "input_layernorm.weight"], state[p + "post_attention_layernorm.weight"] = r(H), r(H)
    return state


def _clip_vision_state(seed: int) -> Dict[str, torch.Tensor]:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(**CLIP))
    return {k.replace("vision_model.", "", 1) if k.startswith("vision_model.") else k: v.clone()
            for k, v in model.state_dict().items()}


def _tokenizer(directory: Path, added=()) -> int:
    tok = build_word_tokenizer(["the cup is red , use the knife"], with_aura_tokens=False)
    tok.add_tokens(list(added))  # as LISA: tokenizer.add_tokens("[SEG]")
    tok.save_pretrained(str(directory))
    return len(tok)


def _src_config(vocab: int, **extra) -> Dict:
    return {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hidden_size": H,
            "intermediate_size": FF, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS, "vocab_size": vocab,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "mm_hidden_size": CLIP["hidden_size"],
            "mm_vision_tower": "openai/clip-vit-large-patch14", "mm_vision_select_layer": -2,
            "mm_use_im_start_end": False, **extra}


def _save_sharded_bin(directory: Path, state: Dict[str, torch.Tensor]) -> None:
    keys = sorted(state)
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:]), start=1):
        name = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({k: state[k] for k in part}, directory / name)
        weight_map.update({k: name for k in part})
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _write_clip_dir(directory: Path, vision: Dict[str, torch.Tensor]) -> Path:
    """A local copy of a CLIPModel (openai/clip-vit-large-patch14 layout): vision + text halves, one safetensors."""
    from transformers import CLIPConfig

    directory.mkdir()
    state = {"vision_model." + k: v for k, v in vision.items()}
    state["vision_model.embeddings.position_ids"] = torch.arange(5).unsqueeze(0)  # old CLIP files carry this buffer
    state["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 8)
    state["text_projection.weight"], state["visual_projection.weight"] = torch.randn(4, 8), torch.randn(4, 64)
    state["logit_scale"] = torch.tensor(2.6)
    save_file(state, str(directory / "model.safetensors"))
    CLIPConfig(vision_config=CLIP, text_config={"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1,
                                                "intermediate_size": 8}).save_pretrained(str(directory))
    return directory


def _load_mllm(path: Path):
    from aura_core.model.mllm import MultiModalLLM

    return MultiModalLLM.build(MLLMConfig(pretrained_path=str(path), lora_r=0, dtype="float32", system_prompt="",
                                          max_length=64, modules_to_save=()))


def _check_llama(mllm, expected: Dict[str, torch.Tensor]) -> None:
    live = mllm.core.state_dict()
    for key, value in expected.items():
        if "inv_freq" in key:
            continue
        name = "lm_head.weight" if key == "lm_head.weight" else "model.language_model." + key[len("model."):]
        got = live[name]
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            got = got[: value.shape[0]]  # the loader appended rows for [SEG] and <image>
        assert torch.equal(got, value), key


def _check_tower(mllm, vision: Dict[str, torch.Tensor]) -> None:
    live = mllm.core.model.vision_tower.state_dict()
    for key, value in vision.items():
        if key.endswith("position_ids"):
            continue
        assert torch.equal(live[key], value), key


def test_llava_v1_delta_with_clip_converts_exactly(tmp_path):
    """LLaVA-7B-v1-1 style: a delta over LLaMA, one Linear projector, no CLIP tower inside; sharded .bin."""
    src, base_dir = tmp_path / "llava-delta", tmp_path / "llama"
    src.mkdir(), base_dir.mkdir()
    vocab = _tokenizer(src)
    base = _llama_state(vocab - 3, seed=1)  # LLaVA added 3 tokens (<im_patch>, <im_start>, <im_end>)
    delta = _llama_state(vocab, seed=2)
    g = torch.Generator().manual_seed(3)
    delta["model.mm_projector.weight"] = torch.randn(H, CLIP["hidden_size"], generator=g)
    delta["model.mm_projector.bias"] = torch.randn(H, generator=g)
    _save_sharded_bin(src, delta)
    (src / "config.json").write_text(json.dumps(_src_config(vocab)))
    torch.save(base, base_dir / "pytorch_model.bin")
    (base_dir / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    vision = _clip_vision_state(seed=4)
    clip = _write_clip_dir(tmp_path / "clip", vision)

    out = tmp_path / "out"
    assert main([str(src), str(out), "--base", str(base_dir), "--clip", str(clip)]) == 0
    report = json.loads((out / "conversion.json").read_text())
    assert report["kind"] == "llava" and report["projector"] == "linear"
    assert any("text_model" in k for k in report["ignored"]) and any("inv_freq" in k for k in report["ignored"])

    # The target LLaVA's recipe: delta + base on the base's rows; extra rows and the projector as in the delta.
    target = dict(delta)
    for key, b in base.items():
        if "inv_freq" in key:
            continue
        summed = delta[key].clone()
        summed[tuple(slice(0, n) for n in b.shape)] += b
        target[key] = summed
    mllm = _load_mllm(out / "llava")
    _check_llama(mllm, {k: v for k, v in target.items() if not k.startswith("model.mm_projector")})
    _check_tower(mllm, vision)
    # The v1 Linear projector is the same function inside llava-hf's Linear-act-Linear projector.
    x = torch.randn(3, CLIP["hidden_size"])
    expected = torch.nn.functional.linear(x, delta["model.mm_projector.weight"], delta["model.mm_projector.bias"])
    assert torch.equal(mllm.core.model.multi_modal_projector(x), expected)
    overrides = yaml.safe_load((out / "aura_weights.yaml").read_text())["model_overrides"]
    assert overrides["mllm"]["pretrained_path"] == str((out / "llava").resolve())
    assert overrides["mllm"]["vision_image_size"] == 28


def test_llava15_with_tower_and_mlp_projector(tmp_path):
    """LLaVA-1.5 style: CLIP tower inside the checkpoint, mlp2x_gelu projector, one safetensors file."""
    src = tmp_path / "llava-1.5"
    src.mkdir()
    vocab = _tokenizer(src)
    state = _llama_state(vocab, seed=5)
    vision = _clip_vision_state(seed=6)
    state.update({"model.vision_tower.vision_tower.vision_model." + k: v for k, v in vision.items()})
    g = torch.Generator().manual_seed(7)
    proj = {"0.weight": torch.randn(H, CLIP["hidden_size"], generator=g), "0.bias": torch.randn(H, generator=g),
            "2.weight": torch.randn(H, H, generator=g), "2.bias": torch.randn(H, generator=g)}
    state.update({"model.mm_projector." + k: v for k, v in proj.items()})
    save_file(state, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(_src_config(vocab, mm_projector_type="mlp2x_gelu")))

    report = convert(src, tmp_path / "out", dtype="float32")
    assert report["projector"] == "mlp2x_gelu" and report["image_size"] == 28
    mllm = _load_mllm(tmp_path / "out/llava")
    _check_llama(mllm, {k: v for k, v in state.items() if k.startswith(("model.layers", "model.norm", "model.embed", "lm_head"))})
    _check_tower(mllm, vision)
    p = mllm.core.model.multi_modal_projector
    assert torch.equal(p.linear_1.weight, proj["0.weight"]) and torch.equal(p.linear_2.bias, proj["2.bias"])

    # Strict: a tensor the tool does not know is an error naming it, and nothing half-converted is loaded.
    state["model.image_newline"] = torch.zeros(H)
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(ConversionError, match="model.image_newline"):
        convert(src, tmp_path / "out2")


def test_lisa_converts_to_llava_sam_and_projection_and_builds_aura(tmp_path):
    from tests.model_fixtures import write_tiny_sam_pth
    from aura_core.model.build import build_aura_model

    tiny = get_config("tiny")
    src = tmp_path / "lisa"
    src.mkdir()
    vocab = _tokenizer(src, added=("[SEG]",))
    state = _llama_state(vocab, seed=8)
    g = torch.Generator().manual_seed(9)
    state["model.mm_projector.weight"] = torch.randn(H, CLIP["hidden_size"], generator=g)
    state["model.mm_projector.bias"] = torch.randn(H, generator=g)
    sam = torch.load(write_tiny_sam_pth(tmp_path / "sam_src.pth", tiny, seed=10), weights_only=True)
    state.update({"model.visual_model." + k: v for k, v in sam.items()})
    out_dim = tiny.mask_decoder.prompt_embed_dim
    fcs = {"0.weight": torch.randn(H, H, generator=g), "0.bias": torch.randn(H, generator=g),
           "2.weight": torch.randn(out_dim, H, generator=g), "2.bias": torch.randn(out_dim, generator=g)}
    state.update({"model.text_hidden_fcs.0." + k: v for k, v in fcs.items()})
    _save_sharded_bin(src, state)
    (src / "config.json").write_text(json.dumps(_src_config(vocab, architectures=["LISAForCausalLM"],
                                                            train_mask_decoder=True, out_dim=out_dim)))
    with pytest.raises(ConversionError, match="--clip"):  # LISA does not store its CLIP tower
        convert(src, tmp_path / "nope")
    clip = _write_clip_dir(tmp_path / "clip", _clip_vision_state(seed=11))

    out = tmp_path / "out"
    report = convert(src, out, clip=clip)
    assert report["kind"] == "lisa" and report["sam_tensors"] == len(sam)
    written = torch.load(out / "sam.pth", weights_only=True)
    assert written.keys() == sam.keys() and all(torch.equal(written[k], sam[k]) for k in sam)

    overrides = yaml.safe_load((out / "aura_weights.yaml").read_text())["model_overrides"]
    overrides["mllm"].update({"lora_r": 0, "dtype": "float32", "system_prompt": "", "max_length": 64})
    model = build_aura_model(get_config("tiny", overrides))
    assert torch.equal(model.prompt_encoder.projection[0].weight, fcs["0.weight"])
    assert torch.equal(model.prompt_encoder.projection[2].bias, fcs["2.bias"])
    assert torch.equal(model.visible_mask_decoder.decoder.iou_token.weight, sam["mask_decoder.iou_token.weight"])
    assert torch.equal(model.amodal_mask_decoder.decoder.mask_tokens.weight, sam["mask_decoder.mask_tokens.weight"])
    assert torch.equal(model.vision_backbone.encoder.patch_embed.proj.weight, sam["image_encoder.patch_embed.proj.weight"])
    _check_llama(model.mllm, {k: v for k, v in state.items() if k.startswith(("model.layers", "model.norm", "model.embed", "lm_head"))})
    # LISA's tokenizer already has [SEG]: the loader keeps its (trained) row instead of adding a new one.
    assert model.mllm.seg_token_id < vocab
