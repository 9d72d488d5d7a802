"""Generator invariants: masks, rates, [SEG]s, questions that never name targets, determinism, occlusion spread."""
import re
from pathlib import Path

import numpy as np
import pytest

from aura_core.data.format import load_split
from aura_core.data.synthetic import CATEGORIES, QA_KINDS, SHAPES, generate_scene, main, write_split
from aura_core.model.tokens import SEG_TOKEN

N_SCENES = 80


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(np.random.default_rng([11, i]), 128) for i in range(N_SCENES)]


def test_category_table_is_rich():
    assert len(CATEGORIES) >= 10
    assert len({c.shape for c in CATEGORIES}) == len(CATEGORIES)
    assert len({c.colour for c in CATEGORIES}) == len(CATEGORIES)
    assert len({c.name for c in CATEGORIES}) == len(CATEGORIES)
    assert all(c.shape in SHAPES and c.uses for c in CATEGORIES)


def test_masks_and_rates(scenes):
    for scene in scenes:
        assert scene.image.dtype == np.uint8 and scene.image.shape == (128, 128, 3)
        assert 2 <= len(scene.objects) <= 7
        assert len({o.name for o in scene.objects}) == len(scene.objects)
        for o in scene.objects:
            assert not np.any(o.visible & ~o.amodal), "visible must be a subset of amodal"
            rate = 1.0 - o.visible.sum() / o.amodal.sum()
            assert abs(o.occlusion_rate - rate) < 1e-9
            assert o.occlusion_rate <= 0.8 + 1e-9, "objects more than 80% hidden are rejected"
        # drawn back to front: an object's visible part is not covered by any nearer object
        for i, o in enumerate(scene.objects):
            for nearer in scene.objects[i + 1:]:
                assert not np.any(o.visible & nearer.amodal)


def test_occlusion_distribution(scenes):
    rates = np.array([o.occlusion_rate for s in scenes for o in s.objects])
    assert (rates > 0.3).mean() > 0.25
    assert (rates < 0.05).mean() > 0.2
    assert rates.max() > 0.6


def test_qa_pairs(scenes):
    names = {c.name for c in CATEGORIES}
    multi = occluder_questions = 0
    for scene in scenes:
        assert 1 <= len(scene.qa)
        for qa in scene.qa:
            assert qa.answer.count(SEG_TOKEN) == len(qa.targets) == len(qa.phrases) >= 1
            q_words = set(re.findall(r"[a-z]+", qa.question.lower()))
            for t in qa.targets:
                name = scene.objects[t].name
                assert name not in q_words, f"question names its target {name!r}: {qa.question}"
                assert f"the {name} {SEG_TOKEN.lower()}" in qa.answer.lower()
                if scene.objects[t].occlusion_rate >= 0.02:
                    assert "hidden" in qa.answer or "cover" in qa.answer, qa.answer
            for phrase in qa.phrases:
                assert phrase.split()[-1] in names
            multi += len(qa.targets) > 1
            occluder_questions += "behind the" in qa.question
    assert multi > 10 and occluder_questions > 5


def test_each_question_records_what_it_asks(scenes):
    starts = {"behind": ("What is partly hidden behind", "What lies behind", "Which things does"),
              "in_front": ("What is covering part of", "What is in front of"),
              "most_hidden": ("Which object is hidden the most", "What is the hardest thing to see"),
              "on_top": ("What is lying on top", "Which things are not covered"),
              "serve": ("How could I serve",), "use": ("What can I use", "I want to", "Which things here", "If I need")}
    assert set(starts) == set(QA_KINDS)
    seen = set()
    for scene in scenes:
        for qa in scene.qa:
            assert qa.question.startswith(starts[qa.kind]), (qa.kind, qa.question)
            seen.add(qa.kind)
    assert seen == set(QA_KINDS)


def test_same_seed_same_bytes(tmp_path: Path):
    for name in ("a", "b"):
        write_split(tmp_path / name, "train", 3, seed=5, size=64)
    write_split(tmp_path / "c", "train", 3, seed=6, size=64)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5  # 3 images + 2 JSON
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a" / files[0]).read_bytes() != (tmp_path / "c" / files[0]).read_bytes()


def test_cli_writes_loadable_set(tmp_path: Path):
    assert main(["--out", str(tmp_path), "--train", "2", "--val", "1", "--seed", "1", "--size", "64"]) == 0
    train, val = load_split(tmp_path, "train"), load_split(tmp_path, "val")
    assert len(train.images) == 2 and len(val.images) == 1
    assert len(train.qa) >= 2 and len(train.categories) == len(CATEGORIES)
    assert all(qa.kind in QA_KINDS for qa in train.qa + val.qa)  # written to the QA file and read back
    assert all(p.suffix == ".png" for p in (tmp_path / "images").iterdir())
