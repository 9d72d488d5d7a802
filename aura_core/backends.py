"""The SAM backends, in one registry: the pipeline, the export CLI and the node's parameter check all read its keys.

A backend runs the SAM-side stages of the pipeline (`SamBackend` in aura_core/model/aura.py: encode_image,
decode_visible, decode_amodal):

- "torch": the AuraModel's own modules (the model is a SamBackend).
- "onnxruntime": the checkpoint's exported ONNX graphs on ONNX Runtime.
- "tensorrt": TensorRT engines built from those graphs (CUDA only), cached beside them.

The exported ones use `export_dir` when given, else `<checkpoint>/onnx`, else a per-user cache that is filled once
(aura_core/export/locate.py). This module imports neither torch nor any runtime: onnxruntime and tensorrt are optional
dependencies, imported when their backend is opened.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Tuple, Union

if TYPE_CHECKING:
    from aura_core.model.aura import AuraModel, SamBackend

PathLike = Union[str, Path]

# (model, checkpoint directory or None, device, export directory or None, **backend options) -> SamBackend
BackendOpener = Callable[..., "SamBackend"]


@dataclass(frozen=True)
class BackendSpec:
    """One registered backend."""

    open: BackendOpener
    exported: bool  # runs the checkpoint's ONNX export (what training/export.py writes)
    default_device: str  # the device it runs on unless told otherwise


def _open_torch(
    model: "AuraModel", checkpoint_dir: Optional[Path], device: str, export_dir: Optional[Path], **options: Any
) -> "SamBackend":
    if export_dir is not None:
        raise ValueError(f"export_dir={export_dir} is for the exported backends ({', '.join(exported_backends())}), not torch")
    if options:
        raise TypeError(f"the torch backend takes no options, got {sorted(options)}")
    return model


def _open_onnxruntime(
    model: "AuraModel", checkpoint_dir: Optional[Path], device: str, export_dir: Optional[Path], **options: Any
) -> "SamBackend":
    """Options: threads (intra-op threads, default torch's)."""
    from aura_core.export.locate import locate_export
    from aura_core.export.onnxruntime_backend import OnnxRuntimeSamBackend

    directory, fingerprint = locate_export(model, checkpoint_dir, export_dir, "onnxruntime")
    return OnnxRuntimeSamBackend(directory, fingerprint=fingerprint, device=device, output_device=model.device, **options)


def _open_tensorrt(
    model: "AuraModel", checkpoint_dir: Optional[Path], device: str, export_dir: Optional[Path], **options: Any
) -> "SamBackend":
    """Options: options (EngineOptions), cache_dir (default `<export_dir>/engines`)."""
    from aura_core.export.locate import locate_export
    from aura_core.export.tensorrt_backend import TensorRTSamBackend  # imports tensorrt only when it builds engines

    directory, fingerprint = locate_export(model, checkpoint_dir, export_dir, "tensorrt")
    return TensorRTSamBackend(directory, fingerprint=fingerprint, device=device, **options)


BACKENDS: Mapping[str, BackendSpec] = MappingProxyType(
    {
        "torch": BackendSpec(open=_open_torch, exported=False, default_device="cpu"),
        "onnxruntime": BackendSpec(open=_open_onnxruntime, exported=True, default_device="cpu"),
        "tensorrt": BackendSpec(open=_open_tensorrt, exported=True, default_device="cuda"),
    }
)


def exported_backends() -> Tuple[str, ...]:
    """Names of the backends that run an ONNX export of the checkpoint."""
    return tuple(name for name, spec in BACKENDS.items() if spec.exported)


def backend_spec(name: str) -> BackendSpec:
    """The registered backend `name`; ValueError naming the known ones otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}' (known: {', '.join(BACKENDS)})")
    return BACKENDS[name]


def open_backend(
    name: str,
    model: "AuraModel",
    checkpoint_dir: Optional[PathLike] = None,
    device: Optional[str] = None,
    *,
    export_dir: Optional[PathLike] = None,
    **options: Any,
) -> "SamBackend":
    """A SamBackend of kind `name` for `model`, loaded from `checkpoint_dir` (the exported backends need it).

    `device` defaults to the backend's own default; `export_dir` overrides where an exported backend finds its graphs;
    `options` go to the backend (see each opener above).
    """
    spec = backend_spec(name)
    return spec.open(
        model,
        Path(checkpoint_dir) if checkpoint_dir is not None else None,
        device if device is not None else spec.default_device,
        Path(export_dir) if export_dir is not None else None,
        **options,
    )
