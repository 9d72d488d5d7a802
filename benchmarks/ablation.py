"""Table 2 ablation on the synthetic set: the four variants (E_OC / E_SO on or off), same budget and seeds.

    python benchmarks/ablation.py [--iterations 1500] [--seeds 0 1 2] [--eval-samples 0] [--jobs 2] [--max-runs N]

Each run is `training.train.train` with the default tiny settings and only the two switches changed; the
teacher-forced validation metrics are gathered into benchmarks/results/ablation.{md,json} as the mean over seeds
with a 95 % t-interval, overall and for objects hidden >= 30 %, plus each variant's difference from the baseline
paired by seed. A finished run leaves `ablation_row.json` in its folder and is not run again, so a long grid can be
done in slices (`--max-runs`); the tables cover the runs finished so far. Each row records the pretrained parts it
started from (tiny SAM, tiny LLaVA, by content hash): a row made from other parts is trained again, not mixed in.
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

from scipy import stats

from aura_core.export.manifest import combined_sha256, sha256_file
from aura_core.model.build import resolve_mllm_path, resolve_sam_checkpoint
from training.config import ASSETS_DIR, TrainConfig, load_train_config
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


ROW_FILE = "ablation_row.json"


def run_slug(name: str, seed: int) -> str:
    use_oc, use_so = VARIANTS[name]
    return f"oc{int(use_oc)}-so{int(use_so)}-seed{seed}"


def variant_config(base: Dict[str, Any], name: str, seed: int, out_root: Path) -> TrainConfig:
    use_oc, use_so = VARIANTS[name]
    overrides = json.loads(json.dumps(base))
    overrides.setdefault("model_overrides", json.loads(json.dumps(TrainConfig().model_overrides)))
    overrides["model_overrides"].update({"use_occlusion_condition_encoder": use_oc, "use_spatial_occlusion_encoder": use_so})
    overrides.update({"seed": seed, "output_dir": str(out_root / run_slug(name, seed))})
    return load_train_config(None, overrides)


def _digest(path: Path) -> str:
    """sha256 (first 16 hex) of a file, or of a directory's files (the export manifest's hashing)."""
    if path.is_dir():
        return combined_sha256({p.relative_to(path).as_posix(): sha256_file(p) for p in path.rglob("*") if p.is_file()})[:16]
    return sha256_file(path)[:16]


def pretrained_parts(config: TrainConfig) -> Dict[str, Optional[str]]:
    """What a run starts from, by content: the tiny SAM checkpoint and the LLaVA directory (None: random init)."""
    model = resolve_mllm_path(config.model_config(), ASSETS_DIR)
    sam, llava = resolve_sam_checkpoint(model, ASSETS_DIR), model.mllm.pretrained_path
    for label, path in (("vision.checkpoint", sam), ("mllm.pretrained_path", llava)):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"ablation: {label} {path} does not exist")
    return {"sam": _digest(sam) if sam else None, "llava": _digest(Path(llava)) if llava else None}


def run_one(base: Dict[str, Any], name: str, seed: int, runs_dir: Path) -> Dict[str, float]:
    """Train one variant with one seed; its teacher-forced validation scores and the time it took (kept on disk)."""
    t0 = time.time()
    config = variant_config(base, name, seed, runs_dir)
    parts = pretrained_parts(config)
    report = train(config)
    tf = report["teacher_forced"]
    row = {m: tf[m] for m in METRICS}
    row["occluded_amodal_giou"] = tf["occluded_0.3"]["amodal_giou"]
    row["occluded_gain"] = tf["occluded_0.3"]["gain"]
    row.update({"seed": seed, "seconds": time.time() - t0, "pretrained": parts})
    (runs_dir / run_slug(name, seed) / ROW_FILE).write_text(json.dumps(row) + "\n")
    return row


def finished_row(runs_dir: Path, name: str, seed: int, parts: Dict[str, Optional[str]]) -> Optional[Dict[str, float]]:
    """The run's row when it finished from the pretrained `parts`; None when it has not (or started from others)."""
    path = runs_dir / run_slug(name, seed) / ROW_FILE
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    if row.get("pretrained") != parts:
        LOG.warning("%s: made from pretrained parts %s, now %s; it is trained again", path, row.get("pretrained"), parts)
        return None
    return row


SUMMARY_METRICS = METRICS + ("occluded_amodal_giou", "occluded_gain")
BASELINE = "baseline (no E_OC, no E_SO)"


