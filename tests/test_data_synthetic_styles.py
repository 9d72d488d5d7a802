"""Rendering styles of the synthetic generator and the evaluation sets of training/make_eval_splits.py (issue 11)."""
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from aura_core.data.cocoa import SCHEMA_COCOA_CLS, detect_schema
from aura_core.data.dataset import AmodalReasonSegDataset
from aura_core.data.format import load_split
from aura_core.data.synthetic import DEFAULT_STYLE, STYLES, generate_scene, main, split_key, split_scene
from training import make_eval_splits as mes

ROOT = Path(__file__).resolve().parents[1]
ALT_STYLES = [s for s in STYLES if s != DEFAULT_STYLE]


def _digest(scenes) -> str:
    h = hashlib.sha256()
    for sc in scenes:
        h.update(sc.image.tobytes())
        for o in sc.objects:
            h.update(np.packbits(o.amodal).tobytes())
            h.update(np.packbits(o.visible).tobytes())
            h.update(o.name.encode())
        for qa in sc.qa:
            h.update((qa.question + "|" + qa.answer + "|" + ",".join(map(str, qa.targets))).encode())
    return h.hexdigest()


def test_default_style_is_unchanged():
    # Pinned from the generator before styles existed: images, masks and QA pairs of the default style stay the same,
    # so the cached training set (and every seed's data) is what it was.
    scenes = [generate_scene(np.random.default_rng([7, i]), 64) for i in range(4)]
    assert _digest(scenes) == "9bdf6c8b216565dd6c5daff7964faeedf1272f2c30ccb26d166f720773217ad5"
    explicit = [generate_scene(np.random.default_rng([7, i]), 64, style=DEFAULT_STYLE) for i in range(4)]
    assert _digest(explicit) == _digest(scenes)


@pytest.mark.parametrize("style", ALT_STYLES)
def test_style_changes_pixels_not_masks(style):
    for i in range(4):
        base = split_scene(9, "test", i, 64)
        alt = split_scene(9, "test", i, 64, style=style)
        assert alt.image.shape == base.image.shape and alt.image.dtype == np.uint8
        diff = np.abs(alt.image.astype(np.int16) - base.image.astype(np.int16))
        assert diff.mean() > 15, f"{style}: the image barely changed ({diff.mean():.1f})"
        background = ~np.any([o.amodal for o in base.objects], axis=0)
        assert diff[background].mean() > 15 and diff[~background].mean() > 5  # backdrop and light both change
        assert [o.name for o in alt.objects] == [o.name for o in base.objects]
        for a, b in zip(alt.objects, base.objects):
            assert np.array_equal(a.amodal, b.amodal) and np.array_equal(a.visible, b.visible)
            assert a.occlusion_rate == b.occlusion_rate
        assert [(q.question, q.answer, q.targets, q.phrases) for q in alt.qa] == [(q.question, q.answer, q.targets, q.phrases) for q in base.qa]
        again = split_scene(9, "test", i, 64, style=style)
        assert np.array_equal(again.image, alt.image), "a style is deterministic per seed"


def test_styles_differ_in_brightness():
    mean = {s: np.mean([split_scene(9, "test", i, 64, style=s).image.mean() for i in range(6)]) for s in STYLES}
    assert mean["studio"] > mean[DEFAULT_STYLE] + 10 and mean["dusk"] < mean[DEFAULT_STYLE] - 30


def test_unknown_style_is_an_error():
    with pytest.raises(ValueError, match="unknown style"):
        generate_scene(np.random.default_rng(0), 64, style="neon")


def test_cli_style(tmp_path: Path):
    assert main(["--out", str(tmp_path / "a"), "--train", "1", "--val", "1", "--seed", "2", "--size", "64", "--style", "dusk"]) == 0
    assert main(["--out", str(tmp_path / "b"), "--train", "1", "--val", "1", "--seed", "2", "--size", "64"]) == 0
    a, b = load_split(tmp_path / "a", "val"), load_split(tmp_path / "b", "val")
    assert [o.segmentation for o in a.objects.values()] == [o.segmentation for o in b.objects.values()]
    assert [q.answer for q in a.qa] == [q.answer for q in b.qa]
    assert (tmp_path / "a/images/val_000000.png").read_bytes() != (tmp_path / "b/images/val_000000.png").read_bytes()


