"""Two evaluation sets the trained models never saw, to tell what a model learnt from what it memorised (issue 11).

    python training/make_eval_splits.py --out runs/eval_splits [--images 100] [--seed 4242] [--style studio]

writes, under --out:

- `heldout_seed/`: a synthetic AmodalReasonSeg split `test` drawn with a seed no training stream uses (default style:
  same kind of scenes, new layouts and questions).
- `cocoa_<style>_raw/`: the same scenes (same seed and index, so the same objects, masks and questions) rendered in an
  alternative style (`aura_core.data.synthetic.STYLES`: another background and lighting), written the way the COCOA-cls
  release looks: `annotations.json` (COCO-style; `segmentation` = amodal RLE, `visible_mask` always, `invisible_mask`
  when occluded, `occlude_rate`, COCO category ids and `supercategory`), `images/`, and `qa.json` (entries naming their
  image by `file_name`, docs/DATASET.md).
- `cocoa_<style>/`: that raw set converted by `aura-convert-cocoa` (aura_core.data.cocoa.main, the console script's
  code) into split `test`.
- `manifest.json`: seeds, styles, counts and the evaluation commands.

Score a checkpoint on both (and compare with the standard `val` split):

    python training/evaluate.py --data-dir runs/eval_splits/heldout_seed --split test --out runs/eval_splits/heldout_seed.json
    python training/evaluate.py --data-dir runs/eval_splits/cocoa_studio --split test --out runs/eval_splits/cocoa_studio.json

heldout_seed vs val: how much of the val figure comes from the seed's particular scenes; cocoa_<style> vs heldout_seed:
the same scenes under another background and light (plus the COCOA round trip), i.e. how much depends on the look of
the training images.

Seeds the training streams use (scene i of a stream = np.random.default_rng(<key>)):
- the synthetic training set (training/config.py SyntheticDataConfig, aura-synth --seed 0): [0, split_key("train") = 542, i]
  and [0, split_key("val") = 323, i];
- training/pretrain_backbone.py (--seed 0): [0, PRETEXT_SEED_KEY = 7919, i], held out [1, 7919, i]; and
  training/pretrain_mllm.py: [0, its PRETEXT_SEED_KEY = 104729, i], held out [1, 104729, i];
- training/tiny_tokenizer.py's corpus: default_rng(1234).
The evaluation sets use [EVAL_SEED = 4242, split_key("test") = 448, i]: a first word none of those use, so no scene of
them was ever drawn for training. Seeds 0 and 1 are refused.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from aura_core.data.cocoa import main as convert_cocoa_main
from aura_core.data.format import IMAGES_DIR, coco_bbox, encode_mask, load_split
from aura_core.data.synthetic import CATEGORIES, DEFAULT_STYLE, STYLES, check_style, split_key, split_scene, write_split
from training.pretrain_backbone import PRETEXT_SEED_KEY as BACKBONE_SEED_KEY
from training.pretrain_mllm import PRETEXT_SEED_KEY as MLLM_SEED_KEY

LOG = logging.getLogger("aura.make_eval_splits")

EVAL_SEED = 4242
EVAL_SPLIT = "test"
TRAINING_SEEDS = (0, 1)  # the synthetic training set (0) and the pretraining streams (0, held out 1)
DEFAULT_IMAGES = 100
DEFAULT_COCOA_STYLE = "studio"
HELDOUT_DIR = "heldout_seed"

# COCOA-cls uses COCO's category ids; the synthetic names keep their words (the model's vocabulary) and take the id and
# supercategory of the COCO class they stand for ("phone" = cell phone, "ball" = sports ball). Plate and pencil are not
# COCO classes: ids above COCO's 90.
COCO_CATEGORIES: Dict[str, "tuple[int, str]"] = {
    "knife": (49, "kitchen"), "cup": (47, "kitchen"), "scissors": (87, "indoor"), "apple": (53, "food"),
    "book": (84, "indoor"), "ball": (37, "sports"), "bottle": (44, "kitchen"), "banana": (52, "food"),
    "phone": (77, "electronic"), "plate": (91, "kitchen"), "pencil": (92, "indoor"), "clock": (85, "indoor"),
}
COCO_IMAGE_ID_BASE = 900000  # image ids like COCO's (large, not 1..N); image i -> COCO_IMAGE_ID_BASE + i


def cocoa_dir_name(style: str) -> str:
    return f"cocoa_{style}"


def write_cocoa_cls(raw: Path, count: int, seed: int, *, style: str, size: int = 256, image_format: str = "png",
                    split: str = EVAL_SPLIT) -> Dict[str, int]:
    """Scenes 0..count-1 of (seed, split) rendered in `style`, written as a COCOA-cls annotation file + images + QA file.

    Returns counts {"images", "objects", "occluded_objects", "qa"}.
    """
    check_style(style)
    (raw / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    categories = [{"supercategory": COCO_CATEGORIES[c.name][1], "id": COCO_CATEGORIES[c.name][0], "name": c.name}
                  for c in sorted(CATEGORIES, key=lambda c: COCO_CATEGORIES[c.name][0])]
    coco_id = {c.id: COCO_CATEGORIES[c.name][0] for c in CATEGORIES}
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    qa: List[Dict[str, Any]] = []
    occluded = 0
    for i in range(count):
        scene = split_scene(seed, split, i, size, style=style)
        image_id = COCO_IMAGE_ID_BASE + i
        file_name = f"AURA_{style}_{split}_{image_id:012d}.{image_format}"
        pil = Image.fromarray(scene.image)
        if image_format == "png":
            pil.save(raw / IMAGES_DIR / file_name, format="PNG", compress_level=6)
        else:
            pil.save(raw / IMAGES_DIR / file_name, format="JPEG", quality=95)
        images.append({"license": 1, "file_name": file_name, "coco_url": "", "height": size, "width": size,
                       "date_captured": "", "flickr_url": "", "id": image_id})
        ids = []
        for obj in scene.objects:
            ann_id = len(annotations) + 1
            ids.append(ann_id)
            hidden = obj.amodal & ~obj.visible
            ann: Dict[str, Any] = {
                "id": ann_id, "image_id": image_id, "category_id": coco_id[obj.category_id], "iscrowd": 0,
                "segmentation": encode_mask(obj.amodal), "visible_mask": encode_mask(obj.visible),
                "area": float(obj.amodal.sum()), "bbox": [float(v) for v in coco_bbox(obj.amodal)],
                "occlude_rate": round(float(obj.occlusion_rate), 6),
            }
            if hidden.any():  # COCOA-cls has invisible_mask only for occluded objects
                ann["invisible_mask"] = encode_mask(hidden)
                occluded += 1
            annotations.append(ann)
        for q in scene.qa:
            qa.append({"id": len(qa) + 1, "file_name": file_name, "question": q.question, "answer": q.answer,
                       "object_ids": [ids[t] for t in q.targets], "phrases": list(q.phrases),
                       "kind": q.kind})
    info = {"description": f"AURA synthetic scenes, {style} style, seed {seed}, split {split} (COCOA-cls layout)",
            "version": "1.0", "year": 2026}
    payload = {"info": info, "licenses": [{"id": 1, "name": "synthetic", "url": ""}], "images": images,
               "annotations": annotations, "categories": categories}
    (raw / "annotations.json").write_text(json.dumps(payload), encoding="utf-8")
    (raw / "qa.json").write_text(json.dumps(qa), encoding="utf-8")
    return {"images": len(images), "objects": len(annotations), "occluded_objects": occluded, "qa": len(qa)}


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def _counts(root: Path, split: str) -> Dict[str, int]:
    data = load_split(root, split)
    return {"images": len(data.images), "objects": len(data.objects), "qa": len(data.qa)}


def make_eval_splits(out: Path, *, images: int = DEFAULT_IMAGES, seed: int = EVAL_SEED, style: str = DEFAULT_COCOA_STYLE,
                     size: int = 256, image_format: str = "png", split: str = EVAL_SPLIT) -> Dict[str, Any]:
    """Write both evaluation sets under `out` (replacing earlier ones); returns the manifest (also out/manifest.json)."""
    if seed in TRAINING_SEEDS:
        raise ValueError(f"seed {seed} feeds the training streams ({TRAINING_SEEDS}); pick another (default {EVAL_SEED})")
    if style == DEFAULT_STYLE:
        raise ValueError(f"the COCOA set needs a style other than the training style {DEFAULT_STYLE!r}: one of {STYLES[1:]}")
    check_style(style)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    heldout = _fresh(out / HELDOUT_DIR)
    LOG.info("writing %d %s-style scenes of seed %d to %s", images, DEFAULT_STYLE, seed, heldout)
    write_split(heldout, split, images, seed, size)

    name = cocoa_dir_name(style)
    raw, converted = _fresh(out / f"{name}_raw"), _fresh(out / name)
    LOG.info("writing the same scenes in the %s style as COCOA-cls to %s", style, raw)
    raw_counts = write_cocoa_cls(raw, images, seed, style=style, size=size, image_format=image_format, split=split)
    argv = ["--annotations", str(raw / "annotations.json"), "--images", str(raw / IMAGES_DIR), "--qa", str(raw / "qa.json"),
            "--out", str(converted), "--split", split]
    LOG.info("aura-convert-cocoa %s", " ".join(argv))
    if convert_cocoa_main(argv) != 0:
        raise RuntimeError(f"aura-convert-cocoa failed on {raw}")

    manifest = {
        "seed": seed, "split": split, "split_key": split_key(split), "size": size,
        "rng_key": f"np.random.default_rng([{seed}, {split_key(split)}, i])",
        "training_seeds": {"synthetic set": f"[0, {split_key('train')} (train) | {split_key('val')} (val), i]",
                           "pretraining": f"[0 | 1 (held out), {BACKBONE_SEED_KEY} (tiny SAM) | {MLLM_SEED_KEY} (tiny LLaVA), i]",
                           "tokenizer corpus": "default_rng(1234)"},
        HELDOUT_DIR: {"style": DEFAULT_STYLE, **_counts(heldout, split)},
        name: {"style": style, "image_format": image_format, "raw": raw_counts, **_counts(converted, split),
               "convert_command": "aura-convert-cocoa " + " ".join(argv),
               "note": "same scenes, masks and questions as heldout_seed, other background and lighting"},
        "evaluate": [f"python training/evaluate.py --data-dir {out / d} --split {split} --out {out / d}.json"
                     for d in (HELDOUT_DIR, name)],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/eval_splits"), help="output directory (default: %(default)s)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="scenes per set (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="a seed no training stream uses (default: %(default)s)")
    parser.add_argument("--style", choices=STYLES[1:], default=DEFAULT_COCOA_STYLE,
                        help="rendering style of the COCOA set (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (the training set's: 256)")
    parser.add_argument("--image-format", choices=("png", "jpg"), default="png",
                        help="image files of the COCOA set (COCO's are JPEG; PNG keeps the style the only change)")
    parser.add_argument("--split", default=EVAL_SPLIT, help="split name of both sets (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.size < 32:
        parser.error("--images must be >= 1 and --size >= 32")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = make_eval_splits(args.out, images=args.images, seed=args.seed, style=args.style, size=args.size,
                                    image_format=args.image_format, split=args.split)
    except ValueError as err:
        parser.error(str(err))
    name = cocoa_dir_name(args.style)
    for key in (HELDOUT_DIR, name):
        m = manifest[key]
        print(f"{args.out / key}: split '{args.split}', {m['images']} images, {m['objects']} objects, {m['qa']} QA pairs ({m['style']} style)")
    print("evaluate with:\n  " + "\n  ".join(manifest["evaluate"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
