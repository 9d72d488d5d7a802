"""TensorRT path: fp32 layer selection and the engine cache run everywhere; building/running engines needs
tensorrt + a CUDA GPU and skips with the reason otherwise."""
from __future__ import annotations

import json

import onnx
import pytest
import torch

from aura_core.export.graphs import GRAPH_NAMES, IMAGE_ENCODER, VISIBLE_BRANCH
from aura_core.export.manifest import CheckpointFingerprint, ExportError
from aura_core.export.tensorrt_backend import (
    EngineCache,
    EngineOptions,
    engine_key_parts,
    fp32_node_names,
    keeps_fp32,
    tensorrt_unavailable_reason,
)
from tests.export_fixtures import load


@pytest.fixture(scope="module")
def tensorrt_missing():
    """None when TensorRT engines can be built and run here, else why not (asked when a test needs it, not at collection)."""
    return tensorrt_unavailable_reason()


def test_fp32_nodes_are_the_normalisations(exported):
    _, export_dir, _ = exported
    for name, norm2d in ((IMAGE_ENCODER, "neck"), (VISIBLE_BRANCH, "output_upscaling")):
        graph = onnx.load(str(export_dir / f"{name}.onnx"))
        keep = fp32_node_names(graph)
        ops = {node.name: node.op_type for node in graph.graph.node}
        layer_norms = {n for n, op in ops.items() if op == "LayerNormalization"}
        assert layer_norms and layer_norms <= keep
        # SAM's LayerNorm2d: mean, centring, variance, sqrt and the division, all in fp32
        chain = sorted(ops[n] for n in keep if norm2d in n)
        assert chain.count("ReduceMean") >= 2 and {"Sub", "Pow", "Sqrt", "Div", "Add"} <= set(chain)
        assert not {ops[n] for n in keep} & {"MatMul", "Conv", "ConvTranspose", "Gemm", "Softmax", "Einsum"}
    assert keeps_fp32("/encoder/neck/neck.1/Sqrt", {"/encoder/neck/neck.1/Sqrt"})
    assert keeps_fp32("/encoder/neck/neck.1/Sqrt_2", {"/encoder/neck/neck.1/Sqrt"})  # one node, several layers
    assert not keeps_fp32("/encoder/blocks.0/attn/MatMul", {"/encoder/neck/neck.1/Sqrt"})


def test_engine_cache_key_and_stale_engines(tmp_path):
    options = EngineOptions(fp16=True, max_num_seg=8)
    parts = engine_key_parts("a" * 64, "10.3.0", "NVIDIA H100", options)
    fingerprint = CheckpointFingerprint(files={"model.safetensors": "1" * 64}, sha256="f" * 64)
    cache = EngineCache(tmp_path)
    assert cache.load(IMAGE_ENCODER, parts, fingerprint) is None
    path = cache.store(IMAGE_ENCODER, parts, b"engine-bytes", fingerprint)
    assert cache.load(IMAGE_ENCODER, parts, fingerprint) == b"engine-bytes"
    # any key part changing (ONNX, TensorRT version, GPU, options) selects another file: nothing stale is loaded
    for changed in (
        engine_key_parts("b" * 64, "10.3.0", "NVIDIA H100", options),
        engine_key_parts("a" * 64, "10.4.0", "NVIDIA H100", options),
        engine_key_parts("a" * 64, "10.3.0", "Orin", options),
        engine_key_parts("a" * 64, "10.3.0", "NVIDIA H100", EngineOptions(fp16=False, max_num_seg=8)),
    ):
        assert cache.paths(IMAGE_ENCODER, changed)[0] != path
        assert cache.load(IMAGE_ENCODER, changed, fingerprint) is None
    # an engine file copied under another key, or from another checkpoint, is refused naming what differs
    sidecar = path.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(dict(record, gpu="Orin")))
    with pytest.raises(ExportError, match="gpu: engine has 'Orin', expected 'NVIDIA H100'"):
        cache.load(IMAGE_ENCODER, parts, fingerprint)
    sidecar.write_text(json.dumps(record))
    other = CheckpointFingerprint(files={"model.safetensors": "2" * 64}, sha256="e" * 64)
    with pytest.raises(ExportError, match="checkpoint_sha256: engine has ffffffffffff, checkpoint is eeeeeeeeeeee"):
        cache.load(IMAGE_ENCODER, parts, other)
    sidecar.unlink()
    with pytest.raises(ExportError, match="key file .* is missing"):
        cache.load(IMAGE_ENCODER, parts, fingerprint)


def test_engine_options_are_checked():
    with pytest.raises(ValueError, match="min_num_seg <= opt_num_seg <= max_num_seg"):
        EngineOptions(opt_num_seg=32, max_num_seg=16)


def test_tensorrt_cli_reports_missing_tensorrt(tensorrt_missing, exported, tmp_path, capsys):
    if tensorrt_missing is None:
        pytest.skip("tensorrt and a GPU are present: the engine tests below cover the CLI path")
    from training import export as export_cli

    checkpoint, _, _ = exported
    code = export_cli.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"), "--backend", "tensorrt", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "tensorrt" in err.lower()


@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_backend_matches_torch(tensorrt_missing, exported, tmp_path, fp16):
    if tensorrt_missing is not None:
        pytest.skip(tensorrt_missing)
    from aura_core.export.tensorrt_backend import TensorRTSamBackend

    checkpoint, export_dir, _ = exported
    model = load(checkpoint).to("cuda")
    fingerprint = CheckpointFingerprint.of(checkpoint)
    options = EngineOptions(fp16=fp16, max_num_seg=4, opt_num_seg=2)
    backend = TensorRTSamBackend(export_dir, fingerprint=fingerprint, options=options, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.engine"))) == len(GRAPH_NAMES)
    image = torch.randn(1, 3, 256, 256, device="cuda")
    e_r = torch.randn(6, 64, device="cuda")  # more than max_num_seg: runs in two engine calls
    with torch.no_grad():
        embedding = model.encode_image(image)
        reference = model.decode_amodal(embedding, e_r)
    tolerance = 5e-2 if fp16 else 1e-3
    assert float((backend.encode_image(image) - embedding).abs().max()) < tolerance * 10
    logits, scores, rates = backend.decode_amodal(embedding, e_r)
    agree = ((logits > 0) == (reference[0] > 0)).float().mean()
    assert agree > 0.99 and float((rates - reference[2]).abs().max()) < tolerance
    TensorRTSamBackend(export_dir, fingerprint=fingerprint, options=options, cache_dir=tmp_path)  # cache hit
    assert len(list(tmp_path.glob("*.engine"))) == len(GRAPH_NAMES)
