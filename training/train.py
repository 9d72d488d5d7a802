"""Train AURA: `python training/train.py` (tiny model, synthetic set, ends with an evaluation) or with a config file.

    python training/train.py                                   # tiny CPU run -> runs/default
    python training/train.py --config config/train/paper-7b.yaml --data-dir /data/amodal_reason_seg
    python training/train.py --resume                          # continue runs/default/checkpoints/last
    torchrun --nproc_per_node 2 training/train.py [...]        # DDP (gloo on CPU, nccl on GPU)

Reads top to bottom: settings, data, model, optimiser, loop (gradient accumulation, clipping, WarmupDecayLR),
evaluation, checkpoints. Output directory: metrics.jsonl (one record per log/eval), TensorBoard event files and
curves.png (loss and gIoU against step) beside it, eval_step<N>.md tables, overlays/step<N>/*.png, checkpoints/last
(resumable), model/ (final weights) and metrics.json (final evaluation, teacher-forced and end to end).
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

from aura_core.data.dataset import AmodalReasonSegDataset, collate
from aura_core.model.build import build_aura_model
from aura_core.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from aura_core.model.config import ConfigError
from aura_core.model.losses import aura_losses
from aura_core.model.sam_checkpoint import SamCheckpointError
from training.config import ASSETS_DIR, TrainConfig, load_train_config, parse_set_overrides, train_config_to_dict
from training.data import DataDirError, ImageEmbeddingCache, check_data_dir, ensure_synthetic
from training.distributed import (DistContext, ResumableDistributedSampler, barrier, full_model_state, init_distributed,
                                  mean_over_processes, seed_everything, shutdown, unwrap, wrap_model)
from training.curves import CURVES_PNG, TensorBoardLog, plot_curves
from training.evaluate import evaluate, format_table
from training.precision import autocast, grad_scaler, keep_trainable_fp32, resolve_precision
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
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default=None,
                        help="several processes: replicate (ddp, default) or shard (fsdp) the model")
    parser.add_argument("--allow-random-init", action="store_true",
                        help="build weights the config names no file for at random (e.g. paper configs without LLaVA/SAM)")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop after this optimiser step with a resumable checkpoint (split a run into slices)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any other setting, dotted for nested keys, e.g. --set model_overrides.mllm.lora_r=16")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = parse_set_overrides(args.overrides)
    for key in ("data_dir", "output_dir", "seed", "iterations", "strategy"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.allow_random_init and args.config is not None:  # (the default tiny config allows it already)
        overrides.setdefault("model_overrides", {})["allow_random_init"] = True
    return load_train_config(args.config, overrides)


# ----------------------------------------------------------------------------- pieces


def autocast_context(config: TrainConfig, device: torch.device):
    """The run's autocast (training/precision.py): bf16 on CUDA for `auto` (fp16 where the GPU lacks bf16), none on CPU."""
    return autocast(resolve_precision(config.precision, device), device)


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


def train_step(model: torch.nn.Module, batches: Iterator[Dict[str, Any]], config: TrainConfig, ctx: DistContext,
               scaler: Optional[torch.amp.GradScaler] = None,
               embedding_cache: Optional[ImageEmbeddingCache] = None) -> Dict[str, float]:
    """Forward/backward over `grad_accumulation` micro-batches, gradients summed as the mean over them.

    Leaves the gradients in the parameters (the caller clips and steps); returns the mean of each loss term.
    `scaler` (fp16): the loss is scaled before backward; the caller unscales before clipping.
    `embedding_cache`: the frozen SAM encoder's output per image id of the batches' data set (no augmentation), reused
    instead of encoding the image again; None encodes every batch.
    """
    weights = unwrap(model).config.loss
    logs: Dict[str, float] = {}
    accum = config.grad_accumulation
    for i in range(accum):
        batch = next(batches)
        no_sync = getattr(model, "no_sync", None)  # DDP; FSDP2 syncs per backward (set_requires_gradient_sync)
        sync = nullcontext() if (i == accum - 1 or not ctx.distributed or no_sync is None) else no_sync()
        if hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(i == accum - 1)
        with sync:
            with autocast_context(config, ctx.device):
                if embedding_cache is not None:
                    batch = {**batch, "image_embeddings": embedding_cache.embeddings(unwrap(model), batch)}
                losses = aura_losses(model(batch), batch, weights)
            loss = losses["total"] / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        for key, value in losses.items():
            logs[key] = logs.get(key, 0.0) + float(value.detach()) / accum
    return logs


