"""ONNX / TensorRT export of the SAM-side graphs and the pipeline backends that run them (docs/EXPORT.md)."""
from aura_core.export.backends import open_backend
from aura_core.export.graphs import AMODAL_BRANCH, GRAPH_NAMES, IMAGE_ENCODER, VISIBLE_BRANCH
from aura_core.export.manifest import CheckpointFingerprint, ExportError, Manifest
from aura_core.export.onnx_export import export_checkpoint, export_model
from aura_core.export.onnxruntime_backend import OnnxRuntimeSamBackend

__all__ = [
    "AMODAL_BRANCH",
    "GRAPH_NAMES",
    "IMAGE_ENCODER",
    "VISIBLE_BRANCH",
    "CheckpointFingerprint",
    "ExportError",
    "Manifest",
    "OnnxRuntimeSamBackend",
    "export_checkpoint",
    "export_model",
    "open_backend",
]
