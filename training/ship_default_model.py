"""Copy a trained checkpoint into the package as the embedded default model (fp16 safetensors, self-contained).

AuraPipeline.from_pretrained(None), the ROS node and the bag runner load aura_core/assets/default_model when no
checkpoint is given. Remake it with:

    python training/train.py && python training/ship_default_model.py runs/default/model
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch

from aura_core.model.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from aura_core.pipeline import DEFAULT_MODEL_DIR

LOG = logging.getLogger("aura.ship_default_model")


def ship(source: Path, target: Path = DEFAULT_MODEL_DIR, metrics: Optional[Path] = None) -> Path:
    """Write `source` (a checkpoint directory) to `target` in fp16, self-contained: the vision backbone and the frozen
    (pretrained tiny) LLaVA are included, so the directory names no other file."""
    meta = read_metadata(source)
    model = load_checkpoint(source)
    extra = dict(meta.get("extra") or {})
    extra["shipped_from"] = str(source)
    run_config = source.parent / "train_config.json"  # the run's resolved settings: how the weights were made
    if run_config.is_file():
        extra["train_config"] = json.loads(run_config.read_text(encoding="utf-8"))
        extra["remake"] = ("save extra.train_config as run.json, then: python training/train.py --config run.json && "
                           f"python training/ship_default_model.py {extra['train_config'].get('output_dir', source.parent)}/model")
    if metrics is not None and metrics.is_file():
        report = json.loads(metrics.read_text(encoding="utf-8"))
        extra["evaluation"] = report.get("teacher_forced")
        end_to_end = report.get("end_to_end")
        extra["evaluation_end_to_end"] = {k: v for k, v in end_to_end.items() if k != "examples"} if end_to_end else None
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tmp, extra=extra, dtype=torch.float16, include_vision_backbone=True,
                    include_pretrained_mllm=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    LOG.info("embedded default model: %s (%.1f MB)", target, size / 1e6)
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint directory, e.g. runs/default/model")
    parser.add_argument("--metrics", type=Path, default=None, help="metrics.json to record (default: next to the checkpoint)")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ship(args.checkpoint, args.out, args.metrics or args.checkpoint.parent / "metrics.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