def test_eval_seed_is_never_used_for_training():
    assert mes.EVAL_SEED not in mes.TRAINING_SEEDS
    pretext_keys = {int(m) for f in ("pretrain_backbone.py", "pretrain_mllm.py")
                    for m in re.findall(r"^PRETEXT_SEED_KEY\s*=\s*(\d+)", (ROOT / "training" / f).read_text(), re.M)}
    assert split_key(mes.EVAL_SPLIT) not in {split_key("train"), split_key("val")} | pretext_keys
    for bad in mes.TRAINING_SEEDS:
        with pytest.raises(ValueError, match="training streams"):
            mes.make_eval_splits(Path("/nonexistent"), images=1, seed=bad)
    with pytest.raises(ValueError, match="other than the training style"):
        mes.make_eval_splits(Path("/nonexistent"), images=1, style=DEFAULT_STYLE)


@pytest.fixture(scope="module")
def eval_splits(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_splits")
    assert mes.main(["--out", str(out), "--images", "3", "--size", "64", "--style", "dusk"]) == 0
    return out


def test_eval_splits_load_like_evaluate_does(eval_splits: Path):
    from training.data import check_data_dir

    manifest = json.loads((eval_splits / "manifest.json").read_text())
    assert manifest["seed"] == mes.EVAL_SEED
    for name in ("heldout_seed", "cocoa_dusk"):
        check_data_dir(eval_splits / name, ["test"])  # what training/evaluate.py checks before loading
        dataset = AmodalReasonSegDataset(eval_splits / name, "test", image_size=64)
        assert len(dataset.data.images) == 3 == manifest[name]["images"]
        assert len(dataset) == manifest[name]["qa"] >= 3
        assert len(dataset.data.objects) == manifest[name]["objects"]
        item = dataset[0]
        assert item["amodal_masks"].shape[0] == item["answer"].count("[SEG]") >= 1
    assert manifest["cocoa_dusk"]["raw"]["qa"] == manifest["cocoa_dusk"]["qa"]


def test_cocoa_set_is_cocoa_cls_and_converts_to_the_same_scenes(eval_splits: Path):
    raw = json.loads((eval_splits / "cocoa_dusk_raw" / "annotations.json").read_text())
    assert detect_schema(raw, "raw") == SCHEMA_COCOA_CLS
    assert {"supercategory", "id", "name"} <= set(raw["categories"][0])
    assert max(c["id"] for c in raw["categories"]) > 12  # COCO's ids, not 1..12
    for ann in raw["annotations"]:
        assert ("invisible_mask" in ann) == (ann["occlude_rate"] > 0)
    heldout, cocoa = load_split(eval_splits / "heldout_seed", "test"), load_split(eval_splits / "cocoa_dusk", "test")
    assert [q.question for q in cocoa.qa] == [q.question for q in heldout.qa]
    assert [q.answer for q in cocoa.qa] == [q.answer for q in heldout.qa]
    assert [q.kind for q in cocoa.qa] == [q.kind for q in heldout.qa] and all(q.kind for q in cocoa.qa)  # kept by the converter
    for qc, qh in zip(cocoa.qa, heldout.qa):
        for oc, oh in zip(qc.object_ids, qh.object_ids):
            (vc, ac), (vh, ah) = cocoa.masks(oc), heldout.masks(oh)
            assert np.array_equal(vc, vh) and np.array_equal(ac, ah)
            assert abs(cocoa.objects[oc].occlude_rate - heldout.objects[oh].occlude_rate) < 1e-6
    files = sorted((eval_splits / "cocoa_dusk" / "images").iterdir())
    assert len(files) == 3 and files[0].read_bytes() != (eval_splits / "heldout_seed/images/test_000000.png").read_bytes()
