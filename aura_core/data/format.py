"""The one on-disk format of AmodalReasonSeg data (synthetic and real), see docs/DATASET.md.

DIR/images/<file>, DIR/annotations_<split>.json (COCO-style, amodal + visible RLE per object) and
DIR/qa_<split>.json (question/answer pairs whose [SEG]s point at annotation ids). This module writes
and reads it and checks every cross reference, naming the file and entry when something is wrong.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from aura_core.masks import mask_box, occlusion_rate
from aura_core.model.tokens import SEG_TOKEN

LOG = logging.getLogger(__name__)

IMAGES_DIR = "images"
OCCLUDE_RATE_TOLERANCE = 1e-3  # a file's occlude_rate may differ from its masks' rate by rounding only

PathLike = Union[str, os.PathLike]


class DatasetError(ValueError):
    """Bad data set content; the message names the file and the entry."""


def annotations_path(root: PathLike, split: str) -> Path:
    return Path(root) / f"annotations_{split}.json"


def qa_path(root: PathLike, split: str) -> Path:
    return Path(root) / f"qa_{split}.json"


def count_seg_tokens(text: str) -> int:
    return text.count(SEG_TOKEN)


# ----------------------------------------------------------------------------- masks <-> JSON


def encode_mask(mask: np.ndarray) -> Dict[str, Any]:
    """Bool HxW mask -> compressed COCO RLE with a JSON-friendly str `counts`."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _decode_rle(rle: Any) -> np.ndarray:
    with warnings.catch_warnings():  # pycocotools' __array__ predates numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


