"""Per-stage latency of the pipeline's backends: torch eager vs onnxruntime, on the CPU.

    python benchmarks/backends.py                     # tiny config + ViT-H encoder at 1024^2 (slow on 2 cores)
    python benchmarks/backends.py --skip-vit-h        # tiny config only (about a minute)

Tiny config: the SAM image encoder, the visible and amodal branches (1 and 4 [SEG]s), LLM generation (torch in both
pipelines) and `AuraPipeline.ask` end to end. Paper scale: the ViT-H SAM encoder with random weights at 1024x1024.
Writes benchmarks/results/backends.json and .md (medians in ms, after warm-up runs).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import onnxruntime
import torch

from aura_core.export.graphs import IMAGE_ENCODER, build_graph, graph_specs
from aura_core.export.locate import CACHE_ENV
from aura_core.export.onnx_export import export_graph
from aura_core.export.onnxruntime_backend import OnnxRuntimeSamBackend
from aura_core.model.build import build_aura_model
from aura_core.model.checkpoint import save_checkpoint
from aura_core.model.config import get_config
from aura_core.pipeline import AuraPipeline

LOG = logging.getLogger("aura.bench.backends")
RESULTS = Path(__file__).resolve().parent / "results"


def compare_ms(runs: Dict[str, Callable[[], Any]], iterations: int, warmup: int) -> Dict[str, float]:
    """Median ms of each callable; the callables alternate, so a busy machine slows all of them alike."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for _ in range(iterations):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {f"{name}_ms": 1000 * statistics.median(values) for name, values in times.items()}