def save_resumable(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, config: TrainConfig, ctx: DistContext,
                   extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write output_dir/checkpoints/last atomically (temp folder, then rename): model, optimiser, RNG, settings.

    Called on every rank (FSDP gathers the full weights collectively); rank 0 writes. With FSDP the optimiser state
    stays sharded and is not written (such a run cannot --resume yet).
    """
    target = Path(config.output_dir) / LAST_CHECKPOINT
    state = full_model_state(model, ctx)
    if not ctx.is_main:
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(unwrap(model), tmp, extra={"step": step, **(extra or {})}, include_vision_backbone=True, state=state)
    if config.strategy != "fsdp":
        save_trainer_state(tmp, optimizer=optimizer, step=step, train_config=train_config_to_dict(config),
                           world_size=ctx.world_size)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


class MetricsLog:
    """metrics.jsonl in the output directory: one JSON object per line, appended (a resumed run continues it).

    Every record also goes to TensorBoard event files beside it (training/curves.py); `plot()` redraws curves.png.
    `start_step`: the step a resumed run continues from (later events of an interrupted attempt are purged).
    """

    def __init__(self, path: Path, enabled: bool, start_step: int = 0) -> None:
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.tensorboard = TensorBoardLog(path.parent, enabled, purge_step=start_step)

    def write(self, record: Dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self.tensorboard.write(record)

    def plot(self) -> None:
        """Redraw curves.png (loss and gIoU against step) from the JSONL; a failure to draw never stops training."""
        if self.enabled:
            try:
                plot_curves(self.path.parent)
            except Exception as err:  # noqa: BLE001 (a plot is not worth a run)
                LOG.warning("could not draw %s: %s", self.path.parent / CURVES_PNG, err)

    def close(self) -> None:
        self.plot()
        self.tensorboard.close()


def run_evaluation(model: torch.nn.Module, dataset: AmodalReasonSegDataset, config: TrainConfig, step: int, *, final: bool) -> Dict[str, Any]:
    out = Path(config.output_dir)
    report = evaluate(
        unwrap(model),
        dataset,
        max_samples=config.final_eval_samples if final else config.eval_samples,
        end_to_end_samples=config.final_eval_end_to_end_samples if (final and config.final_eval_generation) else None,
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
        if config.strategy == "fsdp":
            raise ResumeError("--resume with strategy fsdp is not supported yet (its optimiser state is sharded and "
                              "not saved); resume such a run with strategy ddp or start it again")
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

    # Model and optimiser. Trainable tensors are fp32 master weights whatever the autocast (training/precision.py).
    seed_everything(config.seed)
    precision = resolve_precision(config.precision, ctx.device)
    if state is not None:
        model = load_checkpoint(out / LAST_CHECKPOINT, device=ctx.device)
        model.train()
    else:
        model = build_aura_model(model_config, base_dir=ASSETS_DIR).to(ctx.device)
    cast = keep_trainable_fp32(model)
    if state is not None and cast:  # the checkpoint holds them in fp32: take them unrounded
        from safetensors.torch import load_file

        saved = load_file(str(out / LAST_CHECKPOINT / "model.safetensors"))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad and name in saved:
                    param.copy_(saved[name].float())
    LOG.info("precision %s (%s requested); %d trainable tensors cast to fp32 master weights", precision, config.precision, cast)
    ddp_model = wrap_model(model, ctx, strategy=config.strategy)  # before the optimiser: FSDP replaces the parameters
    params = [p for p in ddp_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    scaler = grad_scaler(precision, ctx.device)
    step = 0
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
        step = state.step
        if ctx.is_main:
            restore_rng(state)
        else:
            torch.manual_seed(config.seed + 1000 * ctx.rank + step)
        LOG.info("resumed %s at step %d", out / LAST_CHECKPOINT, step)
    ddp_model.train()
    # The SAM image encoder is frozen and the training images are not augmented: encode each image once per run.
    # (Not with FSDP, whose sharded backbone only gathers its weights inside the model's forward.)
    embedding_cache = ImageEmbeddingCache(config.image_embedding_cache_mb * 2**20) \
        if config.image_embedding_cache_mb > 0 and config.strategy != "fsdp" else None

    log = MetricsLog(out / "metrics.jsonl", ctx.is_main, start_step=step)
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
        logs = train_step(ddp_model, batches, config, ctx, scaler, embedding_cache)
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
            grad_norm = grad_norm.full_tensor()
        if scaler is not None:
            scaler.step(optimizer)  # skipped when the scaled gradients overflowed
            scaler.update()
        else:
            optimizer.step()
        step += 1
        logs["truncated_samples"] = float(model.mllm.truncated)  # cumulative, this process (summed over ranks below)
        logs = mean_over_processes(logs, ctx)
        logs["truncated_samples"] = round(logs["truncated_samples"] * ctx.world_size)
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items() if k in ("total", "text", "bce", "dice", "occlusion_rate", "spatial")}
                        | {"lr": f"{lr:.1e}"})
        if step % config.log_every == 0 or step == config.iterations:
            elapsed = time.time() - t_start
            log.write({"step": step, "lr": lr, "grad_norm": float(grad_norm), **logs, "world_size": ctx.world_size,
                       "it_per_s": (step - step_start) / max(elapsed, 1e-9), "elapsed_s": elapsed})
        final = step == config.iterations
        evaluate_now = bool(config.eval_every and step % config.eval_every == 0) and not final
        # Checkpoint first, then evaluate: an evaluation can never cost the weights.
        if (config.checkpoint_every and step % config.checkpoint_every == 0) or final or step == end \
                or (evaluate_now and config.strategy == "fsdp"):
            save_resumable(ddp_model, optimizer, step, config, ctx)
            barrier(ctx)
        if evaluate_now:
            if ctx.is_main:  # the other ranks wait at the barrier
                eval_model = unwrap(ddp_model) if config.strategy != "fsdp" else \
                    load_checkpoint(out / LAST_CHECKPOINT, device=ctx.device)
                with autocast_context(config, ctx.device):
                    report = run_evaluation(eval_model, val_set, config, step, final=False)
                del eval_model
                log.write({"step": step, "eval": report})
                log.plot()
            barrier(ctx)
    bar.close()
    if embedding_cache is not None:
        LOG.info("image embedding cache: %d images encoded, %d reused (%.0f MiB)", embedding_cache.misses,
                 embedding_cache.hits, embedding_cache.bytes / 2**20)
    if step < config.iterations:
        log.close()
        LOG.info("stopped at step %d of %d; continue with --resume", step, config.iterations)
        return report

    # The final model is written before the final evaluation; then only rank 0 evaluates, the others are released
    # (they leave now instead of waiting at a barrier with the process-group timeout running).
    state = full_model_state(ddp_model, ctx)
    if ctx.is_main:
        save_checkpoint(unwrap(ddp_model), out / FINAL_MODEL, extra={"step": step}, include_vision_backbone=True,
                        state=state)
    del state
    barrier(ctx)
    if not ctx.is_main:
        return {}
    eval_model = unwrap(ddp_model) if config.strategy != "fsdp" else load_checkpoint(out / FINAL_MODEL, device=ctx.device)
    with autocast_context(config, ctx.device):
        report = run_evaluation(eval_model, val_set, config, step, final=True)
    log.write({"step": step, "eval": report})
    log.close()
    meta_path = out / FINAL_MODEL / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["extra"]["metrics"] = report.get("teacher_forced")
    meta_path.write_text(json.dumps(meta, indent=2))
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    LOG.info("done: %s (final model %s, metrics %s)", out, out / FINAL_MODEL, out / "metrics.json")
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
