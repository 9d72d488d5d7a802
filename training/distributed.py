"""Process-group plumbing for `torchrun --nproc_per_node N training/train.py` (PyTorch DDP).

gloo on CPU, nccl on GPU; rank 0 logs, evaluates and writes checkpoints. DDP needs
find_unused_parameters=True here: with SAM's single-mask output parts of the decoders (and any disabled
module's leftovers) get no gradient in a step.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Dict, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(*, prefer_cuda: bool = True) -> DistContext:
    """Join the process group torchrun describes (RANK / WORLD_SIZE / LOCAL_RANK), or run alone without one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = prefer_cuda and torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
        LOG.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, device)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def wrap_model(model: nn.Module, ctx: DistContext, strategy: str = "ddp") -> nn.Module:
    """DDP (or FSDP2 with strategy "fsdp") around the model when more than one process runs; the bare model otherwise."""
    if not ctx.distributed:
        return model
    if strategy == "fsdp":
        return shard_model(model, ctx)
    if strategy != "ddp":
        raise ValueError(f"strategy must be ddp or fsdp, got {strategy!r}")
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def shard_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """FSDP2 (`fully_shard`): each decoder layer of the LLM and of the CLIP tower is one shard group, the rest (embeddings,
    lm_head, projector, SAM ViT, Prompt Encoder, both decoders, E_OC, E_SO) the root group. Frozen and trainable (LoRA)
    parameters may share a group. Shards keep each parameter's own dtype (fp32 master weights for what trains, bf16
    for the frozen LLaVA); with a bf16 body the all-gathered compute copies are bf16 and gradients are reduced in fp32.
    The model is changed in place (its class is swapped), so `unwrap` returns it unchanged.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtypes = {p.dtype for p in model.parameters()}
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if len(dtypes) > 1 and torch.bfloat16 in dtypes else MixedPrecisionPolicy()
    layers = [m for name, m in model.named_modules() if type(m).__name__ in ("LlamaDecoderLayer", "CLIPEncoderLayer")]
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    LOG.info("FSDP2: %d decoder layers sharded over %d processes (+ the root group)", len(layers), ctx.world_size)
    return model


def full_model_state(model: nn.Module, ctx: DistContext) -> Optional[Dict[str, torch.Tensor]]:
    """The full (unsharded) state dict of an FSDP-sharded model on rank 0's CPU (a collective: every rank calls it);
    None for an unsharded model (its own state_dict is complete)."""
    if not _is_fsdp(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if ctx.is_main else None


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - older torch
        return False
    return isinstance(model, FSDPModule)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def mean_over_processes(values: Dict[str, float], ctx: DistContext) -> Dict[str, float]:
    """Average scalar logs over ranks (so rank 0's log shows the whole batch)."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist())}


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that can start part-way into an epoch, so a resumed run sees the same samples.

    `set_position(epoch, start)` skips this rank's first `start` indices of that epoch's shuffled shard.
    """

    def __init__(self, dataset: Dataset, *, ctx: DistContext, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def seed_everything(seed: int) -> None:
    """Same seed for model init on every rank (DDP also broadcasts rank 0's weights); ranks differ only via the sampler."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
