"""Issue #13: strict weights, llava-hf 1.5 config + truncation policy, mixed precision, FSDP, the GPU check's smoke mode."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from aura_core.model.build import build_aura_model
from aura_core.model.config import MLLMConfig, WeightsError, get_config
from aura_core.model.mllm import MultiModalLLM
from training.config import load_train_config
from training.precision import grad_scaler, keep_trainable_fp32, resolve_precision
from training.train import train

from tests.train_fixtures import small_settings

REPO = Path(__file__).resolve().parents[1]
TINY = get_config("tiny")


def test_paper_configs_refuse_random_weights_unless_asked(tmp_path):
    with pytest.raises(WeightsError, match="mllm.pretrained_path and vision.checkpoint are empty"):
        build_aura_model(get_config("paper-7b"))
    llava15 = load_train_config(REPO / "config/train/paper-7b-llava15.yaml", {"model_overrides": {"allow_random_init": True}})
    config = llava15.model_config()
    assert (config.mllm.vision_image_size, config.mllm.vision_patch_size, config.mllm.max_length) == (336, 14, 1024)
    assert config.mllm.max_new_tokens == 512 and TINY.mllm.max_new_tokens == 64
    # An original LLaVA-repo directory given as llava-hf: an error that points at the converter.
    original = tmp_path / "llava-v1"
    original.mkdir()
    (original / "config.json").write_text(json.dumps({"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
                                                      "mm_vision_tower": "openai/clip-vit-large-patch14"}))
    with pytest.raises(WeightsError, match="aura-convert-weights"):
        MultiModalLLM.build(MLLMConfig(pretrained_path=str(original)))


def test_llava_hf_loading_is_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    mllm = MultiModalLLM.build(TINY.mllm)
    mllm.core.save_pretrained(str(tmp_path))
    mllm.tokenizer.save_pretrained(str(tmp_path))
    state = load_file(str(tmp_path / "model.safetensors"))
    dropped = next(k for k in state if k.endswith("norm.weight") and "language_model" in k)
    del state[dropped]
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"missing.*norm\.weight.*unexpected.*extra\.weight"):
        MultiModalLLM.build(MLLMConfig(**{**TINY.mllm.__dict__, "pretrained_path": str(tmp_path)}))


def test_over_long_samples_are_truncated_by_the_policy_and_counted():
    import dataclasses

    import numpy as np

    image = np.zeros((32, 32, 3), dtype=np.uint8)
    base = MultiModalLLM.build(dataclasses.replace(TINY.mllm, max_length=40))
    n_image = base.image_seq_length
    long_question = " ".join(["what can i use to cut the red cup"] * 4)
    answer = "you can use the knife [SEG] ."
    history = [("what is on the table", "a cup [SEG] .")]
    out = base.encode([image], [long_question], [answer], [history])
    assert out["input_ids"].shape[1] <= 40 and base.truncated == 1
    labels = out["labels"][0]
    assert int((labels == base.seg_token_id).sum()) == 1  # the answer's [SEG] survives
    assert int((out["input_ids"][0] == base.image_token_id).sum()) == n_image
    strict = MultiModalLLM.build(dataclasses.replace(TINY.mllm, max_length=40, truncation="error"))
    with pytest.raises(ValueError, match="more than max_length=40"):
        strict.encode([image], [long_question], [answer])


def test_precision_modes_keep_fp32_master_weights():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", cpu)
    assert grad_scaler("bf16", cpu) is None
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).to(torch.bfloat16)
    module[0].requires_grad_(False)
    assert keep_trainable_fp32(module) == 2
    assert module[0].weight.dtype == torch.bfloat16 and module[1].weight.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # frozen bf16 + fp32 master weights run together under autocast
        y = module(torch.randn(2, 4))
    y.float().sum().backward()
    assert module[1].weight.grad.dtype == torch.float32


@pytest.mark.slow
def test_gpu_benchmark_smoke_mode(tmp_path):
    from benchmarks.gpu import main

    assert main(["--smoke", "--out", str(tmp_path), "--iterations", "1", "--train-steps", "1"]) == 0
    result = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert result["smoke"] and result["config"] == "tiny"
    for key in ("eager_fp32_ms", "eager_bf16_ms"):
        assert result["vit"][key] > 0
    assert result["llm"]["decode_ms_per_token"] > 0 and result["ask"]["ask_ms"] > 0
    assert result["decoders"]["decoders_4_seg_ms"] > 0 and result["training"]["steps"] == 1
    assert "| `ask` end to end" in (tmp_path / "gpu_smoke.md").read_text()


def test_gpu_benchmark_keeps_going_past_a_failed_stage(tmp_path, monkeypatch):
    """A stage that raises is reported with its error; the stages after it still run and the report is written."""
    import benchmarks.gpu as gpu

    def broken(*_args):
        raise RuntimeError("no kernel image for this device")

    monkeypatch.setattr(gpu, "bench_decoders", broken)
    for name, value in (("bench_llm", {"prompt_tokens": 3, "prefill_ms": 1.0}), ("bench_ask", {"ask_ms": 2.0}),
                        ("bench_vit", {"input": "1x3x8x8", "eager_bf16_ms": 4.0}),
                        ("bench_training", {"steps": 1, "seconds": 0.5})):
        monkeypatch.setattr(gpu, name, lambda *_args, value=value: value)
    assert gpu.main(["--smoke", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert result["decoders"] == {"error": "RuntimeError: no kernel image for this device"}
    assert result["ask"]["ask_ms"] == 2.0 and result["training"]["steps"] == 1
    report = (tmp_path / "gpu_smoke.md").read_text()
    assert "- decoders: RuntimeError: no kernel image for this device" in report
    assert "| `ask` end to end, <= 30 new tokens (ms) | 2.0 |" in report
    assert result["command"] == f"python benchmarks/gpu.py --smoke --out {tmp_path}" and result["command"] in report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fsdp_two_processes_match_one_and_save_an_unsharded_model(small_data, tmp_path):
    from aura_core.model.checkpoint import load_checkpoint

    out = tmp_path / "fsdp"
    config = tmp_path / "fsdp.yaml"
    config.write_text(yaml.safe_dump(small_settings(small_data, out, iterations=2, batch_size=1, strategy="fsdp",
                                                    final_eval_samples=1)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         str(REPO / "training/train.py"), "--config", str(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=380,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FSDP2" in proc.stderr
    single = tmp_path / "single"
    train(load_train_config(None, small_settings(small_data, single, iterations=2, batch_size=2, final_eval_samples=1)))

    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["total"] for r in rows if "total" in r}

    sharded, alone = losses(out), losses(single)
    assert sharded[1] == pytest.approx(alone[1], rel=1e-4)  # same weights, same two samples
    assert sharded[2] == pytest.approx(alone[2], rel=1e-2)  # after one step (per-rank vs per-batch token weighting)
    model = load_checkpoint(out / "model")  # written unsharded
    assert not any(type(p).__name__ == "DTensor" for p in model.parameters())
    assert json.loads((out / "metrics.json").read_text())["teacher_forced"]["count"] > 0
