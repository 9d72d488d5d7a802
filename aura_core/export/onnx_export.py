"""ONNX export of the three SAM-side graphs (encoder, visible branch, amodal branch) plus a manifest.

Two exporters: "torchscript" (torch.onnx legacy tracer, fast, the default) and "dynamo" (torch.export based). Both
handle SAM's window-attention padding at fixed image size. A graph whose weights exceed `external_data_threshold`
(ViT-H: 2.5 GB, over protobuf's 2 GB limit) is written as `<graph>.onnx` + one `<graph>.onnx.data` file.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import onnx
import onnxruntime
import torch
from torch import nn
from tqdm import tqdm

from aura_core.export.graphs import GRAPH_NAMES, NUM_SEG, TensorSpec, build_graph, graph_specs
from aura_core.export.manifest import CheckpointFingerprint, GraphRecord, Manifest, graph_sha256
from aura_core.model.aura import AuraModel
from aura_core.model.checkpoint import load_checkpoint

LOGGER = logging.getLogger(__name__)

DEFAULT_OPSET = 17
EXPORTERS = ("torchscript", "dynamo")
# protobuf refuses messages over 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = (2 << 30) - (64 << 20)
EXAMPLE_NUM_SEG = 2  # K used to trace; the exported axis is dynamic


def _example(spec: TensorSpec, num_seg: int) -> torch.Tensor:
    return torch.randn(*[num_seg if d == NUM_SEG else int(d) for d in spec.shape])


def _weight_bytes(module: nn.Module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def export_graph(
    module: nn.Module,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    path: Union[str, Path],
    *,
    exporter: str = "torchscript",
    opset: int = DEFAULT_OPSET,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> Optional[str]:
    """Write one module as ONNX at `path`; returns the external data file name, or None if the weights are inline.

    Dims equal to NUM_SEG in the specs become the dynamic axis "num_seg".
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter '{exporter}' (known: {', '.join(EXPORTERS)})")
    path = Path(path)
    external = _weight_bytes(module) > external_data_threshold
    args = tuple(_example(spec, EXAMPLE_NUM_SEG) for spec in inputs)
    names_in, names_out = [s.name for s in inputs], [s.name for s in outputs]
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}-") as tmp, torch.no_grad():
        raw = Path(tmp) / path.name  # the exporters may scatter external tensors next to it; consolidated below
        if exporter == "torchscript":
            dynamic_axes = {
                s.name: {axis: NUM_SEG for axis, d in enumerate(s.shape) if d == NUM_SEG}
                for s in list(inputs) + list(outputs)
                if NUM_SEG in s.shape
            }
            torch.onnx.export(
                module, args, str(raw), input_names=names_in, output_names=names_out,
                dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
            )  # fmt: skip
        else:
            num_seg = torch.export.Dim(NUM_SEG, min=1, max=1024)
            dynamic_shapes = {
                s.name: ({axis: num_seg for axis, d in enumerate(s.shape) if d == NUM_SEG} or None) for s in inputs
            }
            torch.onnx.export(
                module, args, str(raw), input_names=names_in, output_names=names_out,
                dynamic_shapes=dynamic_shapes, opset_version=opset, dynamo=True, external_data=external,
            )  # fmt: skip
        proto = onnx.load(str(raw), load_external_data=True)
        data_name = f"{path.name}.data" if external else None
        for stale in (path, path.parent / f"{path.name}.data"):
            stale.unlink(missing_ok=True)
        onnx.save_model(
            proto, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
            location=data_name, size_threshold=1024,
        )  # fmt: skip
    onnx.checker.check_model(str(path))  # by path: works past 2 GB
    return data_name


def check_onnx_runs(path: Union[str, Path], inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    """Load the graph in onnxruntime and compare its I/O names with the specs (catches a broken export early)."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if got_in != [s.name for s in inputs] or got_out != [s.name for s in outputs]:
        raise RuntimeError(f"{path}: exported I/O {got_in} -> {got_out} does not match the specs")


def export_model(
    model: AuraModel,
    out_dir: Union[str, Path],
    fingerprint: CheckpointFingerprint,
    *,
    exporter: str = "torchscript",
    opset: int = DEFAULT_OPSET,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    graphs: Sequence[str] = GRAPH_NAMES,
    progress: bool = True,
) -> Manifest:
    """Export the chosen graphs of `model` into `out_dir` and write its manifest (tied to `fingerprint`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().to("cpu")
    specs = graph_specs(model)
    records: Dict[str, GraphRecord] = {}
    bar = tqdm(list(graphs), desc="ONNX export", unit="graph", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        inputs, outputs = specs[name]
        file = f"{name}.onnx"
        external = export_graph(
            build_graph(name, model), inputs, outputs, out_dir / file,
            exporter=exporter, opset=opset, external_data_threshold=external_data_threshold,
        )  # fmt: skip
        check_onnx_runs(out_dir / file, inputs, outputs)
        records[name] = GraphRecord(
            file=file,
            sha256=graph_sha256(out_dir, file, external),
            inputs=[s.to_dict() for s in inputs],
            outputs=[s.to_dict() for s in outputs],
            external_data=external,
        )
        LOGGER.info("exported %s -> %s%s", name, out_dir / file, f" (+ {external})" if external else "")
    manifest = Manifest(
        checkpoint=fingerprint,
        config_name=model.config.name,
        opset=opset,
        exporter=exporter,
        graphs=records,
        versions={"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        use_occlusion_condition_encoder=model.occlusion_condition_encoder is not None,
    )
    manifest.write(out_dir)
    return manifest


def export_checkpoint(
    checkpoint_dir: Union[str, Path], out_dir: Union[str, Path], **options: object
) -> Tuple[Manifest, AuraModel]:
    """Fingerprint and load a checkpoint directory, export it (see `export_model` for options)."""
    fingerprint = CheckpointFingerprint.of(checkpoint_dir)
    model = load_checkpoint(checkpoint_dir, device="cpu")
    return export_model(model, out_dir, fingerprint, **options), model  # type: ignore[arg-type]

