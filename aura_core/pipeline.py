"""AuraPipeline: image + question -> AuraResult (answer, and per [SEG] its visible and amodal masks at input size).

Stages: the Vision Backbone embeds the image once (cached, so follow-up questions about the same frame cost only the
LLM and the decoders); the Multi-Modal LLM answers greedily with its KV cache; the Prompt Encoder turns the [SEG]
states into e_r; the two mask decoders run on all [SEG]s of the answer in one batch. The SAM-side stages go through a
small backend object (`SamBackend`), so ONNX Runtime / TensorRT engines can replace the torch modules.

Occlusion rate: E_OC's r_hat. A model trained without E_OC (Table 2 ablation) has no rate head; the pipeline then
reports 1 - |M_v| / |M_a| of the predicted masks, the same definition the ground truth uses.
"""
from __future__ import annotations

import hashlib
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import torch

from aura_core.data.transforms import postprocess_masks, preprocess_image
from aura_core.model.aura import AuraModel
from aura_core.model.build import build_aura_model
from aura_core.model.checkpoint import load_checkpoint
from aura_core.model.config import get_config
from aura_core.model.mllm import check_image
from aura_core.model.tokenizer import Round
from aura_core.result import AuraInstance, AuraResult

LOGGER = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "default_model"


class SamBackend(Protocol):
    """The SAM-side stages the pipeline calls; every tensor is batch-first and on the backend's device."""

    def encode(self, sam_image: torch.Tensor) -> torch.Tensor:
        """(1, 3, S, S) preprocessed image -> (1, C, h, w) image embedding."""

    def decode_visible(self, image_embedding: torch.Tensor, e_r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(1, C, h, w), (K, C) -> low-res visible logits (K, h', w'), scores (K,)."""

    def decode_amodal(
        self, image_embedding: torch.Tensor, e_r: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(1, C, h, w), (K, C) -> low-res amodal logits, scores (K,), occlusion rates (K,) or None without E_OC."""


class TorchSamBackend:
    """SamBackend running the AuraModel's own torch modules."""

    def __init__(self, model: AuraModel) -> None:
        self.model = model

    @torch.no_grad()
    def encode(self, sam_image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(sam_image)

    @torch.no_grad()
    def decode_visible(self, image_embedding: torch.Tensor, e_r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.model.decode_visible(image_embedding, e_r)

    @torch.no_grad()
    def decode_amodal(
        self, image_embedding: torch.Tensor, e_r: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        return self.model.decode_amodal(image_embedding, e_r)


# A backend factory: (model, checkpoint directory or None, device, export directory or None) -> SamBackend.
BackendFactory = Callable[[AuraModel, Optional[Path], str, Optional[Path]], SamBackend]


def _export_backend(name: str) -> BackendFactory:
    """Factory for an aura_core.export backend, imported on first use (onnxruntime/tensorrt stay optional)."""

    def factory(model: AuraModel, directory: Optional[Path], device: str, export_dir: Optional[Path]) -> SamBackend:
        from aura_core.export.backends import open_backend

        return open_backend(name, model, directory, device, export_dir=export_dir)

    return factory


def _torch_backend(model: AuraModel, directory: Optional[Path], device: str, export_dir: Optional[Path]) -> SamBackend:
    if export_dir is not None:
        raise ValueError(f"export_dir={export_dir} is for the onnxruntime/tensorrt backends, not torch")
    return TorchSamBackend(model)


BACKENDS: Dict[str, BackendFactory] = {
    "torch": _torch_backend,
    "onnxruntime": _export_backend("onnxruntime"),
    "tensorrt": _export_backend("tensorrt"),
}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make `AuraPipeline.from_pretrained(..., backend=name)` build its SAM stages with `factory`."""
    BACKENDS[name] = factory


def occlusion_rate_from_masks(visible: np.ndarray, amodal: np.ndarray) -> float:
    """1 - |M_v| / |M_a| of two bool masks, clipped to [0, 1]; 0 for an empty amodal mask."""
    area = int(amodal.sum())
    if area == 0:
        return 0.0
    return float(np.clip(1.0 - int(visible.sum()) / area, 0.0, 1.0))


class AuraPipeline:
    """Question answering with amodal masks over a loaded AuraModel; keeps the newest image's embedding."""

    def __init__(
        self,
        *,
        model: AuraModel,
        backend: Optional[SamBackend] = None,
        mask_threshold: float = 0.0,
        max_new_tokens: int = 64,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model = model.eval()
        self.backend = backend if backend is not None else TorchSamBackend(model)
        self.mask_threshold = float(mask_threshold)
        self.max_new_tokens = int(max_new_tokens)
        self._image_key: Optional[Tuple[Tuple[int, ...], str]] = None
        self._embedding: Optional[torch.Tensor] = None
        self._resize_hw: Tuple[int, int] = (0, 0)

    # --- construction ----------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        directory: Optional[Union[str, Path]] = None,
        *,
        device: str = "cpu",
        backend: Union[str, SamBackend] = "torch",
        export_dir: Optional[Union[str, Path]] = None,
        mask_threshold: float = 0.0,
        max_new_tokens: int = 64,
    ) -> "AuraPipeline":
        """Load a checkpoint directory (None: the embedded default model shipped in aura_core/assets).

        `export_dir`: for the onnxruntime/tensorrt backends, an export of this checkpoint made elsewhere
        (default: `<directory>/onnx`, else exported once into the cache).
        """
        if directory is None:
            directory = DEFAULT_MODEL_DIR
            if not (directory / "config.json").is_file():
                raise FileNotFoundError(
                    f"no embedded default model at {directory}; train one (docs/TRAINING.md) and pass its directory"
                )
        model = load_checkpoint(directory, device=device)
        return cls(
            model=model,
            backend=cls._make_backend(
                backend, model, Path(directory), device, Path(export_dir) if export_dir is not None else None
            ),
            mask_threshold=mask_threshold,
            max_new_tokens=max_new_tokens,
        )

    @classmethod
    def from_config(
        cls,
        name: str = "tiny",
        seed: int = 0,
        *,
        device: str = "cpu",
        mask_threshold: float = 0.0,
        max_new_tokens: int = 64,
    ) -> "AuraPipeline":
        """A random-init model of a registered config (tests, latency benchmarks)."""
        torch.manual_seed(seed)
        model = build_aura_model(get_config(name)).to(device)
        return cls(model=model, mask_threshold=mask_threshold, max_new_tokens=max_new_tokens)

    @staticmethod
    def _make_backend(
        backend: Union[str, SamBackend],
        model: AuraModel,
        directory: Optional[Path],
        device: str,
        export_dir: Optional[Path] = None,
    ) -> SamBackend:
        if not isinstance(backend, str):
            return backend
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}' (known: {', '.join(sorted(BACKENDS))})")
        return BACKENDS[backend](model, directory, device, export_dir)

    # --- image embedding cache -------------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray) -> bool:
        """Make `image` the current frame; computes its SAM embedding unless it is already cached. True if computed."""
        image = check_image(image)
        key = (image.shape, hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest())
        if key == self._image_key and self._embedding is not None:
            return False
        sam_image, self._resize_hw = preprocess_image(image, self.model.config.vision.image_size)
        self._embedding = self.backend.encode(sam_image[None].to(self.model.device))
        self._image_key = key
        return True

    # --- inference -------------------------------------------------------------------------------------------------
    def ask(self, image: np.ndarray, question: str, history: Optional[Sequence[Round]] = None) -> AuraResult:
        """Answer `question` about `image` (RGB uint8 HxWx3, any size); `history` lists earlier (question, answer)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        check_image(image)
        timings: Dict[str, float] = {}
        start = time.perf_counter()
        with _timed(timings, "mllm"):  # first, so a question too long for the context fails before any SAM work
            generation = self.model.mllm.generate(
                image, question, history=list(history) if history else None, max_new_tokens=self.max_new_tokens
            )
        with _timed(timings, "vision_backbone"):
            self.set_image(image)
        instances = self.segment(generation.seg_hidden, generation.phrases, timings)
        timings["total"] = time.perf_counter() - start
        return AuraResult(
            question=question,
            answer=generation.answer,
            instances=instances,
            image_size=(int(image.shape[0]), int(image.shape[1])),
            timings=timings,
        )

    @torch.no_grad()
    def segment(
        self, seg_hidden: torch.Tensor, phrases: Sequence[str], timings: Optional[Dict[str, float]] = None
    ) -> List[AuraInstance]:
        """Masks of the current image (see `set_image`) for K [SEG] hidden states (K, hidden), all in one batch."""
        if self._embedding is None or self._image_key is None:
            raise RuntimeError("segment() needs an image: call set_image(image) or ask(image, question) first")
        timings = timings if timings is not None else {}
        k = int(seg_hidden.shape[0])
        if k == 0:
            return []
        with _timed(timings, "prompt_encoder"):
            e_r = self.model.prompt_encoder(seg_hidden.to(self.model.device))
        with _timed(timings, "visible_mask_decoder"):
            visible_low, visible_scores = self.backend.decode_visible(self._embedding, e_r)
        with _timed(timings, "amodal_mask_decoder"):
            amodal_low, amodal_scores, rates = self.backend.decode_amodal(self._embedding, e_r)
        with _timed(timings, "postprocess"):
            original_hw = tuple(int(s) for s in self._image_key[0][:2])
            size = self.model.config.vision.image_size
            logits = postprocess_masks(torch.cat([visible_low, amodal_low]), self._resize_hw, original_hw, size)
            masks = (logits > self.mask_threshold).cpu().numpy()
            visible, amodal = masks[:k], masks[k:]
            instances = []
            for i in range(k):
                rate = float(rates[i]) if rates is not None else occlusion_rate_from_masks(visible[i], amodal[i])
                instances.append(
                    AuraInstance(
                        phrase=phrases[i] if i < len(phrases) else "",
                        visible_mask=visible[i],
                        amodal_mask=amodal[i],
                        occlusion_rate=rate,
                        visible_score=float(visible_scores[i]),
                        amodal_score=float(amodal_scores[i]),
                    )
                )
        return instances


@contextmanager
def _timed(timings: Dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - start
