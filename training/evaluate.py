"""Evaluate a checkpoint on a split: the paper's metrics as JSON plus a table in the paper's layout.

Two things are scored and labelled separately in the JSON:
- "teacher_forced": masks with the ground-truth answer fed to the LLM, so each [SEG] lines up with its object (as
  LISA's validation does): amodal/visible gIoU and cIoU, occlusion-rate MAE, IoU per occlusion bucket, and the
  baseline "amodal = the model's own predicted visible mask".
- "end_to_end": what a user gets. The model answers on its own (greedy, through AuraPipeline.ask, the code path of
  the node); its [SEG] masks are matched one-to-one to the ground-truth objects (Hungarian on amodal IoU); an
  unmatched object scores IoU 0, an extra [SEG] is a false positive (aura_core/matching.py): amodal/visible gIoU and
  cIoU, object precision and recall, right [SEG] count, right objects named, exact answers.

`--llava DIR` scores a (pretrained) LLaVA directory's own answers alone, before any AURA training: right objects
named and right [SEG] count. The AURA run's end-to-end answers come from that language model plus LoRA, so this is
the answer quality it starts from.

gIoU is the paper's (mean of per-sample IoUs, one sample = one QA pair; a multi-object sample's IoU accumulates its
objects' intersections and unions); `*_giou_per_object` is LISA's code's mean over objects, reported beside it.

    python training/evaluate.py --checkpoint runs/default/model [--data-dir DIR] [--split val] [--out metrics.json]
    python training/evaluate.py --llava aura_core/assets/tiny_llava [--end-to-end-samples N]
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from aura_core.data.dataset import AmodalReasonSegDataset, collate
from aura_core.masks import occlusion_rate
from aura_core.matching import objects_named, normalise_phrase, score_sample, summarise_samples
from aura_core.metrics import MetricAccumulator
from aura_core.model.aura import AuraModel
from training.overlay import overlay_panel, save_overlay

LOG = logging.getLogger("aura.evaluate")

OCCLUDED = 0.3  # "objects occluded >= 0.3": where amodal completion has to beat the visible mask
TEACHER_FORCED_NOTE = "masks scored with the ground-truth answer teacher-forced (each [SEG] lines up with its object)"
END_TO_END_NOTE = ("the model's own greedy answers (AuraPipeline.ask); [SEG] masks matched one-to-one to the ground-truth "
                   "objects by Hungarian on amodal IoU; unmatched object = IoU 0, extra [SEG] = false positive")
GIOU_NOTE = ("gIoU: mean of per-sample IoUs (paper; a sample = one QA pair, its IoU = summed intersections / summed "
             "unions of its objects); gIoU per object: mean of per-object IoUs (LISA's code)")


def spread_indices(total: int, count: int) -> List[int]:
    """`count` indices spread evenly over range(total) (all of them when count is 0 or >= total)."""
    if count <= 0 or count >= total:
        return list(range(total))
    return sorted(set(np.linspace(0, total - 1, count).round().astype(int).tolist()))


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
    rate_source = "E_OC" if model.occlusion_condition_encoder is not None else "masks (1 - |V∩A|/|A|, no E_OC)"
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
                    pred_rates = np.array([occlusion_rate(v, a) for v, a in zip(pred_v, pred_a)])
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
    report: Dict[str, Any] = {"note": TEACHER_FORCED_NOTE, "giou_note": GIOU_NOTE, "samples": len(indices),
                              "occlusion_rate_source": rate_source}
    report.update(summary)
    if summary.get("count"):
        report["baseline_visible_as_amodal_by_bucket"] = base["amodal_by_bucket"]
        # Objects (not samples) occluded >= 0.3: mean amodal IoU over those objects.
        report[f"occluded_{OCCLUDED}"] = {
            "count": occ.get("count", 0),
            "amodal_giou": occ.get("amodal_giou_per_object"),
            "baseline_visible_as_amodal_giou": occ_base.get("amodal_giou_per_object"),
            "gain": (occ["amodal_giou_per_object"] - occ_base["amodal_giou_per_object"]) if occ.get("count") else None,
        }
    report["overlays"] = written
    return report


def _gt_phrases(dataset: AmodalReasonSegDataset, qa) -> List[str]:
    return list(qa.phrases) if qa.phrases is not None else [dataset.categories[dataset.data.objects[o].category_id] for o in qa.object_ids]


@torch.no_grad()
def end_to_end(model: AuraModel, dataset: AmodalReasonSegDataset, indices: Sequence[int], *, max_new_tokens: int = 64,
               mask_threshold: float = 0.0) -> Dict[str, Any]:
    """Score what a user gets: each question answered by AuraPipeline.ask (greedy), masks matched to the objects.

    Every field of aura_core.matching.summarise_samples (gIoU per sample and per object, cIoU, object precision and
    recall, right [SEG] count) plus right objects named and exact answers; a few examples.
    """
    from aura_core.pipeline import AuraPipeline  # late: the pipeline imports the export backends' registry

    was_training = model.training
    pipeline = AuraPipeline(model=model, mask_threshold=mask_threshold, max_new_tokens=max_new_tokens)  # sets eval()
    scores, named, exact, examples, by_count, by_kind = [], 0, 0, [], [], []
    try:
        for n, i in enumerate(indices):
            qa = dataset.data.qa[i]
            result = pipeline.ask(dataset._image(qa.image_id), qa.question)
            gt = [dataset.data.masks(o) for o in qa.object_ids]
            score = score_sample([x.visible_mask for x in result.instances], [x.amodal_mask for x in result.instances],
                                 [v for v, _ in gt], [a for _, a in gt])
            scores.append(score)
            right = score.n_pred == score.n_gt and objects_named([x.phrase for x in result.instances], _gt_phrases(dataset, qa))
            named += right
            by_count.append((score.n_gt, bool(right)))
            by_kind.append((qa.kind, bool(right)))
            exact += normalise_phrase(result.answer) == normalise_phrase(qa.answer)
            if n < 3:
                examples.append({"question": qa.question, "answer": qa.answer, "generated": result.answer,
                                 "amodal_iou": score.amodal_iou})
    finally:
        model.train(was_training)
    report: Dict[str, Any] = {"note": END_TO_END_NOTE, "giou_note": GIOU_NOTE}
    report.update(summarise_samples(scores))
    total = max(len(indices), 1)
    report.update({"answers": len(indices), "objects_named_accuracy": named / total, "exact_answer_accuracy": exact / total,
                   "objects_named_by_object_count": named_by_object_count(by_count),
                   "objects_named_by_kind": named_by_kind(by_kind), "examples": examples})
    return report


@torch.no_grad()
def answers_only(mllm, dataset: AmodalReasonSegDataset, indices: Sequence[int], *,
                 max_new_tokens: int = 64) -> Dict[str, Any]:
    """Score a LLaVA's own greedy answers without masks: right objects named, right [SEG] count, split by objects asked for.

    `mllm`: anything with `generate(image, question, max_new_tokens=...)` returning an `.answer` (MultiModalLLM)."""
    from aura_core.model.tokenizer import seg_phrases

    named, seg_count, segs, objects, by_count, by_kind, examples = 0, 0, 0, 0, [], [], []
    for n, i in enumerate(indices):
        qa = dataset.data.qa[i]
        answer = mllm.generate(dataset._image(qa.image_id), qa.question, max_new_tokens=max_new_tokens).answer
        predicted, gt = seg_phrases(answer), _gt_phrases(dataset, qa)
        right = objects_named(predicted, gt)  # a multiset: the right count too
        named += right
        seg_count += len(predicted) == len(gt)
        segs, objects = segs + len(predicted), objects + len(gt)
        by_count.append((len(gt), bool(right)))
        by_kind.append((qa.kind, bool(right)))
        if n < 3:
            examples.append({"question": qa.question, "answer": qa.answer, "generated": answer})
    total = max(len(indices), 1)
    return {"answers": len(indices), "objects": objects, "segs_generated": segs, "objects_named_accuracy": named / total,
            "seg_count_accuracy": seg_count / total, "objects_named_by_object_count": named_by_object_count(by_count),
            "objects_named_by_kind": named_by_kind(by_kind),
            "examples": examples}


def format_answers_only(report: Dict[str, Any], name: str) -> str:
    """One line per figure of `answers_only` (values x100)."""
    return "\n".join([
        f"Answers of {name} alone (greedy, no masks), {report['answers']} questions, {report['objects']} objects, "
        f"{report['segs_generated']} [SEG]s generated",
        f"right objects named {_pct(report['objects_named_accuracy'])}, right [SEG] count {_pct(report['seg_count_accuracy'])}",
        _named_split_line(report["objects_named_by_object_count"]),
        *([_named_split_line(report["objects_named_by_kind"], "kind of question")] if report["objects_named_by_kind"] else []),
    ])


def _named_split_line(split: Dict[str, Dict[str, Any]], by: str = "objects asked for") -> str:
    return f"right objects named, by {by}: " + ", ".join(
        f"{k}: {_pct(v['accuracy'])} of {v['answers']}" for k, v in split.items())


def named_by_object_count(answers: Sequence[tuple]) -> Dict[str, Dict[str, Any]]:
    """Right objects named, split by how many objects the question asks for ("1", "2", "3+"): (n_gt, right) pairs in.

    Questions about several objects fail differently (the model stops after one), and the overall figure hides it."""
    groups: Dict[str, List[bool]] = {}
    for n_gt, right in answers:
        groups.setdefault(str(n_gt) if n_gt < 3 else "3+", []).append(bool(right))
    return _accuracy_by(groups)


def named_by_kind(answers: Sequence[tuple]) -> Dict[str, Dict[str, Any]]:
    """Right objects named, split by what the question asks (its QA entry's `kind`: "use", "in_front", ...): (kind,
    right) pairs in; entries without a kind (real AmodalReasonSeg data) are left out, so such a set gives {}."""
    groups: Dict[str, List[bool]] = {}
    for kind, right in answers:
        if kind:
            groups.setdefault(str(kind), []).append(bool(right))
    return _accuracy_by(groups)


def _accuracy_by(groups: Dict[str, List[bool]]) -> Dict[str, Dict[str, Any]]:
    return {k: {"answers": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(groups.items())}


def evaluate(
    model: AuraModel,
    dataset: AmodalReasonSegDataset,
    *,
    max_samples: int = 0,
    end_to_end_samples: Optional[int] = 100,
    batch_size: int = 4,
    overlay_dir: Optional[Path] = None,
    overlays: int = 0,
) -> Dict[str, Any]:
    """The full report: {"teacher_forced": ..., "end_to_end": ... or None}.

    `max_samples`: QA pairs for the teacher-forced masks (0: all); `end_to_end_samples`: QA pairs answered by the
    model itself and scored end to end (0: all, None: skip); both spread evenly over the split.
    """
    indices = spread_indices(len(dataset), max_samples)
    if not indices:
        raise ValueError(f"{dataset.data.root}: split '{dataset.data.split}' has no question/answer pairs to evaluate")
    report: Dict[str, Any] = {
        "split": dataset.data.split,
        "data_dir": str(dataset.data.root),
        "teacher_forced": teacher_forced(model, dataset, indices, batch_size=batch_size, overlay_dir=overlay_dir, overlays=overlays),
        "end_to_end": None,
    }
    if end_to_end_samples is not None and end_to_end_samples >= 0:
        report["end_to_end"] = end_to_end(model, dataset, spread_indices(len(dataset), end_to_end_samples))
    return report


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def format_table(report: Dict[str, Any], name: str = "AURA (this model)") -> str:
    """Markdown tables in the paper's layout (values x100) plus the per-object gIoU, the occlusion buckets, and the
    end-to-end table (own answers, matched masks, object precision/recall, [SEG] count, objects named)."""
    tf = report["teacher_forced"]
    lines = [
        f"Teacher-forced masks, split '{report['split']}', {tf.get('count', 0)} objects in {tf['samples']} QA pairs",
        "",
        TABLE_HEADER,
        "|---|---|---|---|---|---|---|",
        _mask_row(name, tf),
        f"| amodal = predicted visible | {_pct(tf.get('baseline_visible_as_amodal_giou'))} | "
        f"{_pct(tf.get('baseline_visible_as_amodal_ciou'))} | - | - | {_pct(tf.get('baseline_visible_as_amodal_giou_per_object'))} | - |",
    ]
    if tf.get("count"):
        lines += ["", "| occlusion rate | objects | amodal IoU (per object) | amodal = visible | gain |", "|---|---|---|---|---|"]
        base = tf["baseline_visible_as_amodal_by_bucket"]
        for bucket, row in tf["amodal_by_bucket"].items():
            gain = None if row["giou"] is None else row["giou"] - base[bucket]["giou"]
            lines.append(f"| {bucket} | {row['count']} | {_pct(row['giou'])} | {_pct(base[bucket]['giou'])} | {_pct(gain)} |")
        occ = tf[f"occluded_{OCCLUDED}"]
        lines.append(f"| >={OCCLUDED} | {occ['count']} | {_pct(occ['amodal_giou'])} | {_pct(occ['baseline_visible_as_amodal_giou'])} | {_pct(occ['gain'])} |")
        lines += ["", f"occlusion-rate MAE {tf['occlusion_rate_mae']:.4f} (rate from {tf['occlusion_rate_source']})"]
    e2e = report.get("end_to_end")
    if e2e and e2e.get("samples"):
        lines += [
            "",
            f"End to end (the model's own greedy answers; [SEG]s matched to objects by Hungarian on amodal IoU, unmatched "
            f"object = 0, extra [SEG] = false positive), {e2e['objects']} objects in {e2e['samples']} QA pairs, "
            f"{e2e['predicted_objects']} [SEG]s generated",
            "",
            TABLE_HEADER,
            "|---|---|---|---|---|---|---|",
            _mask_row(name, e2e),
            "",
            f"| object precision (IoU >= {e2e['match_iou']}) | object recall | right [SEG] count | right objects named | exact answer |",
            "|---|---|---|---|---|",
            f"| {_pct(e2e['object_precision'])} | {_pct(e2e['object_recall'])} | {_pct(e2e['seg_count_accuracy'])} | "
            f"{_pct(e2e['objects_named_accuracy'])} | {_pct(e2e['exact_answer_accuracy'])} |",
        ]
        split = e2e.get("objects_named_by_object_count") or {}
        if split:
            lines += ["", _named_split_line(split)]
        if e2e.get("objects_named_by_kind"):
            lines += ["", _named_split_line(e2e["objects_named_by_kind"], "kind of question")]
    lines += ["", GIOU_NOTE]
    return "\n".join(lines)


TABLE_HEADER = "| method | amodal gIoU | amodal cIoU | visible gIoU | visible cIoU | amodal gIoU per object | visible gIoU per object |"


def _mask_row(name: str, part: Dict[str, Any]) -> str:
    keys = ("amodal_giou", "amodal_ciou", "visible_giou", "visible_ciou", "amodal_giou_per_object", "visible_giou_per_object")
    return f"| {name} | " + " | ".join(_pct(part.get(k)) for k in keys) + " |"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate an AURA checkpoint (teacher-forced masks + end to end).")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint directory (default: the embedded default model)")
    parser.add_argument("--data-dir", type=Path, default=None, help="data set directory (default: the cached synthetic set)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, default=None, help="metrics JSON path (default: print only)")
    parser.add_argument("--max-samples", type=int, default=0, help="QA pairs for the mask metrics (0: all)")
    parser.add_argument("--end-to-end-samples", type=int, default=0,
                        help="QA pairs the model answers itself, scored end to end (0: all, -1: none)")
    parser.add_argument("--overlays", type=int, default=0, help="number of overlay PNGs to write next to --out")
    parser.add_argument("--llava", type=Path, default=None,
                        help="score this LLaVA directory's own answers alone (no masks, no AURA checkpoint; "
                             "--end-to-end-samples questions, 0: all)")
    parser.add_argument("--llava-model", default="tiny",
                        help="model config whose LLaVA prompt format, max length and dtype apply to --llava")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from aura_core.model.checkpoint import load_checkpoint
    from aura_core.pipeline import DEFAULT_MODEL_DIR
    from training.config import SyntheticDataConfig
    from training.data import check_data_dir, synthetic_data_dir

    data_dir = args.data_dir or synthetic_data_dir(SyntheticDataConfig())
    check_data_dir(data_dir, [args.split])
    if args.llava is not None:
        return _answers_only_main(args, data_dir)
    checkpoint = args.checkpoint or DEFAULT_MODEL_DIR
    model = load_checkpoint(checkpoint, device=args.device)
    dataset = AmodalReasonSegDataset(data_dir, args.split, image_size=model.config.vision.image_size)
    overlay_dir = (args.out.parent / "overlays") if (args.out is not None and args.overlays) else None
    report = evaluate(model, dataset, max_samples=args.max_samples,
                      end_to_end_samples=None if args.end_to_end_samples < 0 else args.end_to_end_samples,
                      overlay_dir=overlay_dir, overlays=args.overlays)
    report["checkpoint"] = str(checkpoint)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_table(report))
    return 0


def _answers_only_main(args: argparse.Namespace, data_dir: Path) -> int:
    import dataclasses

    from aura_core.model.config import get_config
    from aura_core.model.mllm import MultiModalLLM

    if args.checkpoint is not None:
        raise SystemExit("--llava scores a LLaVA directory alone; drop --checkpoint")
    # sizes come from the directory's config.json; the named config gives the prompt format, length and dtype
    config = dataclasses.replace(get_config(args.llava_model).mllm, pretrained_path=str(args.llava), lora_r=0,
                                 modules_to_save=())
    mllm = MultiModalLLM.build(config).to(args.device).eval()
    dataset = AmodalReasonSegDataset(data_dir, args.split, image_size=256)
    indices = spread_indices(len(dataset), max(args.end_to_end_samples, 0))
    report = {"split": args.split, "data_dir": str(data_dir), "llava": str(args.llava),
              "answers_only": answers_only(mllm, dataset, indices)}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_answers_only(report["answers_only"], str(args.llava)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
