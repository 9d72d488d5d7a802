"""AuraPipeline: image + question -> AuraResult (answer, and per [SEG] its visible and amodal masks at input size).

Stages: the Vision Backbone embeds the image once (cached, so follow-up questions about the same frame cost only the
LLM and the decoders); the Multi-Modal LLM answers greedily with its KV cache; the Prompt Encoder turns the [SEG]
states into e_r; the two mask decoders run on all [SEG]s of the answer in one batch (`AuraModel.decode_prompts`, the
sequence training runs too). The SAM-side stages go through a backend (`SamBackend`, opened by name from the registry
in aura_core/backends.py), so ONNX Runtime / TensorRT engines can replace the torch modules.

Published masks: a visible pixel is part of the object, so each instance's amodal mask is the amodal decoder's mask
united with the visible one (the two decoders may disagree); boxes and rates are computed from the published masks.

Occlusion rate: E_OC's r_hat. A model trained without E_OC (Table 2 ablation) has no rate head; the pipeline then
reports `aura_core.masks.occlusion_rate` of the published masks, 1 - |M_v ∩ M_a| / |M_a|, the definition the ground
truth uses (with M_v inside M_a it is 1 - |M_v| / |M_a|).
"""
from __future__ import annotations

import hashlib
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from aura_core.backends import backend_spec, open_backend
from aura_core.data.transforms import postprocess_masks, preprocess_image
from aura_core.masks import occlusion_rate
from aura_core.model.aura import AuraModel, PromptDecoding, SamBackend
from aura_core.model.build import build_aura_model
from aura_core.model.checkpoint import load_checkpoint
from aura_core.model.config import get_config
from aura_core.model.mllm import check_image
from aura_core.model.tokenizer import Round
from aura_core.result import AuraInstance, AuraResult

LOGGER = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "default_model"


def make_instances(
    visible: np.ndarray, amodal: np.ndarray, decoding: PromptDecoding, phrases: Sequence[str]
) -> List[AuraInstance]:
    """The published instances from thresholded (K, H, W) bool masks at the image size and the decoders' scores/rates.

    The amodal mask is made to contain the visible one (amodal |= visible) before boxes and rates are computed, so an
    instance never shows a visible pixel outside its whole object. The rate is E_OC's r_hat, else the masks' rate.
    """
    amodal = amodal | visible
    rates = decoding.occlusion_rates
    instances = []
    for i in range(len(visible)):
        instances.append(
            AuraInstance(
                phrase=phrases[i] if i < len(phrases) else "",
                visible_mask=visible[i],
                amodal_mask=amodal[i],
                occlusion_rate=float(rates[i]) if rates is not None else occlusion_rate(visible[i], amodal[i]),
                visible_score=float(decoding.visible_scores[i]),
                amodal_score=float(decoding.amodal_scores[i]),
            )
        )
    return instances


class AuraPipeline:
    """Question answering with amodal masks over a loaded AuraModel; keeps the newest image's embedding."""

    def __init__(
        self,
        *,
        model: AuraModel,
        backend: Optional[SamBackend] = None,
        mask_threshold: float = 0.0,
        max_new_tokens: Optional[int] = None,
    ) -> None:
        if max_new_tokens is None:  # the model config's default: 512 for the paper configs (as LISA), 64 for tiny
            max_new_tokens = model.config.mllm.max_new_tokens
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model = model.eval()
        self.backend: SamBackend = backend if backend is not None else model
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
        max_new_tokens: Optional[int] = None,
    ) -> "AuraPipeline":
        """Load a checkpoint directory (None: the embedded default model shipped in aura_core/assets).

        `backend`: a name registered in aura_core/backends.py, or a SamBackend. `export_dir`: for the exported
        backends, an export of this checkpoint made elsewhere (default: `<directory>/onnx`, else exported once into
        the cache).
        """
        if isinstance(backend, str):
            backend_spec(backend)  # an unknown name fails before the model is loaded
        if directory is None:
            directory = DEFAULT_MODEL_DIR
            if not (directory / "config.json").is_file():
                raise FileNotFoundError(
                    f"no embedded default model at {directory}; train one (docs/TRAINING.md) and pass its directory"
                )
        model = load_checkpoint(directory, device=device)
        if isinstance(backend, str):
            backend = open_backend(backend, model, directory, device, export_dir=export_dir)
        return cls(
            model=model,
            backend=backend,
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
        max_new_tokens: Optional[int] = None,
    ) -> "AuraPipeline":
        """A random-init model of a registered config (tests, latency benchmarks): random weights on purpose."""
        torch.manual_seed(seed)
        model = build_aura_model(get_config(name, {"allow_random_init": True})).to(device)
        return cls(model=model, mask_threshold=mask_threshold, max_new_tokens=max_new_tokens)

    # --- image embedding cache -------------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray) -> bool:
        """Make `image` the current frame; computes its SAM embedding unless it is already cached. True if computed."""
        image = check_image(image)
        key = (image.shape, hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest())
        if key == self._image_key and self._embedding is not None:
            return False
        sam_image, self._resize_hw = preprocess_image(image, self.model.config.vision.image_size)
        self._embedding = self.backend.encode_image(sam_image[None].to(self.model.device))
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
        decoding = self.model.decode_prompts(
            self._embedding, seg_hidden, sam=self.backend, stage=lambda name: _timed(timings, name)
        )
        with _timed(timings, "postprocess"):
            original_hw = tuple(int(s) for s in self._image_key[0][:2])
            size = self.model.config.vision.image_size
            low = torch.cat([decoding.visible_logits, decoding.amodal_logits])
            masks = (postprocess_masks(low, self._resize_hw, original_hw, size) > self.mask_threshold).cpu().numpy()
            return make_instances(masks[:k], masks[k:], decoding, phrases)


@contextmanager
def _timed(timings: Dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - start
