"""The tiny SAM pretext run: slices (--stop-at, resume), fresh scenes per stage (--data-offset), and a manifest
that carries how its --init file was made."""
from __future__ import annotations

import json

import pytest
import torch

from training.pretrain_backbone import PretextScenes, main

SMALL = ["--batch-size", "2", "--objects", "2", "--workers", "0", "--threads", "1", "--warmup", "0"]


def test_data_offset_skips_whole_steps_of_the_stream():
    a = PretextScenes(seed=0, size=64, max_objects=2, start=3 * 2)
    b = PretextScenes(seed=0, size=64, max_objects=2, start=0)
    first_of_a = next(iter(a))[0]
    stream_b = iter(b)
    for _ in range(6):
        last_of_b = next(stream_b)[0]
    assert not torch.equal(first_of_a, last_of_b)
    assert torch.equal(first_of_a, next(stream_b)[0])  # scene 6 of the stream = the first of a 3-step offset


@pytest.mark.slow
def test_a_stage_runs_in_slices_and_records_its_history(tmp_path):
    first = tmp_path / "one" / "tiny_sam_vit.pth"
    assert main(["--steps", "1", "--eval-every", "1", "--work-dir", str(tmp_path / "w1"), "--out", str(first), *SMALL]) == 0
    stage_one = json.loads(first.with_suffix(".json").read_text())
    assert stage_one["steps"] == 1 and "init_manifest" not in stage_one
    assert stage_one["command"].startswith("python training/pretrain_backbone.py --steps 1")

    second = tmp_path / "two" / "tiny_sam_vit.pth"
    stage_two = ["--init", str(first), "--data-offset", "5", "--steps", "2", "--eval-every", "5",
                 "--work-dir", str(tmp_path / "w2"), "--out", str(second), *SMALL]
    assert main([*stage_two, "--stop-at", "1"]) == 0
    sliced = json.loads(second.with_suffix(".json").read_text())
    assert sliced["steps"] == 1 and sliced["steps_schedule"] == 2 and sliced["data_offset"] == 5
    first.with_suffix(".json").write_text("{}")  # what an --out over the --init file would do to its sidecar
    assert main(stage_two) == 0  # resumes at step 1 and ends the schedule
    done = json.loads(second.with_suffix(".json").read_text())
    assert done["steps"] == 2 and done["init_manifest"] == stage_one
    assert 0.0 <= done["held_out"]["visible_iou"] <= 1.0
    assert set(torch.load(second, weights_only=True)) >= {"image_encoder.patch_embed.proj.weight"}


def test_stop_at_outside_the_schedule_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--steps", "10", "--stop-at", "11", "--work-dir", str(tmp_path), "--out", str(tmp_path / "x.pth")])
    assert "--stop-at must be in 1..--steps (10), got 11" in capsys.readouterr().err
