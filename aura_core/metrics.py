"""The paper's metrics: gIoU, cIoU (visible and amodal), occlusion-rate MAE, IoU per occlusion bucket.

Two gIoUs, both labelled wherever they are reported:
- gIoU (the paper's definition, the headline): the mean over samples (one image + one question, i.e. one QA pair)
  of the per-sample IoU. A multi-object answer makes one per-sample IoU by accumulating over its objects: the sum
  of its objects' intersections over the sum of their unions (`sample_iou`; for one object, that object's IoU).
- gIoU per object (LISA's code): the mean of per-mask IoUs.
A pair with both masks empty counts as 1. cIoU is the sum of intersections over the sum of unions over all masks
(1.0 when every mask is empty). Masks are bool HxW numpy arrays. End-to-end scoring of generated answers (matching
[SEG]s to objects) is in aura_core/matching.py.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from aura_core.masks import intersection_union, iou_of_counts

# Occlusion buckets on the ground-truth rate: [low, high).
BUCKETS: Tuple[Tuple[str, float, float], ...] = (
    ("<0.1", 0.0, 0.1),
    ("0.1-0.3", 0.1, 0.3),
    ("0.3-0.5", 0.3, 0.5),
    (">=0.5", 0.5, float("inf")),
)


def bucket_of(rate: float) -> str:
    """Label of the occlusion bucket holding `rate`."""
    for label, low, high in BUCKETS:
        if low <= rate < high:
            return label
    return BUCKETS[0][0]  # negative rates (should not happen) fall into the lowest bucket


def _counts(pred: np.ndarray, gt: np.ndarray, index: int) -> Tuple[int, int]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pair {index}: prediction shape {pred.shape} and ground-truth shape {gt.shape} must be the same HxW")
    return intersection_union(pred, gt)


def _pair_counts(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> List[Tuple[int, int]]:
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions but {len(gts)} ground-truth masks")
    if len(preds) == 0:
        raise ValueError("no masks to score")
    return [_counts(p, g, i) for i, (p, g) in enumerate(zip(preds, gts))]


def _giou_from(counts: Sequence[Tuple[int, int]]) -> float:
    return float(np.mean([iou_of_counts(i, u) for i, u in counts]))


def sample_iou(counts: Sequence[Tuple[int, int]], extra_area: int = 0) -> float:
    """One IoU for a multi-object sample: sum of its intersections / (sum of its unions + `extra_area`).

    `extra_area`: predicted pixels that match no ground-truth object (end-to-end false positives, see
    aura_core/matching.py); 0 when every prediction has its object (teacher-forced).
    """
    return iou_of_counts(sum(i for i, _ in counts), sum(u for _, u in counts) + int(extra_area))


def _sample_giou_from(counts: Sequence[Tuple[int, int]], sizes: Sequence[int]) -> float:
    """Mean per-sample IoU; `counts` holds the samples' objects back to back, `sizes` the object count of each."""
    ious, start = [], 0
    for size in sizes:
        ious.append(sample_iou(counts[start : start + size]))
        start += size
    return float(np.mean(ious))


def _ciou_from(counts: Sequence[Tuple[int, int]]) -> float:
    """cIoU: the whole set's intersections over its unions, i.e. all pairs scored as one sample."""
    return sample_iou(counts)