def bench_tiny(iterations: int, warmup: int, max_new_tokens: int, work: Path) -> List[Dict[str, Any]]:
    """Rows {stage, torch_ms, onnxruntime_ms} for the tiny config."""
    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_aura_model(get_config("tiny")).eval(), work / "tiny")
    pipes = {
        "torch": AuraPipeline.from_pretrained(checkpoint, max_new_tokens=max_new_tokens),
        "onnxruntime": AuraPipeline.from_pretrained(checkpoint, backend="onnxruntime", max_new_tokens=max_new_tokens),
    }
    assert isinstance(pipes["onnxruntime"].backend, OnnxRuntimeSamBackend)
    model = pipes["torch"].model
    size = model.config.vision.image_size
    image = torch.randn(1, 3, size, size)
    channels = model.config.mask_decoder.prompt_embed_dim
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(iterations + warmup)]
    rows = []
    with torch.no_grad():
        embedding = model.encode_image(image)
        stages: Dict[str, Callable[[Any], Callable[[], Any]]] = {
            "encoder": lambda b: lambda: b.encode_image(image),
        }
        for k in (1, 4):
            e_r = torch.randn(k, channels)
            stages[f"visible_branch K={k}"] = lambda b, e_r=e_r: lambda: b.decode_visible(embedding, e_r)
            stages[f"amodal_branch K={k}"] = lambda b, e_r=e_r: lambda: b.decode_amodal(embedding, e_r)
        for stage, make in stages.items():
            row: Dict[str, Any] = {"stage": stage}
            row.update(compare_ms({name: make(pipe.backend) for name, pipe in pipes.items()}, iterations, warmup))
            rows.append(row)
            LOG.info("%s", row)
        question = "what can I use to cut?"
        generate = compare_ms({"torch": lambda: model.mllm.generate(frames[0], question, max_new_tokens=max_new_tokens)},
                              max(3, iterations // 4), 1)["torch_ms"]  # fmt: skip
        rows.append({"stage": f"LLM generation ({max_new_tokens} tokens, torch in both)", "torch_ms": generate,
                     "onnxruntime_ms": generate})  # fmt: skip
        counters = {name: iter(frames) for name in pipes}  # a new frame each call: the embedding is computed every time
        asks = {
            name: (lambda pipe=pipe, counter=counters[name]: pipe.ask(next(counter), question))
            for name, pipe in pipes.items()
        }
        rows.append({"stage": "end to end (ask, new frame each call)", **compare_ms(asks, max(3, iterations // 4), 1)})
    for row in rows:
        row["speedup"] = row["torch_ms"] / row["onnxruntime_ms"]
    return rows


def bench_vit_h_encoder(iterations: int, work: Path) -> Dict[str, Any]:
    """The paper's ViT-H SAM encoder (random weights) at 1024^2: torch eager vs onnxruntime, one image."""
    torch.manual_seed(0)
    config = get_config("paper-7b", {"allow_random_init": True, "mllm": {"hidden_size": 64, "num_layers": 1, "num_heads": 2,
                                              "intermediate_size": 64, "vision_hidden_size": 32, "vision_layers": 1,
                                              "vision_heads": 2, "vision_intermediate_size": 32, "dtype": "float32",
                                              "system_prompt": "", "lora_r": 0}})  # fmt: skip
    model = build_aura_model(config).eval()  # the LLM is shrunk: only the SAM encoder is measured here
    inputs, outputs = graph_specs(model)[IMAGE_ENCODER]
    start = time.perf_counter()
    path = work / "vit_h_encoder.onnx"
    external = export_graph(build_graph(IMAGE_ENCODER, model), inputs, outputs, path)
    export_s = time.perf_counter() - start
    LOG.info("ViT-H encoder exported in %.0f s (external data: %s)", export_s, external)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    image = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        timing = compare_ms(
            {"torch": lambda: model.encode_image(image), "ort": lambda: session.run(None, {"sam_image": image.numpy()})},
            iterations, 1,
        )  # fmt: skip
        torch_ms, ort_ms = timing["torch_ms"], timing["ort_ms"]
        diff = float(np.abs(session.run(None, {"sam_image": image.numpy()})[0] - model.encode_image(image).numpy()).max())
    row = {"stage": "ViT-H encoder 1024^2 (random weights)", "torch_ms": torch_ms, "onnxruntime_ms": ort_ms,
           "speedup": torch_ms / ort_ms, "max_abs_diff": diff, "export_s": export_s,
           "external_data": external, "onnx_bytes": sum(p.stat().st_size for p in work.glob("vit_h_encoder.onnx*"))}  # fmt: skip
    LOG.info("%s", row)
    return row


def write_results(result: Dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "backends.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Backend latency: torch eager vs onnxruntime (CPU)",
        "",
        f"Machine: {result['machine']}, load average {result['load_before']} before / {result['load_after']} after "
        f"(other jobs shared the cores); torch {result['torch']}, onnxruntime {result['onnxruntime']}. Medians of "
        f"{result['iterations']} alternating torch/onnxruntime runs after warm-up (LLM and end to end: fewer runs). "
        "Written by `python benchmarks/backends.py`.",
    ]
    for run in result["runs"]:
        lines += ["", f"## Tiny config, {run['threads']} thread(s)", "",
                  "| stage | torch ms | onnxruntime ms | speedup |", "|---|---:|---:|---:|"]  # fmt: skip
        for row in run["tiny"]:
            lines.append(
                f"| {row['stage']} | {row['torch_ms']:.1f} | {row['onnxruntime_ms']:.1f} | {row['speedup']:.2f}x |"
            )
        sam = run["tiny_sam_parts"]
        verdict = "met" if sam["speedup"] >= 1.5 else "NOT met"
        lines += ["", f"SAM parts (encoder + both branches at K=1 and K=4, summed): torch {sam['torch_ms']:.1f} ms, "
                  f"onnxruntime {sam['onnxruntime_ms']:.1f} ms, **{sam['speedup']:.2f}x** (target >= 1.5x: {verdict})."]  # fmt: skip
    if result.get("vit_h"):
        v = result["vit_h"]
        lines += [
            "",
            f"## Paper scale: {v['stage']}, {v['threads']} thread(s), {v['iterations']} runs",
            "",
            "| stage | torch ms | onnxruntime ms | speedup |",
            "|---|---:|---:|---:|",
            f"| ViT-H encoder | {v['torch_ms']:.0f} | {v['onnxruntime_ms']:.0f} | {v['speedup']:.2f}x |",
            "",
            f"Export {v['export_s']:.0f} s; ONNX {v['onnx_bytes'] / 2**30:.2f} GiB (external data file: "
            f"{v['external_data']}); max |torch - onnxruntime| over the embedding {v['max_abs_diff']:.2e}.",
        ]
    (out / "backends.md").write_text("\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch/onnxruntime thread counts")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--skip-vit-h", action="store_true")
    parser.add_argument("--vit-h-iterations", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    load_before = [round(x, 1) for x in os.getloadavg()]
    runs = []
    with tempfile.TemporaryDirectory(prefix="aura-bench-") as tmp:
        work = Path(tmp)
        os.environ[CACHE_ENV] = str(work / "cache")  # the onnxruntime pipeline exports into a throwaway cache
        for threads in args.threads:
            torch.set_num_threads(threads)
            tiny = bench_tiny(args.iterations, args.warmup, args.max_new_tokens, work / f"t{threads}")
            sam_rows = [r for r in tiny if r["stage"].startswith(("encoder", "visible_branch", "amodal_branch"))]
            sam = {key: sum(r[key] for r in sam_rows) for key in ("torch_ms", "onnxruntime_ms")}
            sam["speedup"] = sam["torch_ms"] / sam["onnxruntime_ms"]
            runs.append({"threads": threads, "tiny": tiny, "tiny_sam_parts": sam})
        vit_h = None
        if not args.skip_vit_h:
            torch.set_num_threads(max(args.threads))
            vit_h = bench_vit_h_encoder(args.vit_h_iterations, work)
            vit_h.update(threads=max(args.threads), iterations=args.vit_h_iterations)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": load_before,
        "load_after": [round(x, 1) for x in os.getloadavg()],
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "iterations": args.iterations,
        "runs": runs,
        "vit_h": vit_h,
    }
    write_results(result, args.out)
    print((args.out / "backends.md").read_text())
    return 0

if __name__ == "__main__":
    sys.exit(main())
