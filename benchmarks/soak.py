"""Soak test of the real node: 1,000 questions over a live 30 Hz camera, through ROS 2 between two processes.

Starts the installed node (`aura_node` from a colcon workspace, the embedded default model) as its own process,
publishes camera frames at 30 Hz (SensorDataQoS, a new picture every frame) and asks `--queries` questions one after
another through the `ask` service. Reports the node's resident memory after the warm-up, at 100 and at the end
(target: growth from 100 to the end under 5 %), latency percentiles (question -> answer, p50/p95/p99), statuses and
the drops the node reports on /diagnostics.

    export AURA_ROS_WS=$PWD/.ros_ws && source scripts/ros_env.sh && bash scripts/ros_build.sh && source scripts/ros_env.sh
    python benchmarks/soak.py [--queries 1000] [--width 320 --height 240]
Writes benchmarks/results/soak.json and soak.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def percentile(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 3)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from aura_ros.srv import Ask

    ws = Path(os.environ.get("AURA_ROS_WS") or ROOT / ".ros_ws")
    executable = ws / "install" / "aura_ros" / "lib" / "aura_ros" / "aura_node"
    if not executable.exists():
        raise SystemExit(f"{executable} is missing: build first (bash scripts/ros_build.sh)")
    namespace = f"/soak{random.randint(0, 9999)}"
    config = ws / "install" / "aura_ros" / "share" / "aura_ros" / "config" / "aura.yaml"
    log = Path(tempfile.mkstemp(prefix="soak_node_", suffix=".log")[1])
    node_process = subprocess.Popen(
        [str(executable), "--ros-args", "-r", f"__ns:={namespace}", "--params-file", str(config),
         "-p", "speech_enabled:=false", "-p", f"diagnostics_period:={args.diagnostics_period}"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115 - the process owns it
    rclpy.init()
    client_node = rclpy.create_node("soak_client", namespace=namespace)
    camera = client_node.create_publisher(Image, "image", qos_profile_sensor_data)
    ask = client_node.create_client(Ask, "ask")
    reports: List[Dict[str, str]] = []
    client_node.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda m: reports.extend({kv.key: kv.value for kv in s.values} for s in m.status if namespace in s.name), 10)
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(client_node)
    threading.Thread(target=executor.spin, daemon=True).start()
    stop = threading.Event()
    sent_frames = [0]
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (args.height, args.width, 3), dtype=np.uint8)

    def stream() -> None:  # a moving camera: every frame differs, 30 per second
        next_at = time.perf_counter()
        while not stop.is_set():
            msg = Image(height=args.height, width=args.width, encoding="rgb8", step=args.width * 3)
            msg.header.frame_id = "camera"
            msg.header.stamp = client_node.get_clock().now().to_msg()
            shift = sent_frames[0] % args.width
            msg.data = np.roll(base, shift, axis=1).tobytes()
            camera.publish(msg)
            sent_frames[0] += 1
            next_at += 1 / 30
            time.sleep(max(0.0, next_at - time.perf_counter()))

    results: Dict[str, Any] = {}
    try:
        start = time.monotonic()
        if not ask.wait_for_service(timeout_sec=args.startup_timeout):
            raise SystemExit(f"the node did not come up within {args.startup_timeout} s; see {log}")
        results["startup_s"] = round(time.monotonic() - start, 1)
        stream_start = time.monotonic()
        threading.Thread(target=stream, daemon=True).start()
        time.sleep(1.0)
        latencies: List[float] = []
        statuses: Dict[str, int] = {}
        rss: Dict[str, float] = {}
        soak_start = time.monotonic()
        for index in range(1, args.queries + 1):
            t0 = time.perf_counter()
            future = ask.call_async(Ask.Request(question=f"what is hidden behind the box? ({index})", request_id=str(index)))
            while not future.done():
                if node_process.poll() is not None:
                    raise SystemExit(f"the node died (exit {node_process.returncode}); see {log}")
                time.sleep(0.002)
            latencies.append(time.perf_counter() - t0)
            status = future.result().result.status
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if index in (args.warmup, 100, args.queries):
                rss[str(index)] = round(rss_mib(node_process.pid), 1)
            if index % 100 == 0:
                print(f"{index} questions, {time.monotonic() - soak_start:.0f} s, RSS {rss_mib(node_process.pid):.0f} MiB",
                      flush=True)
        duration = time.monotonic() - soak_start
        time.sleep(args.diagnostics_period * 2)
        last = reports[-1] if reports else {}
        results.update(
            queries=args.queries, duration_s=round(duration, 1), frames_sent=sent_frames[0],
            camera_hz=round(sent_frames[0] / (time.monotonic() - stream_start), 1), image_size=[args.height, args.width],
            latency_s={"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "p99": percentile(latencies, 99), "max": round(max(latencies), 3)},
            statuses=statuses, rss_mib=rss,
            rss_growth_100_to_end_percent=round(100 * (rss[str(args.queries)] / rss["100"] - 1), 2)
            if "100" in rss else None,
            node_diagnostics=last, node_alive=node_process.poll() is None,
            machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        )
    finally:
        stop.set()
        executor.shutdown()
        client_node.destroy_node()
        rclpy.try_shutdown()
        if node_process.poll() is None:
            node_process.send_signal(2)
            try:
                results["node_exit_code"] = node_process.wait(60)
            except subprocess.TimeoutExpired:
                node_process.kill()
    return results


def write(results: Dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "soak.json").write_text(json.dumps(results, indent=2) + "\n")
    latency, rss = results["latency_s"], results["rss_mib"]
    lines = [
        "# aura_ros soak: the real node under a live camera",
        "",
        f"{results['queries']} questions through the `ask` service, one after another, while a client publishes "
        f"{results['image_size'][1]}x{results['image_size'][0]} rgb8 frames at {results['camera_hz']} Hz (every frame "
        "different); the node (embedded default model, CPU, speech off) is its own process, as launched on a robot. "
        f"Machine: {results['machine']}. Produced by `python benchmarks/soak.py`.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| duration | {results['duration_s']} s ({results['frames_sent']} frames sent) |",
        f"| latency question -> answer, p50 / p95 / p99 / max | {latency['p50']} / {latency['p95']} / {latency['p99']} / "
        f"{latency['max']} s |",
        f"| statuses (0 = OK) | {results['statuses']} |",
        f"| node resident memory at question {', '.join(rss)} | {', '.join(f'{v} MiB' for v in rss.values())} |",
        f"| memory growth from question 100 to the end | {results['rss_growth_100_to_end_percent']} % (target < 5 %) |",
        f"| drops the node reports (/diagnostics) | images {results['node_diagnostics'].get('dropped_images', '?')}, "
        f"queries {results['node_diagnostics'].get('dropped_queries', '?')}, callbacks "
        f"{results['node_diagnostics'].get('dropped_callbacks', '?')} |",
        f"| node alive at the end, exit code on SIGINT | {results['node_alive']}, {results.get('node_exit_code')} |",
        "",
    ]
    (directory / "soak.md").write_text("\n".join(lines))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--diagnostics-period", type=float, default=1.0)
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = run(args)
    write(results, args.out)
    print((args.out / "soak.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
