"""Evaluate a checkpoint on a split: the paper's metrics as JSON plus a table in the paper's layout.

Two things are scored and labelled separately in the JSON:
- "teacher_forced": masks with the ground-truth answer fed to the LLM, so each [SEG] lines up with its object (as
  LISA's validation does): amodal/visible gIoU and cIoU, occlusion-rate MAE, IoU per occlusion bucket, and the
  baseline "amodal = the model's own predicted visible mask".
- "generated": the model's own greedy answers: share with the right number of [SEG]s and with the right objects named.

    python training/evaluate.py --checkpoint runs/default/model [--data-dir DIR] [--split val] [--out metrics.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python training/evaluate.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aura_core.data.dataset import AmodalReasonSegDataset, collate
from aura_core.data.format import SEG_TOKEN
from aura_core.metrics import MetricAccumulator
from aura_core.model.aura import AuraModel
from training.overlay import overlay_panel, save_overlay

LOG = logging.getLogger("aura.evaluate")

OCCLUDED = 0.3  # "objects occluded >= 0.3": where amodal completion has to beat the visible mask
TEACHER_FORCED_NOTE = "masks scored with the ground-truth answer teacher-forced (each [SEG] lines up with its object)"
GENERATED_NOTE = "generated answers (the model's own, greedy): right number of [SEG]s, and right objects named (phrases before each [SEG])"


def spread_indices(total: int, count: int) -> List[int]:
    """`count` indices spread evenly over range(total) (all of them when count is 0 or >= total)."""
    if count <= 0 or count >= total:
        return list(range(total))
    return sorted(set(np.linspace(0, total - 1, count).round().astype(int).tolist()))


def _normalise(phrase: str) -> str:
    return " ".join(phrase.lower().split())


def _rates_from_masks(visible: np.ndarray, amodal: np.ndarray) -> np.ndarray:
    """1 - |V ∩ A| / |A| per object, for models without E_OC (no predicted rate)."""
    area = amodal.reshape(len(amodal), -1).sum(1)
    inter = (visible & amodal).reshape(len(amodal), -1).sum(1)
    return np.where(area > 0, 1.0 - inter / np.maximum(area, 1), 0.0)


@torch.no_grad()
def teacher_forced(
    model: AuraModel,
    dataset: AmodalReasonSegDataset,
    indices: Sequence[int],
    *,
    batch_size: int = 4,
    mask_threshold: float = 0.0,
    overlay_dir: Optional[Path] = None,
    overlays: int = 0,
) -> Dict[str, Any]:
    """Mask metrics over `indices` of `dataset`; draws the first `overlays` samples as PNGs into `overlay_dir`."""
    was_training = model.training
    model.eval()
    overall, baseline = MetricAccumulator(), MetricAccumulator()
    occluded, occluded_baseline = MetricAccumulator(), MetricAccumulator()
    rate_source = "E_OC" if model.occlusion_condition_encoder is not None else "masks (1 - |V|/|A|, no E_OC)"
    written: List[str] = []
    try:
        for start in range(0, len(indices), batch_size):
            items = [dataset[i] for i in indices[start : start + batch_size]]
            batch = collate(items)
            output = model(batch)
            for j, item in enumerate(items):
                pred_v = (output.visible_logits[j] > mask_threshold).cpu().numpy()
                pred_a = (output.amodal_logits[j] > mask_threshold).cpu().numpy()
                gt_v, gt_a = item["visible_masks"].numpy(), item["amodal_masks"].numpy()
                gt_rates = item["occlusion_rates"].numpy()
                if output.occlusion_rates is not None:
                    pred_rates = output.occlusion_rates[j].float().cpu().numpy()
                else:
                    pred_rates = _rates_from_masks(pred_v, pred_a)
                overall.add(pred_v, gt_v, pred_a, gt_a, pred_rates, gt_rates)
                baseline.add(pred_v, gt_v, pred_v, gt_a, pred_rates, gt_rates)
                keep = gt_rates >= OCCLUDED
                if keep.any():
                    occluded.add(pred_v[keep], gt_v[keep], pred_a[keep], gt_a[keep], pred_rates[keep], gt_rates[keep])
                    occluded_baseline.add(pred_v[keep], gt_v[keep], pred_v[keep], gt_a[keep], pred_rates[keep], gt_rates[keep])
                if overlay_dir is not None and len(written) < overlays:
                    panel = overlay_panel(item["image"], question=item["question"], phrases=item["phrases"],
                                          gt_visible=gt_v, gt_amodal=gt_a, pred_visible=pred_v, pred_amodal=pred_a)
                    written.append(str(save_overlay(Path(overlay_dir) / f"qa{item['qa_id']:06d}.png", panel)))
    finally:
        model.train(was_training)
    summary = overall.summary()
    base = baseline.summary()
    occ, occ_base = occluded.summary(), occluded_baseline.summary()
    report: Dict[str, Any] = {"note": TEACHER_FORCED_NOTE, "samples": len(indices), "occlusion_rate_source": rate_source}
    report.update(summary)
    if summary.get("count"):
        report["baseline_visible_as_amodal_by_bucket"] = base["amodal_by_bucket"]
        report[f"occluded_{OCCLUDED}"] = {
            "count": occ.get("count", 0),
            "amodal_giou": occ.get("amodal_giou"),
            "baseline_visible_as_amodal_giou": occ_base.get("amodal_giou"),
            "gain": (occ["amodal_giou"] - occ_base["amodal_giou"]) if occ.get("count") else None,
        }
    report["overlays"] = written
    return report


@torch.no_grad()
def generated(model: AuraModel, dataset: AmodalReasonSegDataset, indices: Sequence[int], *, max_new_tokens: int = 64) -> Dict[str, Any]:
    """Score greedy answers: [SEG] count and the named objects (multiset of phrases) against the ground truth."""
    right_count = right_objects = exact = 0
    examples = []
    for n, i in enumerate(indices):
        qa = dataset.data.qa[i]
        gt_phrases = qa.phrases if qa.phrases is not None else [dataset.categories[dataset.data.objects[o].category_id] for o in qa.object_ids]
        gen = model.mllm.generate(dataset._image(qa.image_id), qa.question, max_new_tokens=max_new_tokens)
        count_ok = gen.answer.count(SEG_TOKEN) == len(qa.object_ids)
        objects_ok = count_ok and Counter(map(_normalise, gen.phrases)) == Counter(map(_normalise, gt_phrases))
        right_count += count_ok
        right_objects += objects_ok
        exact += _normalise(gen.answer) == _normalise(qa.answer)
        if n < 3:
            examples.append({"question": qa.question, "answer": qa.answer, "generated": gen.answer})
    total = max(len(indices), 1)
    return {
        "note": GENERATED_NOTE,
        "answers": len(indices),
        "seg_count_accuracy": right_count / total,
        "objects_named_accuracy": right_objects / total,
        "exact_answer_accuracy": exact / total,
        "examples": examples,
    }


def evaluate(
    model: AuraModel,
    dataset: AmodalReasonSegDataset,
    *,
    max_samples: int = 0,
    generation_samples: int = 100,
    batch_size: int = 4,
    overlay_dir: Optional[Path] = None,
    overlays: int = 0,
) -> Dict[str, Any]:
    """The full report: {"teacher_forced": ..., "generated": ... or None}."""
    indices = spread_indices(len(dataset), max_samples)
    if not indices:
        raise ValueError(f"{dataset.data.root}: split '{dataset.data.split}' has no question/answer pairs to evaluate")
    report: Dict[str, Any] = {
        "split": dataset.data.split,
        "data_dir": str(dataset.data.root),
        "teacher_forced": teacher_forced(model, dataset, indices, batch_size=batch_size, overlay_dir=overlay_dir, overlays=overlays),
        "generated": None,
    }
    if generation_samples > 0:
        report["generated"] = generated(model, dataset, spread_indices(len(dataset), generation_samples))
    return report


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def format_table(report: Dict[str, Any], name: str = "AURA (this model)") -> str:
    """Markdown tables in the paper's layout (values x100), the occlusion buckets, and the generation scores."""
    tf = report["teacher_forced"]
    lines = [
        f"Teacher-forced masks, split '{report['split']}', {tf.get('count', 0)} objects in {tf['samples']} QA pairs",
        "",
        "| method | amodal gIoU | amodal cIoU | visible gIoU | visible cIoU |",
        "|---|---|---|---|---|",
        f"| {name} | {_pct(tf.get('amodal_giou'))} | {_pct(tf.get('amodal_ciou'))} | {_pct(tf.get('visible_giou'))} | {_pct(tf.get('visible_ciou'))} |",
        f"| amodal = predicted visible | {_pct(tf.get('baseline_visible_as_amodal_giou'))} | "
        f"{_pct(tf.get('baseline_visible_as_amodal_ciou'))} | - | - |",
    ]
    if tf.get("count"):
        lines += ["", "| occlusion rate | objects | amodal IoU | amodal = visible | gain |", "|---|---|---|---|---|"]
        base = tf["baseline_visible_as_amodal_by_bucket"]
        for bucket, row in tf["amodal_by_bucket"].items():
            gain = None if row["giou"] is None else row["giou"] - base[bucket]["giou"]
            lines.append(f"| {bucket} | {row['count']} | {_pct(row['giou'])} | {_pct(base[bucket]['giou'])} | {_pct(gain)} |")
        occ = tf[f"occluded_{OCCLUDED}"]
        lines.append(f"| >={OCCLUDED} | {occ['count']} | {_pct(occ['amodal_giou'])} | {_pct(occ['baseline_visible_as_amodal_giou'])} | {_pct(occ['gain'])} |")
        lines += ["", f"occlusion-rate MAE {tf['occlusion_rate_mae']:.4f} (rate from {tf['occlusion_rate_source']})"]
    gen = report.get("generated")
    if gen:
        lines += ["", f"Generated answers ({gen['answers']}): right [SEG] count {_pct(gen['seg_count_accuracy'])}%, "
                  f"right objects named {_pct(gen['objects_named_accuracy'])}%, exact answer {_pct(gen['exact_answer_accuracy'])}%"]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate an AURA checkpoint (teacher-forced masks + generated answers).")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint directory (default: the embedded default model)")
    parser.add_argument("--data-dir", type=Path, default=None, help="data set directory (default: the cached synthetic set)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, default=None, help="metrics JSON path (default: print only)")
    parser.add_argument("--max-samples", type=int, default=0, help="QA pairs for the mask metrics (0: all)")
    parser.add_argument("--generation-samples", type=int, default=100, help="QA pairs whose generated answers are scored (0: none)")
    parser.add_argument("--overlays", type=int, default=0, help="number of overlay PNGs to write next to --out")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from aura_core.model.checkpoint import load_checkpoint
    from aura_core.pipeline import DEFAULT_MODEL_DIR
    from training.config import SyntheticDataConfig
    from training.data import check_data_dir, synthetic_data_dir

    checkpoint = args.checkpoint or DEFAULT_MODEL_DIR
    data_dir = args.data_dir or synthetic_data_dir(SyntheticDataConfig())
    check_data_dir(data_dir, [args.split])
    model = load_checkpoint(checkpoint, device=args.device)
    dataset = AmodalReasonSegDataset(data_dir, args.split, image_size=model.config.vision.image_size)
    overlay_dir = (args.out.parent / "overlays") if (args.out is not None and args.overlays) else None
    report = evaluate(model, dataset, max_samples=args.max_samples, generation_samples=args.generation_samples,
                      overlay_dir=overlay_dir, overlays=args.overlays)
    report["checkpoint"] = str(checkpoint)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
