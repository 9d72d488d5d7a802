"""aura-convert-weights: the LLaVA / LISA checkpoints people have -> the files AURA's loaders read.

    aura-convert-weights SRC OUT [--base LLAMA_DIR] [--clip CLIP_DIR] [--dtype bfloat16]

SRC is a local HF-style directory of an *original* LLaVA-repo checkpoint (`LlavaLlamaForCausalLM`, haotian-liu/LLaVA:
LLaVA-7B-v1-1, LLaVA-Lightning, LLaVA-Llama-2, LLaVA-1.5) or of a merged LISA checkpoint (dvlab-research/LISA:
`LISAForCausalLM`, i.e. the same LLaVA plus SAM under `model.visual_model.*` and the [SEG] projection under
`model.text_hidden_fcs.0.*`). What is written to OUT:

| path | what | used as |
|---|---|---|
| `llava/` | an llava-hf (`LlavaForConditionalGeneration`) directory: config, safetensors, tokenizer, CLIP preprocessor | `model_overrides.mllm.pretrained_path` |
| `sam.pth` | LISA only: its SAM (ViT-H encoder, prompt encoder, the mask decoder LISA fine-tuned), segment-anything keys | `model_overrides.vision.checkpoint` |
| `prompt_projection.safetensors` | LISA only: the [SEG] projection (`text_hidden_fcs`) as our Prompt Encoder's `projection.*` | `model_overrides.prompt_projection` |
| `aura_weights.yaml` | the `model_overrides` to train on these weights (paste into a training config) | |
| `conversion.json` | what was done: source, kind, delta, projector, the tensors deliberately left out | |

Key layouts (read from the two repositories' model code):
- Llama body: `model.embed_tokens`, `model.layers.N.*`, `model.norm`, `lm_head` -> the llava-hf language model.
- Projector: `model.mm_projector.{weight,bias}` (v1, one Linear) or `model.mm_projector.{0,2}.*` (1.5, `mlp2x_gelu`).
  llava-hf's projector is always Linear-act-Linear, so a v1 Linear becomes `linear_1` = the Linear, activation
  "linear" (identity) and `linear_2` = the identity matrix with zero bias: the same function, exactly.
- CLIP tower: `model.vision_tower.vision_tower.vision_model.*` when the checkpoint holds it (LLaVA-1.5); LLaVA v1 and
  LISA leave it out (they load `openai/clip-vit-large-patch14` at run time), so `--clip DIR` must name a local copy
  of that CLIP (its `vision_model.*` is taken, the text half ignored).
- Delta checkpoints (LLaVA-7B-v1-1 is published as a delta over LLaMA-7B): `--base` names the HF LLaMA directory;
  as LLaVA's apply_delta, every tensor present in the base is added to the delta (embed_tokens / lm_head, which have
  more rows in LLaVA, only on the base's rows) and the projector is taken as is.

Strict: every tensor of SRC is either converted or on the documented list of recomputed buffers (`rotary_emb.inv_freq`,
CLIP `position_ids`) or the unused CLIP text half; anything else (e.g. unmerged LoRA, LLaVA-NeXT's `image_newline`)
is an error naming the keys. The written llava directory is loaded back by transformers with `strict` key checks.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import yaml

LOG = logging.getLogger("aura.convert")

LLAVA_DIR = "llava"
SAM_FILE = "sam.pth"
PROJECTION_FILE = "prompt_projection.safetensors"
OVERRIDES_FILE = "aura_weights.yaml"
REPORT_FILE = "conversion.json"

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")
# Buffers the original checkpoints carry but every model recomputes (not weights).
RECOMPUTED = re.compile(r"(^|\.)(rotary_emb\.inv_freq|position_ids)$")
CLIP_UNUSED = re.compile(r"^(text_model\.|text_projection\.|visual_projection\.|logit_scale$)")
LISA_SAM_PREFIX = "model.visual_model."
LISA_FCS_PREFIX = "model.text_hidden_fcs.0."
LISA_FCS = {"0.weight": "projection.0.weight", "0.bias": "projection.0.bias",
            "2.weight": "projection.2.weight", "2.bias": "projection.2.bias"}


class ConversionError(ValueError):
    """A source checkpoint that does not have the layout this tool converts (the message names the keys)."""


# ----------------------------------------------------------------------------- reading checkpoints


def read_state_dict(directory: Path) -> Dict[str, torch.Tensor]:
    """All tensors of an HF-style checkpoint directory: (sharded) safetensors or (sharded) pytorch_model.bin.

    .bin files are read with `torch.load(weights_only=True, mmap=True)`: nothing is unpickled and a 7B checkpoint is
    not copied into memory up front.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise ConversionError(f"{directory}: not a directory")
    files: List[Path] = []
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (directory / index).is_file():
            weight_map = json.loads((directory / index).read_text())["weight_map"]
            files = [directory / name for name in sorted(set(weight_map.values()))]
            break
    else:
        for single in ("model.safetensors", "pytorch_model.bin"):
            if (directory / single).is_file():
                files = [directory / single]
                break
    if not files:
        raise ConversionError(f"{directory}: no model.safetensors / pytorch_model.bin (or their .index.json)")
    state: Dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            part = load_file(str(file))
        else:
            try:
                part = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as error:  # noqa: BLE001 - corrupt or unsafe pickle: say which file
                raise ConversionError(f"cannot read {file}: {error}") from error
        if not isinstance(part, Mapping):
            raise ConversionError(f"{file} is not a flat state dict")
        state.update(part)
    return state


