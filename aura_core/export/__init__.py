"""ONNX / TensorRT export of the SAM-side graphs and the pipeline backends that run them (docs/EXPORT.md).

The backends are opened through the registry in aura_core/backends.py (`open_backend`), which imports this package
only when an exported backend is asked for; tensorrt is imported only when the tensorrt backend opens.
"""
from aura_core.export.graphs import AMODAL_BRANCH, GRAPH_NAMES, IMAGE_ENCODER, VISIBLE_BRANCH
from aura_core.export.manifest import CheckpointFingerprint, ExportError, Manifest
from aura_core.export.onnx_export import export_checkpoint, export_model

__all__ = [
    "AMODAL_BRANCH",
    "GRAPH_NAMES",
    "IMAGE_ENCODER",
    "VISIBLE_BRANCH",
    "CheckpointFingerprint",
    "ExportError",
    "Manifest",
    "export_checkpoint",
    "export_model",
]
