"""Pretrain the tiny SAM (image encoder + prompt encoder + mask decoder) once, and ship it like SAM's weights.

The paper builds on a pretrained, frozen SAM ViT-H. No such weights exist for the tiny config, and a randomly
initialised frozen encoder learns clearly less, so this script makes a tiny stand-in: promptable segmentation on
synthetic scenes drawn from a seed range disjoint from the synthetic train/val sets. The prompt is either a learned
token per object category (default; one sparse token, as AURA's e_r will be) or a point on the object's visible part;
the decoder answers with the visible mask on SAM's mask token 0 and the amodal mask on token 1. The result is written
as a segment-anything-format `.pth` (fp16, `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`; the category table
is pretext-only and not saved) that VisionBackboneConfig.checkpoint loads exactly like SAM's files.

The shipped aura_core/assets/tiny_sam_vit.pth (history in its .json sidecar) was made in two stages:

    python training/pretrain_backbone.py --prompt point --steps 1500 --threads 1 --work-dir runs/pretrain_point --out /tmp/point.pth
    python training/pretrain_backbone.py --prompt category --init runs/pretrain_point/state.pt --steps 1500 --warmup 100 \
        --threads 1 --work-dir runs/pretrain_category --out aura_core/assets/tiny_sam_vit.pth

and continued since (docs/TRAINING.md); a later stage runs in slices (`--stop-at`) on scenes no earlier one drew
(`--data-offset`), and its sidecar carries the command and the sidecar of the file it started from.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import PromptEncoder
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from aura_core.data.synthetic import CATEGORIES, generate_scene
from aura_core.data.transforms import preprocess_image
from aura_core.masks import iou
from aura_core.model.config import AuraConfig, get_config
from aura_core.model.losses import bce_loss, dice_loss
from aura_core.model.mask_decoder import build_sam_mask_decoder
from aura_core.model.vision_backbone import build_sam_image_encoder
from training.command import command_line
from training.schedule import warmup_decay_lr

LOG = logging.getLogger("aura.pretrain_backbone")

SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")  # what a segment-anything .pth holds
NUM_CATEGORIES = len(CATEGORIES)
PRETEXT_SEED_KEY = 7919  # keeps pretext scenes disjoint from aura-synth's (seed, split, index) streams
VISIBLE_TOKEN, AMODAL_TOKEN = 0, 1


class TinySam(nn.Module):
    """segment_anything's three parts at the sizes of an AuraConfig; state-dict keys match SAM's .pth files."""

    def __init__(self, *, config: AuraConfig, prompt: str = "category") -> None:
        super().__init__()
        self.prompt = prompt
        vision, dec = config.vision, config.mask_decoder
        grid = vision.image_size // vision.patch_size
        self.image_encoder = build_sam_image_encoder(vision, dec.prompt_embed_dim)
        self.prompt_encoder = PromptEncoder(
            embed_dim=dec.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(vision.image_size, vision.image_size),
            mask_in_chans=16,
        )
        self.mask_decoder = build_sam_mask_decoder(dec)

        # Pretext-only prompt: one learned token per object category (not shipped; AURA's e_r takes its place).
        self.category_embed = nn.Embedding(NUM_CATEGORIES + 1, dec.prompt_embed_dim)

    def forward(self, sam_images: torch.Tensor, points: List[torch.Tensor], categories: List[torch.Tensor]) -> List[torch.Tensor]:
        """sam_images (B, 3, S, S); points[b] (K_b, 2) xy in input pixels or, when `self.prompt` is "category",
        categories[b] (K_b,) ids -> per image (K_b, 2, S/4, S/4) logits (visible, amodal)."""
        embeddings = self.image_encoder(sam_images)  # (B, C, S/16, S/16)
        dense_pe = self.prompt_encoder.get_dense_pe()
        out = []
        for b, (pts, cats) in enumerate(zip(points, categories)):
            if self.prompt == "category":
                # Like AURA's e_r: a single sparse token, with SAM's dense "no mask" embedding.
                sparse = self.category_embed(cats)[:, None, :]  # (K, 1, C)
                grid = embeddings.shape[-2:]
                dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(len(cats), -1, *grid)
            else:
                labels = torch.ones(pts.shape[0], 1, dtype=torch.int64, device=pts.device)
                sparse, dense = self.prompt_encoder(points=(pts[:, None, :], labels), boxes=None, masks=None)
            masks, _ = self.mask_decoder.predict_masks(
                image_embeddings=embeddings[b : b + 1],
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
            )  # (K, 1 + num_multimask_outputs, S/4, S/4)
            out.append(masks[:, [VISIBLE_TOKEN, AMODAL_TOKEN]])
        return out


class PretextScenes(IterableDataset):
    """Endless synthetic scenes: (sam_image, points (K,2), visible (K,S,S), amodal (K,S,S), rates (K,))."""

    def __init__(self, *, seed: int, size: int, max_objects: int, start: int = 0, stop: Optional[int] = None) -> None:
        self.seed, self.size, self.max_objects, self.start, self.stop = seed, size, max_objects, start, stop

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, ...]]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        index = self.start + worker
        while self.stop is None or index < self.stop:
            yield self.sample(index)
            index += workers

    def sample(self, index: int) -> Tuple[torch.Tensor, ...]:
        rng = np.random.default_rng([self.seed, PRETEXT_SEED_KEY, index])
        scene = generate_scene(rng, self.size)
        sam_image, _ = preprocess_image(scene.image, self.size)
        chosen = rng.permutation(len(scene.objects))[: self.max_objects]
        points, visible, amodal, rates, categories = [], [], [], [], []
        for i in chosen:
            obj = scene.objects[int(i)]
            ys, xs = np.nonzero(obj.visible)
            pick = int(rng.integers(len(xs)))
            points.append([xs[pick] + 0.5, ys[pick] + 0.5])
            visible.append(obj.visible)
            amodal.append(obj.amodal)
            rates.append(obj.occlusion_rate)
            categories.append(obj.category_id)
        return (
            sam_image,
            torch.tensor(points, dtype=torch.float32),
            torch.from_numpy(np.stack(visible)),
            torch.from_numpy(np.stack(amodal)),
            torch.tensor(rates, dtype=torch.float32),
            torch.tensor(categories, dtype=torch.int64),
        )


def _collate(items: Sequence[Tuple[torch.Tensor, ...]]) -> Tuple[torch.Tensor, List[torch.Tensor], ...]:
    return (torch.stack([it[0] for it in items]),) + tuple([it[j] for it in items] for j in range(1, 6))


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # scene drawing is numpy; leave the cores to the training process


def _upsample(low_res: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)


def _downsample(masks: torch.Tensor, size: int) -> torch.Tensor:
    """(K, S, S) bool -> (K, size, size) soft targets in [0, 1] (share of each cell covered)."""
    return F.adaptive_avg_pool2d(masks.float()[None], (size, size))[0]


def _ious(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(K,) IoUs of (K, S, S) bool masks."""
    return torch.tensor([iou(p, g) for p, g in zip(pred.numpy(), gt.numpy())], dtype=torch.float64)


