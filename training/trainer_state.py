"""What a resumed run needs besides the model: optimiser moments, step, RNG states and the run's settings.

Stored next to the model checkpoint as trainer_state.safetensors (every tensor) + trainer_state.json (the rest), so
resuming never unpickles anything.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

TENSORS_FILE = "trainer_state.safetensors"
JSON_FILE = "trainer_state.json"

# Settings a resumed run must share with the run it continues (others - output, logging, eval - may change).
RESUME_KEYS = ("model", "model_overrides", "data_dir", "train_split", "seed", "iterations", "warmup_iterations", "lr",
               "weight_decay", "betas", "batch_size", "grad_accumulation", "grad_clip", "synthetic")


class ResumeError(ValueError):
    """A checkpoint that cannot be resumed with the current settings (or is incomplete)."""


@dataclass
class TrainerState:
    step: int
    train_config: Dict[str, Any]
    world_size: int
    optimizer: Dict[str, Any]
    rng: Dict[str, Any]


def _rng_state() -> tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": json.loads(json.dumps(random.getstate()))}
    return tensors, meta


def restore_rng(state: TrainerState) -> None:
    """Put torch / CUDA / numpy / Python RNGs back where the saved run had them."""
    tensors, meta = state.rng["tensors"], state.rng["meta"]
    torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([c.to(torch.uint8) for c in cuda])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_trainer_state(directory: Path, *, optimizer: torch.optim.Optimizer, step: int, train_config: Mapping[str, Any],
                       world_size: int) -> None:
    state = optimizer.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    rng_tensors, rng_meta = _rng_state()
    tensors.update({k: v.contiguous() for k, v in rng_tensors.items()})
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / TENSORS_FILE))
    meta = {
        "step": int(step),
        "world_size": int(world_size),
        "train_config": dict(train_config),
        "optimizer_param_groups": state["param_groups"],
        "optimizer_scalars": scalars,
        "rng": rng_meta,
    }
    (directory / JSON_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def load_trainer_state(directory: Path) -> TrainerState:
    json_path, tensor_path = directory / JSON_FILE, directory / TENSORS_FILE
    for path in (json_path, tensor_path):
        if not path.is_file():
            raise ResumeError(f"cannot resume: {path} is missing (not a checkpoint written by training/train.py)")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        tensors = load_file(str(tensor_path))
    except (json.JSONDecodeError, SafetensorError, OSError) as err:
        raise ResumeError(f"cannot resume from {directory}: {err}") from err
    opt_state: Dict[int, Dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            opt_state.setdefault(int(index), {})[key] = value
    for index, values in meta["optimizer_scalars"].items():
        opt_state.setdefault(int(index), {}).update(values)
    return TrainerState(
        step=int(meta["step"]),
        train_config=meta["train_config"],
        world_size=int(meta.get("world_size", 1)),
        optimizer={"state": opt_state, "param_groups": meta["optimizer_param_groups"]},
        rng={"tensors": {k: v for k, v in tensors.items() if k.startswith("rng.")}, "meta": meta["rng"]},
    )


def check_resume_compatible(saved: Mapping[str, Any], current: Mapping[str, Any], source: Path) -> None:
    """Raise ResumeError listing every setting in RESUME_KEYS that differs between the saved and the current run."""
    diffs: List[str] = [
        f"{key}: checkpoint {saved.get(key)!r} vs now {current.get(key)!r}"
        for key in RESUME_KEYS
        if json.loads(json.dumps(saved.get(key))) != json.loads(json.dumps(current.get(key)))
    ]
    if diffs:
        raise ResumeError(f"cannot resume from {source}: it was trained with another config ({'; '.join(diffs)}); "
                          "use the same config, or a new --output-dir to start afresh")
