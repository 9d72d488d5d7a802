"""Model sizes live here and only here: dataclasses plus a registry of named configs.

`get_config("tiny")` is the CPU model the tests and the default training run use; `paper-7b` is the
paper's LLaVA-7B-v1-1 + SAM ViT-H, `paper-7b-llava15` the same with llava-hf 1.5 (CLIP-L/14 at 336 px, 576
image tokens, MLP projector). Paper-scale configs load real weights from local paths (`mllm.pretrained_path`,
`vision.checkpoint`, optionally `prompt_projection`); with a path left empty, building one is an error
(`WeightsError`) unless `allow_random_init` is set (latency benchmarks, tests).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple


@dataclass(frozen=True)
class MLLMConfig:
    """Multi-Modal LLM (LLaVA: CLIP vision tower + projector + Llama) and its LoRA."""

    pretrained_path: Optional[str] = None  # local HF-format LLaVA directory; None = random init, sizes below
    # Language model (Llama) sizes, used only for random init.
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    intermediate_size: int = 11008
    # CLIP vision tower sizes, used only for random init.
    vision_hidden_size: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_intermediate_size: int = 4096
    vision_image_size: int = 224
    vision_patch_size: int = 14
    max_length: int = 768  # longest conversation in tokens, the image's feature tokens (256 at 224/14) included
    # What happens to a sample longer than max_length (see MultiModalLLM.encode): "fit" drops the oldest history
    # rounds, then shortens the question (its first words kept), then cuts the answer after its last [SEG]; each
    # such sample is counted (MultiModalLLM.truncated, logged by the trainer). "error" raises instead.
    truncation: str = "fit"
    max_new_tokens: int = 512  # default longest generated answer (LISA generates up to 512)
    # LLaVA-v1 system line before the first "USER:"; empty for the tiny word-level model.
    system_prompt: str = (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    )
    dtype: str = "bfloat16"  # torch dtype of the LLaVA weights ("float32" on CPU)
    # LoRA on the language model's attention projections only (not the CLIP tower); lora_r = 0: no LoRA.
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: Tuple[str, ...] = ("q_proj", "v_proj")
    # Fully trained LM modules (as LISA: the rows of the new [SEG] token live in them).
    modules_to_save: Tuple[str, ...] = ("lm_head", "embed_tokens")
    train_projector: bool = False  # LISA freezes LLaVA's vision-to-text projector with the CLIP tower


@dataclass(frozen=True)
class VisionBackboneConfig:
    """SAM image encoder (segment_anything ImageEncoderViT)."""

    checkpoint: Optional[str] = None  # local SAM .pth (segment-anything format); None = random init
    image_size: int = 1024  # SAM input side after resize-longest-side + pad
    patch_size: int = 16
    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    global_attn_indexes: Tuple[int, ...] = (7, 15, 23, 31)
    window_size: int = 14


@dataclass(frozen=True)
class MaskDecoderConfig:
    """SAM prompt/mask-decoder sizes, shared by the Visible and the Amodal Mask Decoder."""

    prompt_embed_dim: int = 256  # SAM's transformer_dim; e_r and e_oa live in this space
    transformer_depth: int = 2
    transformer_mlp_dim: int = 2048
    transformer_heads: int = 8
    iou_head_hidden_dim: int = 256
    iou_head_depth: int = 3
    # SAM's decoder has 1 + 3 mask tokens; AURA uses only the single-mask output (multimask_output=False), but
    # keeping 3 multimask tokens makes the decoders load SAM's mask_decoder.* weights unchanged.
    num_multimask_outputs: int = 3


@dataclass(frozen=True)
class OcclusionEncoderConfig:
    """Sizes of the Occlusion Condition Encoder (E_OC) and the Spatial Occlusion Encoder (E_SO)."""

    condition_hidden_dim: int = 256  # hidden width of the e_r -> e_oa MLP
    spatial_hidden_channels: int = 32  # channels of E_SO's conv layers over the two predicted masks
    spatial_layers: int = 3  # 3x3 conv layers before the 1x1 classifier


@dataclass(frozen=True)
class LossWeights:
    """Weights of eqs. 1-4; the paper sums the terms with weight 1."""

    text: float = 1.0
    bce: float = 1.0
    dice: float = 1.0
    occlusion_rate: float = 1.0
    spatial: float = 1.0


@dataclass(frozen=True)
class AuraConfig:
    """Everything that fixes the model's shapes and which paper boxes exist (Table 2 ablation switches)."""

    name: str = "custom"
    # False: building with mllm.pretrained_path or vision.checkpoint empty is an error (the paper configs); set it to
    # true to build those parts with random weights on purpose.
    allow_random_init: bool = False
    # Optional safetensors with the Prompt Encoder's `projection.*` (e.g. LISA's [SEG] projection, written by
    # aura-convert-weights); None: random init.
    prompt_projection: Optional[str] = None
    mllm: MLLMConfig = field(default_factory=MLLMConfig)
    vision: VisionBackboneConfig = field(default_factory=VisionBackboneConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    use_occlusion_condition_encoder: bool = True  # E_OC (Table 2)
    use_spatial_occlusion_encoder: bool = True  # E_SO (Table 2)
    occlusion: OcclusionEncoderConfig = field(default_factory=OcclusionEncoderConfig)
    loss: LossWeights = field(default_factory=LossWeights)


_TINY = AuraConfig(
    name="tiny",
    allow_random_init=True,  # the tiny LLaVA has no pretrained weights
    mllm=MLLMConfig(
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        intermediate_size=256,
        vision_hidden_size=64,
        vision_layers=2,
        vision_heads=4,
        vision_intermediate_size=128,
        vision_image_size=64,
        vision_patch_size=16,
        max_length=256,
        max_new_tokens=64,
        system_prompt="",
        dtype="float32",
        lora_r=32,  # generous: the random-init LLM has to learn its text through LoRA + embeddings
        lora_alpha=32,
        lora_dropout=0.0,
        lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
    ),
    vision=VisionBackboneConfig(
        image_size=256, embed_dim=160, depth=3, num_heads=4, global_attn_indexes=(2,), window_size=8
    ),
    mask_decoder=MaskDecoderConfig(
        prompt_embed_dim=64, transformer_depth=2, transformer_mlp_dim=256, transformer_heads=4, iou_head_hidden_dim=64
    ),
    occlusion=OcclusionEncoderConfig(condition_hidden_dim=64, spatial_hidden_channels=16, spatial_layers=2),
)

_VIT_H = VisionBackboneConfig()
_VIT_L = VisionBackboneConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))
_VIT_B = VisionBackboneConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))
_LLAVA_7B = MLLMConfig()
_LLAVA_13B = MLLMConfig(hidden_size=5120, num_layers=40, num_heads=40, intermediate_size=13824)
# llava-hf/llava-1.5-*: CLIP-L/14 at 336 px (576 image tokens) and a 2-layer MLP projector; max_length leaves 448
# tokens for the question and answer after the image.
_LLAVA15_7B = MLLMConfig(vision_image_size=336, max_length=1024)
_LLAVA15_13B = dataclasses.replace(_LLAVA_13B, vision_image_size=336, max_length=1024)

