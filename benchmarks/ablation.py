"""Table 2 ablation on the synthetic set: the four variants (E_OC / E_SO on or off), same budget and seeds.

    python benchmarks/ablation.py [--iterations N] [--seeds 0 1] [--eval-samples 200] [--jobs 2]

Each run is `training.train.train` with the default tiny settings and only the two switches changed; the
teacher-forced validation metrics are gathered into benchmarks/results/ablation.{md,json} as mean ± standard
deviation over seeds (and min-max), with the budget written next to the table.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from training.config import TrainConfig, load_train_config
from training.train import train

LOG = logging.getLogger("aura.ablation")

# Table 2 rows: name -> (use_occlusion_condition_encoder, use_spatial_occlusion_encoder)
VARIANTS: Dict[str, tuple] = {
    "baseline (no E_OC, no E_SO)": (False, False),
    "+ E_OC only": (True, False),
    "+ E_SO only": (False, True),
    "AURA (both)": (True, True),
}
METRICS = ("amodal_giou", "amodal_ciou", "visible_giou", "visible_ciou")


def variant_config(base: Dict[str, Any], name: str, seed: int, out_root: Path) -> TrainConfig:
    use_oc, use_so = VARIANTS[name]
    overrides = json.loads(json.dumps(base))
    overrides.setdefault("model_overrides", json.loads(json.dumps(TrainConfig().model_overrides)))
    overrides["model_overrides"].update({"use_occlusion_condition_encoder": use_oc, "use_spatial_occlusion_encoder": use_so})
    slug = f"oc{int(use_oc)}-so{int(use_so)}-seed{seed}"
    overrides.update({"seed": seed, "output_dir": str(out_root / slug)})
    return load_train_config(None, overrides)


def run_one(base: Dict[str, Any], name: str, seed: int, runs_dir: Path) -> Dict[str, float]:
    """Train one variant with one seed; its teacher-forced validation scores and the time it took."""
    t0 = time.time()
    report = train(variant_config(base, name, seed, runs_dir))
    tf = report["teacher_forced"]
    row = {m: tf[m] for m in METRICS}
    row["occluded_gain"] = tf["occluded_0.3"]["gain"]
    row.update({"seed": seed, "seconds": time.time() - t0})
    return row


def summarise(results: Dict[str, List[Dict[str, float]]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    table: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name, runs in results.items():
        table[name] = {}
        for metric in METRICS + ("occluded_gain",):
            values = [r[metric] for r in runs if r.get(metric) is not None]
            if values:
                table[name][metric] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values),
                                       "min": min(values), "max": max(values), "n": len(values)}
    return table


def to_markdown(table: Dict[str, Dict[str, Dict[str, float]]], budget: str) -> str:
    lines = [f"Table 2 ablation on the synthetic val split (teacher-forced, x100, mean ± std over seeds [min-max]); {budget}", "",
             "| variant | amodal gIoU | amodal cIoU | visible gIoU | visible cIoU | occluded>=0.3 gain over amodal=visible |",
             "|---|---|---|---|---|---|"]
    for name, row in table.items():
        cells = []
        for metric in METRICS + ("occluded_gain",):
            s = row.get(metric)
            cells.append("-" if s is None else f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} [{100 * s['min']:.1f}-{100 * s['max']:.1f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=TrainConfig().iterations, help="optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: the tiny run's, capped at iterations/5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--eval-samples", type=int, default=0, help="val QA pairs per final evaluation (0: all)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/ablation"), help="writes <this>.md and .json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (separate processes)")
    args = parser.parse_args(argv)
    if len(args.seeds) < 2:
        parser.error("give at least two seeds, so the spread can be reported")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warmup = args.warmup if args.warmup is not None else min(TrainConfig().warmup_iterations, args.iterations // 5)
    base = {"iterations": args.iterations, "warmup_iterations": warmup, "eval_every": 0, "checkpoint_every": 0, "overlays": 0,
            "final_eval_generation": False, "final_eval_samples": args.eval_samples, "threads": args.threads}
    if args.jobs > 1:
        base["num_workers"] = 0  # pool processes are daemonic and cannot start DataLoader workers
    results: Dict[str, List[Dict[str, float]]] = {name: [] for name in args.variants}
    started = time.time()
    grid = [(base, name, seed, args.runs_dir) for seed in args.seeds for name in args.variants]
    if args.jobs > 1:  # independent runs in separate processes (one thread each suits a small CPU best)
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            rows = pool.starmap(run_one, grid)
    else:
        rows = [run_one(*job) for job in grid]
    for (_, name, seed, _), row in zip(grid, rows):
        results[name].append(row)
        LOG.info("%s seed %d: %s", name, seed, {k: round(v, 4) for k, v in row.items()})
    table = summarise(results)
    budget = (f"{args.iterations} iterations x batch {TrainConfig().batch_size} per run, seeds {args.seeds}, {args.jobs} parallel job(s), "
              f"{args.eval_samples or 'all'} val QA pairs, {(time.time() - started) / 60:.0f} min in total")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps({"budget": budget, "runs": results, "summary": table}, indent=2) + "\n")
    markdown = to_markdown(table, budget)
    args.results.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
