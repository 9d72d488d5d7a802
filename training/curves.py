"""Curves a person can look at: TensorBoard event files and a curves.png beside a run's metrics.jsonl.

- `TensorBoardLog` writes every metrics.jsonl record as scalars into the run folder (`tensorboard --logdir runs`):
  the loss terms under `loss/` (total, text, bce, dice, occlusion_rate, spatial), lr, grad norm and speed under
  `train/`, and every number of every evaluation report under `eval/` (e.g. `eval/teacher_forced/amodal_giou`,
  `eval/end_to_end/object_recall`, `eval/teacher_forced/amodal_by_bucket/ge0.5/giou`).
- `plot_curves` draws metrics.jsonl as `curves.png`: the loss terms against step (left) and gIoU against step
  (right: teacher-forced amodal and visible gIoU at each evaluation, end-to-end amodal gIoU where it was measured).

Both only read the JSONL records, so they can be remade for any run: `python -m training.curves runs/default`.
"""
from __future__ import annotations

import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

LOG = logging.getLogger(__name__)

CURVES_PNG = "curves.png"
# Log-record keys that are not loss terms (TensorBoard: train/<key>; every other number is loss/<key>).
TRAIN_KEYS = ("lr", "grad_norm", "world_size", "it_per_s", "elapsed_s", "truncated_samples", "loss_scale")
SKIP_KEYS = ("step", "examples", "overlays", "note", "giou_note")
LOSS_ORDER = ("total", "text", "bce", "dice", "occlusion_rate", "spatial")  # the terms curves.png draws


def _tag(part: str) -> str:
    """A TensorBoard-friendly tag part: '>=0.5' -> 'ge0.5', '<0.1' -> 'lt0.1', other odd characters -> '_'."""
    part = part.replace(">=", "ge").replace("<=", "le").replace(">", "gt").replace("<", "lt")
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", part)


def flatten_scalars(value: Any, prefix: str) -> Dict[str, float]:
    """Every int/float leaf of nested dicts as {'prefix/a/b': value} (strings, lists, None and bools left out)."""
    out: Dict[str, float] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in SKIP_KEYS:
                out.update(flatten_scalars(item, f"{prefix}/{_tag(str(key))}"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out[prefix] = float(value)
    return out


def record_scalars(record: Dict[str, Any]) -> Dict[str, float]:
    """The scalars of one metrics.jsonl record: a training log step or an evaluation."""
    if "eval" in record:
        return flatten_scalars(record["eval"], "eval")
    out: Dict[str, float] = {}
    for key, value in record.items():
        if key != "step":
            out.update(flatten_scalars(value, f"train/{_tag(key)}" if key in TRAIN_KEYS else f"loss/{_tag(key)}"))
    return out


class TensorBoardLog:
    """Event files in `log_dir` (the run folder). `purge_step`: on resume, drop events at or after this step that an
    interrupted earlier attempt wrote. Disabled (with one warning) when the tensorboard package is missing."""

    def __init__(self, log_dir: Path, enabled: bool = True, purge_step: Optional[int] = None) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # tensorboard is in requirements/base.txt; do not fail a training run over it
            LOG.warning("no TensorBoard event files (%s); pip install tensorboard", err)
            return
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step or None)

    def write(self, record: Dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(record.get("step", 0))
        for tag, value in record_scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_records(jsonl: Path) -> List[Dict[str, Any]]:
    """The records of a metrics.jsonl, the last one per (kind, step) kept (a resumed run may repeat steps)."""
    latest: Dict[tuple, Dict[str, Any]] = {}
    for line in Path(jsonl).read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            latest[("eval" in record, record.get("step"))] = record
    return sorted(latest.values(), key=lambda r: (r.get("step") or 0, "eval" in r))


def _series(records: Iterable[Dict[str, Any]], *path: str):
    xs, ys = [], []
    for record in records:
        value: Any = record
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(record["step"])
            ys.append(value)
    return xs, ys


def plot_curves(run_dir: Union[str, Path], out: Optional[Path] = None) -> Optional[Path]:
    """Draw run_dir/metrics.jsonl into run_dir/curves.png (or `out`); None when there is nothing to draw yet."""
    run_dir = Path(run_dir)
    jsonl = run_dir / "metrics.jsonl"
    if not jsonl.is_file():
        return None
    records = read_records(jsonl)
    logs = [r for r in records if "eval" not in r]
    evals = [r for r in records if "eval" in r]
    if not logs and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = [k for k in LOSS_ORDER if any(k in r for r in logs)]
    positive = True
    for key in keys:
        xs, ys = _series(logs, key)
        if xs:
            ax_loss.plot(xs, ys, label=key, linewidth=2.0 if key == "total" else 1.0)
            positive = positive and min(ys) > 0
    if positive and keys:
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    if keys:
        ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)

    lines = (
        (("teacher_forced", "amodal_giou"), "teacher-forced amodal gIoU", "-o"),
        (("teacher_forced", "visible_giou"), "teacher-forced visible gIoU", "-s"),
        (("end_to_end", "amodal_giou"), "end-to-end amodal gIoU", "-^"),
        (("end_to_end", "visible_giou"), "end-to-end visible gIoU", "-v"),
    )
    drawn = False
    for path, label, style in lines:
        xs, ys = _series(evals, "eval", *path)
        if xs:
            ax_iou.plot(xs, ys, style, label=label)
            drawn = True
    ax_iou.set(xlabel="step", ylabel="gIoU (mean of per-sample IoUs)", title="validation gIoU", ylim=(0, 1))
    if drawn:
        ax_iou.legend(fontsize=8)
    ax_iou.grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    target = Path(out) if out is not None else run_dir / CURVES_PNG
    tmp = target.with_name(target.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(target)  # never a half-written curves.png
    return target


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m training.curves RUN_DIR   (writes RUN_DIR/curves.png from RUN_DIR/metrics.jsonl)", file=sys.stderr)
        return 2
    path = plot_curves(Path(args[0]))
    print(path if path else f"{args[0]}: no metrics.jsonl records to draw")
    return 0 if path else 1


if __name__ == "__main__":
    raise SystemExit(main())