def giou(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> float:
    """Mean per-pair IoU over equal-length lists of bool HxW masks."""
    return _giou_from(_pair_counts(preds, gts))


def ciou(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> float:
    """Cumulative intersection / cumulative union over equal-length lists of bool HxW masks."""
    return _ciou_from(_pair_counts(preds, gts))


def occlusion_rate_mae(pred_rates: Sequence[float], gt_rates: Sequence[float]) -> float:
    """Mean absolute error between predicted and ground-truth occlusion rates."""
    if len(pred_rates) != len(gt_rates):
        raise ValueError(f"{len(pred_rates)} predicted rates but {len(gt_rates)} ground-truth rates")
    if len(pred_rates) == 0:
        raise ValueError("no occlusion rates to score")
    return float(np.mean(np.abs(np.asarray(pred_rates, float) - np.asarray(gt_rates, float))))


def _by_bucket(counts: Sequence[Tuple[int, int]], rates: Sequence[float]) -> Dict[str, Dict[str, Optional[float]]]:
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for label, _, _ in BUCKETS:
        members = [c for c, r in zip(counts, rates) if bucket_of(float(r)) == label]
        out[label] = {
            "count": len(members),
            "giou": _giou_from(members) if members else None,
            "ciou": _ciou_from(members) if members else None,
        }
    return out


def iou_by_occlusion_bucket(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], rates: Sequence[float]) -> Dict[str, Dict[str, Optional[float]]]:
    """Per bucket of ground-truth occlusion rate: {"count", "giou", "ciou"} (None for an empty bucket)."""
    counts = _pair_counts(preds, gts)
    if len(rates) != len(counts):
        raise ValueError(f"{len(rates)} rates for {len(counts)} mask pairs")
    return _by_bucket(counts, rates)


MaskLike = Union[np.ndarray, Sequence[np.ndarray]]


def _as_list(masks: MaskLike, name: str) -> List[np.ndarray]:
    if isinstance(masks, np.ndarray):
        if masks.ndim == 2:
            return [masks]
        if masks.ndim == 3:
            return list(masks)
        raise ValueError(f"{name}: expected HxW or KxHxW masks, got shape {masks.shape}")
    return [np.asarray(m) for m in masks]


def _as_rates(rates: Union[float, Sequence[float], np.ndarray]) -> List[float]:
    arr = np.asarray(rates, dtype=float).reshape(-1)
    return [float(x) for x in arr]


class MetricAccumulator:
    """Collects per-object results (one per [SEG]) and summarises them as the paper reports.

    Each `add` call is one sample (one QA pair, its K objects): the per-sample gIoU averages over those calls.
    Only intersection/union counts are kept, so memory does not grow with image size.
    """

    def __init__(self) -> None:
        self.visible: List[Tuple[int, int]] = []
        self.amodal: List[Tuple[int, int]] = []
        self.baseline: List[Tuple[int, int]] = []  # predicted visible mask scored as the amodal mask
        self.pred_rates: List[float] = []
        self.gt_rates: List[float] = []
        self.sample_sizes: List[int] = []  # objects per `add` call (per sample)

    def __len__(self) -> int:
        return len(self.amodal)

    def add(self, pred_visible: MaskLike, gt_visible: MaskLike, pred_amodal: MaskLike, gt_amodal: MaskLike,
            pred_rate: Union[float, Sequence[float]], gt_rate: Union[float, Sequence[float]]) -> None:
        """Add one sample: one object (HxW masks, float rates) or K objects (KxHxW or lists, K rates)."""
        pv, gv = _as_list(pred_visible, "pred_visible"), _as_list(gt_visible, "gt_visible")
        pa, ga = _as_list(pred_amodal, "pred_amodal"), _as_list(gt_amodal, "gt_amodal")
        pr, gr = _as_rates(pred_rate), _as_rates(gt_rate)
        lengths = {"pred_visible": len(pv), "gt_visible": len(gv), "pred_amodal": len(pa), "gt_amodal": len(ga), "pred_rate": len(pr), "gt_rate": len(gr)}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"MetricAccumulator.add: inputs disagree in object count: {lengths}")
        self.visible += _pair_counts(pv, gv) if pv else []
        self.amodal += _pair_counts(pa, ga) if pa else []
        self.baseline += _pair_counts(pv, ga) if pv else []
        self.pred_rates += pr
        self.gt_rates += gr
        if pa:
            self.sample_sizes.append(len(pa))

    def summary(self) -> Dict[str, object]:
        """amodal/visible gIoU (per sample: the headline; and per object) and cIoU, rate MAE, amodal IoU per
        occlusion bucket (per object), and the amodal=visible baseline."""
        if not self.amodal:
            return {"count": 0}
        sizes = self.sample_sizes
        return {
            "count": len(self.amodal),
            "samples": len(sizes),
            "amodal_giou": _sample_giou_from(self.amodal, sizes),
            "amodal_giou_per_object": _giou_from(self.amodal),
            "amodal_ciou": _ciou_from(self.amodal),
            "visible_giou": _sample_giou_from(self.visible, sizes),
            "visible_giou_per_object": _giou_from(self.visible),
            "visible_ciou": _ciou_from(self.visible),
            "occlusion_rate_mae": occlusion_rate_mae(self.pred_rates, self.gt_rates),
            "amodal_by_bucket": _by_bucket(self.amodal, self.gt_rates),
            "baseline_visible_as_amodal_giou": _sample_giou_from(self.baseline, sizes),
            "baseline_visible_as_amodal_giou_per_object": _giou_from(self.baseline),
            "baseline_visible_as_amodal_ciou": _ciou_from(self.baseline),
        }
