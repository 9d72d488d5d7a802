"""Benchmark of the node's request logic with the real AuraPipeline (the embedded default tiny model by default).

Measures, through aura_ros.responder.AuraResponder in threaded mode (what the rclpy node runs; rosbags messages stand in
for rclpy ones):
- per-query latency, image message in -> segmentation message out, for a new frame (the query pays the vision
  backbone) and for a frame whose embedding the idle worker already cached (LLM + decoders only);
- image intake rate (Image messages converted and stored per second) while the worker runs a query, and idle.

    python benchmarks/node.py [--config tiny (random init instead)] [--queries 3] [--max-new-tokens 16] [--width 640 --height 480]
Writes benchmarks/results/node.json and node.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from aura_core.data.synthetic import generate_scene
from aura_ros import conversions, interfaces
from aura_ros.loading import load_pipeline
from aura_ros.params import AuraParameters
from aura_ros.responder import SEGMENTATION, AuraResponder

LOG = logging.getLogger("benchmarks.node")
RESULTS = Path(__file__).resolve().parent / "results"


class Recorder:
    """publish() target that timestamps every segmentation message as it leaves the responder."""

    def __init__(self) -> None:
        self.arrivals: List[float] = []
        self.messages: List[Any] = []
        self.event = threading.Event()

    def __call__(self, topic: str, message: Any) -> None:
        if topic == SEGMENTATION:
            self.arrivals.append(time.perf_counter())
            self.messages.append(message)
            self.event.set()


def camera_frames(count: int, width: int, height: int, seed: int) -> List[np.ndarray]:
    """Synthetic scenes scaled to the camera size (nearest neighbour), so frames look like the model's data."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        scene = generate_scene(rng, 256).image
        rows = np.arange(height) * scene.shape[0] // height
        cols = np.arange(width) * scene.shape[1] // width
        frames.append(np.ascontiguousarray(scene[rows][:, cols]))
    return frames


def measure_latency(responder: AuraResponder, recorder: Recorder, factory: Any, frames: Sequence[np.ndarray],
                    question: str, cached: bool) -> List[float]:
    """Seconds from on_image(frame) to the segmentation message, one query per frame."""
    latencies = []
    for index, frame in enumerate(frames):
        header = conversions.make_header(factory, time.time_ns(), "camera")
        message = conversions.numpy_to_image(factory, frame, "rgb8", header)
        recorder.event.clear()
        start = time.perf_counter()
        responder.on_image(message)
        if cached:  # let the idle worker embed the frame first, as it does between questions on a live robot
            while not responder.embedding_current:
                time.sleep(0.001)
            start = time.perf_counter()
        responder.submit(f"{question} ({index})")
        if not recorder.event.wait(600):
            raise TimeoutError("no segmentation message within 600 s")
        latencies.append(recorder.arrivals[-1] - start)
    return latencies


def measure_intake(responder: AuraResponder, factory: Any, frame: np.ndarray, seconds: float,
                   busy: Optional[threading.Event]) -> float:
    """Image messages per second through on_image (decode + store) for `seconds`, or until `busy` clears."""
    messages = [conversions.numpy_to_image(factory, frame, "bgr8", conversions.make_header(factory, i)) for i in range(8)]
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds and (busy is None or busy.is_set()):
        responder.on_image(messages[count % len(messages)])
        count += 1
    return count / (time.perf_counter() - start)


