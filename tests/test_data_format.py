"""Loader and dataset on synthetic data, and the bad-input errors (naming file and entry)."""
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aura_core.data.dataset import AmodalReasonSegDataset, collate
from aura_core.data.format import DatasetError, decode_segmentation, encode_mask, load_split


@pytest.fixture
def copy_set(small_synth, tmp_path):
    dst = tmp_path / "set"
    shutil.copytree(small_synth, dst)
    return dst


def _edit(path: Path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_dataset_items(small_synth):
    ds = AmodalReasonSegDataset(small_synth, "train", image_size=64, cache_images=2)
    assert len(ds) >= 6
    for i in range(len(ds)):
        it = ds[i]
        k = it["answer"].count("[SEG]")
        assert it["image"].dtype == np.uint8 and it["image"].shape == (96, 96, 3)
        assert it["sam_image"].shape == (3, 64, 64) and it["resize_hw"] == (64, 64) and it["original_hw"] == (96, 96)
        assert it["visible_masks"].shape == it["amodal_masks"].shape == it["spatial_maps"].shape == (k, 96, 96)
        assert it["visible_masks"].dtype == torch.bool and it["spatial_maps"].dtype == torch.int64
        assert len(it["phrases"]) == len(it["object_ids"]) == len(it["category_ids"]) == k
        v, a, sp = it["visible_masks"], it["amodal_masks"], it["spatial_maps"]
        assert not (v & ~a).any()
        assert torch.equal(sp == 1, v) and torch.equal(sp == 2, a & ~v) and torch.equal(sp == 0, ~a)
        expected = 1 - v.flatten(1).sum(1).float() / a.flatten(1).sum(1).float()
        assert torch.allclose(it["occlusion_rates"], expected, atol=1e-6)
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["sam_images"].shape == (3, 3, 64, 64)
    assert len(batch["question"]) == 3 and len(batch["amodal_masks"]) == 3
    groups = ds.image_groups()
    assert sum(len(g) for g in groups.values()) == len(ds)
    conv = next(ds.iter_images())
    assert len({it["image_id"] for it in conv}) == 1


def test_polygon_and_uncompressed_rle():
    mask = np.zeros((10, 12), bool)
    mask[2:6, 3:9] = True
    poly = decode_segmentation([[3, 2, 9, 2, 9, 6, 3, 6]], 10, 12, "t")
    assert poly[3:5, 4:8].all() and not poly[8:].any()
    counts = []  # uncompressed, column-major runs starting with zeros
    flat = mask.flatten(order="F")
    run, cur = 0, False
    for px in flat:
        if px != cur:
            counts.append(run)
            run, cur = 0, px
        run += 1
    counts.append(run)
    assert np.array_equal(decode_segmentation({"size": [10, 12], "counts": counts}, 10, 12, "t"), mask)
    assert np.array_equal(decode_segmentation(encode_mask(mask), 10, 12, "t"), mask)


def test_corrupt_image(copy_set, caplog):
    victim = sorted((copy_set / "images").glob("train_*.png"))[1]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DatasetError, match=victim.name):
        load_split(copy_set, "train")
    with caplog.at_level(logging.WARNING):
        split = load_split(copy_set, "train", skip_invalid=True)
    assert len(split.images) == 5 and "skipping" in caplog.text
    assert all(q.image_id in split.images for q in split.qa)
    assert all(o.image_id in split.images for o in split.objects.values())


def test_annotation_names_missing_image(copy_set):
    _edit(copy_set / "annotations_train.json", lambda d: d["annotations"][0].update(image_id=999))
    with pytest.raises(DatasetError, match=r"annotations_train.json: annotation id 1: names image id 999"):
        load_split(copy_set, "train")
    split = load_split(copy_set, "train", skip_invalid=True)
    assert 1 not in split.objects and all(1 not in q.object_ids for q in split.qa)


def test_missing_image_file(copy_set):
    (copy_set / "images" / "train_000002.png").unlink()
    with pytest.raises(DatasetError, match=r"image id 3 \(train_000002.png\).*not found"):
        load_split(copy_set, "train")


def test_rle_size_mismatch(copy_set):
    def shrink(d):
        d["annotations"][2]["visible_segmentation"] = encode_mask(np.ones((10, 10), bool))

    _edit(copy_set / "annotations_train.json", shrink)
    with pytest.raises(DatasetError, match=r"annotation id 3 visible_segmentation: RLE size \[10, 10\] disagrees with its image size \[96, 96\]"):
        load_split(copy_set, "train")


def test_seg_count_mismatch_and_unknown_object(copy_set):
    _edit(copy_set / "qa_train.json", lambda d: d[1].update(answer=d[1]["answer"] + " [SEG]"))
    with pytest.raises(DatasetError, match=r"qa_train.json: entry id 2: answer has \d+ \[SEG\] but object_ids lists"):
        load_split(copy_set, "train")
    assert all(q.id != 2 for q in load_split(copy_set, "train", skip_invalid=True).qa)
    _edit(copy_set / "qa_train.json", lambda d: d.pop(1))
    _edit(copy_set / "qa_train.json", lambda d: d[0].update(object_ids=[12345] * len(d[0]["object_ids"])))
    with pytest.raises(DatasetError, match=r"qa_train.json: entry id 1: unknown \(or invalid\) object id 12345"):
        AmodalReasonSegDataset(copy_set, "train")


def test_occlude_rate_is_the_ground_truth_rate_and_must_match_the_masks(copy_set):
    # Within rounding: used as the item's ground-truth rate, exactly as the file has it.
    first = json.loads((copy_set / "annotations_train.json").read_text())["annotations"][0]
    _edit(copy_set / "annotations_train.json", lambda d: d["annotations"][0].update(occlude_rate=first["occlude_rate"] + 4e-4))
    split = load_split(copy_set, "train")
    assert split.objects[first["id"]].occlude_rate == pytest.approx(first["occlude_rate"] + 4e-4)
    ds = AmodalReasonSegDataset(copy_set, "train", image_size=64)
    item = next(ds[i] for i in range(len(ds)) if first["id"] in ds[i]["object_ids"])
    k = item["object_ids"].index(first["id"])
    assert float(item["occlusion_rates"][k]) == pytest.approx(first["occlude_rate"] + 4e-4, abs=1e-7)
    # Another definition (or a stale value): an error naming both rates; skipped with skip_invalid.
    _edit(copy_set / "annotations_train.json", lambda d: d["annotations"][0].update(occlude_rate=0.9))
    with pytest.raises(DatasetError, match=r"annotation id 1: occlude_rate 0.900000 disagrees with its masks"):
        load_split(copy_set, "train")
    assert first["id"] not in load_split(copy_set, "train", skip_invalid=True).objects
    # Absent: computed from the masks.
    _edit(copy_set / "annotations_train.json", lambda d: d["annotations"][0].pop("occlude_rate"))
    assert load_split(copy_set, "train").objects[first["id"]].occlude_rate == pytest.approx(first["occlude_rate"], abs=1e-6)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DatasetError, match="annotations_val.json: file not found"):
        load_split(tmp_path, "val")
