"""End-to-end scoring: the model's own [SEG] masks matched one-to-one to the ground-truth objects.

What a user gets is the model's own answer, so the end-to-end protocol scores that, not the teacher-forced masks:

- **Matching.** Per sample (one image + one question, i.e. one QA pair), the predicted objects (one per generated
  [SEG]) are matched one-to-one to the ground-truth objects by the Hungarian algorithm on amodal IoU
  (`scipy.optimize.linear_sum_assignment`, maximising the summed IoU). A pair whose amodal masks do not overlap at
  all (IoU 0) is not a match. The visible masks are scored under the same assignment.
- **Unmatched objects.** A ground-truth object without a match scores IoU 0 (its area counts in the union); a
  [SEG] without a match is a false positive (its predicted area counts in the union of its sample and of cIoU).
- **Per-sample IoU** (what one sample contributes to gIoU): cumulative over the sample's objects,

      IoU_s = sum_matched |P ∩ G| / (sum_matched |P ∪ G| + sum_unmatched GT |G| + sum_extra [SEG]s |P|)

  i.e. one IoU for the whole answer, weighted by object area. For a single-object answer it is that object's IoU.
  It does not depend on whether a non-overlapping pair is called matched or not (|P ∪ G| = |P| + |G| then), and an
  answer that names extra objects loses IoU. A sample with nothing to find and nothing found scores 1.
- **gIoU** (the paper's: the mean of per-sample IoUs) is the headline; **gIoU per object** (LISA's code: the mean
  over ground-truth objects of their matched IoU, unmatched = 0; extra [SEG]s only cost precision) is reported
  beside it. **cIoU** = all intersections / all unions, the extras' areas included.
- **Object precision / recall**: a true positive is a match with amodal IoU >= MATCH_IOU (0.5, as in detection);
  precision = true positives / predicted [SEG]s, recall = true positives / ground-truth objects (over all samples).

Pure numpy/scipy functions on bool HxW masks; IoU counts come from aura_core.masks.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy.optimize import linear_sum_assignment

from aura_core.masks import intersection_union, iou_of_counts
from aura_core.metrics import sample_iou

MATCH_IOU = 0.5  # a match with amodal IoU at least this is a true positive (object precision / recall)

Masks = Union[np.ndarray, Sequence[np.ndarray]]  # KxHxW array or a list of K HxW masks (K may be 0)
Counts = Tuple[int, int]  # (intersection, union) in pixels


def _mask_list(masks: Masks, name: str) -> List[np.ndarray]:
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        raise ValueError(f"{name}: expected K masks (KxHxW or a list), got one HxW mask; wrap it in a list")
    out = [np.asarray(m, dtype=bool) for m in masks]
    for i, m in enumerate(out):
        if m.ndim != 2:
            raise ValueError(f"{name}[{i}]: expected an HxW mask, got shape {m.shape}")
    return out


def pair_counts(preds: Masks, gts: Masks) -> Tuple[np.ndarray, np.ndarray]:
    """Intersection and union of every (prediction, ground truth) pair: two int arrays of shape (P, G)."""
    p, g = _mask_list(preds, "preds"), _mask_list(gts, "gts")
    inter = np.zeros((len(p), len(g)), dtype=np.int64)
    union = np.zeros((len(p), len(g)), dtype=np.int64)
    for i, pm in enumerate(p):
        for j, gm in enumerate(g):
            inter[i, j], union[i, j] = intersection_union(pm, gm)
    return inter, union


def match_objects(pred_amodal: Masks, gt_amodal: Masks) -> List[Tuple[int, int]]:
    """One-to-one (prediction index, ground-truth index) matches maximising the summed amodal IoU (Hungarian).

    Pairs with amodal IoU 0 are dropped (a [SEG] whose mask does not touch an object has not found it). Sorted by
    ground-truth index.
    """
    inter, union = pair_counts(pred_amodal, gt_amodal)
    if inter.size == 0:
        return []
    ious = np.where(union > 0, inter / np.maximum(union, 1), 1.0)  # two empty masks: IoU 1, as in aura_core.masks
    rows, cols = linear_sum_assignment(ious, maximize=True)
    return sorted(((int(r), int(c)) for r, c in zip(rows, cols) if ious[r, c] > 0), key=lambda rc: rc[1])


@dataclass
class SampleScore:
    """How one generated answer's masks score against one sample's ground-truth objects."""

    n_pred: int  # [SEG]s in the generated answer
    n_gt: int  # ground-truth objects
    matches: List[Tuple[int, int]]  # (prediction index, ground-truth index)
    amodal: List[Counts]  # per ground-truth object: (intersection, union); unmatched: (0, |G|)
    visible: List[Counts]  # the same for the visible masks, under the amodal assignment
    extra_amodal_area: int  # summed amodal area of the unmatched predictions (false positives)
    extra_visible_area: int
    true_positives: int  # matches with amodal IoU >= MATCH_IOU
    object_amodal_ious: List[float] = field(default_factory=list)  # per ground-truth object (unmatched 0)
    object_visible_ious: List[float] = field(default_factory=list)

    @property
    def amodal_iou(self) -> float:
        """The sample's amodal IoU (cumulative over its objects, extras in the union)."""
        return sample_iou(self.amodal, self.extra_amodal_area)

    @property
    def visible_iou(self) -> float:
        return sample_iou(self.visible, self.extra_visible_area)


