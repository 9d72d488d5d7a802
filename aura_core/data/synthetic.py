"""Synthetic AmodalReasonSeg: everyday objects drawn back to front on a textured table, with QA pairs.

Each object's amodal mask is its whole shape; its visible mask is what later (nearer) objects leave
uncovered. Questions follow the paper's style: they never name their targets (they ask about a use,
or about the relation to an occluder), and answers name each target followed by [SEG], with a
sentence about occlusion when there is one. Everything is drawn with numpy, deterministic per seed.

Rendering styles (`STYLES`): "table" (the default: a muted textured table, even light) and alternatives with another
background and lighting ("studio": a saturated gradient backdrop with a weave, brighter, lower contrast, warm cast,
light falling off across the scene; "dusk": a dark marbled backdrop, higher contrast, cool cast, one spotlight and a
vignette). A style only changes pixels: for the same generator state the objects, masks, rates and QA pairs are the
ones of the default style, whose bytes do not depend on the styles that exist (its random draws are unchanged; an
alternative style draws its own parameters after the QA pairs).

CLI: aura-synth --out DIR --train N --val M --seed S [--size 256] [--style table|studio|dusk]
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from aura_core.data.format import SplitWriter
from aura_core.masks import occlusion_rate
from aura_core.model.tokens import SEG_TOKEN

LOG = logging.getLogger(__name__)

RGB = Tuple[int, int, int]


# ----------------------------------------------------------------------------- categories


@dataclass(frozen=True)
class Category:
    """One object kind: how it looks (shape, palette) and what it is for (use tags)."""

    id: int
    name: str
    colour: str  # word for the main colour, used when a question refers to the object as an occluder
    palette: Tuple[RGB, ...]  # part 0 = main colour, further parts = details (handle, screen, ...)
    shape: str  # key into SHAPES
    scale: Tuple[float, float]  # half extent as a fraction of the image size (min, max)
    uses: Tuple[str, ...]  # keys into USES


# What a purpose question asks for; several categories may share a use (-> multi-object answers).
USES: Dict[str, str] = {
    "cut": "cut something",
    "eat": "eat a snack",
    "drink": "have a drink",
    "read": "read a story",
    "play": "play a game",
    "call": "call a friend",
    "serve": "serve some food",
    "write": "write a note",
    "time": "know the time",
    "paper": "cut some paper",
    "carry_water": "carry some water",
    "kitchen": "set the table",
}

# What each question template asks (the `kind` of its QA entries), so a report can say which kind of question fails.
QA_KINDS: Dict[str, str] = {
    "use": "the things that serve a purpose",
    "serve": "the fruit and the plate to serve it on",
    "behind": "the things a named object partly hides",
    "in_front": "the things that cover part of a named object",
    "most_hidden": "the object hidden the most",
    "on_top": "the things that cover something and nothing covers",
}

CATEGORIES: Tuple[Category, ...] = (
    Category(1, "knife", "silver", ((185, 188, 196), (110, 70, 40)), "knife", (0.13, 0.17), ("cut", "kitchen")),
    Category(2, "cup", "brown", ((140, 85, 45), (95, 55, 30)), "cup", (0.09, 0.12), ("drink", "kitchen")),
    Category(3, "scissors", "teal", ((20, 140, 140), (200, 200, 205)), "scissors", (0.11, 0.14), ("cut", "paper")),
    Category(4, "apple", "red", ((200, 30, 30), (60, 120, 30)), "apple", (0.08, 0.11), ("eat",)),
    Category(5, "book", "blue", ((40, 70, 180), (235, 230, 210)), "book", (0.12, 0.16), ("read",)),
    Category(6, "ball", "purple", ((140, 60, 170), (240, 240, 240)), "ball", (0.08, 0.11), ("play",)),
    Category(7, "bottle", "green", ((40, 150, 60), (30, 30, 30)), "bottle", (0.11, 0.14), ("drink", "carry_water")),
    Category(8, "banana", "yellow", ((240, 210, 50), (120, 90, 30)), "banana", (0.11, 0.14), ("eat",)),
    Category(9, "phone", "black", ((30, 30, 35), (70, 110, 150)), "phone", (0.09, 0.12), ("call", "time")),
    Category(10, "plate", "white", ((236, 236, 232), (205, 205, 200)), "plate", (0.15, 0.19), ("serve", "kitchen")),
    Category(11, "pencil", "orange", ((245, 140, 30), (225, 190, 140), (240, 150, 170)), "pencil", (0.12, 0.15), ("write",)),
    Category(12, "clock", "pink", ((230, 120, 170), (250, 250, 245), (20, 20, 20)), "clock", (0.09, 0.12), ("time",)),
)
CATEGORY_BY_NAME: Dict[str, Category] = {c.name: c for c in CATEGORIES}


# ----------------------------------------------------------------------------- shapes
# Each shape maps local coordinates (u along the object's long axis, v across, both in units of the
# object's half extent, all parts inside the unit disc of radius ~1.05) to a part map: -1 outside,
# else the palette index of the part.


def _disc(u: np.ndarray, v: np.ndarray, cu: float, cv: float, r: float) -> np.ndarray:
    return (u - cu) ** 2 + (v - cv) ** 2 <= r * r


def _shape_knife(u, v):
    blade = (u >= 0) & (u <= 1.0) & (v >= -0.16) & (v <= 0.16 * (1.0 - u * u) - 0.02 * u)
    handle = (u < 0) & (u >= -1.0) & (np.abs(v) <= 0.13)
    return np.where(blade, 0, np.where(handle, 1, -1))


def _shape_cup(u, v):
    body = (np.abs(u) <= 0.55) & (v >= -0.75) & (v <= 0.8)
    ring = _disc(u, v, 0.62, 0.0, 0.36) & ~_disc(u, v, 0.62, 0.0, 0.2) & (u > 0.5)
    rim = body & (v <= -0.62)
    return np.where(rim, 1, np.where(body | ring, 0, -1))


def _shape_scissors(u, v):
    parts = np.full(u.shape, -1)
    for sign in (1.0, -1.0):
        ang = sign * 0.3
        bu = u * np.cos(ang) + v * np.sin(ang)
        bv = -u * np.sin(ang) + v * np.cos(ang)
        blade = (bu >= -0.15) & (bu <= 1.0) & (np.abs(bv) <= 0.1 * (1.05 - bu))
        ring = _disc(u, v, -0.55, sign * 0.32, 0.3) & ~_disc(u, v, -0.55, sign * 0.32, 0.16)
        parts = np.where(blade, 1, np.where(ring, 0, parts))
    return parts


def _shape_apple(u, v):
    body = _disc(u, v, -0.22, 0.12, 0.68) | _disc(u, v, 0.22, 0.12, 0.68)
    stem = (np.abs(u) <= 0.06) & (v >= -0.95) & (v <= -0.45)
    leaf = ((u - 0.22) / 0.22) ** 2 + ((v + 0.78) / 0.1) ** 2 <= 1
    return np.where(body, 0, np.where(stem | leaf, 1, -1))


def _shape_book(u, v):
    cover = (np.abs(u) <= 0.72) & (np.abs(v) <= 1.0)
    pages = cover & (u >= 0.6) & (np.abs(v) <= 0.94)
    return np.where(pages, 1, np.where(cover, 0, -1))


def _shape_ball(u, v):
    ball = _disc(u, v, 0, 0, 1.0)
    band = ball & (np.abs(v + 0.25 * u * u - 0.1) <= 0.12)
    return np.where(band, 1, np.where(ball, 0, -1))


def _shape_bottle(u, v):
    body = (np.abs(u) <= 0.42) & (v >= -0.25) & (v <= 1.0)
    shoulder = ((u / 0.42) ** 2 + ((v + 0.25) / 0.3) ** 2 <= 1) & (v < -0.25)
    neck = (np.abs(u) <= 0.16) & (v >= -0.85) & (v < -0.25)
    cap = (np.abs(u) <= 0.19) & (v >= -1.0) & (v < -0.85)
    return np.where(cap, 1, np.where(body | shoulder | neck, 0, -1))


def _shape_banana(u, v):
    outer = _disc(u, v, 0.0, -0.6, 1.5)
    inner = _disc(u, v, 0.0, -0.95, 1.55)
    fruit = outer & ~inner & (np.abs(u) <= 0.95)
    tips = fruit & (np.abs(u) >= 0.85)
    return np.where(tips, 1, np.where(fruit, 0, -1))


def _shape_phone(u, v):
    au, av = np.abs(u), np.abs(v)
    corner = (au > 0.35) & (av > 0.8) & ((au - 0.35) ** 2 + (av - 0.8) ** 2 > 0.15**2)
    body = (au <= 0.5) & (av <= 0.95) & ~corner
    screen = (au <= 0.42) & (av <= 0.78)
    return np.where(screen, 1, np.where(body, 0, -1))


def _shape_plate(u, v):
    plate = _disc(u, v, 0, 0, 1.0)
    well = _disc(u, v, 0, 0, 0.62)
    return np.where(well, 1, np.where(plate, 0, -1))


def _shape_pencil(u, v):
    body = (u >= -0.85) & (u <= 0.7) & (np.abs(v) <= 0.1)
    tip = (u > 0.7) & (u <= 1.0) & (np.abs(v) <= 0.1 * (1.0 - u) / 0.3)
    eraser = (u >= -1.0) & (u < -0.85) & (np.abs(v) <= 0.1)
    return np.where(eraser, 2, np.where(tip, 1, np.where(body, 0, -1)))


def _shape_clock(u, v):
    rim = _disc(u, v, 0, 0, 1.0)
    face = _disc(u, v, 0, 0, 0.82)
    hands = face & (((np.abs(u) <= 0.05) & (v <= 0.05) & (v >= -0.65)) | ((np.abs(v) <= 0.05) & (u >= -0.05) & (u <= 0.45)))
    return np.where(hands, 2, np.where(face, 1, np.where(rim, 0, -1)))


SHAPES: Dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "knife": _shape_knife,
    "cup": _shape_cup,
    "scissors": _shape_scissors,
    "apple": _shape_apple,
    "book": _shape_book,
    "ball": _shape_ball,
    "bottle": _shape_bottle,
    "banana": _shape_banana,
    "phone": _shape_phone,
    "plate": _shape_plate,
    "pencil": _shape_pencil,
    "clock": _shape_clock,
}


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the generator; sizes are fractions of the image side so any --size works."""

    min_objects: int = 2
    max_objects: int = 7
    min_visible_share: float = 0.2  # reject placements that hide more than 80% of any object
    min_visible_pixels_share: float = 0.0015  # of the image area
    overlap_probability: float = 0.9  # chance a new object is placed next to an earlier one
    placement_tries: int = 12
    min_qa: int = 3
    max_qa: int = 6
    max_targets: int = 3


