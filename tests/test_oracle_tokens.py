"""The oracle-token diagnostic (training/oracle_tokens.py): the language model reads the patch ground truth in place
of the tower's tokens, trains on chosen question kinds, and is scored by kind."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training import oracle_tokens, pretrain_mllm
from training.oracle_tokens import ORACLE_FEATURES, OracleTokens, kind_batches, oracle_features
from training.pretrain_mllm import build_pretext_model, mllm_config, pretext_scene

SMALL = ["--scene-size", "64", "--batch-size", "2", "--warmup", "1", "--image-size", "32"]


def test_oracle_features_are_each_patch_s_visible_amodal_and_hidden_shares():
    scene, samples = pretext_scene(0, 3, 64, 0.0, grid=2)
    feats = oracle_features(samples[:2])
    assert feats.shape == (2, 4, ORACLE_FEATURES)
    s = samples[0]
    assert torch.allclose(feats[0], torch.from_numpy(np.concatenate([s[4], s[5], s[7]], -1)).float())


def test_the_language_model_reads_the_oracle_in_place_of_the_image():
    torch.manual_seed(0)
    mllm = build_pretext_model(mllm_config("tiny", 32, None)).eval()
    oracle = OracleTokens(mllm.hidden_size)
    _, samples = pretext_scene(0, 1, 64, 0.0, grid=2)
    _, others = pretext_scene(0, 2, 64, 0.0, grid=2)
    question = samples[0][1]

    def hidden(image, feats, features):
        features["now"] = feats
        inputs = mllm.encode([image], [question])
        return mllm._hidden(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                            attention_mask=inputs["attention_mask"])[0]

    with torch.no_grad(), oracle.replacing(mllm) as features:
        same = oracle_features(samples[:1])
        a = hidden(samples[0][0], same, features)
        b = hidden(others[0][0], same, features)  # another image, the same ground truth: the same states
        c = hidden(samples[0][0], oracle_features(others[:1]), features)
    assert torch.allclose(a, b) and not torch.allclose(a, c)
    with torch.no_grad():  # outside, the tower's tokens again
        inputs = mllm.encode([samples[0][0]], [question])
        d = mllm._hidden(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                         attention_mask=inputs["attention_mask"])[0]
    assert not torch.allclose(a, d)


def test_kind_batches_hold_only_the_asked_kinds_questions():
    batch = next(kind_batches(0, 64, 5, ["in_front", "behind"], grid=2, start=0))
    asked = set()
    for index in range(40):
        scene, samples = pretext_scene(0, index, 64, 0.0, grid=2)
        asked |= {(s[1], s[2]) for s, qa in zip(samples, scene.qa) if qa.kind in ("in_front", "behind")}
    assert len(batch) == 5 and all((s[1], s[2]) in asked for s in batch)


def test_script_trains_on_oracle_tokens_and_reports_by_kind(tmp_path):
    pretrain_mllm.main(SMALL + ["--steps", "2", "--eval-scenes", "1", "--eval-generate", "1", "--workers", "0",
                                "--language-width", "64", "--work-dir", str(tmp_path / "p"), "--out", str(tmp_path / "llava")])
    out = tmp_path / "oracle.json"
    common = ["--init", str(tmp_path / "p" / "state.pt"), "--image-size", "32", "--vision-layers", "2",
              "--scene-size", "64", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--eval-scenes", "2"]
    oracle_tokens.main(common + ["--kinds", "in_front,use", "--out", str(out)])
    report = json.loads(out.read_text())
    scores = report["right_objects_named_by_kind"]
    assert report["tokens"] == "oracle" and report["kinds_trained"] == ["in_front", "use"]
    assert scores["all"][1] == sum(n for kind, (_, n) in scores.items() if kind != "all") > 0
    assert all(0 <= pct <= 100 for pct, _ in scores.values())
    assert report["language_layers"] == 2 and report["language_width"] == 64  # the state's width, not the config's 128
    oracle_tokens.main(common + ["--tokens", "tower", "--language-layers", "3", "--out", str(tmp_path / "tower.json")])
    tower = json.loads((tmp_path / "tower.json").read_text())
    assert tower["right_objects_named_by_kind"]["all"][1] == scores["all"][1] and tower["language_layers"] == 3
    with pytest.raises(SystemExit, match="unknown"):
        oracle_tokens.main(common + ["--kinds", "sideways", "--out", str(out)])
