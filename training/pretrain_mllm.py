"""Pretrain the tiny LLaVA (CLIP vision tower + projector + language model) once, and ship it like SAM's weights.

The paper starts from a pretrained LLaVA: a pretrained (then frozen) CLIP tower and projector, and a pretrained
language model that LoRA adapts. No such weights exist for the tiny config, so this script makes a tiny stand-in:
the whole LLaVA (tower, projector and language model, all trained) learns next-token prediction of answers given
the image tokens and a question, on endless synthetic scenes drawn from a seed range disjoint from the synthetic
train/val sets (and from pretrain_backbone.py's). Two kinds of text:

- the generator's own questions and answers (purpose, occlusion relations, most hidden, on top, serving fruit), and
- a scene description: "What things can you see here?" -> every object back to front, each with [SEG], then one
  sentence per object on what hides it ("The apple is partly hidden behind the book.").

Text alone grounds a tower trained from scratch slowly (the language model first learns the answers' priors and
ignores the image), so the image features the language model reads (projector output, one per patch) also get a
dense pretext loss, as CLIP's contrastive pretraining gives its features meaning before LLaVA uses them: two linear
heads on each image token predict which category is visible in that patch (soft cross-entropy against the area share
of each category and the background) and which categories' amodal masks cover it (BCE against the covered share),
i.e. what is where and what lies behind what. The heads are pretext-only and not shipped.

Those heads teach the image tokens what lies where; they do not teach the language model to find the object a question
names among them (the relational answers stayed near 50 % through more depth and a finer grid). With
--relation-weight, a third pretext head binds names to objects: at every object name in the question or answer, the
language model's state after --relation-layer layers (below the last, where the answer-writing layers can read it)
predicts which categories cover part of that object and which it covers (BCE, as the answers count a cover).
With --hidden-weight, a fourth head on the image tokens says which category lies hidden in each patch (soft
cross-entropy against the hidden parts' area shares), the one thing a patch does not show and a relation needs.
With --ground-weight, one attention head of the language model (--ground-layer, --ground-head) is taught to look, from
each object name, at that object's patches, hidden part included (cross-entropy between its attention over the image
tokens and the object's amodal area shares): the binding step itself, so the layers above read the named object's
neighbourhood instead of the whole scene.

The result is an HF-format llava directory (fp16 `model.safetensors`, `config.json`, tokenizer, image processor) plus
`manifest.json` (how it was made, held-out figures) that `MLLMConfig.pretrained_path` loads like any llava-hf model.
The AURA default run then freezes the tower and projector and trains LoRA on top, as the paper does.

Long runs are resumable: `--work-dir` keeps `state.pt` (weights, optimiser, step; the data stream is indexed by step)
and `--stop-at N` leaves after step N, so a run of hours can be done in slices:

    python training/pretrain_mllm.py --steps 6000 --stop-at 2000 --threads 1 --work-dir runs/pretrain_mllm
    python training/pretrain_mllm.py --steps 6000 --threads 1 --work-dir runs/pretrain_mllm   # continues at 2000

The shipped aura_core/assets/tiny_llava/ (128 px, 64 image tokens, 3 CLIP layers) was made in six stages, text only
then text + patch losses warm-started from it, continued four times on unseen scenes (--data-offset); the commands
are in its manifest.json and docs/TRAINING.md.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import platform
import re
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from aura_core.data.synthetic import CATEGORIES, SEG_TOKEN, SyntheticScene, _elaboration, _join, _occluders, generate_scene
from aura_core.matching import objects_named
from aura_core.model.config import MLLMConfig, get_config
from aura_core.model.mllm import MultiModalLLM
from aura_core.model.tokenizer import seg_phrases
from training.command import command_line
from training.schedule import warmup_decay_lr

LOG = logging.getLogger("aura.pretrain_mllm")

PRETEXT_SEED_KEY = 104729  # keeps pretext scenes disjoint from aura-synth's and pretrain_backbone.py's streams
DESCRIBE_QUESTIONS = ("What things can you see here?", "What is here?", "Which things are here?")
MANIFEST = "manifest.json"

NUM_CATEGORIES = len(CATEGORIES)  # category ids 1..12; patch class 0 is the background
# image, question, answer, phrases before each [SEG], patch targets: visible (N, 1 + C) area shares, amodal (N, C),
# relation targets (C, 1 + 2C): see relation_targets; hidden-part targets (N, 1 + C): see hidden_targets
Sample = Tuple[np.ndarray, str, str, List[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _category_masks(scene: SyntheticScene, part) -> np.ndarray:
    """(C, H, W): per category, the union of `part(obj)` (a bool mask) over its objects."""
    size = scene.image.shape[0]
    masks = np.zeros((NUM_CATEGORIES, size, size), np.float32)
    for obj in scene.objects:
        masks[obj.category_id - 1] = np.maximum(masks[obj.category_id - 1], part(obj))
    return masks


def _patch_shares(masks: np.ndarray, grid: int) -> np.ndarray:
    """(grid*grid, K): each of K masks' area share in each patch of a grid x grid tiling (row-major, as the tokens)."""
    return F.adaptive_avg_pool2d(torch.from_numpy(masks)[None], (grid, grid))[0].flatten(1).T.contiguous().numpy()