def interval(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample std and the half-width of the 95 % t-interval of the mean (0 for a single value)."""
    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1)) * std / n ** 0.5 if n > 1 else 0.0
    return {"mean": mean, "std": std, "ci95": half, "min": min(values), "max": max(values), "n": n}


def summarise(results: Dict[str, List[Dict[str, float]]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Per variant and metric: mean, 95 % interval; and `delta_<metric>`, the difference from the baseline run of the
    same seed (paired), for the metrics that decide whether E_OC / E_SO help."""
    table: Dict[str, Dict[str, Dict[str, float]]] = {}
    base_by_seed = {r["seed"]: r for r in results.get(BASELINE, []) if "seed" in r}
    for name, runs in results.items():
        table[name] = {}
        for metric in SUMMARY_METRICS:
            values = [r[metric] for r in runs if r.get(metric) is not None]
            if values:
                table[name][metric] = interval(values)
            if name != BASELINE and metric in ("amodal_giou", "occluded_amodal_giou"):
                deltas = [r[metric] - base_by_seed[r["seed"]][metric] for r in runs
                          if r.get("seed") in base_by_seed and r.get(metric) is not None]
                if deltas:
                    table[name]["delta_" + metric] = interval(deltas)
    return table


def _cell(s: Optional[Dict[str, float]]) -> str:
    if s is None:
        return "-"
    if s["n"] < 2:  # one seed gives no interval; do not print a zero-width one
        return f"{100 * s['mean']:.2f} (n=1, no interval)"
    return f"{100 * s['mean']:.2f} ± {100 * s['ci95']:.2f} (n={s['n']})"


def to_markdown(table: Dict[str, Dict[str, Dict[str, float]]], budget: str) -> str:
    lines = [f"Table 2 ablation on the synthetic val split (teacher-forced, x100, mean ± half-width of the 95 % t-interval "
             f"over seeds); {budget}", "",
             "| variant | amodal gIoU | amodal cIoU | visible gIoU | visible cIoU | amodal IoU, hidden >= 30 % "
             "| gain over amodal=visible, hidden >= 30 % |",
             "|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(_cell(row.get(m)) for m in SUMMARY_METRICS) + " |")
    lines += ["", "Difference from the baseline of the same seed (paired), x100, mean ± 95 % half-width; an interval "
              "that contains 0 means no measurable effect at this budget:", "",
              "| variant | Δ amodal gIoU | Δ amodal IoU, hidden >= 30 % |", "|---|---|---|"]
    for name, row in table.items():
        if name != BASELINE:
            lines.append(f"| {name} | {_cell(row.get('delta_amodal_giou'))} | {_cell(row.get('delta_occluded_amodal_giou'))} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=TrainConfig().iterations, help="optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: the tiny run's, capped at iterations/5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-samples", type=int, default=0, help="val QA pairs per final evaluation (0: all)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/ablation"), help="writes <this>.md and .json")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (separate processes)")
    parser.add_argument("--max-runs", type=int, default=0, help="train at most this many missing runs, then tabulate (0: all)")
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
    parts = pretrained_parts(load_train_config(None, base))
    grid = [(base, name, seed, args.runs_dir) for seed in args.seeds for name in args.variants
            if finished_row(args.runs_dir, name, seed, parts) is None]
    if args.max_runs:
        grid = grid[: args.max_runs]
    LOG.info("%d run(s) to train now", len(grid))
    if args.jobs > 1 and len(grid) > 1:  # independent runs in separate processes (one thread each suits a small CPU best)
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            pool.starmap(run_one, grid)
    else:
        for job in grid:
            run_one(*job)
    for seed in args.seeds:
        for name in args.variants:
            row = finished_row(args.runs_dir, name, seed, parts)
            if row is not None:
                results[name].append(row)
                LOG.info("%s seed %d: %s", name, seed, {k: round(v, 4) for k, v in row.items() if k != "pretrained"})
    table = summarise(results)
    budget = (f"{args.iterations} iterations x batch {TrainConfig().batch_size} per run, seeds {args.seeds}, {args.jobs} parallel job(s), "
              f"{args.eval_samples or 'all'} val QA pairs, pretrained tiny SAM {parts['sam']} / tiny LLaVA {parts['llava']} (sha256), "
              f"{sum(len(r) for r in results.values())} runs finished (this invocation: {len(grid)} trained in "
              f"{(time.time() - started) / 60:.0f} min)")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    record = {"budget": budget, "pretrained": parts, "runs": results, "summary": table}
    args.results.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    markdown = to_markdown(table, budget)
    args.results.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
