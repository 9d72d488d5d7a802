"""TensorRT engines from the exported ONNX graphs: builder, engine cache and a SamBackend that runs them.

Builder: the tensorrt Python API (8.6 - 10.x), optional fp16 with SAM's normalisation layers pinned to fp32 (the
encoder's LayerNorms overflow in fp16), one optimisation profile over the dynamic [SEG] count, a workspace limit.
TensorRT 11 dropped the weak-typing fp16 flag; there fp16 is refused with a clear error and fp32 engines still build.

Cache: an engine is stored under a key over (ONNX sha256, TensorRT version, GPU name, build options) with a JSON
sidecar holding those parts and the checkpoint fingerprint; a different ONNX, TensorRT or GPU gives another key, so a
stale engine is never loaded, and a sidecar that disagrees with its key (a copied or renamed file) is an error.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import onnx
import torch

from aura_core.export.graphs import AMODAL_BRANCH, GRAPH_NAMES, IMAGE_ENCODER, NUM_SEG, VISIBLE_BRANCH
from aura_core.export.manifest import CheckpointFingerprint, ExportError, Manifest

LOGGER = logging.getLogger(__name__)

TENSORRT_UNAVAILABLE = (
    "tensorrt is not importable: its PyPI packages download the real wheels from NVIDIA's index at install time, "
    "which this machine's registries do not serve; install TensorRT 8.6-10.x on a CUDA machine"
)

# Nodes that start a normalisation: nn.LayerNorm exports as one LayerNormalization node; SAM's LayerNorm2d
# (neck, decoder upscaling) exports as ReduceMean -> Sub -> Pow -> ReduceMean -> Add -> Sqrt -> Div.
_NORM_OPS = {"LayerNormalization"}
_NORM_SEED_OPS = {"ReduceMean"}
_NORM_CHAIN_OPS = {"Sub", "Pow", "ReduceMean", "Add", "Sqrt", "Div"}
_NORM_CHAIN_END = {"Div"}


def import_tensorrt() -> Any:
    """The tensorrt module, or RuntimeError with the reason it is missing here."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as error:
        raise RuntimeError(f"{TENSORRT_UNAVAILABLE} ({error})") from error


def tensorrt_unavailable_reason() -> Optional[str]:
    """None when engines can be built and run here, else why not (tests skip with it)."""
    try:
        import_tensorrt()
    except RuntimeError as error:
        return str(error)
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU and torch sees none"
    return None


def fp32_node_names(model: onnx.ModelProto) -> Set[str]:
    """Names of the ONNX nodes that compute a normalisation, kept in fp32 in an fp16 engine.

    Every LayerNormalization node, and for LayerNorm2d the chain from each ReduceMean through the variance to the
    division that normalises (the affine Mul/Add after it are safe in fp16).
    """
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    keep = {node.name for node in model.graph.node if node.op_type in _NORM_OPS}
    frontier = [node for node in model.graph.node if node.op_type in _NORM_SEED_OPS]
    seen: Set[str] = set()
    while frontier:
        node = frontier.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        keep.add(node.name)
        if node.op_type in _NORM_CHAIN_END:
            continue
        for output in node.output:
            frontier += [n for n in consumers.get(output, []) if n.op_type in _NORM_CHAIN_OPS]
    return keep


def keeps_fp32(layer_name: str, fp32_nodes: Set[str]) -> bool:
    """Whether a TensorRT layer comes from one of `fp32_nodes` (the ONNX parser names layers after their node,
    adding a suffix when one node becomes several layers)."""
    if layer_name in fp32_nodes:
        return True
    return any(layer_name.startswith(node + "_") or layer_name.startswith(node + " ") for node in fp32_nodes)


@dataclass(frozen=True)
class EngineOptions:
    """Build options; all of them are part of the cache key."""

    fp16: bool = False
    workspace_bytes: int = 1 << 30
    min_num_seg: int = 1
    opt_num_seg: int = 4
    max_num_seg: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.min_num_seg <= self.opt_num_seg <= self.max_num_seg:
            raise ValueError(
                f"need 1 <= min_num_seg <= opt_num_seg <= max_num_seg, got "
                f"{self.min_num_seg}, {self.opt_num_seg}, {self.max_num_seg}"
            )
        if self.workspace_bytes <= 0:
            raise ValueError(f"workspace_bytes must be positive, got {self.workspace_bytes}")


