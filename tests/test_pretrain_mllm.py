"""Tiny LLaVA pretraining (training/pretrain_mllm.py): pretext text, resumable slices, the shipped directory format,
and the AURA model on top of it (relative path resolution, self-contained checkpoints)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from aura_core.data.synthetic import CATEGORIES
from aura_core.model.build import build_aura_model, resolve_mllm_path
from aura_core.model.checkpoint import load_checkpoint, save_checkpoint
from aura_core.model.config import get_config
from aura_core.model.mllm import MultiModalLLM
from aura_core.model.tokenizer import default_word_tokenizer, seg_phrases
from training.pretrain_mllm import (
    MANIFEST,
    Grounding,
    PatchHeads,
    PretextText,
    RelationHead,
    _keeping,
    build_pretext_model,
    image_tokens,
    hidden_targets,
    patch_targets,
    pretext_losses,
    relation_targets,
    describe,
    fit_image_grid,
    load_growing_depth,
    main,
    mllm_config,
    save_llava_dir,
    scene_samples,
    text_loss,
)

SMALL = ["--scene-size", "64", "--batch-size", "2", "--eval-scenes", "1", "--eval-generate", "1", "--workers", "0",
         "--warmup", "1", "--image-size", "32"]


def test_pretext_samples_are_in_the_tiny_vocabulary_and_name_their_objects():
    tokenizer = default_word_tokenizer()
    for index in range(6):
        for image, question, answer, phrases, *_ in scene_samples(0, index, 64, describe_share=1.0):
            assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
            assert [p.lower() for p in seg_phrases(answer)] == phrases  # the phrase before each [SEG], in order
            for text in (question, answer):
                assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text


def test_description_lists_every_object_back_to_front():
    from aura_core.data.synthetic import generate_scene

    scene = generate_scene(np.random.default_rng(5), 64)
    _, question, answer, phrases = describe(scene, np.random.default_rng(0))
    assert phrases == [f"the {o.name}" for o in scene.objects]
    assert answer.count("[SEG]") == len(scene.objects) and question.endswith("?")


def test_patch_targets_say_what_is_visible_and_what_lies_behind_in_each_patch():
    from aura_core.data.synthetic import generate_scene

    scene = generate_scene(np.random.default_rng(2), 64)
    visible, amodal = patch_targets(scene, 4)
    assert visible.shape == (16, 13) and amodal.shape == (16, 12)
    assert np.allclose(visible.sum(1), 1.0) and (amodal >= 0).all() and (amodal <= 1).all()
    for obj in scene.objects:  # area shares add up to each mask's area
        cell = (64 // 4) ** 2
        assert visible[:, obj.category_id].sum() * cell == pytest.approx(obj.visible.sum(), rel=1e-4)
        assert amodal[:, obj.category_id - 1].sum() * cell == pytest.approx(obj.amodal.sum(), rel=1e-4)
    hidden = [o for o in scene.objects if o.occlusion_rate > 0.05]
    for obj in hidden:  # a hidden part: covered amodally, with another class visible there
        assert (amodal[:, obj.category_id - 1] > visible[:, obj.category_id]).any()
    behind = hidden_targets(scene, 4)  # the hidden parts alone, class 0 where nothing is hidden
    assert behind.shape == (16, 13) and np.allclose(behind.sum(1), 1.0)
    for obj in scene.objects:  # (up to where two hidden parts overlap and share a pixel)
        cell = (64 // 4) ** 2
        assert behind[:, obj.category_id].sum() * cell == pytest.approx((obj.amodal & ~obj.visible).sum(), rel=0.1, abs=2)
    assert hidden and behind[:, 1:].max() > 0


def test_pretext_heads_of_an_earlier_stage_load_and_the_hidden_head_starts_fresh():
    earlier, later = PatchHeads(128).state_dict(), PatchHeads(128, hidden=True).state_dict()
    assert not any(k.startswith("hidden.") for k in earlier)
    heads = PatchHeads(128, hidden=True)
    heads.load_earlier(earlier)  # a stage before the hidden head: it starts fresh
    assert torch.equal(heads.visible.weight, earlier["visible.weight"])
    plain = PatchHeads(128)
    plain.load_earlier(later)  # a stage after it, continued without: the hidden head is left out
    assert torch.equal(plain.amodal.weight, later["amodal.weight"]) and plain.hidden is None
    with pytest.raises(SystemExit, match="do not fit"):
        heads.load_earlier({"visible.weight": earlier["visible.weight"]})


def test_pretext_stream_is_a_function_of_the_batch_index():
    stream = PretextText(seed=0, size=64, batch_size=3, describe_share=0.5)
    first, again, other = stream.batch(4), stream.batch(4), stream.batch(5)
    assert [s[2] for s in first] == [s[2] for s in again] and len(first) == 3
    assert all((a[0] == b[0]).all() for a, b in zip(first, again))
    assert [s[2] for s in first] != [s[2] for s in other]
    resumed = next(iter(PretextText(seed=0, size=64, batch_size=3, describe_share=0.5, start_batch=4)))
    assert [s[2] for s in resumed] == [s[2] for s in first]


def test_every_llava_tensor_trains_and_the_loss_falls():
    torch.manual_seed(0)
    mllm = build_pretext_model(mllm_config("tiny", 32, None))
    heads = PatchHeads(mllm.hidden_size, hidden=True)
    assert all(p.requires_grad for p in mllm.parameters())
    assert mllm.image_seq_length == (32 // 16) ** 2
    batch = PretextText(seed=0, size=64, batch_size=2, describe_share=1.0, grid=2).batch(0)
    image = np.zeros((64, 64, 3), np.uint8)
    assert image_tokens(mllm, mllm.encode([image], ["What is here?"])["pixel_values"]).shape == (1, 4, mllm.hidden_size)
    inputs = mllm.encode([s[0] for s in batch], [s[1] for s in batch], [s[2] for s in batch])
    with _keeping(mllm, tokens=True, layer=None) as kept:  # the patch heads read the tokens of the LLaVA pass itself
        mllm(inputs)
    assert torch.equal(kept["tokens"], image_tokens(mllm, inputs["pixel_values"]))
    parts = pretext_losses(mllm, heads, batch)
    assert set(parts) == {"text", "patch_visible", "patch_amodal", "hidden"}
    optimizer = torch.optim.AdamW(list(mllm.parameters()) + list(heads.parameters()), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = text_loss(mllm, batch) + sum(v for k, v in pretext_losses(mllm, heads, batch).items() if k != "text")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    tower = mllm.core.model.vision_tower
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())


def test_saved_directory_is_fp16_llava_hf_that_loads_strictly(tmp_path):
    torch.manual_seed(0)
    config = mllm_config("tiny", 32, 3)
    mllm = build_pretext_model(config).eval()
    out = save_llava_dir(mllm, tmp_path / "tiny_llava", {"steps_done": 0})
    assert json.loads((out / MANIFEST).read_text())["steps_done"] == 0
    assert {v.dtype for v in load_file(str(out / "model.safetensors")).values()} == {torch.float16}
    loaded = MultiModalLLM.build(dataclasses.replace(get_config("tiny").mllm, pretrained_path=str(out))).eval()
    assert loaded.image_seq_length == 4 and loaded.core.config.vision_config.num_hidden_layers == 3
    assert loaded.seg_token_id == mllm.seg_token_id and loaded.image_token_id == mllm.image_token_id
    image = np.full((40, 40, 3), 90, np.uint8)
    a = mllm.encode([image], ["What is here?"], ["I can see the cup [SEG]."])
    b = loaded.encode([image], ["What is here?"], ["I can see the cup [SEG]."])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.allclose(a["pixel_values"], b["pixel_values"])
    with torch.no_grad():
        half = {k: v.half().float() for k, v in mllm.core.state_dict().items()}
        mllm.core.load_state_dict(half)  # what fp16 keeps of the weights
        assert torch.allclose(mllm(a).text_loss, loaded(b).text_loss, atol=1e-4)


def test_runs_in_resumable_slices_like_one_run(tmp_path):
    torch.manual_seed(0)
    main(SMALL + ["--steps", "4", "--eval-every", "2", "--work-dir", str(tmp_path / "one"), "--out", str(tmp_path / "a")])
    main(SMALL + ["--steps", "4", "--eval-every", "2", "--stop-at", "2", "--work-dir", str(tmp_path / "two"),
                  "--out", str(tmp_path / "b")])
    half = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert half["steps_done"] == 2 and not half["final"]
    main(SMALL + ["--steps", "4", "--eval-every", "2", "--work-dir", str(tmp_path / "two"), "--out", str(tmp_path / "b")])
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert manifest["steps_done"] == 4 and manifest["final"] and len(manifest["history"]) == 2
    assert "python training/pretrain_mllm.py" in manifest["command"]
    one, two = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert one.keys() == two.keys()
    assert all(torch.allclose(one[k].float(), two[k].float(), atol=2e-3) for k in one)


def test_growing_the_language_model_deeper_starts_from_what_the_shallow_one_computes(tmp_path):
    torch.manual_seed(0)
    shallow = build_pretext_model(mllm_config("tiny", 32, 3)).eval()
    deep = build_pretext_model(mllm_config("tiny", 32, 3, language_layers=4)).eval()
    assert load_growing_depth(deep, shallow.state_dict()) == [2, 3]
    image = np.full((40, 40, 3), 90, np.uint8)
    batch = shallow.encode([image], ["What is here?"], ["I can see the cup [SEG]."])
    with torch.no_grad():
        assert torch.allclose(shallow(batch).text_loss, deep(batch).text_loss, atol=1e-6)
    deep.train()
    deep(batch).text_loss.backward()  # the new layers learn: their zero output projections get gradients
    assert deep.core.model.language_model.layers[3].self_attn.o_proj.weight.grad.abs().sum() > 0
    with pytest.raises(SystemExit, match="only language-model layers"):
        load_growing_depth(build_pretext_model(mllm_config("tiny", 32, 2)), shallow.state_dict())
    # Through the script: a warm start with --language-layers records the growth and ships the deeper model.
    main(SMALL + ["--steps", "2", "--work-dir", str(tmp_path / "one"), "--out", str(tmp_path / "a")])
    main(SMALL + ["--steps", "2", "--init", str(tmp_path / "one" / "state.pt"), "--language-layers", "3",
                  "--work-dir", str(tmp_path / "two"), "--out", str(tmp_path / "b")])
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert manifest["language_layers"] == 3 and [h for h in manifest["history"] if "init" in h][-1]["grown_language_layers"] == [2]
    loaded = MultiModalLLM.build(dataclasses.replace(get_config("tiny").mllm, pretrained_path=str(tmp_path / "b")))
    assert loaded.core.config.text_config.num_hidden_layers == 3


def test_a_wider_language_model_keeps_head_size_and_mlp_ratio_and_aura_builds_on_it(tmp_path):
    wide = mllm_config("tiny", 32, 3, language_width=64)
    assert (wide.hidden_size, wide.num_heads, wide.intermediate_size) == (64, 2, 128)
    with pytest.raises(SystemExit, match="multiple of the head size 32"):
        mllm_config("tiny", 32, 3, language_width=48)
    torch.manual_seed(0)
    main(SMALL + ["--steps", "2", "--language-width", "64", "--device", "cpu", "--work-dir", str(tmp_path / "run"),
                  "--out", str(tmp_path / "tiny_llava")])
    manifest = json.loads((tmp_path / "tiny_llava" / MANIFEST).read_text())
    assert manifest["language_width"] == 64 and manifest["device"] == "cpu"
    with pytest.raises(SystemExit, match="64 wide, this run's 128"):
        main(SMALL + ["--steps", "2", "--init", str(tmp_path / "run" / "state.pt"), "--work-dir", str(tmp_path / "b"),
                      "--out", str(tmp_path / "b_llava")])
    model = build_aura_model(get_config("tiny", {"mllm": {"pretrained_path": "tiny_llava"}}), base_dir=tmp_path)
    assert model.mllm.hidden_size == 64  # the sizes come from the directory, not the tiny config's 128
    saved = json.loads((save_checkpoint(model, tmp_path / "full", include_pretrained_mllm=True) / "config.json")
                       .read_text())["config"]["mllm"]
    assert (saved["hidden_size"], saved["num_heads"], saved["intermediate_size"]) == (64, 2, 128)
    assert load_checkpoint(tmp_path / "full").mllm.hidden_size == 64


def test_aura_model_on_a_relative_llava_dir_saves_self_contained(tmp_path):
    torch.manual_seed(0)
    save_llava_dir(build_pretext_model(mllm_config("tiny", 32, 3)), tmp_path / "tiny_llava", {})
    config = get_config("tiny", {"mllm": {"pretrained_path": "tiny_llava"}})
    assert resolve_mllm_path(config, tmp_path).mllm.pretrained_path == str(tmp_path / "tiny_llava")
    model = build_aura_model(config, base_dir=tmp_path).eval()
    assert model.config.mllm.pretrained_path == "tiny_llava"  # the config keeps the portable relative name
    assert model.mllm.image_seq_length == 4
    light = save_checkpoint(model, tmp_path / "light")  # frozen LLaVA not copied: names the directory
    full = save_checkpoint(model, tmp_path / "full", include_pretrained_mllm=True)
    assert len(load_file(str(full / "model.safetensors"))) > len(load_file(str(light / "model.safetensors")))
    saved = json.loads((full / "config.json").read_text())["config"]["mllm"]
    assert saved["pretrained_path"] is None and saved["vision_image_size"] == 32 and saved["vision_layers"] == 3
    reloaded = load_checkpoint(full)  # builds a random-init LLaVA of the recorded sizes, then fills every tensor
    image = np.full((48, 48, 3), 120, np.uint8)
    with torch.no_grad():
        a = model.mllm(model.mllm.encode([image], ["What is here?"], ["I can see the cup [SEG]."]))
        b = reloaded.mllm(reloaded.mllm.encode([image], ["What is here?"], ["I can see the cup [SEG]."]))
    assert torch.allclose(a.text_loss, b.text_loss, atol=1e-5)


def test_a_finer_image_grid_starts_from_the_coarse_position_table(tmp_path):
    torch.manual_seed(0)
    coarse = build_pretext_model(mllm_config("tiny", 32, 2))  # 2 x 2 patches of 16 px
    fine = build_pretext_model(mllm_config("tiny", 64, 2))  # 4 x 4
    state = coarse.state_dict()
    key = next(k for k in state if k.endswith("position_embedding.weight"))
    before = state[key].clone()
    assert fit_image_grid(fine, state) == (2, 2 * 2)
    assert state[key].shape == fine.state_dict()[key].shape
    assert torch.equal(state[key][0], before[0])  # the class position is kept
    table = state[key][1:].reshape(4, 4, -1)
    # interpolated, not re-initialised: each corner of the fine grid follows the coarse corner patch
    assert torch.corrcoef(torch.stack([table[0, 0], before[1]]))[0, 1] > 0.5
    assert torch.corrcoef(torch.stack([table[3, 3], before[4]]))[0, 1] > 0.5
    load_growing_depth(fine, state)
    assert fit_image_grid(fine, fine.state_dict()) is None  # same grid: nothing to do
    with pytest.raises(SystemExit, match="cannot be resized"):
        fit_image_grid(fine, {key: torch.zeros(6, before.shape[1])})
    # Through the script: --image-size above --init's records the new grid and ships a directory that loads.
    main(SMALL + ["--steps", "2", "--work-dir", str(tmp_path / "one"), "--out", str(tmp_path / "a")])
    size = json.loads((tmp_path / "a" / MANIFEST).read_text())["image_size"]
    main(SMALL[:SMALL.index("--image-size")] + SMALL[SMALL.index("--image-size") + 2:]
         + ["--image-size", str(2 * size), "--steps", "2", "--init", str(tmp_path / "one" / "state.pt"),
            "--work-dir", str(tmp_path / "two"), "--out", str(tmp_path / "b")])
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert manifest["image_size"] == 2 * size
    assert [h for h in manifest["history"] if "init" in h][-1]["image_grid"] == [size // 16, 2 * size // 16]
    loaded = MultiModalLLM.build(dataclasses.replace(get_config("tiny").mllm, pretrained_path=str(tmp_path / "b")))
    assert loaded.core.config.vision_config.image_size == 2 * size


def test_relation_targets_say_what_covers_each_object_as_the_answers_count_it():
    from aura_core.data.synthetic import _occluders, generate_scene

    scene = generate_scene(np.random.default_rng(3), 64)
    rel = relation_targets(scene)
    c = len(CATEGORIES)
    assert rel.shape == (c, 1 + 2 * c)
    present = {o.category_id - 1 for o in scene.objects}
    assert set(np.flatnonzero(rel[:, 0])) == present and not rel[[k for k in range(c) if k not in present]].any()
    pairs = {(o.category_id - 1, scene.objects[j].category_id - 1) for i, o in enumerate(scene.objects)
             for j, _ in _occluders(scene, i)}
    assert pairs  # this scene has covers to check
    assert {(a, b) for a, b in zip(*np.nonzero(rel[:, 1 : 1 + c]))} == pairs  # row a: b covers part of a
    assert {(b, a) for b, a in zip(*np.nonzero(rel[:, 1 + c :]))} == {(b, a) for a, b in pairs}  # row b: b covers a


def test_relation_head_reads_each_name_after_its_layer(tmp_path):
    torch.manual_seed(0)
    mllm = build_pretext_model(mllm_config("tiny", 32, None))
    relation = RelationHead(mllm.hidden_size, layer=1)
    batch = PretextText(seed=0, size=64, batch_size=3, describe_share=1.0, grid=2).batch(0)
    inputs = mllm.encode([s[0] for s in batch], [s[1] for s in batch], [s[2] for s in batch])
    where, target = relation.targets(mllm, inputs["input_ids"], batch)
    names = [mllm.tokenizer.convert_tokens_to_ids(c.name) for c in CATEGORIES]
    assert 0 < int(where.sum()) <= sum(int(t in names) for t in inputs["input_ids"].flatten().tolist())
    assert target.shape == (int(where.sum()), 2 * len(names)) and set(target.unique().tolist()) <= {0.0, 1.0}
    b, t = where.nonzero()[0].tolist()  # the first name read: its target is its scene's row for that category
    category = names.index(int(inputs["input_ids"][b, t]))
    assert batch[b][6][category, 0] == 1 and torch.equal(target[0], torch.from_numpy(batch[b][6][category, 1:]))
    parts = pretext_losses(mllm, None, batch, relation)
    assert set(parts) == {"text", "relation"}
    parts["relation"].backward()  # read after layer 1: layer 1 learns from it, layer 2 does not
    layers = mllm.core.model.language_model.layers
    assert layers[0].mlp.down_proj.weight.grad.abs().sum() > 0
    assert layers[1].mlp.down_proj.weight.grad is None or not layers[1].mlp.down_proj.weight.grad.any()
    # Through the script: the head trains, resumes from its state, and reports how many names it reads right.
    args = SMALL + ["--steps", "2", "--eval-every", "1", "--relation-weight", "1", "--hidden-weight", "1",
                    "--work-dir", str(tmp_path / "r"), "--out", str(tmp_path / "a")]
    main(args + ["--stop-at", "1"])
    main(args)
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert manifest["relation_weight"] == 1 and manifest["relation_layer"] == 1 and manifest["steps_done"] == 2
    assert 0 <= manifest["held_out"]["relation_exact"] <= 1 and 0 <= manifest["held_out"]["patch_hidden_accuracy"] <= 1
    assert manifest["hidden_weight"] == 1
    assert torch.load(tmp_path / "r" / "state.pt", weights_only=False)["relation"]["linear.weight"].shape == (24, 128)
    with pytest.raises(SystemExit, match="--relation-layer 3"):
        main(SMALL + ["--steps", "1", "--relation-weight", "1", "--relation-layer", "3", "--work-dir",
                      str(tmp_path / "bad"), "--out", str(tmp_path / "b")])


def test_grounding_teaches_one_head_to_look_from_each_name_at_its_object(tmp_path):
    torch.manual_seed(0)
    mllm = build_pretext_model(mllm_config("tiny", 32, None))
    grounding = Grounding(layer=1, head=2)
    batch = PretextText(seed=0, size=64, batch_size=3, describe_share=1.0, grid=2).batch(0)
    with pytest.raises(ValueError, match="eager"):  # sdpa, the default, returns no attention probabilities
        pretext_losses(mllm, None, batch, grounding=grounding)
    mllm.core.set_attn_implementation("eager")
    inputs = mllm.encode([s[0] for s in batch], [s[1] for s in batch], [s[2] for s in batch])
    ids = inputs["input_ids"]
    image = ids == mllm.core.config.image_token_index
    names = [mllm.tokenizer.convert_tokens_to_ids(c.name) for c in CATEGORIES]
    # An attention that, from every name, looks only at that object's patches scores the least the loss can be (the
    # entropy of the target); a uniform look at the image scores more.
    b_ids, t_ids = torch.nonzero(torch.isin(ids, torch.tensor(names)), as_tuple=True)
    exact = torch.zeros(ids.shape[0], 4, ids.shape[1], ids.shape[1])
    uniform = torch.zeros_like(exact)
    for b, t in zip(b_ids.tolist(), t_ids.tolist()):
        shares = torch.from_numpy(batch[b][5][:, names.index(int(ids[b, t]))])
        cols = image[b].nonzero().flatten()
        exact[b, 2, t, cols] = 0.5 * shares / shares.sum().clamp_min(1e-9)  # half on the image, half elsewhere
        uniform[b, 2, t, cols] = 0.5 / len(cols)
    log_p, q = grounding.terms(mllm, exact, ids, batch)
    assert len(q) > 0 and torch.allclose(q.sum(-1), torch.ones(len(q)))
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(len(q)), atol=1e-5)
    best = -(q * log_p).sum(-1).mean()
    entropy = -(q * torch.log(q.clamp_min(1e-12))).sum(-1).mean()
    log_u, q_u = grounding.terms(mllm, uniform, ids, batch)
    assert torch.allclose(best, entropy, atol=1e-4) and -(q_u * log_u).sum(-1).mean() > best + 0.05
    # In the model: the loss reaches the supervised layer's queries and keys, and nothing above it.
    parts = pretext_losses(mllm, None, batch, grounding=grounding)
    assert set(parts) == {"text", "ground"} and parts["ground"] > entropy
    parts["ground"].backward()
    layers = mllm.core.model.language_model.layers
    assert layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0 and layers[0].self_attn.k_proj.weight.grad.abs().sum() > 0
    assert layers[1].self_attn.q_proj.weight.grad is None or not layers[1].self_attn.q_proj.weight.grad.any()
    # Through the script: it trains, reports the head's share of image attention on the named objects, and refuses a
    # head the layer does not have.
    args = SMALL + ["--steps", "2", "--eval-every", "2", "--ground-weight", "1", "--ground-head", "3",
                    "--work-dir", str(tmp_path / "g"), "--out", str(tmp_path / "a")]
    main(args)
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert manifest["ground_weight"] == 1 and manifest["ground_layer"] == 1 and manifest["ground_head"] == 3
    assert 0 < manifest["held_out"]["ground_share"] <= 1
    with pytest.raises(SystemExit, match="--ground-head 4"):
        main(SMALL + ["--steps", "2", "--ground-weight", "1", "--ground-head", "4", "--work-dir", str(tmp_path / "bad"),
                      "--out", str(tmp_path / "b")])