CONFIGS: Dict[str, AuraConfig] = {
    "tiny": _TINY,
    "paper-7b": AuraConfig(name="paper-7b", mllm=_LLAVA_7B, vision=_VIT_H),
    "paper-7b-vit-l": AuraConfig(name="paper-7b-vit-l", mllm=_LLAVA_7B, vision=_VIT_L),
    "paper-7b-vit-b": AuraConfig(name="paper-7b-vit-b", mllm=_LLAVA_7B, vision=_VIT_B),
    "13b": AuraConfig(name="13b", mllm=_LLAVA_13B, vision=_VIT_H),
    "llama2-13b": AuraConfig(name="llama2-13b", mllm=_LLAVA_13B, vision=_VIT_H),
    "paper-7b-llava15": AuraConfig(name="paper-7b-llava15", mllm=_LLAVA15_7B, vision=_VIT_H),
    "13b-llava15": AuraConfig(name="13b-llava15", mllm=_LLAVA15_13B, vision=_VIT_H),
}


class ConfigError(ValueError):
    """A config key that does not exist or a value of the wrong kind."""


TRUNCATION_POLICIES = ("fit", "error")


class WeightsError(ConfigError):
    """A config that would build pretrained parts with random weights without saying so (allow_random_init)."""


def check_weights(config: "AuraConfig") -> None:
    """WeightsError naming the empty weight paths of a config that needs them (allow_random_init false)."""
    if config.mllm.truncation not in TRUNCATION_POLICIES:
        raise ConfigError(f"mllm.truncation must be one of {TRUNCATION_POLICIES}, got {config.mllm.truncation!r}")
    if config.allow_random_init:
        return
    empty = [key for key, value in (("mllm.pretrained_path", config.mllm.pretrained_path),
                                    ("vision.checkpoint", config.vision.checkpoint)) if not value]
    if empty:
        raise WeightsError(
            f"model config '{config.name}': {' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty, which "
            "would train/run a model with random weights; give the local weight paths (docs/TRAINING.md), or set "
            "allow_random_init: true to build random weights on purpose"
        )


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def dataclass_from_mapping(cls: type, values: Mapping[str, Any], *, where: str = "", source: str = "config") -> Any:
    """Instantiate a config dataclass from a (YAML/JSON) mapping, recursing into nested config dataclasses.

    Every unknown key or value of the wrong kind raises ConfigError naming `source` and the dotted key.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: '{where or 'top level'}' must be a mapping, got {type(values).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    defaults = cls()
    kwargs: Dict[str, Any] = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"{source}: unknown config key '{path}' (known: {', '.join(sorted(fields))})")
        default = getattr(defaults, key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = dataclass_from_mapping(type(default), value, where=path, source=source)
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{source}: '{path}' expects a list, got {value!r}")
            kwargs[key] = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: '{path}' expects true/false, got {value!r}")
            kwargs[key] = value
        elif isinstance(default, float) and isinstance(value, str) and _is_float(value):
            kwargs[key] = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        elif isinstance(default, (int, float)):
            wrong_kind = isinstance(value, bool) or not isinstance(value, (int, float))
            if wrong_kind or (isinstance(default, int) and not isinstance(value, int)):
                raise ConfigError(f"{source}: '{path}' expects a {type(default).__name__}, got {value!r}")
            kwargs[key] = type(default)(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def merge_nested(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """`base` with `overrides` applied key by key, nested mappings merged rather than replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge_nested(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_to_dict(config: AuraConfig) -> Dict[str, Any]:
    """Plain JSON-able dict (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value: Any) -> Any:
    """Nested dicts/lists/tuples with tuples turned into lists, for JSON and YAML."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def config_from_dict(values: Mapping[str, Any]) -> AuraConfig:
    """Inverse of `config_to_dict`; an unknown key raises ConfigError naming its dotted path."""
    return dataclass_from_mapping(AuraConfig, values)


def get_config(name: str, overrides: Optional[Mapping[str, Any]] = None) -> AuraConfig:
    """A registered config, optionally with nested overrides, e.g. {"mllm": {"pretrained_path": "/models/llava"}}."""
    if name not in CONFIGS:
        raise ConfigError(f"unknown model config '{name}' (known: {', '.join(sorted(CONFIGS))})")
    base = config_to_dict(CONFIGS[name])
    return config_from_dict(merge_nested(base, dict(overrides or {})))
