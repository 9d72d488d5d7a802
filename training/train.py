"""Train AURA: `python training/train.py` (tiny model, synthetic set, ends with an evaluation) or with a config file.

    python training/train.py                                   # tiny CPU run -> runs/default
    python training/train.py --config config/train/paper-7b.yaml --data-dir /data/amodal_reason_seg
    python training/train.py --resume                          # continue runs/default/checkpoints/last
    torchrun --nproc_per_node 2 training/train.py [...]        # DDP (gloo on CPU, nccl on GPU)

Reads top to bottom: settings, data, model, optimiser, loop (gradient accumulation, clipping, WarmupDecayLR),
evaluation, checkpoints. Output directory: metrics.jsonl (one record per log/eval), eval_step<N>.md tables,
overlays/step<N>/*.png, checkpoints/last (resumable), model/ (final weights) and metrics.json (final evaluation).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python training/train.py` (also under torchrun): make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aura_core.data.dataset import AmodalReasonSegDataset, collate
from aura_core.model.build import build_aura_model
from aura_core.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from aura_core.model.config import ConfigError
from aura_core.model.losses import aura_losses
from aura_core.model.vision_backbone import SamCheckpointError
from training.config import ASSETS_DIR, TrainConfig, load_train_config, parse_set_overrides, train_config_to_dict
from training.data import DataDirError, check_data_dir, ensure_synthetic
from training.distributed import (DistContext, ResumableDistributedSampler, barrier, init_distributed, mean_over_processes,
                                  seed_everything, shutdown, unwrap, wrap_model)
from training.evaluate import evaluate, format_table
from training.schedule import warmup_decay_lr
from training.trainer_state import ResumeError, check_resume_compatible, load_trainer_state, restore_rng, save_trainer_state

LOG = logging.getLogger("aura.train")

LAST_CHECKPOINT = Path("checkpoints") / "last"
FINAL_MODEL = "model"


# ----------------------------------------------------------------------------- settings


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML training config (default: the tiny CPU run)")
    parser.add_argument("--data-dir", default=None, help="AmodalReasonSeg-format directory (default: cached synthetic set)")
    parser.add_argument("--output-dir", default=None, help="where checkpoints, logs and overlays go (default: runs/default)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=None, help="optimiser steps")
    parser.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoints/last")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop after this optimiser step with a resumable checkpoint (split a run into slices)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any other setting, dotted for nested keys, e.g. --set model_overrides.mllm.lora_r=16")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = parse_set_overrides(args.overrides)
    for key in ("data_dir", "output_dir", "seed", "iterations"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return load_train_config(args.config, overrides)


# ----------------------------------------------------------------------------- pieces


def autocast_context(config: TrainConfig, device: torch.device):
    """bf16 autocast on CUDA (precision auto/bf16); fp32 on CPU unless bf16 is asked for explicitly."""
    if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def micro_batches(loader: DataLoader, sampler: ResumableDistributedSampler, start: int) -> Iterator[Dict[str, Any]]:
    """Endless stream of batches starting at global micro-batch `start` (epoch-wise reshuffled, resumable)."""
    per_epoch = len(loader.dataset) // (sampler.num_replicas * loader.batch_size)
    if per_epoch == 0:
        raise ValueError(f"training split has {len(loader.dataset)} samples, fewer than one batch per process "
                         f"({loader.batch_size} x {sampler.num_replicas})")
    epoch, offset = divmod(start, per_epoch)
    while True:
        sampler.set_position(epoch, offset * loader.batch_size)
        for batch in loader:
            yield batch
        epoch, offset = epoch + 1, 0


def train_step(model: torch.nn.Module, batches: Iterator[Dict[str, Any]], config: TrainConfig, ctx: DistContext) -> Dict[str, float]:
    """Forward/backward over `grad_accumulation` micro-batches, gradients summed as the mean over them.

    Leaves the gradients in the parameters (the caller clips and steps); returns the mean of each loss term.
    """
    weights = unwrap(model).config.loss
    logs: Dict[str, float] = {}
    accum = config.grad_accumulation
    for i in range(accum):
        batch = next(batches)
        sync = nullcontext() if (i == accum - 1 or not ctx.distributed) else model.no_sync()
        with sync:
            with autocast_context(config, ctx.device):
                losses = aura_losses(model(batch), batch, weights)
            (losses["total"] / accum).backward()
        for key, value in losses.items():
            logs[key] = logs.get(key, 0.0) + float(value.detach()) / accum
    return logs


def save_resumable(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, config: TrainConfig, ctx: DistContext,
                   extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write output_dir/checkpoints/last atomically (temp folder, then rename): model, optimiser, RNG, settings."""
    target = Path(config.output_dir) / LAST_CHECKPOINT
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(unwrap(model), tmp, extra={"step": step, **(extra or {})}, include_vision_backbone=True)
    save_trainer_state(tmp, optimizer=optimizer, step=step, train_config=train_config_to_dict(config), world_size=ctx.world_size)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


