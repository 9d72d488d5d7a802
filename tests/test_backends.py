"""aura_core.backends: one registry of SAM backends, read by the pipeline, the export CLI and the node's parameters."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from aura_core.backends import BACKENDS, backend_spec, exported_backends, open_backend
from aura_core.model.build import build_aura_model
from aura_core.model.config import get_config
from aura_core.pipeline import AuraPipeline
from aura_ros.params import AuraParameters, ParameterError
from training import export as export_cli


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_aura_model(get_config("tiny")).eval()


def test_the_registry_names_what_the_pipeline_the_export_cli_and_the_node_accept():
    assert list(BACKENDS) == ["torch", "onnxruntime", "tensorrt"]
    assert exported_backends() == ("onnxruntime", "tensorrt")
    for name in BACKENDS:
        assert AuraParameters(backend=name).backend == name
    with pytest.raises(ParameterError, match="'tflite' is not one of"):
        AuraParameters(backend="tflite")
    for name in exported_backends():
        assert export_cli.parse_args(["--checkpoint", "c", "--out", "o", "--backend", name]).backend == name
    with pytest.raises(SystemExit):  # torch runs no export
        export_cli.parse_args(["--checkpoint", "c", "--out", "o", "--backend", "torch"])
    with pytest.raises(ValueError, match=r"unknown backend 'tflite' \(known: torch, onnxruntime, tensorrt\)"):
        AuraPipeline.from_pretrained(None, backend="tflite")
    with pytest.raises(ValueError, match="unknown backend"):
        backend_spec("onnx")


def test_the_torch_backend_is_the_model_itself(model):
    assert open_backend("torch", model) is model
    assert AuraPipeline(model=model).backend is model
    with pytest.raises(ValueError, match="export_dir.*not torch"):
        open_backend("torch", model, export_dir="somewhere")
    with pytest.raises(TypeError, match="no options"):
        open_backend("torch", model, threads=2)


def test_exported_backends_need_the_checkpoint_directory(model):
    with pytest.raises(ValueError, match="onnxruntime backend needs the checkpoint directory"):
        open_backend("onnxruntime", model)


def test_the_registry_and_the_node_parameters_import_no_runtime():
    """onnxruntime and tensorrt are optional: naming them costs nothing until their backend is opened."""
    code = ("import sys, aura_core.backends, aura_ros.params; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