def engine_key_parts(
    onnx_sha256: str, tensorrt_version: str, gpu_name: str, options: EngineOptions
) -> Dict[str, Any]:
    """Everything an engine depends on: a change in any of them means another engine."""
    return {"onnx_sha256": onnx_sha256, "tensorrt": tensorrt_version, "gpu": gpu_name, "options": asdict(options)}


def engine_key(parts: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class EngineCache:
    """A directory of `<graph>-<key16>.engine` files, each with a `.json` sidecar of its key parts."""

    def __init__(self, directory: Union[str, Path]) -> None:
        self.directory = Path(directory)

    def paths(self, graph: str, parts: Dict[str, Any]) -> Tuple[Path, Path]:
        stem = f"{graph}-{engine_key(parts)[:16]}"
        return self.directory / f"{stem}.engine", self.directory / f"{stem}.json"

    def load(self, graph: str, parts: Dict[str, Any], fingerprint: Optional[CheckpointFingerprint]) -> Optional[bytes]:
        """The cached engine for these key parts, None when not built yet; a sidecar that disagrees raises ExportError."""
        engine_path, sidecar_path = self.paths(graph, parts)
        if not engine_path.is_file():
            stale = sorted(p.name for p in self.directory.glob(f"{graph}-*.engine")) if self.directory.is_dir() else []
            if stale:
                LOGGER.info("engine cache %s: %s was built for other inputs (%s); building a new one", self.directory, graph, ", ".join(stale))
            return None
        if not sidecar_path.is_file():
            raise ExportError(f"{engine_path}: its key file {sidecar_path.name} is missing; delete the engine")
        recorded = json.loads(sidecar_path.read_text())
        diffs = [
            f"{key}: engine has {recorded.get(key)!r}, expected {value!r}"
            for key, value in parts.items()
            if recorded.get(key) != value
        ]
        if fingerprint is not None and recorded.get("checkpoint_sha256") != fingerprint.sha256:
            diffs.append(
                f"checkpoint_sha256: engine has {str(recorded.get('checkpoint_sha256'))[:12]}, "
                f"checkpoint is {fingerprint.sha256[:12]}"
            )
        if diffs:
            raise ExportError(f"{engine_path} does not match what it would be built from: {'; '.join(diffs)}")
        return engine_path.read_bytes()

    def store(
        self, graph: str, parts: Dict[str, Any], engine: bytes, fingerprint: Optional[CheckpointFingerprint]
    ) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        engine_path, sidecar_path = self.paths(graph, parts)
        engine_path.write_bytes(engine)
        record = dict(parts, graph=graph, checkpoint_sha256=fingerprint.sha256 if fingerprint else None)
        sidecar_path.write_text(json.dumps(record, indent=2, sort_keys=True))
        return engine_path


def build_engine(trt: Any, onnx_path: Path, options: EngineOptions, *, dynamic_inputs: Iterable[str] = ()) -> bytes:
    """Serialise a TensorRT engine from one ONNX file (external data next to it is found by the parser)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch became the only mode in TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_bytes))
    if options.fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise RuntimeError(
                f"TensorRT {trt.__version__} has no weak-typing fp16 flag (removed in 11.x); build without --fp16"
            )
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        fp32_nodes = fp32_node_names(onnx.load(str(onnx_path), load_external_data=False))
        pinned = _pin_fp32(trt, network, fp32_nodes)
        LOGGER.info("%s: fp16 engine, %d normalisation layers kept in fp32", onnx_path.name, pinned)
    dynamic = set(dynamic_inputs)
    if dynamic:
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if tensor.name not in dynamic:
                continue
            shape = list(tensor.shape)  # -1 marks the [SEG] axis
            pick = lambda k: tuple(k if d == -1 else d for d in shape)  # noqa: E731
            profile.set_shape(
                tensor.name, pick(options.min_num_seg), pick(options.opt_num_seg), pick(options.max_num_seg)
            )
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    return bytes(serialized)


def _pin_fp32(trt: Any, network: Any, fp32_nodes: Set[str]) -> int:
    """Force the normalisation layers (by ONNX node name, or TensorRT's own normalization layer) to run in fp32."""
    floating = {trt.float32, trt.float16}
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        is_norm = getattr(trt.LayerType, "NORMALIZATION", None) == layer.type
        if not (is_norm or keeps_fp32(layer.name, fp32_nodes)):
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not all(out.dtype in floating for out in outputs):
            continue  # shape/index computations are not floating point
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


class TensorRTEngine:
    """One deserialised engine plus its execution context; runs on torch CUDA tensors."""

    def __init__(self, trt: Any, engine_bytes: bytes, *, device: torch.device, name: str) -> None:
        self.trt = trt
        self.name = name
        self.device = device
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise RuntimeError(f"{name}: TensorRT could not deserialise the engine (built by another version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _torch_dtype(self, name: str) -> torch.dtype:
        dtype = self.engine.get_tensor_dtype(name)
        table = {self.trt.float32: torch.float32, self.trt.float16: torch.float16, self.trt.int32: torch.int32}
        if dtype not in table:
            raise RuntimeError(f"{self.name}: unsupported I/O dtype {dtype} for '{name}'")
        return table[dtype]

    def __call__(self, **inputs: torch.Tensor) -> List[torch.Tensor]:
        keep_alive = []
        for name in self.inputs:
            if name not in inputs:
                raise KeyError(f"{self.name}: missing input '{name}' (expects {self.inputs})")
            tensor = inputs[name].to(self.device, self._torch_dtype(name)).contiguous()
            keep_alive.append(tensor)
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"{self.name}: input '{name}' shape {tuple(tensor.shape)} is outside the engine's profile")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=self._torch_dtype(name), device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.name}: TensorRT execution failed")
        stream.synchronize()
        return [out.float() for out in outputs]


class TensorRTSamBackend:
    """SamBackend on TensorRT engines built (once, then cached) from an export directory's ONNX files."""

    def __init__(
        self,
        export_dir: Union[str, Path],
        *,
        fingerprint: Optional[CheckpointFingerprint] = None,
        device: str = "cuda",
        options: EngineOptions = EngineOptions(),
        cache_dir: Optional[Union[str, Path]] = None,
    ) -> None:
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise RuntimeError("the tensorrt backend needs a CUDA GPU and torch sees none")
        self.device = torch.device(device if str(device).startswith("cuda") else "cuda")
        self.export_dir = Path(export_dir)
        self.manifest = Manifest.read(self.export_dir)
        if fingerprint is not None:
            self.manifest.check_checkpoint(fingerprint, self.export_dir)
        self.manifest.check_files(self.export_dir, GRAPH_NAMES)
        self.options = options
        self.has_occlusion_rates = self.manifest.use_occlusion_condition_encoder
        cache = EngineCache(cache_dir if cache_dir is not None else self.export_dir / "engines")
        gpu = torch.cuda.get_device_name(self.device)
        self.engines = {}
        for name in GRAPH_NAMES:
            record = self.manifest.graphs[name]
            parts = engine_key_parts(record.sha256, trt.__version__, gpu, options)
            data = cache.load(name, parts, fingerprint)
            if data is None:
                LOGGER.info("building TensorRT engine for %s on %s (fp16=%s)", name, gpu, options.fp16)
                dynamic = [spec["name"] for spec in record.inputs if NUM_SEG in spec["shape"]]
                data = build_engine(trt, self.export_dir / record.file, options, dynamic_inputs=dynamic)
                cache.store(name, parts, data, fingerprint)
            self.engines[name] = TensorRTEngine(trt, data, device=self.device, name=name)

    def _chunks(self, e_r: torch.Tensor) -> Sequence[torch.Tensor]:
        """Split K [SEG]s into runs the engine's profile accepts (K beyond max_num_seg runs in several batches)."""
        return torch.split(e_r, self.options.max_num_seg) if e_r.shape[0] else []

    def _decode(self, name: str, image_embedding: torch.Tensor, e_r: torch.Tensor) -> List[torch.Tensor]:
        parts = [self.engines[name](image_embedding=image_embedding, e_r=chunk) for chunk in self._chunks(e_r)]
        if not parts:
            h, w = image_embedding.shape[-2:]
            count = 3 if name == AMODAL_BRANCH and self.has_occlusion_rates else 2
            empty = [torch.zeros((0, 4 * h, 4 * w), device=self.device)] + [torch.zeros((0,), device=self.device)] * (
                count - 1
            )
            return empty
        return [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]

    def encode_image(self, sam_image: torch.Tensor) -> torch.Tensor:
        return self.engines[IMAGE_ENCODER](sam_image=sam_image)[0]

    def decode_visible(self, image_embedding: torch.Tensor, e_r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits, scores = self._decode(VISIBLE_BRANCH, image_embedding, e_r)
        return logits, scores

    def decode_amodal(
        self, image_embedding: torch.Tensor, e_r: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        outputs = self._decode(AMODAL_BRANCH, image_embedding, e_r)
        return outputs[0], outputs[1], (outputs[2] if self.has_occlusion_rates else None)