def decode_segmentation(seg: Any, height: int, width: int, where: str) -> np.ndarray:
    """COCO segmentation (compressed RLE, uncompressed RLE or polygon list) -> bool HxW mask.

    `where` names the file and entry for the error message when the segmentation is malformed or its
    size disagrees with the image.
    """
    if isinstance(seg, dict):
        if "size" not in seg or "counts" not in seg:
            raise DatasetError(f"{where}: RLE needs 'size' and 'counts', got keys {sorted(seg)}")
        size = [int(v) for v in seg["size"]]
        if size != [height, width]:
            raise DatasetError(f"{where}: RLE size {size} disagrees with its image size [{height}, {width}]")
        counts = seg["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(seg, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise DatasetError(f"{where}: RLE 'counts' must be a string or a list, got {type(counts).__name__}")
        try:
            decoded = _decode_rle(rle)
        except (ValueError, TypeError) as err:
            raise DatasetError(f"{where}: RLE cannot be decoded ({err})") from err
        if int(decoded.sum()) > 0 and int(mask_utils.area(rle)) != int(decoded.sum()):
            raise DatasetError(f"{where}: RLE is corrupt")
        return decoded.astype(bool)
    if isinstance(seg, list):
        polygons = [p for p in seg if isinstance(p, (list, tuple))]
        if not polygons or len(polygons) != len(seg) or any(len(p) < 6 or len(p) % 2 for p in polygons):
            raise DatasetError(f"{where}: polygon segmentation must be a list of [x1, y1, x2, y2, ...] with >= 3 points")
        rles = mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
        return _decode_rle(mask_utils.merge(rles)).astype(bool)
    raise DatasetError(f"{where}: segmentation must be an RLE dict or a polygon list, got {type(seg).__name__}")


def coco_bbox(mask: np.ndarray) -> List[int]:
    """The COCO `bbox` field of a mask: xywh, [0, 0, 0, 0] for an empty mask (COCO has no "no box")."""
    return list(mask_box(mask) or (0, 0, 0, 0))


# ----------------------------------------------------------------------------- records


@dataclass
class ImageRecord:
    id: int
    file_name: str
    height: int
    width: int


@dataclass
class ObjectRecord:
    """One object: masks stay encoded until a sample needs them."""

    id: int
    image_id: int
    category_id: int
    segmentation: Any  # amodal
    visible_segmentation: Any
    bbox: List[float]
    visible_bbox: List[float]
    occlude_rate: float  # the ground-truth occlusion rate: the file's, checked against the masks (or computed from them)


@dataclass
class QARecord:
    id: int
    image_id: int
    question: str
    answer: str
    object_ids: List[int]
    phrases: Optional[List[str]] = None
    kind: Optional[str] = None  # what the question asks (synthetic sets: aura_core.data.synthetic.QA_KINDS)


@dataclass
class AmodalSplit:
    """One split read from disk and validated."""

    root: Path
    split: str
    images: Dict[int, ImageRecord]
    categories: Dict[int, str]
    objects: Dict[int, ObjectRecord]
    qa: List[QARecord]
    objects_by_image: Dict[int, List[int]] = field(default_factory=dict)

    def image_path(self, image_id: int) -> Path:
        return self.root / IMAGES_DIR / self.images[image_id].file_name

    def load_image(self, image_id: int) -> np.ndarray:
        """RGB uint8 HxWx3; a corrupt file raises DatasetError naming it."""
        return read_rgb(self.image_path(image_id))

    def masks(self, object_id: int) -> "tuple[np.ndarray, np.ndarray]":
        """(visible, amodal) bool HxW masks of one object."""
        obj = self.objects[object_id]
        img = self.images[obj.image_id]
        where = f"{annotations_path(self.root, self.split).name}: annotation id {object_id}"
        amodal = decode_segmentation(obj.segmentation, img.height, img.width, f"{where} segmentation")
        visible = decode_segmentation(obj.visible_segmentation, img.height, img.width, f"{where} visible_segmentation")
        return visible, amodal


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DatasetError(f"{path}: cannot read image ({err})") from err


def image_size(path: Path) -> "tuple[int, int]":
    """(height, width) after a full integrity check of the file; DatasetError naming the file if corrupt."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
            return im.height, im.width
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise DatasetError(f"{path}: corrupt or unreadable image ({err})") from err


# ----------------------------------------------------------------------------- writing


class SplitWriter:
    """Builds one split on disk: add images, objects (masks) and QA pairs, then `close()` writes the JSONs."""

    def __init__(self, *, root: PathLike, split: str, categories: Sequence[Dict[str, Any]]) -> None:
        self.root = Path(root)
        self.split = split
        (self.root / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        self.categories = [dict(c) for c in categories]
        self._images: List[Dict[str, Any]] = []
        self._annotations: List[Dict[str, Any]] = []
        self._qa: List[Dict[str, Any]] = []
        self._image_sizes: Dict[int, "tuple[int, int]"] = {}

    def _register(self, file_name: str, height: int, width: int, image_id: Optional[int]) -> int:
        image_id = len(self._images) + 1 if image_id is None else int(image_id)
        self._images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        self._image_sizes[image_id] = (height, width)
        return image_id

    def add_image_array(self, file_name: str, image: np.ndarray, image_id: Optional[int] = None) -> int:
        """Write an RGB uint8 HxWx3 array as a PNG (deterministic bytes) and register it."""
        Image.fromarray(image).save(self.root / IMAGES_DIR / file_name, format="PNG", compress_level=6)
        return self._register(file_name, int(image.shape[0]), int(image.shape[1]), image_id)

    def add_image_file(self, source: PathLike, image_id: Optional[int] = None) -> int:
        """Copy an existing image file (checked for corruption) and register it."""
        source = Path(source)
        height, width = image_size(source)
        shutil.copyfile(source, self.root / IMAGES_DIR / source.name)
        return self._register(source.name, height, width, image_id)

    def add_object(
        self,
        *,
        image_id: int,
        category_id: int,
        amodal: np.ndarray,
        visible: np.ndarray,
        object_id: Optional[int] = None,
        extra: Optional[Dict[str, Any]] = None,
    ) -> int:
        """Register one object from its bool masks; visible is clipped to amodal."""
        if image_id not in self._image_sizes:
            raise DatasetError(f"object for unknown image id {image_id}")
        if amodal.shape != self._image_sizes[image_id] or visible.shape != amodal.shape:
            raise DatasetError(f"image id {image_id}: mask shapes {amodal.shape}/{visible.shape} != image {self._image_sizes[image_id]}")
        visible = np.logical_and(visible, amodal)
        object_id = len(self._annotations) + 1 if object_id is None else int(object_id)
        entry = {
            "id": object_id,
            "image_id": int(image_id),
            "category_id": int(category_id),
            "segmentation": encode_mask(amodal),
            "visible_segmentation": encode_mask(visible),
            "bbox": coco_bbox(amodal),
            "visible_bbox": coco_bbox(visible),
            "area": int(amodal.sum()),
            "visible_area": int(visible.sum()),
            "occlude_rate": round(occlusion_rate(visible, amodal), 6),
            "iscrowd": 0,
        }
        entry.update(extra or {})
        self._annotations.append(entry)
        return object_id

    def add_qa(self, *, image_id: int, question: str, answer: str, object_ids: Sequence[int], phrases: Optional[Sequence[str]] = None,
               kind: Optional[str] = None) -> int:
        entry: Dict[str, Any] = {
            "id": len(self._qa) + 1,
            "image_id": int(image_id),
            "question": question,
            "answer": answer,
            "object_ids": [int(i) for i in object_ids],
        }
        if phrases is not None:
            entry["phrases"] = list(phrases)
        if kind:
            entry["kind"] = str(kind)
        self._qa.append(entry)
        return entry["id"]

    def close(self, *, write_qa: bool = True) -> None:
        annotations = {"images": self._images, "categories": self.categories, "annotations": self._annotations}
        _write_json(annotations_path(self.root, self.split), annotations)
        if write_qa:
            _write_json(qa_path(self.root, self.split), self._qa)


def _write_json(path: Path, payload: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------- reading


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from err


class _Checker:
    """Raises, or (skip_invalid) warns and counts, one problem at a time."""

    def __init__(self, skip_invalid: bool) -> None:
        self.skip_invalid = skip_invalid
        self.skipped = 0

    def problem(self, err: DatasetError) -> None:
        if not self.skip_invalid:
            raise err
        self.skipped += 1
        LOG.warning("skipping: %s", err)


def _require(entry: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: entry must be an object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DatasetError(f"{where}: missing key(s) {missing}")


def load_split(root: PathLike, split: str, *, skip_invalid: bool = False, check_images: bool = True) -> AmodalSplit:
    """Read and validate one split.

    Every image must open (when `check_images`), every annotation must name a known image and
    category with segmentations of the image's size, and every QA entry must name a known image,
    objects of that image, and carry exactly one [SEG] per object id. With `skip_invalid` the bad
    entry (and whatever depends on it) is dropped with a warning instead of raising DatasetError.
    """
    root = Path(root)
    ann_file = annotations_path(root, split)
    qa_file = qa_path(root, split)
    data = _read_json(ann_file)
    _require(data, ["images", "annotations", "categories"], str(ann_file))
    check = _Checker(skip_invalid)

    categories: Dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        _require(cat, ["id", "name"], f"{ann_file.name}: categories[{i}]")
        categories[int(cat["id"])] = str(cat["name"])

    images: Dict[int, ImageRecord] = {}
    for i, entry in enumerate(data["images"]):
        where = f"{ann_file.name}: images[{i}]"
        try:
            _require(entry, ["id", "file_name", "height", "width"], where)
            record = ImageRecord(int(entry["id"]), str(entry["file_name"]), int(entry["height"]), int(entry["width"]))
            where = f"{ann_file.name}: image id {record.id} ({record.file_name})"
            path = root / IMAGES_DIR / record.file_name
            if not path.is_file():
                raise DatasetError(f"{where}: image file {path} not found")
            if check_images:
                size = image_size(path)
                if size != (record.height, record.width):
                    raise DatasetError(f"{where}: file is {size[0]}x{size[1]} but the entry says {record.height}x{record.width}")
            images[record.id] = record
        except DatasetError as err:
            check.problem(err)

    objects: Dict[int, ObjectRecord] = {}
    by_image: Dict[int, List[int]] = {}
    for i, entry in enumerate(data["annotations"]):
        where = f"{ann_file.name}: annotations[{i}]"
        try:
            _require(entry, ["id", "image_id", "category_id", "segmentation", "visible_segmentation"], where)
            where = f"{ann_file.name}: annotation id {entry['id']}"
            image_id = int(entry["image_id"])
            if image_id not in images:
                raise DatasetError(f"{where}: names image id {image_id}, which is missing or invalid")
            if int(entry["category_id"]) not in categories:
                raise DatasetError(f"{where}: unknown category_id {entry['category_id']}")
            img = images[image_id]
            amodal = decode_segmentation(entry["segmentation"], img.height, img.width, f"{where} segmentation")
            visible = decode_segmentation(entry["visible_segmentation"], img.height, img.width, f"{where} visible_segmentation")
            if int(amodal.sum()) == 0:
                raise DatasetError(f"{where}: empty amodal segmentation")
            rate = occlusion_rate(visible, amodal)
            if "occlude_rate" in entry and abs(float(entry["occlude_rate"]) - rate) > OCCLUDE_RATE_TOLERANCE:
                raise DatasetError(f"{where}: occlude_rate {float(entry['occlude_rate']):.6f} disagrees with its masks "
                                   f"(1 - |V∩A|/|A| = {rate:.6f}); fix or drop the field (converters keep a source's own "
                                   "rate as source_occlude_rate)")
            obj = ObjectRecord(
                id=int(entry["id"]),
                image_id=image_id,
                category_id=int(entry["category_id"]),
                segmentation=entry["segmentation"],
                visible_segmentation=entry["visible_segmentation"],
                bbox=list(entry.get("bbox") or coco_bbox(amodal)),
                visible_bbox=list(entry.get("visible_bbox") or coco_bbox(visible)),
                occlude_rate=float(entry.get("occlude_rate", rate)),
            )
            if obj.id in objects:
                raise DatasetError(f"{where}: duplicate annotation id")
            objects[obj.id] = obj
            by_image.setdefault(image_id, []).append(obj.id)
        except DatasetError as err:
            check.problem(err)

    qa: List[QARecord] = []
    qa_data = _read_json(qa_file) if qa_file.is_file() else []
    if not isinstance(qa_data, list):
        raise DatasetError(f"{qa_file}: must hold a list of question/answer entries")
    for i, entry in enumerate(qa_data):
        where = f"{qa_file.name}: entry [{i}]"
        try:
            _require(entry, ["image_id", "question", "answer", "object_ids"], where)
            if "id" in entry:
                where = f"{qa_file.name}: entry id {entry['id']}"
            image_id = int(entry["image_id"])
            if image_id not in images:
                raise DatasetError(f"{where}: names image id {image_id}, which is missing or invalid")
            object_ids = [int(o) for o in entry["object_ids"]]
            n_seg = count_seg_tokens(str(entry["answer"]))
            if n_seg != len(object_ids):
                raise DatasetError(f"{where}: answer has {n_seg} {SEG_TOKEN} but object_ids lists {len(object_ids)} object(s)")
            for oid in object_ids:
                if oid not in objects:
                    raise DatasetError(f"{where}: unknown (or invalid) object id {oid}")
                if objects[oid].image_id != image_id:
                    raise DatasetError(f"{where}: object id {oid} belongs to image {objects[oid].image_id}, not {image_id}")
            phrases = entry.get("phrases")
            if phrases is not None and len(phrases) != len(object_ids):
                raise DatasetError(f"{where}: {len(phrases)} phrases for {len(object_ids)} object ids")
            qa.append(QARecord(int(entry.get("id", i + 1)), image_id, str(entry["question"]), str(entry["answer"]), object_ids,
                               None if phrases is None else [str(p) for p in phrases],
                               None if entry.get("kind") is None else str(entry["kind"])))
        except DatasetError as err:
            check.problem(err)

    if check.skipped:
        LOG.warning("%s split %r: skipped %d invalid entries", root, split, check.skipped)
    return AmodalSplit(root=root, split=split, images=images, categories=categories, objects=objects, qa=qa, objects_by_image=by_image)
