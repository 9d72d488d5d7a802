"""End-to-end matching (Hungarian on amodal IoU) and the per-sample gIoU against hand-computed cases."""
import numpy as np
import pytest

from aura_core.matching import match_objects, objects_named, score_sample, summarise_samples
from aura_core.metrics import MetricAccumulator, sample_iou


def _strip(start, stop, width=20):
    """A 1xW mask with columns [start, stop) set: areas and overlaps are easy to count by hand."""
    m = np.zeros((1, width), bool)
    m[0, start:stop] = True
    return m


G0, G1 = _strip(0, 10), _strip(10, 20)  # two ground-truth objects, 10 px each
EMPTY = np.zeros((1, 20), bool)


def test_perfect_and_swapped():
    assert match_objects([G0, G1], [G0, G1]) == [(0, 0), (1, 1)]
    assert match_objects([G1, G0], [G0, G1]) == [(1, 0), (0, 1)]  # order of the [SEG]s does not matter
    s = score_sample([G1, G0], [G1, G0], [G0, G1], [G0, G1])
    assert s.amodal == [(10, 10), (10, 10)] and s.visible == [(10, 10), (10, 10)]
    assert (s.amodal_iou, s.true_positives, s.extra_amodal_area) == (1.0, 2, 0)
    summary = summarise_samples([s])
    assert summary["object_precision"] == summary["object_recall"] == summary["seg_count_accuracy"] == 1.0
    assert summary["amodal_giou"] == summary["amodal_giou_per_object"] == summary["amodal_ciou"] == 1.0


def test_missing_object_scores_zero():
    s = score_sample([G0], [G0], [G0, G1], [G0, G1])
    assert s.matches == [(0, 0)] and s.amodal == [(10, 10), (0, 10)]
    assert s.object_amodal_ious == [1.0, 0.0]
    assert s.amodal_iou == pytest.approx(10 / 20)  # the missed object's area is in the sample's union
    summary = summarise_samples([s])
    assert summary["object_precision"] == 1.0 and summary["object_recall"] == 0.5
    assert summary["amodal_giou_per_object"] == 0.5 and summary["seg_count_accuracy"] == 0.0
    # No [SEG] at all: everything missed.
    none = score_sample(np.zeros((0, 1, 20), bool), np.zeros((0, 1, 20), bool), [G0], [G0])
    assert none.amodal_iou == 0.0 and summarise_samples([none])["object_precision"] is None


def test_extra_seg_is_a_false_positive():
    extra = _strip(0, 5)  # overlaps G0, which is already taken by a perfect match
    s = score_sample([G0, extra], [G0, extra], [G0], [G0])
    assert s.matches == [(0, 0)] and s.extra_amodal_area == 5 and s.extra_visible_area == 5
    assert s.amodal_iou == pytest.approx(10 / 15)  # the extra mask's area joins the union
    summary = summarise_samples([s])
    assert summary["object_precision"] == 0.5 and summary["object_recall"] == 1.0
    assert summary["amodal_giou_per_object"] == 1.0  # LISA-style per-object mean does not see extras
    assert summary["amodal_ciou"] == pytest.approx(10 / 15)


def test_hungarian_beats_greedy_and_zero_overlap_is_no_match():
    # A overlaps G0 best (7/15) and G1 a little (5/17); B overlaps only G0 (4/10). Greedy would give A->G0 and leave
    # B unmatched (0.47 in total); the optimum is B->G0 + A->G1 (0.69).
    a, b = _strip(3, 15), _strip(0, 4)
    assert match_objects([a, b], [G0, G1]) == [(1, 0), (0, 1)]
    assert match_objects([_strip(15, 20)], [G0]) == []  # touches nothing: not a match, a false positive
    s = score_sample([a, b], [a, b], [G0, G1], [G0, G1])
    assert s.true_positives == 0  # both below the 0.5 IoU of a true positive
    assert s.amodal_iou == pytest.approx((4 + 5) / (10 + 17))


def test_visible_scored_under_the_amodal_assignment():
    # Visible masks would pair the other way round; the amodal assignment decides.
    s = score_sample([G1, G0], [G0, G1], [G0, G1], [G0, G1])
    assert s.matches == [(0, 0), (1, 1)] and s.visible == [(0, 20), (0, 20)] and s.visible_iou == 0.0


def test_per_sample_giou_vs_per_object_mean():
    # Sample 1: two objects, one perfect (8 px), one missed (2 px GT, empty prediction); sample 2: one object at 1/4.
    big, small = _strip(0, 8), _strip(10, 12)
    acc = MetricAccumulator()
    acc.add([big, EMPTY], [big, small], [big, EMPTY], [big, small], [0.0, 0.0], [0.0, 0.0])
    acc.add(_strip(0, 1), _strip(0, 4), _strip(0, 1), _strip(0, 4), 0.0, 0.0)
    s = acc.summary()
    assert s["samples"] == 2 and s["count"] == 3
    assert s["amodal_giou"] == pytest.approx((8 / 10 + 1 / 4) / 2)  # paper: mean of per-sample IoUs
    assert s["amodal_giou_per_object"] == pytest.approx((1 + 0 + 1 / 4) / 3)  # LISA's code: mean over objects
    assert s["amodal_ciou"] == pytest.approx((8 + 1) / (10 + 4))
    assert s["visible_giou"] == s["amodal_giou"]
    assert sample_iou([(8, 8), (0, 2)]) == pytest.approx(0.8) and sample_iou([]) == 1.0

    # The same samples end to end (the missing [SEG] is simply not generated): the same figures.
    e2e = summarise_samples([score_sample([big], [big], [big, small], [big, small]),
                             score_sample([_strip(0, 1)], [_strip(0, 1)], [_strip(0, 4)], [_strip(0, 4)])])
    assert e2e["amodal_giou"] == pytest.approx(s["amodal_giou"])
    assert e2e["amodal_giou_per_object"] == pytest.approx(s["amodal_giou_per_object"])
    assert e2e["amodal_ciou"] == pytest.approx(s["amodal_ciou"])


def test_objects_named_and_errors():
    assert objects_named(["The Knife", "plate"], ["plate", "the  knife"])
    assert not objects_named(["plate"], ["plate", "plate"])
    with pytest.raises(ValueError, match="one HxW mask"):
        score_sample(G0, G0, [G0], [G0])
    with pytest.raises(ValueError, match="shapes"):
        score_sample([G0], [G0], [np.zeros((2, 2), bool)], [np.zeros((2, 2), bool)])
    assert summarise_samples([]) == {"samples": 0}
