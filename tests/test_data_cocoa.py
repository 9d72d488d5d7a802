"""COCOA-cls and original COCOA converters on small files the test writes itself."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from aura_core.data.cocoa import REGION_ID_BASE, main
from aura_core.data.dataset import AmodalReasonSegDataset
from aura_core.data.format import DatasetError, load_split

H, W = 40, 60


def _rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": r["counts"].decode("ascii")}


def _box(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


# image 1: a "cup" (back, rows 5-25 x 5-35) partly hidden by a "book" (front, rows 15-35 x 20-50)
CUP, BOOK = _box(5, 5, 35, 25), _box(20, 15, 50, 35)
CUP_VIS = CUP & ~BOOK


def _images(tmp_path: Path) -> Path:
    d = tmp_path / "coco_images"
    d.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.full((H, W, 3), 120, np.uint8)).save(d / name)
    return d


def _write(path: Path, payload) -> Path:
    path.write_text(json.dumps(payload))
    return path


IMAGES = [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}, {"id": 2, "file_name": "b.jpg", "height": H, "width": W}]


def _cocoa_cls():
    return {
        "images": IMAGES,
        "categories": [{"id": 47, "name": "cup"}, {"id": 84, "name": "book"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 47, "segmentation": _rle(CUP), "visible_mask": _rle(CUP_VIS),
             "invisible_mask": _rle(CUP & BOOK), "occlude_rate": 0.25, "bbox": [5, 5, 30, 20], "area": int(CUP.sum())},
            {"id": 11, "image_id": 1, "category_id": 84, "segmentation": _rle(BOOK), "visible_mask": _rle(BOOK),
             "occlude_rate": 0.0, "bbox": [20, 15, 30, 20], "area": int(BOOK.sum())},
            {"id": 12, "image_id": 2, "category_id": 84, "segmentation": _rle(CUP), "visible_mask": _rle(CUP), "occlude_rate": 0.0},
        ],
    }


def _poly(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _cocoa_original():
    return {
        "images": IMAGES,
        "annotations": [
            {"id": 7, "image_id": 1, "size": 2, "depth_constraint": "1-2", "regions": [
                {"name": "book", "order": 1, "segmentation": _poly(20, 15, 50, 35), "occlude_rate": 0.0, "area": 600.0, "isStuff": 0},
                {"name": "cup", "order": 2, "segmentation": _poly(5, 5, 35, 25), "occlude_rate": 0.25,
                 "visible_mask": _rle(CUP_VIS), "invisible_mask": _rle(CUP & BOOK), "area": 600.0, "isStuff": 0},
            ]},
            {"id": 8, "image_id": 1, "size": 1, "depth_constraint": "", "regions": [  # second annotator: ignored
                {"name": "table", "order": 1, "segmentation": _poly(0, 0, 10, 10), "occlude_rate": 0.0}]},
            {"id": 9, "image_id": 2, "size": 1, "depth_constraint": "", "regions": [
                {"name": "cup", "order": 1, "segmentation": _poly(5, 5, 35, 25), "occlude_rate": 0.0}]},
        ],
    }


def test_cocoa_cls(tmp_path, capsys):
    imgs = _images(tmp_path)
    ann = _write(tmp_path / "cls.json", _cocoa_cls())
    qa = _write(tmp_path / "qa.json", [
        {"id": 1, "image_id": 1, "question": "What could hold my coffee?", "answer": "The cup [SEG], partly hidden behind the book.",
         "object_ids": [10], "phrases": ["the cup"]},
        {"id": 2, "file_name": "a.jpg", "question": "What is on the table?", "answer": "A cup [SEG] and a book [SEG].", "object_ids": [10, 11]},
    ])
    out = tmp_path / "out"
    assert main(["--annotations", str(ann), "--images", str(imgs), "--qa", str(qa), "--out", str(out), "--split", "test"]) == 0
    assert "COCOA-cls" in capsys.readouterr().out
    ds = AmodalReasonSegDataset(out, "test", image_size=32)
    assert len(ds) == 2 and ds.categories == {47: "cup", 84: "book"}
    it = ds[0]
    assert it["object_ids"] == [10] and it["category_ids"] == [47] and it["phrases"] == ["the cup"]
    assert np.array_equal(it["amodal_masks"][0].numpy(), CUP) and np.array_equal(it["visible_masks"][0].numpy(), CUP_VIS)
    assert it["occlusion_rates"][0].item() == pytest.approx((CUP & BOOK).sum() / CUP.sum())
    assert ds[1]["phrases"] == ["cup", "book"]  # no phrases given: category names


def test_cocoa_original_without_qa(tmp_path, capsys):
    imgs = _images(tmp_path)
    ann = _write(tmp_path / "cocoa.json", _cocoa_original())
    out = tmp_path / "out"
    assert main(["--annotations", str(ann), "--images", str(imgs), "--out", str(out)]) == 0
    assert "found the COCOA schema" in capsys.readouterr().out
    assert not (out / "qa_train.json").exists()
    split = load_split(out, "train")
    assert len(split.qa) == 0 and set(split.categories.values()) == {"book", "cup"}  # second annotator's "table" dropped
    book_id, cup_id = 7 * REGION_ID_BASE + 0, 7 * REGION_ID_BASE + 1
    assert set(split.objects_by_image[1]) == {book_id, cup_id}
    vis, amo = split.masks(cup_id)
    assert np.array_equal(vis, CUP_VIS) and amo.sum() > 0.9 * CUP.sum()  # polygon rasterisation
    vis, amo = split.masks(book_id)
    assert np.array_equal(vis, amo)  # not occluded: visible = amodal
    assert split.objects[cup_id].occlude_rate == pytest.approx(1 - CUP_VIS.sum() / amo.sum(), abs=1e-6)


def test_bad_inputs(tmp_path):
    imgs = _images(tmp_path)
    out = tmp_path / "out"
    bad_qa = _write(tmp_path / "qa.json", [{"id": 5, "image_id": 1, "question": "q", "answer": "a [SEG] [SEG]", "object_ids": [10]}])
    ann = _write(tmp_path / "cls.json", _cocoa_cls())
    with pytest.raises(DatasetError, match=r"qa.json: entry \[0\] \(id 5\): answer has 2 \[SEG\]"):
        from aura_core.data.cocoa import convert
        convert(ann, imgs, out, qa=bad_qa)
    data = _cocoa_cls()
    data["annotations"][0]["visible_mask"] = {"size": [10, 10], "counts": _rle(CUP)["counts"]}
    _write(ann, data)
    with pytest.raises(SystemExit):
        main(["--annotations", str(ann), "--images", str(imgs), "--out", str(out)])
    (imgs / "b.jpg").unlink()
    _write(ann, _cocoa_cls())
    with pytest.raises(DatasetError, match=r"image id 2: file .*b.jpg not found"):
        convert(ann, imgs, out)
    convert(ann, imgs, out, skip_invalid=True)
    assert set(load_split(out, "train").images) == {1}
    _write(ann, {"images": [], "annotations": [{"id": 1, "foo": 2}]})
    with pytest.raises(DatasetError, match="neither 'regions'"):
        convert(ann, imgs, out)
