"""Trainer: lr schedule, settings/flags errors, gradient accumulation, resume, evaluation report, multi-process run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from aura_core.data.dataset import AmodalReasonSegDataset, collate
from aura_core.model.build import build_aura_model
from aura_core.model.config import ConfigError
from training.config import TINY_PRETRAINED, TrainConfig, load_train_config, parse_set_overrides
from training.data import DataDirError, check_data_dir
from training.distributed import DistContext
from training.evaluate import evaluate, format_table
from training.schedule import warmup_decay_lr
from training.train import main as train_main
from training.train import train, train_step
from training.ship_default_model import ship
from training.trainer_state import ResumeError
from aura_core.pipeline import AuraPipeline
from benchmarks.ablation import VARIANTS, finished_row, pretrained_parts, run_slug, summarise, to_markdown, variant_config
from benchmarks.ablation import main as ablation_main
from tests.train_fixtures import small_settings

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- schedule


def test_warmup_decay_lr_rises_linearly_then_falls_to_zero():
    lrs = [warmup_decay_lr(s, base_lr=1e-3, warmup_steps=100, total_steps=5000) for s in range(5001)]
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[99] == pytest.approx(1e-3)  # peak at the end of warm-up
    assert all(b > a for a, b in zip(lrs[:99], lrs[1:100]))
    assert all(b < a for a, b in zip(lrs[100:5000], lrs[101:5001]))
    assert lrs[2550] == pytest.approx(0.5e-3)  # halfway through the decay
    assert lrs[4999] > 0 and lrs[5000] == 0.0
    with pytest.raises(ValueError):
        warmup_decay_lr(0, base_lr=1e-3, warmup_steps=10, total_steps=10)


# ----------------------------------------------------------------------------- settings


def test_config_files_and_flags(tmp_path):
    assert load_train_config(REPO / "config/train/tiny.yaml") == TrainConfig()  # the file spells out the defaults
    # The paper config names no weights: refused unless random init is asked for explicitly.
    with pytest.raises(ConfigError, match=r"mllm\.pretrained_path and vision\.checkpoint are empty.*allow_random_init"):
        load_train_config(REPO / "config/train/paper-7b.yaml")
    paper = load_train_config(REPO / "config/train/paper-7b.yaml", {"model_overrides": {"allow_random_init": True}})
    assert (paper.lr, paper.iterations, paper.warmup_iterations, paper.batch_size, paper.grad_accumulation) == (1e-3, 5000, 100, 1, 4)
    assert paper.model_config().vision.embed_dim == 1280 and paper.grad_clip > 0
    merged = load_train_config(None, parse_set_overrides(["lr=3e-4", "synthetic.train_images=7", "betas=[0.8, 0.9]"]))
    assert (merged.lr, merged.synthetic.train_images, merged.betas) == (3e-4, 7, (0.8, 0.9))

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"iterations": 10, "synthetic": {"train_imgs": 5}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'synthetic\.train_imgs'"):
        load_train_config(bad)
    with pytest.raises(ConfigError, match="'lr_max'"):
        load_train_config(None, parse_set_overrides(["lr_max=1"]))
    with pytest.raises(ConfigError, match="vision.patch"):
        load_train_config(None, {"model_overrides": {"vision": {"patch": 8}}})
    with pytest.raises(ConfigError, match="iterations"):
        load_train_config(None, {"iterations": "many"})
    with pytest.raises(ConfigError, match="warmup_iterations"):
        load_train_config(None, {"iterations": 10, "warmup_iterations": 10})


def test_missing_data_dir_is_reported_before_training(tmp_path, small_data, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations_train.json").write_text("{}")
    with pytest.raises(DataDirError, match="qa_train.json"):
        check_data_dir(tmp_path, ["train", "val"])
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(small_settings(tmp_path / "nowhere", tmp_path / "out")))
    assert train_main(["--config", str(config)]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------- gradient accumulation


def _flipped(item):
    out = dict(item)
    out["image"] = item["image"][:, ::-1].copy()
    out["sam_image"] = item["sam_image"].flip(-1)
    for key in ("visible_masks", "amodal_masks", "spatial_maps"):
        out[key] = item[key].flip(-1)
    return out


def test_gradient_accumulation_matches_the_full_batch(small_data, tmp_path):
    torch.manual_seed(0)
    config = load_train_config(None, small_settings(small_data, tmp_path))
    model = build_aura_model(config.model_config())
    item = AmodalReasonSegDataset(small_data, "train", image_size=64)[0]
    # Same answer (token count) and [SEG] count in both samples, so batch means equal means of micro-batch means.
    pair = [item, _flipped(item)]

    def grads(batches, accumulation):
        model.zero_grad(set_to_none=True)
        cfg = load_train_config(None, small_settings(small_data, tmp_path, grad_accumulation=accumulation))
        logs = train_step(model, iter(batches), cfg, DistContext())
        return logs, {n: p.grad.clone() for n, p in model.trainable_parameters() if p.grad is not None}

    full_logs, full = grads([collate(pair)], 1)
    acc_logs, acc = grads([collate(pair[:1]), collate(pair[1:])], 2)
    assert full.keys() == acc.keys() and len(full) > 10
    for name in full:
        torch.testing.assert_close(acc[name], full[name], rtol=1e-3, atol=1e-6, msg=name)
    assert acc_logs["total"] == pytest.approx(full_logs["total"], rel=1e-4)
    # Not a vacuous comparison: a single micro-batch gives different gradients.
    _, half = grads([collate(pair[:1])], 1)
    assert any(not torch.allclose(half[n], full[n], rtol=1e-3, atol=1e-6) for n in full)


# ----------------------------------------------------------------------------- resume, evaluation


def dataset_image(root: Path):
    return AmodalReasonSegDataset(root, "val", image_size=64)[0]["image"]


def _losses(run_dir: Path):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["total"] for r in records if "total" in r}


@pytest.mark.slow
def test_resume_equals_uninterrupted_and_checks_the_config(small_data, tmp_path):
    settings = small_settings(small_data, tmp_path / "straight", grad_accumulation=2)
    straight = train(load_train_config(None, settings))
    sliced_settings = dict(settings, output_dir=str(tmp_path / "sliced"))
    first = train(load_train_config(None, sliced_settings), stop_at=2)
    assert first == {} and (tmp_path / "sliced/checkpoints/last/trainer_state.json").is_file()
    assert not (tmp_path / "sliced/metrics.json").exists()
    resumed = train(load_train_config(None, sliced_settings), resume=True)

    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "sliced")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-5), step
    assert resumed["teacher_forced"]["amodal_giou"] == pytest.approx(straight["teacher_forced"]["amodal_giou"], abs=1e-3)

    # The final model ships as a self-contained fp16 default model that the pipeline loads.
    shipped = ship(tmp_path / "straight/model", tmp_path / "default_model", tmp_path / "straight/metrics.json")
    meta = json.loads((shipped / "config.json").read_text())
    assert meta["saved_dtype"] == "float16"
    assert meta["extra"]["train_config"] == json.loads((tmp_path / "straight/train_config.json").read_text())  # how it was made
    assert "python training/train.py --config run.json" in meta["extra"]["remake"]
    result = AuraPipeline.from_pretrained(shipped, max_new_tokens=4).ask(dataset_image(small_data), "What can I cut with?")
    assert result.image_size == (64, 64)

    # Another config on resume: refused before any training, naming the difference.
    with pytest.raises(ResumeError, match="lr: checkpoint 0.001 vs now 0.0005"):
        train(load_train_config(None, dict(sliced_settings, lr=5e-4)), resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(load_train_config(None, dict(settings, output_dir=str(tmp_path / "empty"))), resume=True)


def test_evaluation_report_format(small_data, tmp_path):
    torch.manual_seed(0)
    config = load_train_config(None, small_settings(small_data, tmp_path))
    model = build_aura_model(config.model_config())
    dataset = AmodalReasonSegDataset(small_data, "val", image_size=64)
    report = evaluate(model, dataset, end_to_end_samples=2, overlay_dir=tmp_path / "ov", overlays=2)
    tf, e2e = report["teacher_forced"], report["end_to_end"]
    assert "teacher-forced" in tf["note"] and "Hungarian" in e2e["note"] and "per-sample" in tf["giou_note"]
    assert tf["samples"] == len(dataset) and tf["count"] >= len(dataset)
    for key in ("amodal_giou", "amodal_giou_per_object", "amodal_ciou", "visible_giou", "visible_giou_per_object",
                "visible_ciou", "occlusion_rate_mae", "baseline_visible_as_amodal_giou"):
        assert 0.0 <= tf[key] <= 1.0, key
    assert set(tf["amodal_by_bucket"]) == {"<0.1", "0.1-0.3", "0.3-0.5", ">=0.5"}
    assert set(tf["occluded_0.3"]) == {"count", "amodal_giou", "baseline_visible_as_amodal_giou", "gain"}
    # End to end: the model's own answers on two QA pairs, every figure present.
    assert e2e["answers"] == e2e["samples"] == 2 and e2e["objects"] >= 2 and e2e["predicted_objects"] >= 0
    for key in ("amodal_giou", "amodal_giou_per_object", "amodal_ciou", "visible_giou", "visible_giou_per_object",
                "visible_ciou", "seg_count_accuracy", "objects_named_accuracy", "exact_answer_accuracy", "object_recall"):
        assert 0.0 <= e2e[key] <= 1.0, key
    assert "object_precision" in e2e and e2e["match_iou"] == 0.5 and len(e2e["examples"]) == 2
    assert len(tf["overlays"]) == 2 and all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in tf["overlays"])
    json.dumps(report)  # JSON-able
    table = format_table(report)
    assert "| method | amodal gIoU | amodal cIoU | visible gIoU | visible cIoU | amodal gIoU per object |" in table
    assert "amodal = predicted visible" in table and ">=0.3" in table
    assert "End to end" in table and "object recall" in table and "right objects named" in table
    split = e2e["objects_named_by_object_count"]
    assert sum(v["answers"] for v in split.values()) == 2 and "right objects named, by objects asked for: " in table
    kinds = e2e["objects_named_by_kind"]  # the synthetic set records each question's kind
    assert sum(v["answers"] for v in kinds.values()) == 2 and "right objects named, by kind of question: " in table
    assert evaluate(model, dataset, max_samples=1, end_to_end_samples=None)["end_to_end"] is None


def test_right_objects_named_split_by_how_many_objects_the_question_asks_for():
    from training.evaluate import named_by_object_count

    split = named_by_object_count([(1, True), (1, False), (1, True), (2, False), (3, True), (4, False)])
    assert split == {"1": {"answers": 3, "accuracy": 2 / 3}, "2": {"answers": 1, "accuracy": 0.0},
                     "3+": {"answers": 2, "accuracy": 0.5}}
    assert named_by_object_count([]) == {}


def test_right_objects_named_split_by_question_kind_when_the_data_records_it():
    from training.evaluate import named_by_kind

    split = named_by_kind([("use", True), ("in_front", False), ("use", False), (None, True), ("", False)])
    assert split == {"in_front": {"answers": 1, "accuracy": 0.0}, "use": {"answers": 2, "accuracy": 0.5}}
    assert named_by_kind([(None, True)]) == {}  # real AmodalReasonSeg entries have no kind: no split


def test_answers_only_scores_a_language_models_own_answers(small_data):
    from types import SimpleNamespace

    from training.evaluate import answers_only, format_answers_only

    dataset = AmodalReasonSegDataset(small_data, "val", image_size=64)
    answers = {qa.question: qa.answer for qa in dataset.data.qa}

    class Scripted:  # answers from a script: the ground truth, or only its first object
        def __init__(self, first_only):
            self.first_only = first_only

        def generate(self, image, question, max_new_tokens=64):
            answer = answers[question]
            return SimpleNamespace(answer=answer.split("[SEG]")[0] + "[SEG]." if self.first_only else answer)

    indices = list(range(len(dataset)))
    perfect = answers_only(Scripted(False), dataset, indices)
    assert perfect["objects_named_accuracy"] == perfect["seg_count_accuracy"] == 1.0
    assert perfect["segs_generated"] == perfect["objects"] > perfect["answers"] == len(dataset)
    several = [len(qa.object_ids) > 1 for qa in dataset.data.qa]
    assert any(several) and not all(several)  # both kinds, so the first-object-only script fails some
    first = answers_only(Scripted(True), dataset, indices)
    assert first["objects_named_accuracy"] == pytest.approx(1 - sum(several) / len(several))
    assert first["objects_named_by_object_count"]["1"]["accuracy"] == 1.0 and first["segs_generated"] == len(dataset)
    by_kind = first["objects_named_by_kind"]  # the synthetic set records each question's kind
    for kind, split in by_kind.items():
        asked = [len(qa.object_ids) == 1 for qa in dataset.data.qa if qa.kind == kind]
        assert split == {"answers": len(asked), "accuracy": pytest.approx(sum(asked) / len(asked))}
    assert sum(v["answers"] for v in by_kind.values()) == len(dataset)
    assert "right objects named, by kind of question: " in format_answers_only(first, "script")
    assert "right objects named 100.00" in format_answers_only(perfect, "script")


def test_evaluate_cli_scores_a_llava_directory_alone(small_data, tmp_path, capsys):
    from training.evaluate import main as evaluate_main
    from training.pretrain_mllm import build_pretext_model, mllm_config, save_llava_dir

    torch.manual_seed(0)
    llava = save_llava_dir(build_pretext_model(mllm_config("tiny", 32, 3)), tmp_path / "tiny_llava", {})
    out = tmp_path / "answers.json"
    assert evaluate_main(["--llava", str(llava), "--data-dir", str(small_data), "--end-to-end-samples", "2",
                          "--out", str(out)]) == 0
    report = json.loads(out.read_text())["answers_only"]
    assert report["answers"] == 2 and 0.0 <= report["objects_named_accuracy"] <= 1.0 and len(report["examples"]) == 2
    assert "Answers of" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="drop --checkpoint"):
        evaluate_main(["--llava", str(llava), "--checkpoint", str(tmp_path), "--data-dir", str(small_data)])


@pytest.mark.slow  # ~14 s on the shared 2-core CPU: matplotlib + TensorBoard imports, 2 evaluations
def test_run_folder_has_tensorboard_events_and_curves(small_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    config = load_train_config(None, small_settings(small_data, out, iterations=2, eval_every=1, eval_samples=1, final_eval_samples=1,
                                                    final_eval_generation=True, final_eval_end_to_end_samples=1))
    report = train(config)
    assert report["end_to_end"]["samples"] == 1 and "amodal_giou" in report["end_to_end"]
    assert json.loads((out / "metrics.json").read_text())["end_to_end"]["answers"] == 1
    assert "End to end" in (out / "eval_step000002.md").read_text()
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    events = list(out.glob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in out.iterdir())
    acc = EventAccumulator(str(out))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("loss/total", "loss/bce", "train/lr", "eval/teacher_forced/amodal_giou",
                "eval/teacher_forced/amodal_giou_per_object", "eval/teacher_forced/amodal_by_bucket/ge0.5/count",
                "eval/end_to_end/amodal_giou", "eval/end_to_end/object_recall", "eval/end_to_end/objects_named_accuracy"):
        assert tag in tags, tag
    assert [e.step for e in acc.Scalars("eval/teacher_forced/amodal_giou")] == [1, 2]  # every evaluation
    assert [e.step for e in acc.Scalars("loss/total")] == [1, 2]


# ----------------------------------------------------------------------------- more than one process


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_process_ddp_run(small_data, tmp_path):
    out = tmp_path / "ddp"
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(small_settings(small_data, out, iterations=2, batch_size=1)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        # --standalone: torchrun's rendezvous store binds port 0, i.e. a free port the OS picks (no fixed port to collide)
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "training/train.py"), "--config", str(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=230,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "total" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["world_size"] == 2 for r in steps)  # rank 0 logs once per step
    assert (out / "model/model.safetensors").is_file() and (out / "checkpoints/last/trainer_state.json").is_file()
    assert json.loads((out / "metrics.json").read_text())["teacher_forced"]["count"] > 0


def test_ablation_reuses_only_rows_made_from_the_same_pretrained_parts(tmp_path):
    config = variant_config({"iterations": 5, "warmup_iterations": 1}, "AURA (both)", 0, tmp_path)
    parts = pretrained_parts(config)
    assert all(len(v) == 16 for v in parts.values())  # the shipped tiny SAM and tiny LLaVA, by content
    sam_config = load_train_config(None, {"model_overrides": {**TINY_PRETRAINED, "vision": {"checkpoint": str(tmp_path / "sam.pth")}}})
    with pytest.raises(FileNotFoundError, match="vision.checkpoint .*sam.pth does not exist"):
        pretrained_parts(sam_config)
    (tmp_path / "sam.pth").write_bytes(b"other weights")
    assert pretrained_parts(sam_config)["sam"] != parts["sam"] and pretrained_parts(sam_config)["llava"] == parts["llava"]
    row = {"amodal_giou": 0.6, "amodal_ciou": 0.7, "visible_giou": 0.65, "visible_ciou": 0.75, "occluded_amodal_giou": 0.5,
           "occluded_gain": 0.1, "seconds": 1.0}
    for seed in (0, 1):
        for name in VARIANTS:
            (tmp_path / run_slug(name, seed)).mkdir()
            (tmp_path / run_slug(name, seed) / "ablation_row.json").write_text(json.dumps({**row, "seed": seed, "pretrained": parts}))
    assert finished_row(tmp_path, "AURA (both)", 0, parts)["seed"] == 0
    assert finished_row(tmp_path, "AURA (both)", 0, {**parts, "sam": "0" * 16}) is None  # other parts: trained again
    # Every run finished from these parts: nothing is trained, the tables are written and name the parts.
    assert ablation_main(["--seeds", "0", "1", "--runs-dir", str(tmp_path), "--results", str(tmp_path / "table")]) == 0
    results = json.loads((tmp_path / "table.json").read_text())
    assert results["pretrained"] == parts and "0 trained" in results["budget"] and parts["llava"] in results["budget"]
    assert "| AURA (both) | 60.00 ± 0.00 (n=2) |" in (tmp_path / "table.md").read_text()


def test_ablation_variants_and_table(tmp_path):
    configs = [variant_config({"iterations": 5, "warmup_iterations": 1}, name, 3, tmp_path) for name in VARIANTS]
    switches = {(c.model_config().use_occlusion_condition_encoder, c.model_config().use_spatial_occlusion_encoder) for c in configs}
    assert switches == {(False, False), (True, False), (False, True), (True, True)}
    assert all(c.seed == 3 and c.iterations == 5 and c.model_config().vision.checkpoint == "tiny_sam_vit.pth" for c in configs)
    def row(seed, amodal, occluded):
        return {"seed": seed, "amodal_giou": amodal, "amodal_ciou": 0.4, "visible_giou": 0.6, "visible_ciou": 0.7,
                "occluded_amodal_giou": occluded, "occluded_gain": 0.1}
    runs = {"baseline (no E_OC, no E_SO)": [row(0, 0.50, 0.30), row(1, 0.60, 0.30), row(2, 0.70, 0.30)],
            "AURA (both)": [row(0, 0.52, 0.40), row(1, 0.62, 0.41), row(2, 0.72, 0.39)]}
    table = summarise(runs)
    both = table["AURA (both)"]
    assert both["amodal_giou"]["mean"] == pytest.approx(0.62) and both["amodal_giou"]["std"] == pytest.approx(0.1)
    assert both["amodal_giou"]["ci95"] == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)  # t(0.975, 2 dof)
    # Paired by seed, the +2 points are exact even though the seeds spread by 20: the interval is 0 wide.
    assert both["delta_amodal_giou"]["mean"] == pytest.approx(0.02) and both["delta_amodal_giou"]["ci95"] == pytest.approx(0.0, abs=1e-9)
    assert both["delta_occluded_amodal_giou"]["mean"] == pytest.approx(0.10)
    markdown = to_markdown(table, "test budget")
    assert "(n=1, no interval)" in to_markdown(summarise({"AURA (both)": [row(0, 0.5, 0.3)]}), "one seed")
    assert "| AURA (both) | 62.00 ± 24.84 (n=3) |" in markdown and "| AURA (both) | 2.00 ± 0.00 (n=3) | 10.00 ± 2.48 (n=3) |" in markdown