def _read_json(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise ConversionError(f"{path} is missing")
    return json.loads(path.read_text())


def _layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


# ----------------------------------------------------------------------------- the parts


def apply_delta(delta: Dict[str, torch.Tensor], base: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """LLaVA's delta recipe: target = delta + base for every base tensor (rows beyond the base's kept as in the delta).

    Summed in float32, stored in the delta's dtype. Base tensors the delta lacks are an error (a wrong base).
    """
    base = {k: v for k, v in base.items() if not RECOMPUTED.search(k)}
    missing = sorted(set(base) - set(delta))
    if missing:
        raise ConversionError(f"--base has {len(missing)} tensor(s) the delta lacks (a wrong base?): {missing[:5]}")
    out = dict(delta)
    for key, b in base.items():
        d = delta[key]
        if d.shape == b.shape:
            out[key] = (d.float() + b.float()).to(d.dtype)
        elif key in ("model.embed_tokens.weight", "lm_head.weight") and d.dim() == 2 and d.shape[1] == b.shape[1] \
                and d.shape[0] >= b.shape[0]:
            summed = d.float().clone()
            summed[: b.shape[0]] += b.float()
            out[key] = summed.to(d.dtype)
        else:
            raise ConversionError(f"delta '{key}' has shape {tuple(d.shape)}, the base {tuple(b.shape)}")
    return out


def _vision_config_from_tensors(vision: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """CLIP vision sizes from the tower's tensors (heads: CLIP's head size 64)."""
    patch = vision["embeddings.patch_embedding.weight"]
    positions = vision["embeddings.position_embedding.weight"].shape[0]
    grid = int(round(math.sqrt(positions - 1)))
    hidden = int(patch.shape[0])
    return {
        "hidden_size": hidden,
        "intermediate_size": int(vision["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": _layers(vision, "encoder.layers."),
        "num_attention_heads": max(hidden // 64, 1),
        "patch_size": int(patch.shape[-1]),
        "image_size": int(patch.shape[-1]) * grid,
    }


def _clip_tower(state: Dict[str, torch.Tensor], clip_dir: Optional[Path]) -> Tuple[Dict[str, torch.Tensor], Any, List[str]]:
    """(CLIP vision tensors without the `vision_model.` prefix, CLIPVisionConfig, ignored keys) from SRC or --clip."""
    from transformers import CLIPVisionConfig

    inside = "model.vision_tower.vision_tower.vision_model."
    tower = {k[len(inside):]: state.pop(k) for k in [k for k in state if k.startswith(inside)]}
    ignored: List[str] = []
    if tower and clip_dir is None:
        config = CLIPVisionConfig(**_vision_config_from_tensors(tower))
    elif clip_dir is not None:
        clip_state = read_state_dict(clip_dir)
        clip_tower: Dict[str, torch.Tensor] = {}
        unknown = []
        for key, value in clip_state.items():
            if key.startswith("vision_model."):
                clip_tower[key[len("vision_model."):]] = value
            elif CLIP_UNUSED.search(key):
                ignored.append(f"{clip_dir}:{key}")
            else:
                unknown.append(key)
        if unknown:
            raise ConversionError(f"--clip {clip_dir}: unexpected tensors {sorted(unknown)[:5]}")
        if tower:
            LOG.warning("SRC holds its own CLIP tower; using --clip %s instead", clip_dir)
        tower = clip_tower
        config = CLIPVisionConfig.from_pretrained(str(clip_dir), local_files_only=True)
    else:
        raise ConversionError(
            "the checkpoint holds no CLIP vision tower (LLaVA v1 and LISA load openai/clip-vit-large-patch14 at run "
            "time): pass --clip DIR, a local copy of that CLIP model (224 px; -336 for LLaVA-1.5)"
        )
    for key in [k for k in tower if RECOMPUTED.search(k)]:
        ignored.append(f"vision_model.{key}")
        del tower[key]
    return tower, config, ignored


def _projector(state: Dict[str, torch.Tensor], hidden: int) -> Tuple[Dict[str, torch.Tensor], str, str]:
    """(llava-hf projector tensors, activation, the source's projector type)."""
    prefix = "model.mm_projector."
    part = {k[len(prefix):]: state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
    if set(part) == {"weight", "bias"}:  # v1: one Linear; linear_2 = identity makes the MLP the same function
        w = part["weight"]
        return {"linear_1.weight": w, "linear_1.bias": part["bias"],
                "linear_2.weight": torch.eye(hidden, dtype=w.dtype), "linear_2.bias": torch.zeros(hidden, dtype=w.dtype)}, \
            "linear", "linear"
    if set(part) == {"0.weight", "0.bias", "2.weight", "2.bias"}:
        return {"linear_1.weight": part["0.weight"], "linear_1.bias": part["0.bias"],
                "linear_2.weight": part["2.weight"], "linear_2.bias": part["2.bias"]}, "gelu", "mlp2x_gelu"
    raise ConversionError(
        f"model.mm_projector.*: keys {sorted(part)} are neither a Linear (v1) nor mlp2x_gelu (1.5); not supported"
    )


def _llava_config(src_config: Mapping[str, Any], state: Mapping[str, torch.Tensor], vision_config: Any,
                  projector_act: str) -> Any:
    from transformers import LlamaConfig, LlavaConfig

    embed = state["model.embed_tokens.weight"]
    heads = int(src_config.get("num_attention_heads", 32))
    text = LlamaConfig(
        vocab_size=int(embed.shape[0]),
        hidden_size=int(embed.shape[1]),
        intermediate_size=int(state["model.layers.0.mlp.gate_proj.weight"].shape[0]),
        num_hidden_layers=_layers(state, "model.layers."),
        num_attention_heads=heads,
        num_key_value_heads=int(src_config.get("num_key_value_heads") or heads),
        rms_norm_eps=float(src_config.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(src_config.get("max_position_embeddings", 2048)),
        rope_theta=float(src_config.get("rope_theta", 10000.0)),
        bos_token_id=src_config.get("bos_token_id", 1),
        eos_token_id=src_config.get("eos_token_id", 2),
        pad_token_id=src_config.get("pad_token_id"),
        tie_word_embeddings=False,
    )
    select = src_config.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise ConversionError(f"mm_vision_select_feature '{select}' is not supported")
    grid = vision_config.image_size // vision_config.patch_size
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text,
        image_token_index=int(embed.shape[0]),  # placeholder: MultiModalLLM sets the tokenizer's <image> id
        image_seq_length=grid * grid + (1 if select == "cls_patch" else 0),
        projector_hidden_act=projector_act,
        vision_feature_layer=int(src_config.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="default" if select == "patch" else "full",
        tie_word_embeddings=False,
    )


def _write_llava(out: Path, config: Any, live: Dict[str, torch.Tensor], dtype: Optional[torch.dtype]) -> None:
    """Assign the tensors to a meta-device LlavaForConditionalGeneration (strict: every key checked) and save it."""
    from transformers import LlavaForConditionalGeneration

    if dtype is not None:
        live = {k: v.to(dtype) if v.is_floating_point() else v for k, v in live.items()}
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    own = model.state_dict()
    missing = sorted(set(own) - set(live))
    unexpected = sorted(set(live) - set(own))
    if missing or unexpected:
        raise ConversionError(f"converted tensors do not fit llava-hf: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, value in live.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ConversionError(f"'{key}': shape {tuple(value.shape)}, llava-hf expects {tuple(own[key].shape)}")
    model.load_state_dict(live, strict=True, assign=True)
    model.config.dtype = str(next(iter(live.values())).dtype).replace("torch.", "")
    model.save_pretrained(str(out), max_shard_size="5GB")


def _copy_tokenizer(sources: Sequence[Path], out: Path) -> List[str]:
    for source in sources:
        present = [name for name in TOKENIZER_FILES if (source / name).is_file()]
        if present:
            for name in present:
                shutil.copy2(source / name, out / name)
            return [str(source / name) for name in present]
    raise ConversionError(f"no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}) in {', '.join(map(str, sources))}")


def _write_preprocessor(out: Path, clip_dir: Optional[Path], image_size: int) -> None:
    if clip_dir is not None and (clip_dir / "preprocessor_config.json").is_file():
        shutil.copy2(clip_dir / "preprocessor_config.json", out / "preprocessor_config.json")
        return
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(str(out))


# ----------------------------------------------------------------------------- the conversion


def convert(src: Path, out: Path, *, base: Optional[Path] = None, clip: Optional[Path] = None,
            dtype: Optional[str] = None, kind: str = "auto") -> Dict[str, Any]:
    """Convert SRC (original LLaVA or LISA) into OUT; returns the report also written to OUT/conversion.json."""
    from safetensors.torch import save_file

    src, out = Path(src), Path(out)
    torch_dtype = None
    if dtype:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ConversionError(f"--dtype '{dtype}' is not a torch dtype")
    src_config = _read_json(src / "config.json")
    if "vision_config" in src_config and "text_config" in src_config:
        raise ConversionError(f"{src} is already an llava-hf directory: point mllm.pretrained_path at it directly")
    state = read_state_dict(src)
    lora = sorted(k for k in state if ".lora_" in k or k.startswith("base_model.model."))
    if lora:
        raise ConversionError(f"{src} holds unmerged LoRA / peft keys (e.g. {lora[:3]}): merge them first "
                              "(LISA: merge_lora_weights_and_save_hf_model.py)")
    has_sam = any(k.startswith(LISA_SAM_PREFIX) for k in state)
    if kind == "auto":
        kind = "lisa" if has_sam else "llava"
    if kind not in ("llava", "lisa"):
        raise ConversionError(f"--kind must be auto, llava or lisa, got {kind!r}")
    if kind == "lisa" and not has_sam:
        raise ConversionError(f"{src}: no '{LISA_SAM_PREFIX}*' tensors, not a LISA checkpoint")
    if "model.embed_tokens.weight" not in state:
        raise ConversionError(f"{src}: no 'model.embed_tokens.weight': not an original LLaVA/LISA (LlavaLlamaForCausalLM) "
                              f"checkpoint (first keys: {sorted(state)[:5]})")
    report: Dict[str, Any] = {"source": str(src), "kind": kind, "architectures": src_config.get("architectures"),
                              "delta_base": str(base) if base else None, "ignored": []}
    if base is not None:
        state = apply_delta(state, read_state_dict(base))
    out.mkdir(parents=True, exist_ok=True)
    overrides: Dict[str, Any] = {"mllm": {}}

    # LISA's extras: SAM -> segment-anything .pth, text_hidden_fcs -> our projection.
    if kind == "lisa":
        sam = {k[len(LISA_SAM_PREFIX):]: state.pop(k).contiguous() for k in [k for k in state if k.startswith(LISA_SAM_PREFIX)]}
        fcs = {k[len(LISA_FCS_PREFIX):]: state.pop(k) for k in [k for k in state if k.startswith(LISA_FCS_PREFIX)]}
        if set(fcs) != set(LISA_FCS):
            raise ConversionError(f"{LISA_FCS_PREFIX}*: expected {sorted(LISA_FCS)}, found {sorted(fcs)}")
        unknown_sam = sorted(k for k in sam if not k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")))
        if unknown_sam:
            raise ConversionError(f"{LISA_SAM_PREFIX}*: unexpected SAM tensors {unknown_sam[:5]}")
        torch.save(sam, out / SAM_FILE)
        save_file({LISA_FCS[k]: v.contiguous() for k, v in fcs.items()}, str(out / PROJECTION_FILE))
        overrides["vision"] = {"checkpoint": str((out / SAM_FILE).resolve())}
        overrides["prompt_projection"] = str((out / PROJECTION_FILE).resolve())
        report["sam_tensors"] = len(sam)
        report["projection_shapes"] = {LISA_FCS[k]: list(v.shape) for k, v in fcs.items()}

    tower, vision_config, ignored = _clip_tower(state, clip)
    report["ignored"] += ignored
    hidden = int(state["model.embed_tokens.weight"].shape[1])
    projector, act, projector_type = _projector(state, hidden)
    report["projector"] = projector_type

    live: Dict[str, torch.Tensor] = {}
    unknown = []
    for key in sorted(state):
        if RECOMPUTED.search(key):
            report["ignored"].append(key)
        elif key == "lm_head.weight":
            live["lm_head.weight"] = state[key]
        elif key.startswith("model."):
            live["model.language_model." + key[len("model."):]] = state[key]
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"{src}: tensors this tool does not know: {unknown[:8]}")
    live.update({"model.multi_modal_projector." + k: v for k, v in projector.items()})
    live.update({"model.vision_tower." + k: v for k, v in tower.items()})
    config = _llava_config(src_config, state, vision_config, act)
    llava_out = out / LLAVA_DIR
    if llava_out.exists():
        shutil.rmtree(llava_out)
    llava_out.mkdir(parents=True)
    try:
        _write_llava(llava_out, config, live, torch_dtype)
    except ConversionError as error:
        raise ConversionError(f"{src}: {error}") from error
    report["tokenizer"] = _copy_tokenizer([src], llava_out)
    _write_preprocessor(llava_out, clip, vision_config.image_size)
    report["image_size"] = vision_config.image_size
    report["mm_use_im_start_end"] = bool(src_config.get("mm_use_im_start_end", False))
    if report["mm_use_im_start_end"]:
        LOG.warning("the source was trained with <im_start>/<im_end> around the image; AURA's prompt does not add them")

    overrides["mllm"] = {"pretrained_path": str(llava_out.resolve()), "vision_image_size": vision_config.image_size,
                         "vision_patch_size": vision_config.patch_size}
    (out / OVERRIDES_FILE).write_text(
        "# model_overrides for a training config (or pass each as --set model_overrides.<key>=<value>)\n"
        + yaml.safe_dump({"model_overrides": overrides}, sort_keys=False), encoding="utf-8")
    report["model_overrides"] = overrides
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="aura-convert-weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="original LLaVA or merged LISA checkpoint directory")
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--base", type=Path, default=None, help="HF LLaMA directory a LLaVA delta is applied to")
    parser.add_argument("--clip", type=Path, default=None, help="local CLIP directory when SRC lacks the vision tower")
    parser.add_argument("--dtype", default=None, help="cast the weights (bfloat16, float16, float32); default: keep")
    parser.add_argument("--kind", default="auto", choices=("auto", "llava", "lisa"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = convert(args.src, args.out, base=args.base, clip=args.clip, dtype=args.dtype, kind=args.kind)
    except (ConversionError, OSError) as error:
        print(f"aura-convert-weights: error: {error}", file=sys.stderr)
        return 2
    print(f"converted {report['kind']} checkpoint -> {args.out}; train with the model_overrides in "
          f"{args.out / OVERRIDES_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
