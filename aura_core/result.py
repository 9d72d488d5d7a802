"""What the inference pipeline returns: one answer and, per [SEG], the object's two masks.

This is the only thing the ROS side consumes from the model, so it is plain numpy + Python (boxes come from
aura_core/masks.py, numpy + pycocotools).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from aura_core.masks import mask_box


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in source-image pixels: top-left corner and real width/height."""

    x: int
    y: int
    width: int
    height: int

    @staticmethod
    def from_mask(mask: np.ndarray) -> Optional["Box"]:
        """Tightest box around the True pixels of a HxW mask; None for an empty mask."""
        box = mask_box(mask)
        return None if box is None else Box(*box)


@dataclass
class AuraInstance:
    """One object the answer mentions (one [SEG] token)."""

    phrase: str  # the words of the answer that name the object, e.g. "the knife"
    visible_mask: np.ndarray  # bool HxW at the input image's size: the uncovered part
    amodal_mask: np.ndarray  # bool HxW: the whole object, hidden parts included
    occlusion_rate: float  # E_OC's predicted share of the amodal area that is hidden, in [0, 1]
    visible_score: float  # decoder's predicted IoU / confidence for the visible mask
    amodal_score: float  # same for the amodal mask
    visible_box: Optional[Box] = None  # None when the mask is empty
    amodal_box: Optional[Box] = None

    def __post_init__(self) -> None:
        if self.visible_box is None:
            self.visible_box = Box.from_mask(self.visible_mask)
        if self.amodal_box is None:
            self.amodal_box = Box.from_mask(self.amodal_mask)


@dataclass
class AuraResult:
    """The answer to one question about one image."""

    question: str
    answer: str  # generated text, [SEG] tokens included
    instances: List[AuraInstance]  # one per [SEG], in answer order
    image_size: Tuple[int, int]  # (height, width) of the input image
    timings: Dict[str, float] = field(default_factory=dict)  # seconds per stage, e.g. "vision_backbone"

    @property
    def answer_text(self) -> str:
        """The answer with [SEG] tokens removed, for people and for TTS."""
        return " ".join(self.answer.replace("[SEG]", " ").split())