@torch.no_grad()
def evaluate(model: TinySam, batches: Sequence[Tuple], size: int) -> Dict[str, float]:
    """Visible/amodal IoU on held-out scenes, and the 'amodal = predicted visible' baseline on objects occluded >= 0.3."""
    model.eval()
    vis, amo, base, amo_occ, base_occ = [], [], [], [], []
    for sam_images, points, visible, amodal, rates, categories in batches:
        for logits, v, a, r in zip(model(sam_images, points, categories), visible, amodal, rates):
            full = _upsample(logits, size) > 0
            iou_v, iou_a, iou_b = _ious(full[:, 0], v), _ious(full[:, 1], a), _ious(full[:, 0], a)
            vis.append(iou_v)
            amo.append(iou_a)
            base.append(iou_b)
            amo_occ.append(iou_a[r >= 0.3])
            base_occ.append(iou_b[r >= 0.3])
    model.train()
    cat = lambda xs: torch.cat(xs).mean().item() if torch.cat(xs).numel() else float("nan")  # noqa: E731
    return {"visible_iou": cat(vis), "amodal_iou": cat(amo), "baseline_amodal_iou": cat(base),
            "amodal_iou_occluded_0.3": cat(amo_occ), "baseline_amodal_iou_occluded_0.3": cat(base_occ)}


def sam_state_dict(model: TinySam, dtype: torch.dtype = torch.float16) -> Dict[str, torch.Tensor]:
    """The weights under SAM's key names, cast to `dtype` (fp16 keeps the shipped file small)."""
    return {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items() if k.startswith(SAM_PARTS)}


