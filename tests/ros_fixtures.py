"""Helpers for the tests of aura_ros (plain functions and classes; the fixtures are in conftest.py): synthetic scenes,
a deterministic scene pipeline, bag and speech makers."""
from __future__ import annotations

import hashlib
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from aura_core.data.synthetic import SyntheticScene, generate_scene
from aura_core.result import AuraInstance, AuraResult
from aura_ros import conversions, interfaces

SCENE_SIZE = 64


def scenes(count: int, seed: int = 0, size: int = SCENE_SIZE) -> List[SyntheticScene]:
    rng = np.random.default_rng(seed)
    return [generate_scene(rng, size) for _ in range(count)]


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class ScenePipeline:
    """Stands in for AuraPipeline in unit tests: answers with the true masks of the scene the image shows.

    Every answer names the scene's first `objects` objects. With a `gate`, each `ask` waits (after setting `started`)
    until the test opens the gate: inference is "running" for exactly as long as the test wants, no sleeping.
    """

    def __init__(self, scene_list: Sequence[SyntheticScene], *, objects: int = 2,
                 gate: Optional[threading.Event] = None) -> None:
        self.scenes = {_key(s.image): s for s in scene_list}
        self.objects = objects
        self.gate = gate
        self.questions: List[str] = []
        self.embedded: List[str] = []
        self.started = threading.Event()  # set by every ask
        self.embedding_set = threading.Event()  # set by every set_image

    def set_image(self, image: np.ndarray) -> None:
        self.embedded.append(_key(image))
        self.embedding_set.set()

    def ask(self, image: np.ndarray, question: str) -> AuraResult:
        self.started.set()
        self.questions.append(question)
        if self.gate is not None and not self.gate.wait(60):
            raise TimeoutError("the test never opened the pipeline's gate")
        scene = self.scenes[_key(image)]
        chosen = scene.objects[: self.objects]
        instances = [
            AuraInstance(
                phrase=f"the {obj.name}",
                visible_mask=obj.visible,
                amodal_mask=obj.amodal,
                occlusion_rate=obj.occlusion_rate,
                visible_score=0.9,
                amodal_score=0.8,
            )
            for obj in chosen
        ]
        answer = " and ".join(f"the {obj.name} [SEG]" for obj in chosen) + "."
        return AuraResult(question=question, answer=answer, instances=instances, image_size=image.shape[:2])


def image_msg(factory: Any, rgb: np.ndarray, *, encoding: str = "rgb8", stamp_ns: int = 0, frame_id: str = "camera",
              pad: int = 0) -> Any:
    """An Image message of `rgb` in `encoding`, with `pad` extra bytes per row (step > width * channels)."""
    if encoding == "mono8":
        pixels = rgb[:, :, 0]
    else:
        pixels = rgb[:, :, ::-1] if encoding.startswith("bgr") else rgb
        if encoding.endswith("a8"):
            pixels = np.concatenate([pixels, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    header = conversions.make_header(factory, stamp_ns, frame_id)
    msg = conversions.numpy_to_image(factory, pixels, encoding, header)
    if pad:
        rows = np.asarray(msg.data).reshape(msg.height, msg.step)
        padded = np.concatenate([rows, np.full((msg.height, pad), 7, np.uint8)], axis=1)
        msg.step += pad
        msg.data = factory.uint8_array(padded)
    return msg


def write_bag(path: Path, typestore: Any, messages: Sequence[Tuple[str, str, int, Any]], storage: str = "mcap") -> None:
    """Writes (topic, type, timestamp ns, message-or-raw-bytes) tuples to a new rosbag2."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        connections: Dict[str, Any] = {}
        for topic, type_name, stamp, message in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, type_name, typestore=typestore)
            raw = message if isinstance(message, bytes) else bytes(typestore.serialize_cdr(message, type_name))
            writer.write(connections[topic], stamp, raw)


def read_bag(path: Path) -> Dict[str, List[Tuple[int, Any]]]:
    """topic -> [(timestamp, message)] of a bag, decoded with the definitions stored in it (no default typestore)."""
    from rosbags.highlevel import AnyReader

    out: Dict[str, List[Tuple[int, Any]]] = {}
    with AnyReader([path]) as reader:
        for connection, stamp, raw in reader.messages():
            out.setdefault(connection.topic, []).append((stamp, reader.deserialize(raw, connection.msgtype)))
    return out


def speak(text: str, sample_rate: int = 16000, silence: float = 0.6, voice: str = "en-us", rate: int = 160) -> bytes:
    """espeak-ng speech (`voice`, `rate` words per minute) as PCM S16LE mono at sample_rate, silence before and after."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", text], capture_output=True, check=True).stdout
    raw = subprocess.run(
        ["sox", "-t", "wav", "-", "-r", str(sample_rate), "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw", "-"],
        input=wav, capture_output=True, check=True,
    ).stdout
    gap = bytes(2 * int(silence * sample_rate))
    return gap + raw + gap


def words(text: str) -> List[str]:
    """Lower-case words without punctuation: how a transcript is compared with what was said."""
    import re

    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def rosbags_factory() -> interfaces.RosbagsFactory:
    return interfaces.RosbagsFactory(interfaces.make_typestore())


def collector() -> Tuple[Dict[str, List[Any]], Any]:
    """A publish(topic, message) callable that records everything, and its record."""
    published: Dict[str, List[Any]] = {}
    lock = threading.Lock()

    def publish(topic: str, message: Any) -> None:
        with lock:
            published.setdefault(topic, []).append(message)

    return published, publish


def espeak_available() -> Optional[str]:
    """None when espeak-ng and sox are installed, else the reason to skip."""
    import shutil

    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not installed (Debian packages)" if missing else None
