"""Paper-scale check on one GPU: the paper-7b model (LLaVA-7B + SAM ViT-H) with random weights, in bf16.

    python benchmarks/gpu.py                 # on a CUDA machine: the full check (< 8 min on one H100)
    python benchmarks/gpu.py --smoke         # CPU-sized smoke mode: the tiny config, same code path (the test suite)

Reports, each as a median in ms after warm-up:
- ViT-H encode at 1024^2: torch eager (fp32 and bf16 autocast), torch.compile (bf16), onnxruntime CUDA (fp32) and
  TensorRT fp16 where installed (each optional stage is skipped, with the reason, when its package is missing or the
  time budget is spent), and the frames/s the embedding cache allows;
- LLM: CLIP + prefill of one question, then 30 decode steps with the KV cache (ms per token);
- the two mask decoders (E_P, D_V, E_OC, D_A) for 1 and 4 [SEG]s;
- one full `AuraPipeline.ask` end to end (30 new tokens at most) and the inference peak memory;
- 20 training steps (batch 1, LoRA + fp32 master weights under bf16 autocast, AdamW): time and peak memory.
Writes benchmarks/results/gpu.json and gpu.md (smoke mode: gpu_smoke.*; `--out` elsewhere).

Targets (issue #13): ask <= 300 ms for a 30-token answer, ViT-H >= 30 frames/s with the embedding cache, the 7B
model within 24 GB for inference in bf16.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from aura_core.model.build import build_aura_model
from aura_core.model.config import get_config
from training.command import command_line

LOG = logging.getLogger("aura.bench.gpu")
RESULTS = Path(__file__).resolve().parent / "results"
DECODE_TOKENS = 30
STAGES = ("llm", "decoders", "ask", "vit", "training")
QUESTION = "Which objects could I use to prepare a refreshing dessert, and where are the hidden parts of them?"


class Clock:
    """Median wall-clock ms of a callable on `device` (CUDA work is synchronised), and a run-wide time budget."""

    def __init__(self, device: torch.device, budget_s: float) -> None:
        self.device, self.start, self.budget_s = device, time.perf_counter(), budget_s

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def ms(self, fn: Callable[[], Any], iterations: int, warmup: int = 1) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        times: List[float] = []
        for _ in range(iterations):
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(1000 * (time.perf_counter() - start))
        return statistics.median(times)

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)


def _peak_gib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def model_config(smoke: bool, name: str = "paper-7b"):
    if smoke:
        return get_config("tiny", {"vision": {"checkpoint": None}, "allow_random_init": True})
    # random weights on purpose (a latency/memory check); bf16 LLaVA as in the paper recipe
    overrides: Dict[str, Any] = {"allow_random_init": True, "mllm": {"dtype": "bfloat16"}}
    if name == "tiny":
        overrides["vision"] = {"checkpoint": None}
    return get_config(name, overrides)


# ----------------------------------------------------------------------------- stages


def bench_vit(model, clock: Clock, args, work: Path) -> Dict[str, Any]:
    """The SAM image encoder at its input size: eager fp32 / bf16, torch.compile, onnxruntime CUDA, TensorRT fp16."""
    device = clock.device
    size = model.config.vision.image_size
    image = torch.randn(1, 3, size, size, device=device)
    backbone = model.vision_backbone
    out: Dict[str, Any] = {"input": f"1x3x{size}x{size}"}
    with torch.no_grad():
        out["eager_fp32_ms"] = clock.ms(lambda: backbone(image), args.iterations)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out["eager_bf16_ms"] = clock.ms(lambda: backbone(image), args.iterations)
    out["frames_per_s_bf16"] = 1000.0 / out["eager_bf16_ms"]

    if args.smoke or device.type != "cuda":
        out["compile_bf16_ms"] = "skipped: CPU smoke mode"
    elif clock.left_s() < 300:
        out["compile_bf16_ms"] = f"skipped: time budget ({clock.left_s():.0f} s left)"
    else:
        try:
            compiled = torch.compile(backbone)
            start = time.perf_counter()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                compiled(image)
                clock.sync()
                out["compile_s"] = time.perf_counter() - start
                out["compile_bf16_ms"] = clock.ms(lambda: compiled(image), args.iterations)
            out["frames_per_s_compiled"] = 1000.0 / out["compile_bf16_ms"]
        except Exception as error:  # noqa: BLE001 - report, do not stop the check
            out["compile_bf16_ms"] = f"failed: {type(error).__name__}: {str(error)[:200]}"

    onnx_path = _export_encoder(model, work, out, clock, args)
    if onnx_path is not None:
        _bench_onnxruntime(onnx_path, image, out, clock, args)
        _bench_tensorrt(onnx_path, image, out, clock, args)
    return out


def _export_encoder(model, work: Path, out: Dict[str, Any], clock: Clock, args) -> Optional[Path]:
    """An fp32 ONNX export of the image encoder (made on the CPU from a float32 copy), or None with the reason."""
    try:
        import onnxruntime
    except ImportError:
        out["onnxruntime_ms"] = out["tensorrt_fp16_ms"] = "skipped: onnxruntime not installed"
        return None
    provider = "CUDAExecutionProvider" if clock.device.type == "cuda" else "CPUExecutionProvider"
    from aura_core.export.tensorrt_backend import tensorrt_unavailable_reason

    providers, no_tensorrt = onnxruntime.get_available_providers(), tensorrt_unavailable_reason()
    if provider not in providers and no_tensorrt is not None:
        # nothing could run the export on this device: skip the (minutes-long, ViT-H) export itself
        out["onnxruntime_ms"] = f"skipped: {provider} not available (have {providers})"
        out["tensorrt_fp16_ms"] = f"skipped: {no_tensorrt}"
        return None
    if clock.left_s() < (60 if args.smoke else 330):
        out["onnxruntime_ms"] = out["tensorrt_fp16_ms"] = f"skipped: time budget ({clock.left_s():.0f} s left)"
        return None
    import copy

    from aura_core.export.graphs import IMAGE_ENCODER, graph_specs
    from aura_core.export.onnx_export import export_graph

    class EncoderGraph(torch.nn.Module):  # the export's image-encoder graph, on a float32 CPU copy of the encoder
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, sam_image: torch.Tensor) -> torch.Tensor:
            return self.encoder(sam_image)

    try:
        inputs, outputs = graph_specs(model)[IMAGE_ENCODER]
        graph = EncoderGraph(copy.deepcopy(model.vision_backbone.encoder).float().cpu()).eval()
        start = time.perf_counter()
        path = work / "image_encoder.onnx"
        export_graph(graph, inputs, outputs, path)
        out["onnx_export_s"] = time.perf_counter() - start
        return path
    except Exception as error:  # noqa: BLE001
        out["onnxruntime_ms"] = out["tensorrt_fp16_ms"] = f"failed: export: {type(error).__name__}: {str(error)[:200]}"
        return None


def _bench_onnxruntime(path: Path, image: torch.Tensor, out: Dict[str, Any], clock: Clock, args) -> None:
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    provider = "CUDAExecutionProvider" if clock.device.type == "cuda" else "CPUExecutionProvider"
    if provider not in providers:
        out["onnxruntime_ms"] = f"skipped: {provider} not available (have {providers})"
        return
    try:
        session = onnxruntime.InferenceSession(str(path), providers=[provider])
        feed = {session.get_inputs()[0].name: image.float().cpu().numpy()}
        out["onnxruntime_ms"] = clock.ms(lambda: session.run(None, feed), args.iterations)
        out["onnxruntime_provider"] = provider
    except Exception as error:  # noqa: BLE001
        out["onnxruntime_ms"] = f"failed: {type(error).__name__}: {str(error)[:200]}"


def _bench_tensorrt(path: Path, image: torch.Tensor, out: Dict[str, Any], clock: Clock, args) -> None:
    from aura_core.export.tensorrt_backend import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        out["tensorrt_fp16_ms"] = f"skipped: {reason}"
        return
    if clock.left_s() < 240:
        out["tensorrt_fp16_ms"] = f"skipped: time budget ({clock.left_s():.0f} s left)"
        return
    try:
        from aura_core.export.tensorrt_backend import EngineOptions, TensorRTEngine, build_engine, import_tensorrt

        trt = import_tensorrt()
        start = time.perf_counter()
        engine = TensorRTEngine(trt, build_engine(trt, path, EngineOptions(fp16=True)), device=clock.device,
                                name="image_encoder")
        out["tensorrt_build_s"] = time.perf_counter() - start
        name = engine.inputs[0]
        out["tensorrt_fp16_ms"] = clock.ms(lambda: engine(**{name: image}), args.iterations)
    except Exception as error:  # noqa: BLE001
        out["tensorrt_fp16_ms"] = f"failed: {type(error).__name__}: {str(error)[:200]}"


def bench_llm(model, image: np.ndarray, clock: Clock, args) -> Dict[str, Any]:
    """CLIP + prefill of one question, then DECODE_TOKENS greedy steps with the KV cache (no early stop)."""
    mllm = model.mllm
    inputs = mllm.encode([image], [QUESTION])

    def prefill():
        return mllm._hidden(**inputs, use_cache=True)

    def decode():
        hidden, cache = prefill()
        last = hidden[:, -1]
        for _ in range(DECODE_TOKENS):
            next_id = mllm.core.lm_head(last).argmax(-1, keepdim=True)
            hidden, cache = mllm._hidden(input_ids=next_id, cache=cache, use_cache=True)
            last = hidden[:, -1]

    with torch.no_grad():
        prefill_ms = clock.ms(prefill, args.iterations)
        total_ms = clock.ms(decode, max(1, args.iterations // 2))
    return {"prompt_tokens": int(inputs["input_ids"].shape[1]), "prefill_ms": prefill_ms,
            "decode_ms_per_token": (total_ms - prefill_ms) / DECODE_TOKENS,
            f"prefill_plus_{DECODE_TOKENS}_tokens_ms": total_ms}


def bench_decoders(model, clock: Clock, args) -> Dict[str, Any]:
    size = model.config.vision.image_size
    with torch.no_grad():
        embedding = model.encode_image(torch.randn(1, 3, size, size, device=clock.device))
        out = {}
        for k in (1, 4):
            seg = torch.randn(k, model.mllm.hidden_size, device=clock.device, dtype=model.mllm.dtype)
            out[f"decoders_{k}_seg_ms"] = clock.ms(lambda: model.decode_prompts(embedding, seg), args.iterations)
    return out


def bench_ask(model, image: np.ndarray, clock: Clock, args) -> Dict[str, Any]:
    from aura_core.pipeline import AuraPipeline

    pipe = AuraPipeline(model=model, max_new_tokens=DECODE_TOKENS)
    result = {}
    with torch.autocast(clock.device.type, dtype=torch.bfloat16, enabled=clock.device.type == "cuda"):
        answer = pipe.ask(image, QUESTION)
        result["ask_ms"] = clock.ms(lambda: pipe.ask(image, QUESTION), max(1, args.iterations // 2), warmup=0)
        # the same frame again: the embedding cache skips the ViT
        result["answer_tokens"] = len(pipe.model.mllm.tokenizer.encode(answer.answer, add_special_tokens=False))
    return result


def bench_training(model, clock: Clock, args, work: Path) -> Dict[str, Any]:
    """`steps` optimiser steps of the trainer's own step function: batch 1, bf16 autocast, fp32 master weights."""
    from aura_core.data.dataset import AmodalReasonSegDataset, collate
    from aura_core.data.synthetic import generate_dataset
    from training.config import TrainConfig
    from training.distributed import DistContext
    from training.precision import keep_trainable_fp32
    from training.train import train_step

    generate_dataset(work / "data", train=2, val=1, seed=0, size=256)
    dataset = AmodalReasonSegDataset(work / "data", "train", image_size=model.config.vision.image_size)
    batch = collate([dataset[0]])
    device = clock.device
    # a bf16 language model trains under bf16 autocast on any device; the tiny fp32 smoke model in fp32
    precision = "bf16" if device.type == "cuda" or model.mllm.dtype == torch.bfloat16 else "fp32"
    config = TrainConfig(batch_size=1, grad_accumulation=1, precision=precision, iterations=args.train_steps + 1,
                         warmup_iterations=0)
    model.train()
    cast = keep_trainable_fp32(model)
    params = [p for _, p in model.trainable_parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ctx = DistContext(device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        logs = train_step(model, iter([batch]), config, ctx)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return logs

    _reset_peak(device)
    step()  # warm-up (allocates the optimiser state)
    clock.sync()
    start = time.perf_counter()
    for _ in range(args.train_steps):
        logs = step()
    clock.sync()
    seconds = time.perf_counter() - start
    model.eval()
    return {"steps": args.train_steps, "seconds": seconds, "s_per_step": seconds / args.train_steps,
            "peak_gib": _peak_gib(device), "trainable_params": sum(p.numel() for p in params),
            "cast_to_fp32": cast, "precision": precision, "last_loss": float(logs["total"])}


# ----------------------------------------------------------------------------- report


def _fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value) if value is not None else "-"


def to_markdown(result: Dict[str, Any]) -> str:
    """The report; a stage not yet run or failed shows '-' and is listed with its error below the table."""
    vit, llm, dec, ask, tr = (result.get(k, {}) for k in ("vit", "llm", "decoders", "ask", "training"))
    targets = result.get("targets", {})
    lines = [
        f"# GPU check: {result['config']} ({'smoke mode, tiny config' if result['smoke'] else 'random weights, bf16'})",
        "",
        f"Device: {result['device']}; torch {result['torch']}; {result.get('total_s', 0.0):.0f} s in all "
        f"(model built in {result['build_s']:.0f} s). Medians in ms after warm-up. "
        f"Written by `{result.get('command') or 'python benchmarks/gpu.py'}`.",
        "",
        "| stage | value |",
        "|---|---:|",
        f"| SAM encoder {vit.get('input', '')} eager fp32 (ms) | {_fmt(vit.get('eager_fp32_ms'))} |",
        f"| SAM encoder eager bf16 autocast (ms) | {_fmt(vit.get('eager_bf16_ms'))} |",
        f"| SAM encoder torch.compile bf16 (ms) | {_fmt(vit.get('compile_bf16_ms'))} |",
        f"| SAM encoder onnxruntime fp32 (ms) | {_fmt(vit.get('onnxruntime_ms'))} |",
        f"| SAM encoder TensorRT fp16 (ms) | {_fmt(vit.get('tensorrt_fp16_ms'))} |",
        f"| LLM prefill, {llm.get('prompt_tokens', '?')} tokens incl. image (ms) | {_fmt(llm.get('prefill_ms'))} |",
        f"| LLM decode with KV cache (ms/token) | {_fmt(llm.get('decode_ms_per_token'), 2)} |",
        f"| LLM prefill + {DECODE_TOKENS} tokens (ms) | {_fmt(llm.get(f'prefill_plus_{DECODE_TOKENS}_tokens_ms'))} |",
        f"| decoders, 1 [SEG] (ms) | {_fmt(dec.get('decoders_1_seg_ms'), 2)} |",
        f"| decoders, 4 [SEG]s (ms) | {_fmt(dec.get('decoders_4_seg_ms'), 2)} |",
        f"| `ask` end to end, <= {DECODE_TOKENS} new tokens (ms) | {_fmt(ask.get('ask_ms'))} |",
        f"| inference peak memory (GiB) | {_fmt(result.get('inference_peak_gib'), 2)} |",
        f"| training: {tr.get('steps', '?')} steps (s) | {_fmt(tr.get('seconds'), 2)} |",
        f"| training: s/step | {_fmt(tr.get('s_per_step'), 3)} |",
        f"| training peak memory (GiB) | {_fmt(tr.get('peak_gib'), 2)} |",
    ]
    failed = {k: v["error"] for k, v in result.items() if isinstance(v, dict) and "error" in v}
    if failed:
        lines += ["", "Failed stages:", ""] + [f"- {k}: {v}" for k, v in failed.items()]
    if targets:
        lines += ["", "| target | goal | measured | met |", "|---|---|---:|---|"]
        for name, t in targets.items():
            lines.append(f"| {name} | {t['goal']} | {_fmt(t['measured'], 1)} | {t['met']} |")
    return "\n".join(lines) + "\n"


def _targets(result: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's three goals, each met only where it was measured."""
    vit, ask = result.get("vit", {}), result.get("ask", {}).get("ask_ms")
    fps = max([1000.0 / v for k, v in vit.items() if k.endswith("_ms") and isinstance(v, float)] or [0.0])
    peak = result.get("inference_peak_gib")
    return {
        "ask latency, 30-token answer (ms)": {"goal": "<= 300", "measured": ask,
                                              "met": isinstance(ask, float) and ask <= 300},
        "ViT-H frames/s (best backend)": {"goal": ">= 30", "measured": fps, "met": fps >= 30},
        "inference memory (GiB)": {"goal": "<= 24", "measured": peak, "met": peak is not None and peak <= 24},
    }


def _stage(result: Dict[str, Any], name: str, fn: Callable[[], Any], save: Callable[[], None]) -> None:
    """Run one stage; a failure is recorded (type and message) and the check goes on, with what it has so far saved."""
    start = time.perf_counter()
    try:
        result[name] = fn()
    except Exception as error:  # noqa: BLE001 - a first run on new hardware: keep every other figure
        LOG.exception("stage %s failed", name)
        result[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
    LOG.info("stage %s: %.1f s", name, time.perf_counter() - start)
    save()


def run(args, save: Callable[[Dict[str, Any]], None] = lambda result: None) -> Dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.smoke = args.smoke or device.type != "cuda" and args.config == "paper-7b"
    if args.smoke:
        args.iterations = min(args.iterations, 2)
        args.train_steps = min(args.train_steps, 2)
    clock = Clock(device, args.budget_s)
    config = model_config(args.smoke, args.config)
    torch.manual_seed(0)
    _reset_peak(device)
    with torch.device(device):  # random init directly on the GPU: a 7B body on the CPU first takes minutes
        model = build_aura_model(config)
    model = model.to(device).eval()
    build_s = time.perf_counter() - clock.start
    LOG.info("built %s on %s in %.0f s", config.name, device, build_s)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    result: Dict[str, Any] = {
        "config": config.name, "smoke": args.smoke, "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})",
        "build_s": build_s, "build_peak_gib": _peak_gib(device), "command": getattr(args, "command", None),
    }

    def checkpoint() -> None:
        result["total_s"] = time.perf_counter() - clock.start
        save(result)

    with tempfile.TemporaryDirectory(prefix="aura-gpu-") as tmp:
        work = Path(tmp)
        stages = {"llm": lambda: bench_llm(model, image, clock, args),
                  "decoders": lambda: bench_decoders(model, clock, args),
                  "ask": lambda: bench_ask(model, image, clock, args),
                  "vit": lambda: bench_vit(model, clock, args, work),
                  "training": lambda: bench_training(model, clock, args, work)}
        for name, fn in stages.items():
            if name in args.stages:
                _stage(result, name, fn, checkpoint)
                if name == "ask":  # the inference peak: everything after it trains or exports
                    result["inference_peak_gib"] = _peak_gib(device)
    if not args.smoke:
        result["targets"] = _targets(result)
    checkpoint()
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU-sized smoke mode (tiny config), also without a GPU")
    parser.add_argument("--iterations", type=int, default=10, help="timed runs per stage")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=450.0, help="optional stages are skipped past this budget")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--config", default="paper-7b", help="model config of the full check (tiny: try the path)")
    parser.add_argument("--device", default=None, help="default: cuda where available, else the CPU smoke mode")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of %(default)s")
    args = parser.parse_args(argv)
    args.stages = args.stages.split(",")
    args.command = command_line("benchmarks/gpu.py", argv)
    if not set(args.stages) <= set(STAGES):
        parser.error(f"--stages: unknown {sorted(set(args.stages) - set(STAGES))}; choose from {', '.join(STAGES)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    def save(result: Dict[str, Any]) -> None:
        stem = "gpu_smoke" if result["smoke"] else "gpu"
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (args.out / f"{stem}.md").write_text(to_markdown(result))

    result = run(args, save)
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