def _sidecar(init: Optional[Path]) -> Optional[Dict[str, object]]:
    """The .json manifest beside a SAM-format .pth used as --init (None for a state.pt or a file without one)."""
    if init is None or init.suffix != ".pth" or not init.with_suffix(".json").is_file():
        return None
    return json.loads(init.with_suffix(".json").read_text(encoding="utf-8"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="aura_core model config whose vision/mask-decoder sizes to use")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--prompt", choices=("category", "point"), default="category",
                        help="pretext prompt: a learned per-category token (one sparse token, like AURA's e_r) or a point")
    parser.add_argument("--init", type=Path, default=None, help="warm start from a state.pt of an earlier pretext run or a SAM-format .pth")
    parser.add_argument("--batch-size", type=int, default=8, help="scenes per step")
    parser.add_argument("--objects", type=int, default=4, help="prompted objects per scene")
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("aura_core/assets/tiny_sam_vit.pth"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/pretrain_backbone"), help="resumable state")
    parser.add_argument("--stop-at", type=int, default=None, help="leave after this step with a resumable state")
    parser.add_argument("--data-offset", type=int, default=0,
                        help="skip this many steps' scenes of the stream (a later stage draws scenes no earlier one saw)")
    args = parser.parse_args(argv)
    if args.stop_at is not None and not 0 < args.stop_at <= args.steps:
        parser.error(f"--stop-at must be in 1..--steps ({args.steps}), got {args.stop_at}")
    command = command_line("training/pretrain_backbone.py", argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = get_config(args.model)
    size = config.vision.image_size
    model = TinySam(config=config, prompt=args.prompt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    state_file = args.work_dir / "state.pt"
    start, resumed_manifest = 0, None
    if state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        resumed_manifest = state.get("init_manifest")
        LOG.info("resumed pretraining at step %d from %s", start, state_file)
    elif args.init is not None:
        loaded = torch.load(args.init, map_location="cpu", weights_only=True)
        # A pretext state.pt, or a SAM-format .pth such as the shipped one (its pretext category table starts anew).
        weights = loaded["model"] if "model" in loaded else {k: v.float() for k, v in loaded.items()}
        missing, _ = model.load_state_dict(weights, strict=False)
        LOG.info("warm start from %s (new: %s)", args.init, missing)

    held_out = PretextScenes(seed=args.seed + 1, size=size, max_objects=args.objects, start=0, stop=64)
    eval_batches = list(DataLoader(held_out, batch_size=16, collate_fn=_collate))
    train = PretextScenes(seed=args.seed, size=size, max_objects=args.objects,
                          start=(args.data_offset + start) * args.batch_size)
    # on resume, the manifest read when the run began (--out may since have overwritten the --init file's sidecar)
    init_manifest = resumed_manifest if start > 0 else _sidecar(args.init)
    last = args.steps if args.stop_at is None else args.stop_at
    loader = DataLoader(train, batch_size=args.batch_size, collate_fn=_collate, num_workers=args.workers,
                        worker_init_fn=_one_thread)
    log_file = open(args.work_dir / "log.jsonl", "a", encoding="utf-8")
    bar = tqdm(total=args.steps, initial=start, desc="pretrain tiny SAM", dynamic_ncols=True)
    step, t0 = start, time.time()
    metrics: Dict[str, float] = {}
    for sam_images, points, visible, amodal, _, categories in loader:
        if step >= last:
            break
        lr = warmup_decay_lr(step, base_lr=args.lr, warmup_steps=args.warmup, total_steps=args.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = []
        for logits, v, a in zip(model(sam_images, points, categories), visible, amodal):
            # Loss at the decoder's S/4 resolution against area-averaged targets: 16x cheaper than at full size.
            low = logits.shape[-1]
            pairs = ((logits[:, 0], _downsample(v, low)), (logits[:, 1], _downsample(a, low)))  # visible, amodal
            losses.append(sum((bce_loss(x, t) + dice_loss(x, t)).mean() for x, t in pairs))
        loss = torch.stack(losses).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
        record = {"step": step, "loss": loss.item(), "lr": lr, "elapsed_s": time.time() - t0}
        if step % args.eval_every == 0 or step == last:
            metrics = evaluate(model, eval_batches, size)
            record.update(metrics)
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "init_manifest": init_manifest}, state_file)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            torch.save(sam_state_dict(model), args.out)
            meta = {"model": args.model, "steps": step, "batch_size": args.batch_size, "objects_per_scene": args.objects,
                    "steps_schedule": args.steps, "data_offset": args.data_offset, "warmup": args.warmup,
                    "lr": args.lr, "seed": args.seed, "held_out": metrics, "prompt": args.prompt, "init": str(args.init),
                    "command": command, "wall_s_this_process": time.time() - t0,
                    "pretext": "prompt (category token or point on the visible part) -> visible (token 0) "
                    "and amodal (token 1) masks, synthetic scenes disjoint from aura-synth's"}
            if init_manifest is not None:
                meta["init_manifest"] = init_manifest  # how the file it started from was made, and so on back
            args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if step % 10 == 0 or "visible_iou" in record:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
    bar.close()
    log_file.close()
    LOG.info("wrote %s (%.1f MB)", args.out, args.out.stat().st_size / 1e6 if args.out.is_file() else math.nan)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
