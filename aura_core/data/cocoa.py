"""Converters from the two COCOA schemas (+ an optional QA file) into the format of docs/DATASET.md.

COCOA-cls: flat COCO-style annotations; `segmentation` is the amodal RLE, `visible_mask` is always
there, `invisible_mask` only when occluded; COCO `categories`.
Original COCOA: one entry per image and annotator with `regions` (front first): amodal polygon
`segmentation`, `visible_mask`/`invisible_mask` RLE only when occluded (else visible = amodal),
`occlude_rate`, `order`, `name`, and an image-level `depth_constraint` such as "1-2,1-5".

CLI: aura-convert-cocoa --annotations FILE --images DIR [--qa FILE] --out DIR [--split NAME]
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from aura_core.data.format import DatasetError, SplitWriter, count_seg_tokens, decode_segmentation, image_size, load_split

LOG = logging.getLogger(__name__)

SCHEMA_COCOA_CLS = "COCOA-cls"
SCHEMA_COCOA = "COCOA"
# Original COCOA has free-text names; object ids become entry_id * REGION_ID_BASE + region index (front first).
REGION_ID_BASE = 1000


def detect_schema(data: Any, source: str) -> str:
    """Which COCOA flavour a loaded annotation JSON is; DatasetError if neither."""
    if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
        raise DatasetError(f"{source}: expected a COCO-style object with 'images' and 'annotations'")
    anns = data["annotations"]
    if not anns:
        raise DatasetError(f"{source}: no annotations")
    first = anns[0]
    if isinstance(first, dict) and "regions" in first:
        return SCHEMA_COCOA
    if isinstance(first, dict) and "segmentation" in first and "visible_mask" in first:
        return SCHEMA_COCOA_CLS
    raise DatasetError(f"{source}: annotations[0] has neither 'regions' (COCOA) nor 'segmentation' + 'visible_mask' (COCOA-cls); keys {sorted(first) if isinstance(first, dict) else type(first).__name__}")


def _polygon(seg: Any) -> Any:
    """COCOA stores one flat polygon [x1, y1, ...]; COCO wants a list of polygons."""
    if isinstance(seg, list) and seg and not isinstance(seg[0], (list, tuple)):
        return [seg]
    return seg


def _objects_cocoa_cls(data: Dict[str, Any], source: str) -> Tuple[List[Dict[str, Any]], Dict[int, List[Dict[str, Any]]]]:
    categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in data.get("categories", [])]
    if not categories:
        raise DatasetError(f"{source}: COCOA-cls file has no 'categories'")
    by_image: Dict[int, List[Dict[str, Any]]] = {}
    for i, ann in enumerate(data["annotations"]):
        missing = [k for k in ("id", "image_id", "category_id", "segmentation", "visible_mask") if k not in ann]
        if missing:
            raise DatasetError(f"{source}: annotations[{i}] misses {missing}")
        by_image.setdefault(int(ann["image_id"]), []).append(
            {"id": int(ann["id"]), "category_id": int(ann["category_id"]), "amodal": ann["segmentation"], "visible": ann["visible_mask"],
             "extra": {"source_occlude_rate": ann.get("occlude_rate")}}
        )
    return categories, by_image


def _objects_cocoa(data: Dict[str, Any], source: str) -> Tuple[List[Dict[str, Any]], Dict[int, List[Dict[str, Any]]]]:
    first: Dict[int, Tuple[int, Dict[str, Any]]] = {}  # image id -> (index, entry) of its first annotator
    skipped = 0
    for i, ann in enumerate(data["annotations"]):
        if "image_id" not in ann or "regions" not in ann:
            raise DatasetError(f"{source}: annotations[{i}] misses 'image_id' or 'regions'")
        if int(ann["image_id"]) in first:  # another annotator of the same image: keep the first
            skipped += 1
        else:
            first[int(ann["image_id"])] = (i, ann)
    names = sorted({str(r["name"]) for _, a in first.values() for r in a["regions"] if "name" in r})
    cat_ids = {n: i + 1 for i, n in enumerate(names)}
    by_image: Dict[int, List[Dict[str, Any]]] = {}
    for image_id, (i, ann) in first.items():
        entry_id = int(ann.get("id", i + 1))
        objs = []
        for k, region in enumerate(ann["regions"]):
            if "segmentation" not in region or "name" not in region:
                raise DatasetError(f"{source}: annotation id {entry_id} region {k} misses 'segmentation' or 'name'")
            amodal = _polygon(region["segmentation"])
            objs.append({"id": entry_id * REGION_ID_BASE + k, "category_id": cat_ids[str(region["name"])], "amodal": amodal,
                         "visible": region.get("visible_mask", amodal),
                         "extra": {"order": region.get("order", k + 1), "source_occlude_rate": region.get("occlude_rate"),
                                   "depth_constraint": ann.get("depth_constraint", "")}})
        by_image[image_id] = objs
    if skipped:
        LOG.info("%s: kept the first annotator of each image, skipped %d further annotation entries", source, skipped)
    return [{"id": i, "name": n} for n, i in cat_ids.items()], by_image


def _read_qa(path: Path, file_to_id: Dict[str, int]) -> List[Dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: cannot read QA JSON ({err})") from err
    if isinstance(data, dict):
        data = data.get("questions", data.get("qa"))
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a list of QA entries (or an object with 'questions')")
    out = []
    for i, e in enumerate(data):
        where = f"{path}: entry [{i}]" + (f" (id {e['id']})" if isinstance(e, dict) and "id" in e else "")
        if not isinstance(e, dict) or not {"question", "answer", "object_ids"} <= set(e) or not ({"image_id", "file_name"} & set(e)):
            raise DatasetError(f"{where}: needs question, answer, object_ids and image_id or file_name")
        image_id = int(e["image_id"]) if "image_id" in e else file_to_id.get(str(e["file_name"]), -1)
        n_seg = count_seg_tokens(str(e["answer"]))
        if n_seg != len(e["object_ids"]):
            raise DatasetError(f"{where}: answer has {n_seg} [SEG] but object_ids lists {len(e['object_ids'])}")
        out.append({"where": where, "image_id": image_id, "question": str(e["question"]), "answer": str(e["answer"]),
                    "object_ids": [int(o) for o in e["object_ids"]], "phrases": e.get("phrases"),
                    "kind": e.get("kind")})
    return out


def convert(annotations: Path, images: Path, out: Path, *, qa: Optional[Path] = None, split: str = "train", skip_invalid: bool = False) -> str:
    """Convert one COCOA(-cls) annotation file (+ QA file) into split `split` under `out`; returns the schema found."""
    annotations, images, out = Path(annotations), Path(images), Path(out)
    try:
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{annotations}: cannot read annotation JSON ({err})") from err
    schema = detect_schema(data, str(annotations))
    LOG.info("%s: found the %s schema", annotations, schema)
    categories, by_image = (_objects_cocoa_cls if schema == SCHEMA_COCOA_CLS else _objects_cocoa)(data, str(annotations))

    writer = SplitWriter(root=out, split=split, categories=categories)
    file_to_id: Dict[str, int] = {}
    kept_objects: Dict[int, int] = {}  # object id -> image id
    for img in data["images"]:
        image_id = int(img["id"])
        if image_id not in by_image:
            continue
        try:
            src = images / str(img["file_name"])
            if not src.is_file():
                raise DatasetError(f"{annotations}: image id {image_id}: file {src} not found")
            height, width = image_size(src)
            masks = []
            for obj in by_image[image_id]:
                where = f"{annotations}: image id {image_id} object id {obj['id']}"
                amodal = decode_segmentation(obj["amodal"], height, width, f"{where} amodal segmentation")
                visible = decode_segmentation(obj["visible"], height, width, f"{where} visible mask")
                masks.append((obj, amodal, visible))
        except DatasetError as err:
            if not skip_invalid:
                raise
            LOG.warning("skipping: %s", err)
            continue
        writer.add_image_file(src, image_id=image_id)
        file_to_id[str(img["file_name"])] = image_id
        for obj, amodal, visible in masks:
            writer.add_object(image_id=image_id, category_id=obj["category_id"], amodal=amodal, visible=visible,
                              object_id=obj["id"], extra={k: v for k, v in obj["extra"].items() if v is not None})
            kept_objects[obj["id"]] = image_id
    missing_images = sorted(set(by_image) - {int(e["id"]) for e in data["images"]})
    if missing_images:
        err = DatasetError(f"{annotations}: annotations name image id(s) {missing_images[:5]} that are not in 'images'")
        if not skip_invalid:
            raise err
        LOG.warning("skipping: %s", err)

    if qa is not None:
        for e in _read_qa(Path(qa), file_to_id):
            bad = [o for o in e["object_ids"] if kept_objects.get(o) != e["image_id"]]
            if bad or e["image_id"] not in file_to_id.values():
                err = DatasetError(f"{e['where']}: image {e['image_id']} / object id(s) {bad} not found among the converted annotations")
                if not skip_invalid:
                    raise err
                LOG.warning("skipping: %s", err)
                continue
            writer.add_qa(image_id=e["image_id"], question=e["question"], answer=e["answer"], object_ids=e["object_ids"], phrases=e["phrases"],
                          kind=e["kind"])
    writer.close(write_qa=qa is not None)
    load_split(out, split, check_images=False)  # the result must load like any other set
    return schema


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="aura-convert-cocoa", description="Convert COCOA / COCOA-cls (+ QA) to the AURA data set format.")
    parser.add_argument("--annotations", required=True, type=Path, help="COCOA or COCOA-cls annotation JSON")
    parser.add_argument("--images", required=True, type=Path, help="directory holding the images named in the annotations")
    parser.add_argument("--qa", type=Path, default=None, help="question/answer JSON (see docs/DATASET.md); without it no qa file is written")
    parser.add_argument("--out", required=True, type=Path, help="output data set directory")
    parser.add_argument("--split", default="train", help="split name to write (train, val or test)")
    parser.add_argument("--skip-invalid", action="store_true", help="warn and skip bad entries instead of stopping")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        schema = convert(args.annotations, args.images, args.out, qa=args.qa, split=args.split, skip_invalid=args.skip_invalid)
    except DatasetError as err:
        parser.exit(2, f"aura-convert-cocoa: error: {err}\n")
    print(f"found the {schema} schema; wrote split '{args.split}' to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