def _class_shares(masks: np.ndarray, grid: int) -> np.ndarray:
    """(grid*grid, 1 + C): per patch, each category's share of the masked area, class 0 the area none of them covers,
    normalised to sum to 1 where masks overlap."""
    shares = _patch_shares(np.concatenate([1.0 - np.clip(masks.sum(0, keepdims=True), 0, 1), masks]), grid)
    return shares / np.clip(shares.sum(1, keepdims=True), 1e-6, None)


def patch_targets(scene: SyntheticScene, grid: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per patch of a grid x grid tiling (row-major, as the CLIP tower's tokens): the share of its area where each
    category (or the background, class 0) is the visible one, and the share each category's amodal mask covers."""
    visible = _class_shares(_category_masks(scene, lambda o: o.visible), grid)  # (grid*grid, 1 + C)
    return visible, _patch_shares(_category_masks(scene, lambda o: o.amodal), grid)  # amodal: (grid*grid, C)


def hidden_targets(scene: SyntheticScene, grid: int) -> np.ndarray:
    """(grid*grid, 1 + C) per patch: the share of its area where each category's hidden part lies (amodal, not visible;
    class 0: no hidden part), i.e. what lies behind what is visible there, the one thing a patch does not show."""
    return _class_shares(_category_masks(scene, lambda o: o.amodal & ~o.visible), grid)


def relation_targets(scene: SyntheticScene) -> np.ndarray:
    """(C, 1 + 2C) per category: [0] whether it is in the scene, [1 + b] whether category b covers part of it, and
    [1 + C + b] whether it covers part of category b, as the answers count a cover (`_occluders`)."""
    out = np.zeros((NUM_CATEGORIES, 1 + 2 * NUM_CATEGORIES), np.float32)
    for i, obj in enumerate(scene.objects):
        out[obj.category_id - 1, 0] = 1.0
        for j, _ in _occluders(scene, i):
            front = scene.objects[j].category_id - 1
            out[obj.category_id - 1, 1 + front] = 1.0
            out[front, 1 + NUM_CATEGORIES + obj.category_id - 1] = 1.0
    return out


def describe(scene: SyntheticScene, rng: np.random.Generator) -> Sample:
    """The scene-description sample: every object back to front with [SEG], then what hides each one."""
    objs = scene.objects
    occ = {i: _occluders(scene, i) for i in range(len(objs))}
    phrases = [f"the {o.name}" for o in objs]
    listed = _join([f"{p} {SEG_TOKEN}" for p in phrases])
    answer = f"I can see {listed}. {_elaboration(scene, list(range(len(objs))), occ)}"
    question = DESCRIBE_QUESTIONS[int(rng.integers(len(DESCRIBE_QUESTIONS)))]
    return scene.image, question, " ".join(answer.split()), phrases


def pretext_scene(seed: int, index: int, size: int, describe_share: float, grid: int = 8) -> Tuple[SyntheticScene, List[Sample]]:
    """Pretext scene `index` and its samples: its QA pairs (in `scene.qa`'s order) and (with probability
    describe_share) its description, each with the scene's patch targets for a grid x grid token layout."""
    rng = np.random.default_rng([seed, PRETEXT_SEED_KEY, index])
    scene = generate_scene(rng, size)
    texts = [(scene.image, qa.question, qa.answer, list(qa.phrases)) for qa in scene.qa]
    if rng.random() < describe_share or not texts:
        texts.append(describe(scene, rng))
    vis, amo = patch_targets(scene, grid)
    rel, hid = relation_targets(scene), hidden_targets(scene, grid)
    return scene, [(*text, vis, amo, rel, hid) for text in texts]


def scene_samples(seed: int, index: int, size: int, describe_share: float, grid: int = 8) -> List[Sample]:
    """The samples of pretext scene `index` (see pretext_scene)."""
    return pretext_scene(seed, index, size, describe_share, grid)[1]


class PretextText(IterableDataset):
    """Endless (image, question, answer, phrases) samples; batch `b` of the stream depends only on (seed, b)."""

    def __init__(self, *, seed: int, size: int, batch_size: int, describe_share: float, start_batch: int = 0,
                 grid: int = 8) -> None:
        self.seed, self.size, self.batch_size, self.grid = seed, size, batch_size, grid
        self.describe_share, self.start_batch = describe_share, start_batch

    def batch(self, b: int) -> List[Sample]:
        """Batch b: samples of consecutive scenes from scene 4*b*batch_size/4 on, the first `batch_size` kept."""
        out: List[Sample] = []
        index = b * self.batch_size  # scene ids never overlap between batches (a scene gives >= 1 sample)
        while len(out) < self.batch_size:
            out.extend(scene_samples(self.seed, index, self.size, self.describe_share, self.grid))
            index += 1
        return out[: self.batch_size]

    def __iter__(self) -> Iterator[List[Sample]]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        b = self.start_batch + worker
        while True:
            yield self.batch(b)
            b += workers


def _as_is(batch: List[Sample]) -> List[Sample]:
    return batch  # keep numpy images (DataLoader's default would make tensors of them)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def mllm_config(model: str, image_size: Optional[int], vision_layers: Optional[int],
                language_layers: Optional[int] = None, language_width: Optional[int] = None) -> MLLMConfig:
    """The model's MLLM sizes (optionally another CLIP input size / depth, language-model depth or width), everything
    trained, no LoRA. A width keeps the config's head size and MLP ratio."""
    config = get_config(model).mllm
    changes = {"lora_r": 0, "modules_to_save": (), "pretrained_path": None, "dtype": "float32"}
    if image_size:
        changes["vision_image_size"] = image_size
    if vision_layers:
        changes["vision_layers"] = vision_layers
    if language_layers:
        changes["num_layers"] = language_layers
    if language_width:
        head_size = config.hidden_size // config.num_heads
        if language_width % head_size:
            raise SystemExit(f"--language-width {language_width}: must be a multiple of the head size {head_size}")
        changes.update(hidden_size=language_width, num_heads=language_width // head_size,
                       intermediate_size=language_width * config.intermediate_size // config.hidden_size)
    return dataclasses.replace(config, **changes)


def state_width(state: Dict[str, object]) -> Optional[int]:
    """The language-model width a state.pt of this script was made with (None where it does not say)."""
    return (state.get("mllm_config") or {}).get("hidden_size")


_LM_LAYER = re.compile(r"\.language_model\.layers\.(\d+)\.")


def load_growing_depth(mllm: MultiModalLLM, state: Dict[str, torch.Tensor]) -> List[int]:
    """Load `state` into `mllm`, which may have more language-model layers than `state`: the extra layers start as
    identity (attention and MLP output projections zero, so each adds nothing to the residual stream), so the deeper
    model first computes exactly what the shallower one did and training grows it from there. Returns the new layers."""
    missing, unexpected = mllm.load_state_dict(state, strict=False)
    grown = sorted({int(m.group(1)) for m in map(_LM_LAYER.search, missing) if m})
    other = [k for k in missing if not _LM_LAYER.search(k)]
    if unexpected or other:
        raise SystemExit(f"--init does not fit this model: unexpected {unexpected[:3]}, missing {other[:3]} "
                         "(only language-model layers may be added)")
    with torch.no_grad():
        for index in grown:
            layer = mllm.core.model.language_model.layers[index]
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return grown


_POSITIONS = "embeddings.position_embedding.weight"


def fit_image_grid(mllm: MultiModalLLM, state: Dict[str, torch.Tensor]) -> Optional[Tuple[int, int]]:
    """Resize the CLIP position table in `state` (in place) to `mllm`'s patch grid, e.g. 8 x 8 -> 16 x 16 when
    --image-size doubles: the class position is kept and the grid's rows are interpolated bicubically, so a tower
    warm-started at a finer grid starts with the spatial layout it learned. Returns (old grid, new grid), or None."""
    key, table = next((k, v) for k, v in mllm.state_dict().items() if k.endswith(_POSITIONS))  # LLaVA has one tower
    old = state.get(key)
    if old is None or old.shape == table.shape:
        return None
    g_old, g_new = math.isqrt(old.shape[0] - 1), math.isqrt(table.shape[0] - 1)
    if g_old * g_old != old.shape[0] - 1 or g_new * g_new != table.shape[0] - 1 or old.shape[1] != table.shape[1]:
        raise SystemExit(f"--init: {key} {tuple(old.shape)} cannot be resized to {tuple(table.shape)}")
    grid = old[1:].T.reshape(1, old.shape[1], g_old, g_old).float()
    grid = F.interpolate(grid, size=(g_new, g_new), mode="bicubic", align_corners=False)
    state[key] = torch.cat([old[:1].float(), grid.reshape(old.shape[1], -1).T]).to(old.dtype)
    return g_old, g_new


def build_pretext_model(config: MLLMConfig) -> MultiModalLLM:
    """A random-init tiny LLaVA with every tensor trainable (tower, projector, language model)."""
    mllm = MultiModalLLM.build(config)
    mllm.llava.requires_grad_(True)
    return mllm


class PatchHeads(nn.Module):
    """Pretext-only heads on the image tokens the language model reads: visible category (1 + C), amodal (C) and,
    with `hidden`, the hidden category (1 + C)."""

    def __init__(self, hidden_size: int, hidden: bool = False) -> None:
        super().__init__()
        self.visible = nn.Linear(hidden_size, NUM_CATEGORIES + 1)
        self.amodal = nn.Linear(hidden_size, NUM_CATEGORIES)
        self.hidden = nn.Linear(hidden_size, NUM_CATEGORIES + 1) if hidden else None

    def load_earlier(self, state: Dict[str, torch.Tensor]) -> None:
        """Load the heads of another run: a hidden head it lacks starts fresh, one it has and this run does not train is
        left out."""
        if self.hidden is None:
            state = {k: v for k, v in state.items() if not k.startswith("hidden.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("hidden.") for k in missing):
            raise SystemExit(f"pretext heads do not fit: unexpected {unexpected}, missing {missing}")


class RelationHead(nn.Module):
    """Pretext-only head that binds a name to its object: read at each object name in the text (the language model's
    residual stream after `layer` decoder layers), it says what covers that object and what the object covers. Below the
    last layer, so the later layers that write the answer can read it there."""

    def __init__(self, hidden_size: int, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.linear = nn.Linear(hidden_size, 2 * NUM_CATEGORIES)

    def targets(self, mllm: MultiModalLLM, input_ids: torch.Tensor, samples: Sequence[Sample]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(where, target): the positions (B, T) holding the name of an object in that sample's scene, and their
        (n, 2C) covered-by / covers targets."""
        where, category = name_positions(mllm, input_ids, samples)
        rel = _field(samples, 6, input_ids.device)  # (B, C, 1 + 2C)
        per_token = torch.gather(rel, 1, category[..., None].expand(-1, -1, rel.shape[-1]))  # (B, T, 1 + 2C)
        return where, per_token[where][:, 1:]


def _field(samples: Sequence[Sample], index: int, device: torch.device) -> torch.Tensor:
    """Field `index` of every sample, stacked into one tensor on `device`."""
    return torch.from_numpy(np.stack([s[index] for s in samples])).to(device)


def name_positions(mllm: MultiModalLLM, input_ids: torch.Tensor, samples: Sequence[Sample]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(where, category): the positions (B, T) holding the name of an object in that sample's scene, and the
    category index (0-based) named at every position."""
    names = torch.tensor([mllm.tokenizer.convert_tokens_to_ids(c.name) for c in CATEGORIES], device=input_ids.device)
    is_name = input_ids[..., None] == names  # (B, T, C)
    category = is_name.float().argmax(-1)  # (B, T)
    present = _field(samples, 6, input_ids.device)[..., 0] > 0  # (B, C)
    return is_name.any(-1) & torch.gather(present, 1, category), category


def language_layer(mllm: MultiModalLLM, layer: int, flag: str = "--relation-layer") -> nn.Module:
    """Decoder layer `layer` (1-based) of the language model, whose output the relation head reads (or whose
    attention the grounding loss supervises)."""
    layers = mllm.core.model.language_model.layers
    if not 1 <= layer <= len(layers):
        raise SystemExit(f"{flag} {layer}: the language model has layers 1..{len(layers)}")
    return layers[layer - 1]


@dataclasses.dataclass(frozen=True)
class Grounding:
    """The binding pretext: head `head` of decoder layer `layer` (1-based) attends, from each object name, to that
    object's patches (amodal area shares, hidden part included)."""

    layer: int
    head: int

    def check(self, mllm: MultiModalLLM) -> None:
        language_layer(mllm, self.layer, "--ground-layer")
        heads = mllm.core.config.text_config.num_attention_heads
        if not 0 <= self.head < heads:
            raise SystemExit(f"--ground-head {self.head}: the language model has heads 0..{heads - 1}")

    def terms(self, mllm: MultiModalLLM, attention: torch.Tensor, input_ids: torch.Tensor,
              samples: Sequence[Sample]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(log p, q) at every object name with an amodal mask on the grid: the head's attention over the image tokens,
        renormalised (n, N), and the object's amodal area shares, normalised (n, N)."""
        if attention is None:
            raise ValueError("grounding reads attention probabilities: call mllm.core.set_attn_implementation('eager') "
                             "first (sdpa does not return them)")
        where, category = name_positions(mllm, input_ids, samples)
        image = input_ids == mllm.core.config.image_token_index  # (B, T), N per row
        n_image = int(image[0].sum())
        rows = attention[:, self.head]  # (B, T, T)
        to_image = rows.masked_select(image[:, None, :]).view(rows.shape[0], rows.shape[1], n_image)  # (B, T, N)
        amodal = _field(samples, 5, input_ids.device)  # (B, N, C)
        target = torch.gather(amodal.transpose(1, 2), 1, category[..., None].expand(-1, -1, n_image))  # (B, T, N)
        where = where & (target.sum(-1) > 0)
        p, q = to_image[where], target[where]
        log_p = torch.log(p.clamp_min(1e-12)) - torch.log(p.sum(-1, keepdim=True).clamp_min(1e-12))
        return log_p, q / q.sum(-1, keepdim=True)


@contextlib.contextmanager
def _keeping(mllm: MultiModalLLM, *, tokens: bool, layer: Optional[int],
             attention: Optional[int] = None) -> Iterator[Dict[str, torch.Tensor]]:
    """During the forward passes inside, keep the projected image tokens (what `image_tokens` computes, taken from the
    pass itself instead of running the tower twice) as "tokens", the residual stream after `layer` as "layer" and the
    attention probabilities (B, heads, T, T) of decoder layer `attention` as "attention" (needs eager attention)."""
    kept: Dict[str, torch.Tensor] = {}

    def keep(name: str, index: int = 0):
        return lambda module, args, out: kept.__setitem__(name, out[index] if isinstance(out, tuple) else out)

    hooks = []
    if tokens:
        hooks.append(mllm.core.model.multi_modal_projector.register_forward_hook(keep("tokens")))
    if layer is not None:
        hooks.append(language_layer(mllm, layer).register_forward_hook(keep("layer")))
    if attention is not None:
        hooks.append(language_layer(mllm, attention).self_attn.register_forward_hook(keep("attention", 1)))
    try:
        yield kept
    finally:
        for hook in hooks:
            hook.remove()


def _keeping_for(mllm: MultiModalLLM, heads: Optional[PatchHeads], relation: Optional[RelationHead],
                 grounding: Optional[Grounding]):
    """`_keeping` what the given pretext heads read: the image tokens, the relation layer's output, the grounded
    layer's attention."""
    return _keeping(mllm, tokens=heads is not None, layer=relation.layer if relation is not None else None,
                    attention=grounding.layer if grounding is not None else None)


def image_tokens(mllm: MultiModalLLM, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, N, hidden) projected image features, exactly those LLaVA puts in place of the <image> tokens."""
    out = mllm.core.model.get_image_features(pixel_values=pixel_values)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats


def text_loss(mllm: MultiModalLLM, samples: Sequence[Sample]) -> torch.Tensor:
    images, questions, answers = zip(*[s[:3] for s in samples])
    return mllm(mllm.encode(list(images), list(questions), list(answers))).text_loss


def pretext_losses(mllm: MultiModalLLM, heads: Optional[PatchHeads], samples: Sequence[Sample],
                   relation: Optional[RelationHead] = None, grounding: Optional[Grounding] = None) -> Dict[str, torch.Tensor]:
    """text (next-token on the answers); with heads, patch_visible (soft CE) and patch_amodal (BCE); with relation,
    relation (BCE at the object names); with grounding, ground (CE of the head's attention against the named object's
    patches)."""
    images, questions, answers = zip(*[s[:3] for s in samples])
    inputs = mllm.encode(list(images), list(questions), list(answers))
    with _keeping_for(mllm, heads, relation, grounding) as kept:
        losses = {"text": mllm(inputs).text_loss}
    if grounding is not None:
        log_p, q = grounding.terms(mllm, kept["attention"], inputs["input_ids"], samples)
        if len(q):
            losses["ground"] = -(q * log_p).sum(-1).mean()
    if relation is not None:
        where, target = relation.targets(mllm, inputs["input_ids"], samples)
        if bool(where.any()):
            losses["relation"] = F.binary_cross_entropy_with_logits(relation.linear(kept["layer"][where]), target)
    if heads is not None:
        tokens = kept["tokens"]
        vis, amo = _field(samples, 4, mllm.device), _field(samples, 5, mllm.device)
        losses["patch_visible"] = -(vis * F.log_softmax(heads.visible(tokens), -1)).sum(-1).mean()
        losses["patch_amodal"] = F.binary_cross_entropy_with_logits(heads.amodal(tokens), amo)
        if heads.hidden is not None:
            hid = _field(samples, 7, mllm.device)
            losses["hidden"] = -(hid * F.log_softmax(heads.hidden(tokens), -1)).sum(-1).mean()
    return losses


@torch.no_grad()
def evaluate(mllm: MultiModalLLM, samples: Sequence[Sample], generate: int,
             heads: Optional[PatchHeads] = None, relation: Optional[RelationHead] = None,
             grounding: Optional[Grounding] = None) -> Dict[str, float]:
    """Held-out text loss and token accuracy (teacher-forced), and on the first `generate` samples the share of
    greedy answers that name the right objects (the end-to-end evaluation's test) and have the right [SEG] count;
    with heads, the visible category read right on clear patches (and with a hidden head, the hidden category on
    patches a hidden part mostly fills); with relation, the share of object names whose covered-by and covers sets it
    reads exactly right; with grounding, the mean share of the head's image attention on the named object's patches."""
    was_training = mllm.training
    mllm.eval()
    losses, correct, total = [], 0, 0
    patch_right = patch_total = hidden_right = hidden_total = relation_right = relation_total = 0
    ground_share: List[float] = []
    for start in range(0, len(samples), 16):
        chunk = samples[start : start + 16]
        images, questions, answers = zip(*[s[:3] for s in chunk])
        inputs = mllm.encode(list(images), list(questions), list(answers))
        with _keeping_for(mllm, heads, relation, grounding) as kept:
            hidden, _ = mllm._hidden(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                                     attention_mask=inputs["attention_mask"])
        if grounding is not None:
            log_p, q = grounding.terms(mllm, kept["attention"], inputs["input_ids"], chunk)
            ground_share.extend((log_p.exp() * (q > 0)).sum(-1).tolist())
        if relation is not None:
            where, target = relation.targets(mllm, inputs["input_ids"], chunk)
            guess = relation.linear(kept["layer"][where]) > 0
            relation_right += int((guess == (target > 0.5)).all(-1).sum())
            relation_total += int(where.sum())
        targets = inputs["labels"][:, 1:]
        keep = targets != -100
        logits = mllm.core.lm_head(hidden[:, :-1][keep])
        losses.append(torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum").item())
        correct += int((logits.argmax(-1) == targets[keep]).sum())
        total += int(keep.sum())
        if heads is not None:  # visible category of each patch where one class covers most of it
            vis = _field(chunk, 4, mllm.device)
            clear = vis.max(-1).values >= 0.5
            tokens = kept["tokens"]
            guess = heads.visible(tokens).argmax(-1)
            patch_right += int((guess == vis.argmax(-1))[clear].sum())
            patch_total += int(clear.sum())
            if heads.hidden is not None:
                hid = _field(chunk, 7, mllm.device)
                behind = hid[..., 1:].max(-1).values >= 0.3
                guess = heads.hidden(tokens)[..., 1:].argmax(-1)
                hidden_right += int((guess == hid[..., 1:].argmax(-1))[behind].sum())
                hidden_total += int(behind.sum())
    named = seg_count = 0
    for image, question, _, phrases, *_ in samples[:generate]:
        answer = mllm.generate(image, question, max_new_tokens=64).answer
        predicted = seg_phrases(answer)
        seg_count += len(predicted) == len(phrases)
        named += objects_named(predicted, phrases)  # a multiset: the right count too
    mllm.train(was_training)
    report = {"text_loss": sum(losses) / max(total, 1), "token_accuracy": correct / max(total, 1),
              "right_objects_named": named / max(generate, 1), "right_seg_count": seg_count / max(generate, 1)}
    if heads is not None:
        report["patch_visible_accuracy"] = patch_right / max(patch_total, 1)
        if heads.hidden is not None:
            report["patch_hidden_accuracy"] = hidden_right / max(hidden_total, 1)
    if relation is not None:
        report["relation_exact"] = relation_right / max(relation_total, 1)
    if grounding is not None:
        report["ground_share"] = float(np.mean(ground_share)) if ground_share else 0.0
    return report


def held_out_samples(seed: int, size: int, scenes: int, describe_share: float, grid: int = 8) -> List[Sample]:
    """Samples of `scenes` held-out scenes (seed + 1), descriptions last so a short generation check sees questions."""
    samples: List[Sample] = []
    for index in range(scenes):
        samples.extend(scene_samples(seed + 1, index, size, describe_share, grid))
    questions = [s for s in samples if s[1] not in DESCRIBE_QUESTIONS]
    return questions + [s for s in samples if s[1] in DESCRIBE_QUESTIONS]


def save_llava_dir(mllm: MultiModalLLM, out: Path, manifest: Dict[str, object]) -> Path:
    """HF llava directory (fp16 safetensors, config, tokenizer, image processor) + manifest.json, written atomically."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in mllm.core.state_dict().items()}
    mllm.core.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
    mllm.tokenizer.save_pretrained(str(tmp))
    mllm.image_processor.save_pretrained(str(tmp))
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="aura_core model config whose MLLM sizes to use")
    parser.add_argument("--image-size", type=int, default=None,
                        help="CLIP input side (default: the config's); larger than --init's gives a finer patch grid, "
                             "its position table interpolated from --init's")
    parser.add_argument("--vision-layers", type=int, default=None, help="CLIP layers (default: the config's)")
    parser.add_argument("--language-layers", type=int, default=None,
                        help="language-model layers (default: the config's); more than --init has grows it: the new "
                             "layers are appended as identity")
    parser.add_argument("--language-width", type=int, default=None,
                        help="language-model hidden size (default: the config's; same head size and MLP ratio); "
                             "--init must have the same")
    parser.add_argument("--scene-size", type=int, default=256, help="side of the drawn scenes (the AURA data's)")
    parser.add_argument("--steps", type=int, default=6000, help="length of the lr schedule")
    parser.add_argument("--stop-at", type=int, default=None, help="leave after this step with a resumable state")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--describe-share", type=float, default=0.5, help="share of scenes that add a description")
    parser.add_argument("--patch-weight", type=float, default=1.0,
                        help="weight of the two patch pretext losses on the image tokens (0: text only)")
    parser.add_argument("--hidden-weight", type=float, default=0.0,
                        help="weight of the hidden-part pretext on the image tokens: which category lies hidden in "
                             "each patch (0: none; needs --patch-weight > 0)")
    parser.add_argument("--relation-weight", type=float, default=0.0,
                        help="weight of the relation pretext at each object name: what covers it and what it covers, "
                             "read off the language model after --relation-layer layers (0: none)")
    parser.add_argument("--relation-layer", type=int, default=1,
                        help="language-model layer whose output the relation pretext reads (below the last)")
    parser.add_argument("--ground-weight", type=float, default=0.0,
                        help="weight of the binding pretext: one attention head looks, from each object name, at that "
                             "object's patches (0: none)")
    parser.add_argument("--ground-layer", type=int, default=1, help="language-model layer (1-based) of that head")
    parser.add_argument("--ground-head", type=int, default=0, help="which head of --ground-layer")
    parser.add_argument("--init", type=Path, default=None,
                        help="warm start (weights only) from the state.pt of an earlier run with the same sizes, or fewer "
                             "language-model layers, or a coarser image grid (see --language-layers, --image-size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-offset", type=int, default=0,
                        help="skip this many batches of the scene stream (a warm-started stage then sees new scenes)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="torch device to train on (e.g. cuda)")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-scenes", type=int, default=40)
    parser.add_argument("--eval-generate", type=int, default=60, help="held-out questions answered greedily per eval")
    parser.add_argument("--out", type=Path, default=Path("aura_core/assets/tiny_llava"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/pretrain_mllm"), help="resumable state and log")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = mllm_config(args.model, args.image_size, args.vision_layers, args.language_layers, args.language_width)
    mllm = build_pretext_model(config)
    if args.hidden_weight > 0 and args.patch_weight <= 0:
        raise SystemExit("--hidden-weight needs the patch heads: --patch-weight > 0")
    heads = PatchHeads(mllm.hidden_size, hidden=args.hidden_weight > 0) if args.patch_weight > 0 else None
    relation = RelationHead(mllm.hidden_size, args.relation_layer) if args.relation_weight > 0 else None
    if relation is not None:
        language_layer(mllm, args.relation_layer)  # a bad --relation-layer fails here, not at step 1
    grounding = Grounding(args.ground_layer, args.ground_head) if args.ground_weight > 0 else None
    if grounding is not None:
        grounding.check(mllm)
        mllm.core.set_attn_implementation("eager")  # the supervised head's probabilities (sdpa does not return them)
    for module in (mllm, heads, relation):
        if module is not None:
            module.to(args.device)
    grid = config.vision_image_size // config.vision_patch_size
    params = [p for p in mllm.parameters() if p.requires_grad]
    params += [p for m in (heads, relation) if m is not None for p in m.parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    state_file = args.work_dir / "state.pt"
    start, elapsed_before, history = 0, 0.0, []
    if state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        if state.get("mllm_config") != dataclasses.asdict(config) or state.get("steps") != args.steps:
            raise SystemExit(f"{state_file}: made with other sizes or another --steps; use another --work-dir")
        mllm.load_state_dict(state["model"])
        if heads is not None:
            heads.load_earlier(state["heads"])
        if relation is not None:
            relation.load_state_dict(state["relation"])
        optimizer.load_state_dict(state["optimizer"])
        start, elapsed_before, history = int(state["step"]), float(state["elapsed_s"]), list(state["history"])
        LOG.info("resumed at step %d from %s", start, state_file)
    elif args.init is not None:
        init = torch.load(args.init, map_location="cpu", weights_only=False)
        init_width = state_width(init) or config.hidden_size
        if init_width != config.hidden_size:
            raise SystemExit(f"--init {args.init}: its language model is {init_width} wide, this run's {config.hidden_size} "
                             "(set --language-width to match)")
        regrid = fit_image_grid(mllm, init["model"])
        grown = load_growing_depth(mllm, init["model"])
        if heads is not None and init.get("heads"):
            heads.load_earlier(init["heads"])
        if relation is not None and init.get("relation"):
            relation.load_state_dict(init["relation"])
        history = list(init.get("history", []))  # the earlier stages' record travels with the weights
        history.append({"init": str(args.init), "init_step": int(init["step"]), "init_steps": init.get("steps"),
                        "data_offset": args.data_offset, **({"grown_language_layers": grown} if grown else {}),
                        **({"image_grid": list(regrid)} if regrid else {})})
        LOG.info("warm start from %s (step %d)", args.init, int(init["step"]))
    mllm.train()
    held_out = held_out_samples(args.seed, args.scene_size, args.eval_scenes, args.describe_share, grid)
    stream = PretextText(seed=args.seed, size=args.scene_size, batch_size=args.batch_size,
                         describe_share=args.describe_share, start_batch=start + args.data_offset, grid=grid)
    loader = DataLoader(stream, batch_size=None, collate_fn=_as_is, num_workers=args.workers, worker_init_fn=_one_thread)
    end = args.steps if args.stop_at is None else min(args.stop_at, args.steps)
    log_file = open(args.work_dir / "log.jsonl", "a", encoding="utf-8")
    bar = tqdm(total=args.steps, initial=start, desc="pretrain tiny LLaVA", dynamic_ncols=True, mininterval=10.0)
    step, t0 = start, time.time()
    metrics: Dict[str, float] = {}

    def save(final: bool) -> None:
        torch.save({"model": mllm.state_dict(), "heads": heads.state_dict() if heads is not None else None,
                    "relation": relation.state_dict() if relation is not None else None,
                    "optimizer": optimizer.state_dict(), "step": step,
                    "elapsed_s": elapsed_before + time.time() - t0, "history": history, "steps": args.steps,
                    "mllm_config": dataclasses.asdict(config)}, state_file)
        manifest = {
            "what": "tiny LLaVA (CLIP tower + projector + language model), all trained on synthetic scenes' questions, "
                    "answers and scene descriptions (next-token loss on the answer) plus, with patch_weight > 0, "
                    "per-patch visible-category and amodal-coverage losses on the image tokens and, with "
                    "relation_weight > 0, a what-covers-it loss at each object name; training/pretrain_mllm.py",
            "model": args.model, "image_size": config.vision_image_size, "vision_layers": config.vision_layers,
            "language_layers": config.num_layers, "language_width": config.hidden_size,
            "steps_done": step, "steps_schedule": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "warmup": args.warmup, "weight_decay": args.weight_decay, "describe_share": args.describe_share,
            "patch_weight": args.patch_weight, "hidden_weight": args.hidden_weight,
            "relation_weight": args.relation_weight,
            "relation_layer": args.relation_layer if relation is not None else None,
            "ground_weight": args.ground_weight,
            **({"ground_layer": args.ground_layer, "ground_head": args.ground_head} if grounding is not None else {}),
            "init": str(args.init) if args.init else None,
            "seed": args.seed, "scene_size": args.scene_size, "pretext_seed_key": PRETEXT_SEED_KEY,
            "held_out": metrics, "cpu_seconds_wall": round(elapsed_before + time.time() - t0, 1),
            "threads": args.threads, "device": str(args.device), "dtype": "float16", "history": history,
            "command": command_line("training/pretrain_mllm.py", argv),
            "torch": torch.__version__, "python": platform.python_version(), "final": final,
        }
        save_llava_dir(mllm, args.out, manifest)

    for batch in loader:
        if step >= end:
            break
        lr = warmup_decay_lr(step, base_lr=args.lr, warmup_steps=args.warmup, total_steps=args.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        parts = pretext_losses(mllm, heads, batch, relation, grounding)
        loss = (parts["text"] + args.patch_weight * sum(v for k, v in parts.items() if k.startswith("patch_"))
                + args.hidden_weight * parts.get("hidden", 0.0) + args.relation_weight * parts.get("relation", 0.0)
                + args.ground_weight * parts.get("ground", 0.0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix({k: f"{v.item():.3f}" for k, v in parts.items()} | {"lr": f"{lr:.2e}"}, refresh=False)
        record: Dict[str, object] = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()}, "lr": lr,
                                     "elapsed_s": elapsed_before + time.time() - t0}
        if step % args.eval_every == 0 or step == end:
            metrics = evaluate(mllm, held_out, args.eval_generate, heads, relation, grounding)
            record.update(metrics)
            history.append({"step": step, **metrics})
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
            save(final=step == args.steps)
        if step % 10 == 0 or "text_loss" in record:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
    bar.close()
    log_file.close()
    LOG.info("step %d of %d; weights in %s%s", step, args.steps, args.out,
             "" if step >= args.steps else " (continue with the same command)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
