"""ONNX export + onnxruntime backend: parity with torch, manifest, bad input, pipeline hook, CLI."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from aura_core.backends import open_backend
from aura_core.export import AMODAL_BRANCH, GRAPH_NAMES, IMAGE_ENCODER, VISIBLE_BRANCH
from aura_core.export.graphs import build_graph, graph_specs
from aura_core.export.locate import CACHE_ENV
from aura_core.export.manifest import MANIFEST_FILE, CheckpointFingerprint, ExportError, Manifest
from aura_core.export.onnx_export import export_graph
from aura_core.export.onnxruntime_backend import OnnxRuntimeSamBackend
from aura_core.masks import iou
from aura_core.model.checkpoint import CheckpointError
from aura_core.pipeline import AuraPipeline
from tests.export_fixtures import load, make_checkpoint
from training import export as export_cli

torch.set_num_threads(2)


def sam_image(seed: int) -> torch.Tensor:
    return torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(seed))


def assert_same_masks(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    assert float((ours - reference).abs().max()) < 1e-3
    for a, b in zip(ours > 0, reference > 0):
        assert iou(a.numpy(), b.numpy()) >= 0.99


@pytest.mark.parametrize("num_seg", [1, 4])
def test_onnxruntime_matches_torch(exported, num_seg):
    checkpoint, export_dir, _ = exported
    model = load(checkpoint)
    backend = OnnxRuntimeSamBackend(export_dir, fingerprint=CheckpointFingerprint.of(checkpoint))
    image = sam_image(num_seg)
    e_r = torch.randn(num_seg, model.config.mask_decoder.prompt_embed_dim)
    with torch.no_grad():
        embedding = model.encode_image(image)
        torch_visible = model.decode_visible(embedding, e_r)
        torch_amodal = model.decode_amodal(embedding, e_r)
    ort_embedding = backend.encode_image(image)
    assert float((ort_embedding - embedding).abs().max()) < 1e-3
    visible = backend.decode_visible(embedding, e_r)
    amodal = backend.decode_amodal(embedding, e_r)
    assert_same_masks(visible[0], torch_visible[0])
    assert_same_masks(amodal[0], torch_amodal[0])
    torch.testing.assert_close(visible[1], torch_visible[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(amodal[1], torch_amodal[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(amodal[2], torch_amodal[2], atol=1e-5, rtol=1e-5)  # occlusion rates
    empty = backend.decode_visible(embedding, e_r[:0])
    assert empty[0].shape == (0, 64, 64) and empty[1].shape == (0,)


def test_manifest_describes_graphs(exported):
    checkpoint, export_dir, manifest = exported
    read = Manifest.read(export_dir)
    assert set(read.graphs) == set(GRAPH_NAMES)
    assert read.checkpoint.sha256 == CheckpointFingerprint.of(checkpoint).sha256
    assert {"config.json", "model.safetensors"} <= set(read.checkpoint.files)
    assert read.opset == 17 and read.exporter == "torchscript"
    encoder = read.graphs[IMAGE_ENCODER]
    assert encoder.inputs == [{"name": "sam_image", "shape": [1, 3, 256, 256], "dtype": "float32"}]
    assert [o["name"] for o in read.graphs[AMODAL_BRANCH].outputs] == ["amodal_logits", "amodal_scores", "occlusion_rates"]
    assert read.graphs[VISIBLE_BRANCH].inputs[1]["shape"] == ["num_seg", 64]
    graph = onnx.load(str(export_dir / read.graphs[VISIBLE_BRANCH].file), load_external_data=False)
    assert graph.opset_import[0].version == 17
    assert [i.name for i in graph.graph.input] == ["image_embedding", "e_r"]
    assert graph.graph.input[1].type.tensor_type.shape.dim[0].dim_param == "num_seg"
    assert encoder.external_data is None  # tiny graphs stay in one file


def test_export_from_other_checkpoint_is_rejected(exported, tmp_path):
    _, export_dir, _ = exported
    other = make_checkpoint(tmp_path / "other", seed=7)
    with pytest.raises(ExportError, match=r"another checkpoint.*model\.safetensors"):
        OnnxRuntimeSamBackend(export_dir, fingerprint=CheckpointFingerprint.of(other))


def test_changed_onnx_file_is_rejected(exported, tmp_path):
    _, export_dir, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    with (copy / "visible_branch.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ExportError, match="visible_branch.onnx: contents changed"):
        OnnxRuntimeSamBackend(copy)
    (copy / "amodal_branch.onnx").unlink()
    with pytest.raises(ExportError, match="amodal_branch.onnx is missing"):
        Manifest.read(copy).check_files(copy, [AMODAL_BRANCH])
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(ExportError, match="manifest.json is missing"):
        OnnxRuntimeSamBackend(copy)


def test_checkpoint_missing_files(exported, tmp_path):
    checkpoint, _, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken, ignore=shutil.ignore_patterns("onnx", "tokenizer"))
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"lacks model\.safetensors, tokenizer/"):
        CheckpointFingerprint.of(broken)
    assert export_cli.main(["--checkpoint", str(broken), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert not (tmp_path / "out" / MANIFEST_FILE).exists()


def test_pipeline_onnxruntime_backend_gives_torch_masks(exported):
    checkpoint, _, _ = exported
    torch_pipe = AuraPipeline.from_pretrained(checkpoint, max_new_tokens=4)
    ort_pipe = AuraPipeline.from_pretrained(checkpoint, backend="onnxruntime", max_new_tokens=4)
    assert isinstance(ort_pipe.backend, OnnxRuntimeSamBackend)
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    seg_hidden = torch.randn(3, torch_pipe.model.mllm.hidden_size, generator=torch.Generator().manual_seed(3))
    results = []
    for pipe in (torch_pipe, ort_pipe):
        pipe.set_image(image)
        results.append(pipe.segment(seg_hidden, ["a", "b", "c"]))
    for ours, reference in zip(results[1], results[0]):
        assert iou(ours.visible_mask, reference.visible_mask) >= 0.99
        assert iou(ours.amodal_mask, reference.amodal_mask) >= 0.99
        assert abs(ours.occlusion_rate - reference.occlusion_rate) < 1e-4
    answer = ort_pipe.ask(image, "what can I cut with?")
    assert answer.answer == torch_pipe.ask(image, "what can I cut with?").answer
    assert answer.image_size == (96, 128) and "vision_backbone" in answer.timings


@pytest.mark.slow
def test_without_occlusion_condition_encoder_exports_into_cache(tmp_path, monkeypatch):
    """No <ckpt>/onnx: the backend exports once into the cache keyed by the checkpoint; E_OC ablated -> no rates."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    checkpoint = make_checkpoint(tmp_path / "ckpt", overrides={"use_occlusion_condition_encoder": False})
    model = load(checkpoint)
    backend = open_backend("onnxruntime", model, checkpoint)
    assert backend.export_dir.parent == tmp_path / "cache"
    manifest = Manifest.read(backend.export_dir)
    assert [o["name"] for o in manifest.graphs[AMODAL_BRANCH].outputs] == ["amodal_logits", "amodal_scores"]
    stamp = (backend.export_dir / MANIFEST_FILE).stat().st_mtime_ns
    assert open_backend("onnxruntime", model, checkpoint).export_dir == backend.export_dir
    assert (backend.export_dir / MANIFEST_FILE).stat().st_mtime_ns == stamp  # reused, not exported again
    embedding = backend.encode_image(sam_image(1))
    e_r = torch.randn(2, model.config.mask_decoder.prompt_embed_dim)
    logits, scores, rates = backend.decode_amodal(embedding, e_r)
    assert rates is None
    with torch.no_grad():
        assert_same_masks(logits, model.decode_amodal(embedding, e_r)[0])