def measure_live(pipeline: Any, factory: Any, frames: Sequence[np.ndarray], question: str, queries: int,
                 settings: Dict[str, Any], precompute: bool) -> Dict[str, Any]:
    """A moving camera: a new frame every 33 ms (30 Hz) while `queries` questions are asked one after another.

    Returns the latencies (question in -> segmentation out) and how many answers used a frame whose embedding the idle
    worker had cached (with precompute the responder answers against the embedded frame while it is within
    max_image_age; without, every question pays the vision backbone)."""
    recorder = Recorder()
    responder = AuraResponder(pipeline=pipeline, factory=factory, publish=recorder, clock=time.monotonic_ns,
                              params=AuraParameters(**{**settings, "max_image_age": 2.0}, precompute_embedding=precompute),
                              threaded=True)
    stop = threading.Event()

    def camera() -> None:
        index = 0
        next_at = time.perf_counter()
        while not stop.is_set():  # every frame its own stamp, as a camera sends them
            header = conversions.make_header(factory, 1_000_000 + index, "camera")
            pixels = frames[index % len(frames)].copy()
            pixels[0, :3, 0] = (index % 256, index // 256 % 256, index // 65536 % 256)  # no two frames are alike
            responder.on_image(conversions.numpy_to_image(factory, pixels, "rgb8", header))
            index += 1
            next_at += 1 / 30
            time.sleep(max(0.0, next_at - time.perf_counter()))

    # Count the answers whose image embedding was already cached: AuraPipeline.set_image (called inside ask) returns
    # False when the image is the one embedded last.
    inside_ask = threading.local()
    hits: List[bool] = []
    real_set_image, real_ask = pipeline.set_image, pipeline.ask

    def set_image(image: np.ndarray) -> bool:
        computed = real_set_image(image)
        if getattr(inside_ask, "active", False):
            hits.append(not computed)
        return computed

    def ask(image: np.ndarray, text: str) -> Any:
        inside_ask.active = True
        try:
            return real_ask(image, text)
        finally:
            inside_ask.active = False

    pipeline.set_image, pipeline.ask = set_image, ask
    thread = threading.Thread(target=camera, daemon=True)
    latencies = []
    try:
        thread.start()
        time.sleep(0.5)
        for index in range(queries):
            start = time.perf_counter()
            responder.submit(f"{question} ({index})").future.result(timeout=600)
            latencies.append(time.perf_counter() - start)
            time.sleep(0.2)  # the camera moves on between questions
    finally:
        stop.set()
        thread.join(5)
        responder.close()
        del pipeline.set_image, pipeline.ask  # the class's methods again
    return {"latency_s": summary(latencies), "answers_on_cached_embedding": sum(hits), "queries": queries}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    torch.set_num_threads(args.threads)
    settings = dict(model_config=args.config, max_new_tokens=args.max_new_tokens, max_image_age=1e6,
                    speech_enabled=False, queue_depth=4)
    load_start = time.perf_counter()
    pipeline = load_pipeline(AuraParameters(**settings))
    load_seconds = time.perf_counter() - load_start
    factory = interfaces.RosbagsFactory(interfaces.make_typestore())
    frames = camera_frames(args.queries * 2 + 1, args.width, args.height, args.seed)
    question = "what could I use to cut the bread?"
    pipeline.ask(frames[0], question)  # warm-up: first-call allocations are not part of a query's latency
    recorder = Recorder()
    responder = AuraResponder(pipeline=pipeline, factory=factory, publish=recorder, clock=time.monotonic_ns,
                              params=AuraParameters(**settings, precompute_embedding=True), threaded=True)
    try:
        cached = measure_latency(responder, recorder, factory, frames[1 + args.queries :], question, cached=True)
    finally:
        responder.close()
    responder = AuraResponder(pipeline=pipeline, factory=factory, publish=recorder, clock=time.monotonic_ns,
                              params=AuraParameters(**settings, precompute_embedding=False), threaded=True)
    try:
        new_frame = measure_latency(responder, recorder, factory, frames[1 : 1 + args.queries], question, cached=False)
        idle_rate = measure_intake(responder, factory, frames[0], 2.0, None)
        # Intake while a query runs: start one, feed images until its answer is out.
        busy = threading.Event()
        busy.set()
        recorder.event.clear()
        query = responder.submit(question)
        query.future.add_done_callback(lambda _: busy.clear())
        busy_start = time.perf_counter()
        busy_rate = measure_intake(responder, factory, frames[0], 600.0, busy)
        busy_seconds = time.perf_counter() - busy_start
        answer = query.future.result(timeout=600)
    finally:
        responder.close()
    live = {precompute: measure_live(pipeline, factory, frames[1:], question, args.queries, settings, precompute)
            for precompute in (True, False)}
    return {
        "device": "cpu",
        "torch_threads": args.threads,
        "config": args.config,
        "model": f"random-init config '{args.config}'" if args.config else "the embedded default model (trained tiny)",
        "max_new_tokens": args.max_new_tokens,
        "image_size": [args.height, args.width],
        "model_load_s": round(load_seconds, 2),
        "latency_new_frame_s": summary(new_frame),
        "latency_cached_embedding_s": summary(cached),
        "intake_hz_idle": round(idle_rate, 1),
        "intake_hz_during_query": round(busy_rate, 1),
        "intake_window_during_query_s": round(busy_seconds, 3),
        "live_30hz_precompute": live[True],
        "live_30hz_no_precompute": live[False],
        "answer_words": len(answer.answer.split()),
        "answer_instances": len(answer.instances),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
    }


def summary(values: Sequence[float]) -> Dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3),
            "n": len(values)}


def write(results: Dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "node.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# aura_ros node benchmark",
        "",
        f"Model: {results['model']}, on CPU, {results['torch_threads']} torch threads, "
        f"{results['image_size'][1]}x{results['image_size'][0]} bgr8 frames (synthetic scenes scaled up), "
        f"max_new_tokens {results['max_new_tokens']}. Measured through AuraResponder in threaded mode, the logic the "
        "rclpy node runs. Produced by `python benchmarks/node.py`. The last answer had "
        f"{results['answer_words']} words and {results['answer_instances']} [SEG]s (a random-init model never stops "
        "early and writes no [SEG], so its latency is all LLM).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| latency, new frame (image in -> segmentation out), median [min, max] of {results['latency_new_frame_s']['n']} | "
        f"{results['latency_new_frame_s']['median']} s [{results['latency_new_frame_s']['min']}, {results['latency_new_frame_s']['max']}] |",
        f"| latency, embedding cached by the idle worker | {results['latency_cached_embedding_s']['median']} s "
        f"[{results['latency_cached_embedding_s']['min']}, {results['latency_cached_embedding_s']['max']}] |",
        f"| image intake while a query runs ({results['intake_window_during_query_s']} s window) | "
        f"{results['intake_hz_during_query']} images/s |",
        f"| image intake, worker idle | {results['intake_hz_idle']} images/s |",
        *[f"| live 30 Hz camera, {label}: latency median [min, max] of {results[key]['queries']}; answers on the cached "
          f"embedding | {results[key]['latency_s']['median']} s [{results[key]['latency_s']['min']}, "
          f"{results[key]['latency_s']['max']}]; {results[key]['answers_on_cached_embedding']} of {results[key]['queries']} |"
          for key, label in (("live_30hz_precompute", "precompute_embedding on"),
                             ("live_30hz_no_precompute", "precompute_embedding off"))],
        f"| model load | {results['model_load_s']} s |",
        "",
    ]
    (directory / "node.md").write_text("\n".join(lines))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="", help="a random-init config name instead of the embedded default model")
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = run(args)
    write(results, args.out)
    print((args.out / "node.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