class MetricsLog:
    """metrics.jsonl in the output directory: one JSON object per line, appended (a resumed run continues it)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def run_evaluation(model: torch.nn.Module, dataset: AmodalReasonSegDataset, config: TrainConfig, step: int, *, final: bool) -> Dict[str, Any]:
    out = Path(config.output_dir)
    report = evaluate(
        unwrap(model),
        dataset,
        max_samples=config.final_eval_samples if final else config.eval_samples,
        generation_samples=100 if (final and config.final_eval_generation) else 0,
        overlay_dir=out / "overlays" / f"step{step:06d}",
        overlays=config.overlays,
    )
    report["step"] = step
    table = format_table(report)
    (out / f"eval_step{step:06d}.md").write_text(table + "\n", encoding="utf-8")
    tqdm.write(f"\nevaluation at step {step}:\n{table}\n")
    return report


# ----------------------------------------------------------------------------- the run


def train(config: TrainConfig, *, resume: bool = False, ctx: Optional[DistContext] = None, stop_at: Optional[int] = None) -> Dict[str, Any]:
    """Run training as configured; returns the final evaluation report on rank 0 (an empty dict elsewhere).

    `stop_at`: leave after that optimiser step with a resumable checkpoint and no final evaluation (a time slice of
    the run; `resume=True` continues it exactly).
    """
    ctx = ctx or init_distributed()
    out = Path(config.output_dir)
    if config.threads > 0:
        torch.set_num_threads(config.threads)

    # Resume: everything that can be wrong is checked before any data or model work.
    state = None
    if resume:
        last = out / LAST_CHECKPOINT
        if not last.is_dir():
            raise FileNotFoundError(f"--resume: no checkpoint at {last} (train once without --resume first)")
        state = load_trainer_state(last)
        check_resume_compatible(state.train_config, train_config_to_dict(config), last)

    # Data.
    if config.data_dir is None:
        if ctx.is_main:
            ensure_synthetic(config.synthetic)
        barrier(ctx)
        data_dir = ensure_synthetic(config.synthetic)  # cached now: returns the directory
    else:
        data_dir = Path(config.data_dir)
    check_data_dir(data_dir, [config.train_split, config.val_split])
    model_config = config.model_config()
    size = model_config.vision.image_size
    train_set = AmodalReasonSegDataset(data_dir, config.train_split, image_size=size)
    val_set = AmodalReasonSegDataset(data_dir, config.val_split, image_size=size, cache_images=64) if ctx.is_main else None
    sampler = ResumableDistributedSampler(train_set, ctx=ctx, seed=config.seed)
    loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=config.num_workers, drop_last=True)

    # Model and optimiser.
    seed_everything(config.seed)
    if state is not None:
        model = load_checkpoint(out / LAST_CHECKPOINT, device=ctx.device)
        model.train()
    else:
        model = build_aura_model(model_config, base_dir=ASSETS_DIR).to(ctx.device)
    params = [p for _, p in model.trainable_parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    step = 0
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
        step = state.step
        if ctx.is_main:
            restore_rng(state)
        else:
            torch.manual_seed(config.seed + 1000 * ctx.rank + step)
        LOG.info("resumed %s at step %d", out / LAST_CHECKPOINT, step)
    ddp_model = wrap_model(model, ctx)
    ddp_model.train()

    log = MetricsLog(out / "metrics.jsonl", ctx.is_main)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(train_config_to_dict(config), indent=2) + "\n", encoding="utf-8")
        LOG.info("data %s: %d train / %d val QA pairs; %d processes x batch %d x accumulation %d",
                 data_dir, len(train_set), len(val_set), ctx.world_size, config.batch_size, config.grad_accumulation)
    batches = micro_batches(loader, sampler, step * config.grad_accumulation)
    bar = tqdm(total=config.iterations, initial=step, desc="train", dynamic_ncols=True, disable=not ctx.is_main)
    t_start, step_start = time.time(), step
    report: Dict[str, Any] = {}
    end = config.iterations if stop_at is None else min(stop_at, config.iterations)
    while step < end:
        lr = warmup_decay_lr(step, base_lr=config.lr, warmup_steps=config.warmup_iterations, total_steps=config.iterations)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        logs = train_step(ddp_model, batches, config, ctx)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else float("inf"))
        optimizer.step()
        step += 1
        logs = mean_over_processes(logs, ctx)
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items() if k in ("total", "text", "bce", "dice", "occlusion_rate", "spatial")}
                        | {"lr": f"{lr:.1e}"})
        if step % config.log_every == 0 or step == config.iterations:
            elapsed = time.time() - t_start
            log.write({"step": step, "lr": lr, "grad_norm": float(grad_norm), **logs, "world_size": ctx.world_size,
                       "it_per_s": (step - step_start) / max(elapsed, 1e-9), "elapsed_s": elapsed})
        final = step == config.iterations
        if ctx.is_main and ((config.eval_every and step % config.eval_every == 0) or final):
            report = run_evaluation(ddp_model, val_set, config, step, final=final)
            log.write({"step": step, "eval": report})
        if (config.checkpoint_every and step % config.checkpoint_every == 0) or final or step == end:
            if ctx.is_main:
                save_resumable(ddp_model, optimizer, step, config, ctx)
            barrier(ctx)
        elif ctx.distributed and config.eval_every and step % config.eval_every == 0:
            barrier(ctx)  # the other ranks wait while rank 0 evaluates
    bar.close()
    if step < config.iterations:
        LOG.info("stopped at step %d of %d; continue with --resume", step, config.iterations)
        return report

    if ctx.is_main:
        save_checkpoint(unwrap(ddp_model), out / FINAL_MODEL, extra={"step": step, "metrics": report.get("teacher_forced")},
                        include_vision_backbone=True)
        (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        LOG.info("done: %s (final model %s, metrics %s)", out, out / FINAL_MODEL, out / "metrics.json")
    barrier(ctx)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = init_distributed()
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        train(config_from_args(args), resume=args.resume, ctx=ctx, stop_at=args.stop_at)
    except (ConfigError, DataDirError, ResumeError, CheckpointError, SamCheckpointError, FileNotFoundError) as err:
        # Bad settings, data or checkpoints: one clear line, before any training happened.
        print(f"training/train.py: error: {err}", file=sys.stderr)
        return 2
    finally:
        shutdown(ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