# ----------------------------------------------------------------------------- scene


@dataclass
class SyntheticObject:
    name: str
    category_id: int
    visible: np.ndarray  # bool HxW
    amodal: np.ndarray  # bool HxW
    occlusion_rate: float  # aura_core.masks.occlusion_rate(visible, amodal); visible is inside amodal here
    depth: int  # 0 = farthest (drawn first)


@dataclass
class SyntheticQA:
    question: str
    answer: str  # one [SEG] after each target's name
    targets: List[int]  # indices into SyntheticScene.objects, in [SEG] order
    phrases: List[str]  # the words naming each target, e.g. "the knife"
    kind: str = ""  # the template's kind, one of QA_KINDS


@dataclass
class SyntheticScene:
    image: np.ndarray  # uint8 HxWx3
    objects: List[SyntheticObject]
    qa: List[SyntheticQA] = field(default_factory=list)


@dataclass
class _Placed:
    category: Category
    parts: np.ndarray  # int8 HxW part map (-1 outside)
    amodal: np.ndarray
    centre: Tuple[float, float]
    scale: float


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A table-like texture: two muted tones mixed by low-frequency noise, a faint pattern, grain."""
    base = rng.uniform(70, 170, size=3)
    other = np.clip(base + rng.uniform(-45, 45, size=3), 40, 200)
    coarse = rng.random((6, 6)).astype(np.float32)
    mix = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32) / 255.0
    img = base[None, None, :] * (1 - mix[..., None]) + other[None, None, :] * mix[..., None]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(8, 24)
    pattern = int(rng.integers(0, 3))
    if pattern == 0:  # wood-like stripes
        wave = np.sin((yy + 6 * np.sin(xx / rng.uniform(20, 50))) * 2 * np.pi / period)
    elif pattern == 1:  # tiles
        wave = np.sign(np.sin(xx * 2 * np.pi / (2 * period)) * np.sin(yy * 2 * np.pi / (2 * period)))
    else:  # plain cloth
        wave = np.zeros_like(xx)
    img = img + wave[..., None] * rng.uniform(5, 14)
    img = img + rng.normal(0, 4, size=(size, size, 1))
    return img


# ----------------------------------------------------------------------------- rendering styles

DEFAULT_STYLE = "table"
STYLES: Tuple[str, ...] = (DEFAULT_STYLE, "studio", "dusk")


def check_style(style: str) -> None:
    """ValueError naming the known styles unless `style` is one of STYLES."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in [0, 1]) -> float RGB in [0, 255]."""
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return 255.0 * (v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random cells x cells grid resized bilinearly."""
    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), np.float32) / 255.0


def _style_background(rng: np.random.Generator, size: int, style: str) -> np.ndarray:
    """The backdrop of an alternative style (float HxWx3): smooth gradients or marble instead of the default's muted
    table textures (tones within 40-215), brighter and more saturated ("studio") or far darker ("dusk")."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if style == "studio":  # a saturated two-colour gradient at a random angle, a fine diagonal weave, little grain
        hue = rng.random()
        c0 = _hsv_to_rgb(hue, rng.uniform(0.45, 0.75), rng.uniform(0.7, 0.95))
        c1 = _hsv_to_rgb((hue + rng.uniform(0.08, 0.2)) % 1.0, rng.uniform(0.3, 0.6), rng.uniform(0.45, 0.7))
        ang = rng.uniform(0, 2 * np.pi)
        t = np.clip((xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang) + 0.5, 0.0, 1.0)
        img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
        period = rng.uniform(4, 8) / size
        weave = np.sin((xx + yy) * 2 * np.pi / period) * np.sin((xx - yy) * 2 * np.pi / period)
        img = img + weave[..., None] * rng.uniform(4, 9)
        return img + rng.normal(0, 2, size=(size, size, 1))
    if style == "dusk":  # a dark marble: two deep tones mixed by finer noise, thin bright veins
        hue = rng.random()
        c0 = _hsv_to_rgb(hue, rng.uniform(0.2, 0.5), rng.uniform(0.12, 0.25))
        c1 = _hsv_to_rgb((hue + 0.5) % 1.0, rng.uniform(0.1, 0.35), rng.uniform(0.25, 0.4))
        mix = _smooth_noise(rng, size, 14)
        img = c0[None, None, :] * (1 - mix[..., None]) + c1[None, None, :] * mix[..., None]
        veins = np.exp(-(((_smooth_noise(rng, size, 5) - 0.5) / 0.025) ** 2))
        img = img + veins[..., None] * rng.uniform(25, 45)
        return img + rng.normal(0, 5, size=(size, size, 1))
    raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")


def _style_lighting(rng: np.random.Generator, image: np.ndarray, style: str) -> np.ndarray:
    """Light the whole composed scene (float HxWx3, objects included): brightness, contrast, colour cast, shading."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]].astype(np.float32) / size
    if style == "studio":  # bright and flat, warm, light falling off along one direction
        contrast, brightness = rng.uniform(0.7, 0.85), rng.uniform(20, 40)
        cast = np.array([rng.uniform(1.04, 1.1), 1.0, rng.uniform(0.82, 0.9)])
        ang = rng.uniform(0, 2 * np.pi)
        ramp = (xx - 0.5) * np.cos(ang) + (yy - 0.5) * np.sin(ang)
        shade = 1.0 + rng.uniform(0.25, 0.4) * ramp
    elif style == "dusk":  # dark and contrasty, cool, one spotlight and a vignette
        contrast, brightness = rng.uniform(1.1, 1.3), rng.uniform(-35, -20)
        cast = np.array([rng.uniform(0.8, 0.9), rng.uniform(0.92, 1.0), rng.uniform(1.08, 1.18)])
        cy, cx = rng.uniform(0.25, 0.75, size=2)
        spot = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * rng.uniform(0.22, 0.35) ** 2))
        vignette = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 2.0
        shade = np.clip(0.5 + 0.7 * spot - 0.3 * vignette, 0.3, 1.3)
    else:
        raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
    lit = (image - 128.0) * contrast + 128.0 + brightness
    return lit * cast[None, None, :] * shade[..., None]


def _render_style(rng: np.random.Generator, placed: Sequence[_Placed], jitters: Sequence[np.ndarray], size: int, style: str) -> np.ndarray:
    """The scene's objects (same parts, palettes and colour jitter) on a style's backdrop, under its light."""
    image = _paint_objects(_style_background(rng, size, style), placed, jitters)
    return _with_sensor_noise(rng, _style_lighting(rng, image, style))


def _paint_objects(image: np.ndarray, placed: Sequence[_Placed], jitters: Sequence[np.ndarray]) -> np.ndarray:
    """The objects painted back to front over a float backdrop: each part in its palette colour plus the object's jitter."""
    for p, jitter in zip(placed, jitters):
        colours = np.array(p.category.palette, dtype=np.float32)[np.clip(p.parts, 0, None)] + jitter
        image = np.where(p.amodal[..., None], colours, image)
    return image


def _with_sensor_noise(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Gaussian pixel noise (std 3), rounded and clipped to uint8."""
    image = image + rng.normal(0, 3, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _place(rng: np.random.Generator, cat: Category, size: int, grid: Tuple[np.ndarray, np.ndarray], anchor: Optional[_Placed]) -> _Placed:
    scale = float(rng.uniform(*cat.scale)) * size
    if anchor is None:
        centre = rng.uniform(0.18 * size, 0.82 * size, size=2)
    else:
        dist = rng.uniform(0.2, 0.9) * (anchor.scale + scale) * 0.8
        ang = rng.uniform(0, 2 * np.pi)
        centre = np.clip(np.array(anchor.centre) + dist * np.array([np.cos(ang), np.sin(ang)]), 0.12 * size, 0.88 * size)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = grid
    r = int(np.ceil(1.1 * scale)) + 1
    cx, cy = float(centre[0]), float(centre[1])
    x0, x1 = max(0, int(cx) - r), min(size, int(cx) + r + 1)
    y0, y1 = max(0, int(cy) - r), min(size, int(cy) + r + 1)
    dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / scale
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / scale
    parts = np.full((size, size), -1, dtype=np.int8)
    parts[y0:y1, x0:x1] = SHAPES[cat.shape](u, v)
    return _Placed(category=cat, parts=parts, amodal=parts >= 0, centre=(cx, cy), scale=scale)


def _visible_masks(placed: Sequence[_Placed]) -> List[np.ndarray]:
    """Back to front: each object is visible where no later (nearer) object covers it."""
    covered = np.zeros_like(placed[0].amodal)
    out: List[np.ndarray] = []
    for p in reversed(placed):
        out.append(p.amodal & ~covered)
        covered = covered | p.amodal
    return out[::-1]


def generate_scene(rng: np.random.Generator, size: int = 256, config: SceneConfig = SceneConfig(), style: str = DEFAULT_STYLE) -> SyntheticScene:
    """One scene in memory: image, objects (back to front) with masks and rates, and its QA pairs.

    `style` (one of STYLES) only changes the image: from the same generator state every style gives the same objects,
    masks and QA pairs, and the default style's image is what it always was.
    """
    check_style(style)
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    grid = (grid[0], grid[1])
    n_target = int(rng.integers(config.min_objects, config.max_objects + 1))
    order = rng.permutation(len(CATEGORIES))[:n_target]
    min_pixels = config.min_visible_pixels_share * size * size
    placed: List[_Placed] = []
    for idx in order:
        cat = CATEGORIES[int(idx)]
        for _ in range(config.placement_tries):
            anchor = placed[int(rng.integers(len(placed)))] if placed and rng.random() < config.overlap_probability else None
            cand = _place(rng, cat, size, grid, anchor)
            trial = placed + [cand]
            visible = _visible_masks(trial)
            ok = all(v.sum() >= max(min_pixels, config.min_visible_share * p.amodal.sum()) for v, p in zip(visible, trial))
            if ok:
                placed = trial
                break
    if len(placed) < config.min_objects:
        return generate_scene(rng, size, config, style)

    image = _background(rng, size)  # drawn in every style, so that the draws after it stay the default's
    jitters = [rng.uniform(-12, 12, size=3) for _ in placed]  # each object's colour jitter
    image = _with_sensor_noise(rng, _paint_objects(image, placed, jitters))

    visible = _visible_masks(placed)
    objects = [
        SyntheticObject(
            name=p.category.name,
            category_id=p.category.id,
            visible=v,
            amodal=p.amodal,
            occlusion_rate=occlusion_rate(v, p.amodal),
            depth=d,
        )
        for d, (p, v) in enumerate(zip(placed, visible))
    ]
    scene = SyntheticScene(image=image, objects=objects)
    scene.qa = make_qa(rng, scene, config)
    if style != DEFAULT_STYLE:  # its own draws come last: nothing above depends on them
        scene.image = _render_style(rng, placed, jitters, size, style)
    return scene


# ----------------------------------------------------------------------------- questions and answers


def _amount(rate: float) -> str:
    if rate < 0.15:
        return "slightly"
    if rate < 0.5:
        return "partly"
    return "mostly"


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _occluders(scene: SyntheticScene, i: int) -> List[Tuple[int, int]]:
    """(j, pixels of i's amodal mask that j's visible part covers), nearest cover first, largest first."""
    obj = scene.objects[i]
    min_px = max(15, int(0.05 * obj.amodal.sum()))
    out = []
    for j in range(i + 1, len(scene.objects)):
        px = int(np.logical_and(obj.amodal, scene.objects[j].visible).sum())
        if px >= min_px:
            out.append((j, px))
    return sorted(out, key=lambda t: -t[1])


def _elaboration(scene: SyntheticScene, targets: Sequence[int], occ: Dict[int, List[Tuple[int, int]]], skip: Optional[int] = None) -> str:
    """One sentence per occluded target naming its main occluder (the one that is not `skip`)."""
    sentences = []
    for t in targets:
        obj = scene.objects[t]
        covers = [j for j, _ in occ[t] if j != skip]
        if obj.occlusion_rate >= 0.02 and covers:
            sentences.append(f"The {obj.name} is {_amount(obj.occlusion_rate)} hidden behind the {scene.objects[covers[0]].name}.")
        elif obj.occlusion_rate >= 0.02 and skip is None:  # covered by several small bits of other objects
            sentences.append(f"The {obj.name} is {_amount(obj.occlusion_rate)} hidden.")
        elif obj.occlusion_rate < 0.02:
            sentences.append(f"The {obj.name} is in full view.")
    return " ".join(sentences)


def _named(scene: SyntheticScene, targets: Sequence[int]) -> Tuple[List[str], str]:
    phrases = [f"the {scene.objects[t].name}" for t in targets]
    return phrases, _join([f"{p} {SEG_TOKEN}" for p in phrases])


def _colour_name(scene: SyntheticScene, i: int) -> str:
    name = scene.objects[i].name
    return f"{CATEGORY_BY_NAME[name].colour} {name}"


def make_qa(rng: np.random.Generator, scene: SyntheticScene, config: SceneConfig = SceneConfig()) -> List[SyntheticQA]:
    """Candidate QA pairs from every template that applies to the scene; a random few are kept."""
    objs = scene.objects
    occ = {i: _occluders(scene, i) for i in range(len(objs))}
    cands: List[SyntheticQA] = []

    def add(kind: str, question: str, targets: List[int], answer: str, phrases: List[str]) -> None:
        if 0 < len(targets) <= config.max_targets:
            cands.append(SyntheticQA(question=question, answer=" ".join(answer.split()), targets=list(targets), phrases=phrases,
                                     kind=kind))

    # Purpose / use: "what can I use to cut something?" -> every object with that use.
    uses = sorted({u for o in objs for u in CATEGORY_BY_NAME[o.name].uses})
    for use in uses:
        targets = [i for i, o in enumerate(objs) if use in CATEGORY_BY_NAME[o.name].uses]
        act = USES[use]
        phrases, named = _named(scene, targets)
        q = [f"What can I use to {act}?", f"I want to {act}. What should I take?",
             f"Which things here could help me {act}?", f"If I need to {act}, what can I pick up?"][int(rng.integers(4))]
        lead = [f"You can use {named}.", f"Take {named}.", f"{named[0].upper()}{named[1:]} can help you {act}."][int(rng.integers(3))]
        add("use", q, targets, f"{lead} {_elaboration(scene, targets, occ)}", phrases)

    # Relation to an occluder: "what is partly hidden behind the red plate?"
    for j in range(len(objs)):
        targets = [i for i in range(j) if any(k == j for k, _ in occ[i])]
        if not targets:
            continue
        phrases, named = _named(scene, targets)
        verb = "is" if len(targets) == 1 else "are"
        q = [f"What is partly hidden behind the {_colour_name(scene, j)}?", f"What lies behind the {_colour_name(scene, j)}?",
             f"Which things does the {_colour_name(scene, j)} cover?"][int(rng.integers(3))]
        ans = f"{named[0].upper()}{named[1:]} {verb} partly hidden behind the {objs[j].name}."
        more = _elaboration(scene, targets, occ, skip=j)
        add("behind", q, targets, f"{ans} {more}", phrases)

    # What covers an object: "what is in front of the blue book?"
    for i in range(len(objs)):
        targets = sorted(j for j, _ in occ[i])
        if not targets:
            continue
        phrases, named = _named(scene, targets)
        q = [f"What is covering part of the {_colour_name(scene, i)}?", f"What is in front of the {_colour_name(scene, i)}?"][int(rng.integers(2))]
        verb = "covers" if len(targets) == 1 else "cover"
        add("in_front", q, targets, f"{named[0].upper()}{named[1:]} {verb} the {objs[i].name}, which is {_amount(objs[i].occlusion_rate)} hidden.", phrases)

    # The most hidden object.
    rates = [o.occlusion_rate for o in objs]
    top = int(np.argmax(rates))
    if rates[top] >= 0.2 and sorted(rates)[-2] < rates[top] - 0.05 and occ[top]:
        phrases, named = _named(scene, [top])
        q = ["Which object is hidden the most?", "What is the hardest thing to see here?"][int(rng.integers(2))]
        add("most_hidden", q, [top], f"{named[0].upper()}{named[1:]} is the most hidden; it is {_amount(rates[top])} covered by the {objs[occ[top][0][0]].name}.", phrases)

    # What lies on top of the others.
    tops = [i for i in range(len(objs)) if rates[i] < 0.02 and any(any(k == i for k, _ in occ[t]) for t in range(i))]
    if tops:
        phrases, named = _named(scene, tops)
        verb = "lies" if len(tops) == 1 else "lie"
        q = ["What is lying on top of the other things?", "Which things are not covered by anything but cover something?"][int(rng.integers(2))]
        add("on_top", q, tops, f"{named[0].upper()}{named[1:]} {verb} on top and nothing covers it.", phrases)

    # Combined use: "how could I serve some fruit?" -> the plate and the fruit.
    plate = [i for i, o in enumerate(objs) if "serve" in CATEGORY_BY_NAME[o.name].uses]
    fruit = [i for i, o in enumerate(objs) if "eat" in CATEGORY_BY_NAME[o.name].uses]
    if plate and fruit:
        targets = fruit[:2] + plate[:1]
        phrases, _ = _named(scene, targets)
        fruit_named = _join([f"{p} {SEG_TOKEN}" for p in phrases[:-1]])
        ans = f"Put {fruit_named} on {phrases[-1]} {SEG_TOKEN}. {_elaboration(scene, targets, occ)}"
        add("serve", "How could I serve some fruit?", targets, ans, phrases)

    keep = rng.permutation(len(cands))[: int(rng.integers(config.min_qa, config.max_qa + 1))]
    seen, out = set(), []
    for k in sorted(int(x) for x in keep):
        if cands[k].question not in seen:
            seen.add(cands[k].question)
            out.append(cands[k])
    return out


# ----------------------------------------------------------------------------- data set on disk


def category_table() -> List[Dict[str, object]]:
    """COCO `categories` entries for the synthetic set (with colour, shape and uses as extra keys)."""
    return [{"id": c.id, "name": c.name, "colour": c.colour, "shape": c.shape, "uses": [USES[u] for u in c.uses]} for c in CATEGORIES]


def split_key(split: str) -> int:
    """The second seed word of a split's scenes: scene i of split s with seed S is drawn from default_rng([S, split_key(s), i])."""
    return sum(ord(ch) for ch in split)


def split_scene(seed: int, split: str, index: int, size: int = 256, config: SceneConfig = SceneConfig(), style: str = DEFAULT_STYLE) -> SyntheticScene:
    """Scene `index` of `split` as `write_split` draws it (any style: same objects and QA pairs, other pixels)."""
    return generate_scene(np.random.default_rng([seed, split_key(split), index]), size, config, style)


def write_split(out: Path, split: str, count: int, seed: int, size: int = 256, config: SceneConfig = SceneConfig(),
                style: str = DEFAULT_STYLE) -> None:
    """Generate `count` scenes; image i of a split depends only on (seed, split, i) and the style."""
    writer = SplitWriter(root=out, split=split, categories=category_table())
    for i in tqdm(range(count), desc=f"aura-synth {split}", disable=count < 50, leave=False, mininterval=5.0):
        scene = split_scene(seed, split, i, size, config, style)
        image_id = writer.add_image_array(f"{split}_{i:06d}.png", scene.image)
        ids = [writer.add_object(image_id=image_id, category_id=o.category_id, amodal=o.amodal, visible=o.visible) for o in scene.objects]
        for qa in scene.qa:
            writer.add_qa(image_id=image_id, question=qa.question, answer=qa.answer, object_ids=[ids[t] for t in qa.targets], phrases=qa.phrases,
                          kind=qa.kind)
    writer.close()


def generate_dataset(out: Path, train: int, val: int, seed: int, size: int = 256, style: str = DEFAULT_STYLE) -> None:
    out = Path(out)
    write_split(out, "train", train, seed, size, style=style)
    write_split(out, "val", val, seed, size, style=style)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="aura-synth", description="Write a synthetic AmodalReasonSeg data set (see docs/DATASET.md).")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--train", type=int, default=1000, help="number of training images")
    parser.add_argument("--val", type=int, default=100, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--style", choices=STYLES, default=DEFAULT_STYLE,
                        help="rendering style: background and lighting only; objects, masks and QA pairs are the same "
                             "for a seed in every style (default: %(default)s, the training set's)")
    args = parser.parse_args(argv)
    if args.train < 0 or args.val < 0 or args.size < 32:
        parser.error("--train/--val must be >= 0 and --size >= 32")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    generate_dataset(args.out, args.train, args.val, args.seed, args.size, style=args.style)
    print(f"wrote {args.train} train + {args.val} val images ({args.style} style) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
