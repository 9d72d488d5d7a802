"""SamBackend on ONNX Runtime: encode_image / decode_visible / decode_amodal run the exported graphs.

The LLM and the Prompt Encoder stay in torch; tensors cross over as numpy arrays (host memory), which is what the CPU
provider needs anyway. On a CUDA build of onnxruntime, device "cuda[:N]" selects the CUDA provider.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import onnxruntime
import torch

from aura_core.export.graphs import AMODAL_BRANCH, GRAPH_NAMES, IMAGE_ENCODER, VISIBLE_BRANCH
from aura_core.export.manifest import CheckpointFingerprint, Manifest

LOGGER = logging.getLogger(__name__)


def providers_for(device: str) -> List[Union[str, Tuple[str, Dict[str, object]]]]:
    """ONNX Runtime execution providers for a torch-style device string; an unavailable one is a clear error."""
    device = str(device)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        available = onnxruntime.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                f"device '{device}' needs onnxruntime's CUDAExecutionProvider; this onnxruntime has {available} "
                "(install onnxruntime-gpu)"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ValueError(f"unsupported device '{device}' for the onnxruntime backend (use 'cpu' or 'cuda[:N]')")


class OnnxRuntimeSamBackend:
    """The SAM-side stages from an export directory (see training/export.py), checked against its checkpoint."""

    def __init__(
        self,
        export_dir: Union[str, Path],
        *,
        fingerprint: Optional[CheckpointFingerprint] = None,
        device: str = "cpu",
        threads: Optional[int] = None,
        output_device: Union[str, torch.device] = "cpu",
    ) -> None:
        """Arguments:
        export_dir: directory with manifest.json and the three .onnx files.
        fingerprint: the loaded checkpoint's fingerprint; a different one in the manifest raises ExportError.
        threads: intra-op threads (default: torch's thread count, so both backends get the same cores).
        output_device: where returned torch tensors live (the model's device).
        """
        self.export_dir = Path(export_dir)
        self.manifest = Manifest.read(self.export_dir)
        if fingerprint is not None:
            self.manifest.check_checkpoint(fingerprint, self.export_dir)
        self.manifest.check_files(self.export_dir, GRAPH_NAMES)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting after a run: the torch LLM runs next on the same cores and would be slowed down.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = providers_for(device)
        self.sessions = {
            name: onnxruntime.InferenceSession(
                str(self.export_dir / self.manifest.graphs[name].file), options, providers=providers
            )
            for name in GRAPH_NAMES
        }
        self.output_device = torch.device(output_device)
        self.has_occlusion_rates = self.manifest.use_occlusion_condition_encoder
        LOGGER.info("onnxruntime backend: %s on %s", self.export_dir, providers)

    def _run(self, name: str, **inputs: torch.Tensor) -> List[torch.Tensor]:
        feed = {key: np.ascontiguousarray(value.detach().to("cpu", torch.float32).numpy()) for key, value in inputs.items()}
        outputs = self.sessions[name].run(None, feed)
        return [torch.from_numpy(out).to(self.output_device) for out in outputs]

    def _empty(self, image_embedding: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h, w = image_embedding.shape[-2:]
        return (
            torch.zeros((0, 4 * h, 4 * w), device=self.output_device),
            torch.zeros((0,), device=self.output_device),
        )

    def encode_image(self, sam_image: torch.Tensor) -> torch.Tensor:
        return self._run(IMAGE_ENCODER, sam_image=sam_image)[0]

    def decode_visible(self, image_embedding: torch.Tensor, e_r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if e_r.shape[0] == 0:
            return self._empty(image_embedding)
        logits, scores = self._run(VISIBLE_BRANCH, image_embedding=image_embedding, e_r=e_r)
        return logits, scores

    def decode_amodal(
        self, image_embedding: torch.Tensor, e_r: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        if e_r.shape[0] == 0:
            logits, scores = self._empty(image_embedding)
            return logits, scores, (scores.clone() if self.has_occlusion_rates else None)
        outputs = self._run(AMODAL_BRANCH, image_embedding=image_embedding, e_r=e_r)
        if self.has_occlusion_rates:
            return outputs[0], outputs[1], outputs[2]
        return outputs[0], outputs[1], None