@pytest.mark.parametrize("exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_external_data_and_exporters(exported, tmp_path, exporter):
    """A graph over the threshold goes to <graph>.onnx.data (ViT-H's case), with both torch.onnx exporters."""
    checkpoint, _, _ = exported
    model = load(checkpoint)
    inputs, outputs = graph_specs(model)[VISIBLE_BRANCH]
    path = tmp_path / "visible_branch.onnx"
    data = export_graph(build_graph(VISIBLE_BRANCH, model), inputs, outputs, path, exporter=exporter, external_data_threshold=0)
    assert data == "visible_branch.onnx.data" and (tmp_path / data).stat().st_size > 100_000
    proto = onnx.load(str(path), load_external_data=False)
    big = [t for t in proto.graph.initializer if t.ByteSize() > 4096 or t.data_location == onnx.TensorProto.EXTERNAL]
    assert big and all(t.data_location == onnx.TensorProto.EXTERNAL for t in big)  # weights are outside the proto
    assert sorted(p.name for p in tmp_path.iterdir()) == ["visible_branch.onnx", "visible_branch.onnx.data"]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    embedding = torch.randn(1, 64, 16, 16)
    e_r = torch.randn(3, 64)
    logits, scores = session.run(None, {"image_embedding": embedding.numpy(), "e_r": e_r.numpy()})
    with torch.no_grad():
        reference = model.decode_visible(embedding, e_r)
    assert_same_masks(torch.from_numpy(logits), reference[0])


def test_cli_writes_export(exported, tmp_path, capsys):
    checkpoint, _, _ = exported
    out = tmp_path / "cli"
    assert export_cli.main(["--checkpoint", str(checkpoint), "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert sorted(manifest["graphs"]) == sorted(GRAPH_NAMES)
    assert "manifest:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        export_cli.parse_args(["--checkpoint", "x", "--out", "y", "--fp16"])  # fp16 is a TensorRT option


def test_export_dir_elsewhere_serves_the_pipeline_and_the_node_parameters(exported, tmp_path):
    """An export kept outside the checkpoint (the node's engine_dir) is used as given; torch refuses one."""
    import shutil

    from aura_ros.loading import load_pipeline
    from aura_ros.params import AuraParameters

    checkpoint, export_dir, _ = exported
    elsewhere = tmp_path / "engines"
    shutil.copytree(export_dir, elsewhere)
    pipe = load_pipeline(AuraParameters(checkpoint=str(checkpoint), backend="onnxruntime", engine_dir=str(elsewhere)))
    assert isinstance(pipe.backend, OnnxRuntimeSamBackend) and pipe.backend.export_dir == elsewhere
    with pytest.raises(ValueError, match="export_dir"):
        AuraPipeline.from_pretrained(checkpoint, export_dir=elsewhere)
