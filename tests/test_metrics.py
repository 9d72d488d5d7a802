"""Metrics against hand-computed cases."""
import numpy as np
import pytest

from aura_core.metrics import MetricAccumulator, ciou, giou, iou_by_occlusion_bucket, occlusion_rate_mae


def _mask(shape, *slices):
    m = np.zeros(shape, bool)
    for s in slices:
        m[s] = True
    return m


# pair A: pred 4 px, gt 4 px, overlap 2 -> IoU 2/6; pair B: pred 8 px inside gt 8 px -> IoU 1; pair C: both empty
P_A, G_A = _mask((4, 4), np.s_[0, 0:4]), _mask((4, 4), np.s_[0, 2:4], np.s_[1, 2:4])
P_B = G_B = _mask((4, 4), np.s_[2:4, :])
P_C = G_C = np.zeros((4, 4), bool)


def test_giou_ciou_by_hand():
    assert giou([P_A], [G_A]) == pytest.approx(2 / 6)
    assert giou([P_A, P_B], [G_A, G_B]) == pytest.approx((2 / 6 + 1) / 2)
    assert ciou([P_A, P_B], [G_A, G_B]) == pytest.approx((2 + 8) / (6 + 8))
    assert giou([P_A, P_B, P_C], [G_A, G_B, G_C]) == pytest.approx((2 / 6 + 1 + 1) / 3)  # both empty counts 1
    assert ciou([P_A, P_C], [G_A, G_C]) == pytest.approx(2 / 6)  # empty pair adds nothing to the sums
    assert ciou([P_C], [G_C]) == 1.0
    assert giou([P_C], [G_B]) == 0.0


def test_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 ground-truth"):
        giou([P_A, P_B], [G_A])
    with pytest.raises(ValueError, match="pair 0"):
        ciou([P_A], [np.zeros((3, 3), bool)])
    with pytest.raises(ValueError, match="no masks"):
        giou([], [])
    with pytest.raises(ValueError, match="object count"):
        MetricAccumulator().add(P_A, G_A, P_A, G_A, [0.1, 0.2], 0.1)


def test_rate_mae_and_buckets():
    assert occlusion_rate_mae([0.1, 0.5, 0.0], [0.2, 0.3, 0.0]) == pytest.approx(0.1)
    res = iou_by_occlusion_bucket([P_A, P_B, P_C], [G_A, G_B, G_C], [0.05, 0.35, 0.6])
    assert res["<0.1"] == {"count": 1, "giou": pytest.approx(2 / 6), "ciou": pytest.approx(2 / 6)}
    assert res["0.3-0.5"]["giou"] == 1.0 and res[">=0.5"]["count"] == 1
    assert res["0.1-0.3"] == {"count": 0, "giou": None, "ciou": None}
    assert iou_by_occlusion_bucket([P_A], [G_A], [0.1])["0.1-0.3"]["count"] == 1  # 0.1 opens the second bucket


def test_accumulator():
    acc = MetricAccumulator()
    # object 1: visible perfect; amodal gt = rows 0-1 (8 px), pred amodal = row 0 (4 px) -> IoU 0.5; baseline (visible=row 0) 0.5
    vis = _mask((4, 4), np.s_[0, :])
    amo = _mask((4, 4), np.s_[0:2, :])
    acc.add(vis, vis, vis, amo, 0.2, 0.5)
    # object 2 and 3 as a stack: perfect amodal, visible IoU 2/6 for object 2
    acc.add(np.stack([P_A, P_B]), np.stack([G_A, G_B]), np.stack([G_A, P_B]), np.stack([G_A, G_B]), [0.0, 0.0], [0.0, 0.05])
    s = acc.summary()
    assert s["count"] == 3 and len(acc) == 3
    # gIoU per object (LISA's code): the mean over the three objects
    assert s["amodal_giou_per_object"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert s["visible_giou_per_object"] == pytest.approx((1 + 2 / 6 + 1) / 3)
    # gIoU (paper): mean over the two samples (add calls) of summed intersection / summed union
    assert s["samples"] == 2
    assert s["amodal_giou"] == pytest.approx((4 / 8 + (4 + 8) / (4 + 8)) / 2)
    assert s["visible_giou"] == pytest.approx((1 + (2 + 8) / (6 + 8)) / 2)
    assert s["amodal_ciou"] == pytest.approx((4 + 4 + 8) / (8 + 4 + 8))
    assert s["occlusion_rate_mae"] == pytest.approx((0.3 + 0 + 0.05) / 3)
    # baseline: visible preds vs amodal gts: 4/8, P_A vs G_A 2/6, P_B vs G_B 1
    assert s["baseline_visible_as_amodal_giou_per_object"] == pytest.approx((0.5 + 2 / 6 + 1) / 3)
    assert s["baseline_visible_as_amodal_giou"] == pytest.approx((4 / 8 + (2 + 8) / (6 + 8)) / 2)
    assert s["amodal_by_bucket"][">=0.5"]["giou"] == pytest.approx(0.5)
    assert s["amodal_by_bucket"]["<0.1"]["count"] == 2
    assert MetricAccumulator().summary() == {"count": 0}