def score_sample(pred_visible: Masks, pred_amodal: Masks, gt_visible: Masks, gt_amodal: Masks) -> SampleScore:
    """Match the predicted objects to the ground truth on amodal IoU and score both mask kinds (see module doc)."""
    pv, pa = _mask_list(pred_visible, "pred_visible"), _mask_list(pred_amodal, "pred_amodal")
    gv, ga = _mask_list(gt_visible, "gt_visible"), _mask_list(gt_amodal, "gt_amodal")
    if len(pv) != len(pa):
        raise ValueError(f"{len(pv)} predicted visible masks but {len(pa)} predicted amodal masks")
    if len(gv) != len(ga):
        raise ValueError(f"{len(gv)} ground-truth visible masks but {len(ga)} ground-truth amodal masks")
    matches = match_objects(pa, ga)
    by_gt = {g: p for p, g in matches}
    amodal: List[Counts] = []
    visible: List[Counts] = []
    amodal_ious: List[float] = []
    visible_ious: List[float] = []
    true_positives = 0
    for j in range(len(ga)):
        if j in by_gt:
            a = intersection_union(pa[by_gt[j]], ga[j])
            v = intersection_union(pv[by_gt[j]], gv[j])
            a_iou = iou_of_counts(*a)
            true_positives += a_iou >= MATCH_IOU
        else:
            a = (0, int(ga[j].sum()))
            v = (0, int(gv[j].sum()))
            a_iou = 0.0
        amodal.append(a)
        visible.append(v)
        amodal_ious.append(a_iou)
        visible_ious.append(iou_of_counts(*v) if j in by_gt else 0.0)
    matched_preds = {p for p, _ in matches}
    extras = [i for i in range(len(pa)) if i not in matched_preds]
    return SampleScore(
        n_pred=len(pa), n_gt=len(ga), matches=matches, amodal=amodal, visible=visible,
        extra_amodal_area=int(sum(int(pa[i].sum()) for i in extras)),
        extra_visible_area=int(sum(int(pv[i].sum()) for i in extras)),
        true_positives=int(true_positives), object_amodal_ious=amodal_ious, object_visible_ious=visible_ious,
    )


def normalise_phrase(phrase: str) -> str:
    """Lower case, single spaces: how phrases are compared."""
    return " ".join(phrase.lower().split())


def objects_named(pred_phrases: Sequence[str], gt_phrases: Sequence[str]) -> bool:
    """The answer names the right objects: the same phrases (before each [SEG]) as a multiset, order free."""
    return Counter(map(normalise_phrase, pred_phrases)) == Counter(map(normalise_phrase, gt_phrases))


def _ratio(num: float, den: float) -> Optional[float]:
    return None if den == 0 else num / den


def summarise_samples(scores: Sequence[SampleScore]) -> Dict[str, Optional[float]]:
    """End-to-end figures over samples: gIoU (per sample, headline), gIoU per object, cIoU, precision, recall."""
    if not scores:
        return {"samples": 0}
    objects = sum(s.n_gt for s in scores)
    predicted = sum(s.n_pred for s in scores)
    tp = sum(s.true_positives for s in scores)
    out: Dict[str, Optional[float]] = {"samples": len(scores), "objects": objects, "predicted_objects": predicted}
    for kind in ("amodal", "visible"):
        counts = [c for s in scores for c in getattr(s, kind)]
        extra = sum(getattr(s, f"extra_{kind}_area") for s in scores)
        per_object = [x for s in scores for x in getattr(s, f"object_{kind}_ious")]
        out[f"{kind}_giou"] = float(np.mean([getattr(s, f"{kind}_iou") for s in scores]))
        out[f"{kind}_giou_per_object"] = float(np.mean(per_object)) if per_object else None
        out[f"{kind}_ciou"] = sample_iou(counts, extra)
    out.update({
        "match_iou": MATCH_IOU,
        "true_positives": tp,
        "object_precision": _ratio(tp, predicted),
        "object_recall": _ratio(tp, objects),
        "seg_count_accuracy": float(np.mean([s.n_pred == s.n_gt for s in scores])),
    })
    return out
