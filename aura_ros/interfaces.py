"""The message types aura_ros speaks, for code that runs without ROS (bag runner, tests, benchmarks).

`make_typestore()` gives a rosbags typestore holding the ROS 2 standard messages plus aura_ros/msg/* (read from the
package's own .msg files, so there is one definition) and audio_common_msgs/AudioData (absent from rosbags' stores).
`RosbagsFactory` builds messages from it for the duck-typed helpers in `conversions`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import numpy as np

PACKAGE = "aura_ros"
MESSAGES = ("AmodalInstance", "AmodalSegmentation")

# ros-drivers/audio_common (ROS 2 branch), audio_common_msgs/msg/AudioData: raw audio bytes; format in parameters.
AUDIO_DATA_TYPE = "audio_common_msgs/msg/AudioData"
AUDIO_DATA_MSG = "uint8[] data\n"

IMAGE_TYPE = "sensor_msgs/msg/Image"
STRING_TYPE = "std_msgs/msg/String"
SEGMENTATION_TYPE = f"{PACKAGE}/msg/AmodalSegmentation"


def msg_dir() -> Path:
    """Directory holding aura_ros' .msg files: package data, the source checkout, or an installed ament share dir."""
    here = Path(__file__).resolve().parent
    candidates = [here / "msg", here.parent / "msg"]
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        pass
    else:
        try:
            candidates.append(Path(get_package_share_directory(PACKAGE)) / "msg")
        except PackageNotFoundError:
            pass
    for candidate in candidates:
        if all((candidate / f"{name}.msg").is_file() for name in MESSAGES):
            return candidate
    raise FileNotFoundError(f"aura_ros message definitions {MESSAGES} not found in any of {[str(c) for c in candidates]}")


def message_definitions(directory: Optional[Path] = None) -> Dict[str, str]:
    """Full type name -> .msg text for every custom type aura_ros needs (its own messages and AudioData)."""
    directory = msg_dir() if directory is None else Path(directory)
    definitions = {f"{PACKAGE}/msg/{name}": (directory / f"{name}.msg").read_text() for name in MESSAGES}
    definitions[AUDIO_DATA_TYPE] = AUDIO_DATA_MSG
    return definitions


def make_typestore(distro: str = "humble", directory: Optional[Path] = None) -> Any:
    """A rosbags typestore with the distro's standard messages plus every type from `message_definitions`."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    stores = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}
    if distro not in stores:
        raise ValueError(f"distro: unknown ROS 2 distribution {distro!r}, expected one of {sorted(stores)}")
    typestore = get_typestore(stores[distro])
    types: Dict[str, Any] = {}
    for name, text in message_definitions(directory).items():
        types.update(get_types_from_msg(text, name))
    typestore.register(types)
    return typestore


def register_missing(typestore: Any, names: Iterable[str]) -> None:
    """Add our custom definitions to another typestore (e.g. an AnyReader's) where it lacks them."""
    from rosbags.typesys import get_types_from_msg

    missing = {name: text for name, text in message_definitions().items() if name in names and name not in typestore.types}
    types: Dict[str, Any] = {}
    for name, text in missing.items():
        types.update(get_types_from_msg(text, name))
    if types:
        typestore.register(types)


class RosbagsFactory:
    """Message factory over a rosbags typestore: `make("sensor_msgs/msg/Image", **fields)`; uint8[] as numpy."""

    def __init__(self, typestore: Any) -> None:
        self.typestore = typestore

    def make(self, type_name: str, **fields: Any) -> Any:
        try:
            cls = self.typestore.types[type_name]
        except KeyError:
            raise KeyError(f"message type {type_name!r} is not registered in the typestore") from None
        return cls(**fields)

    @staticmethod
    def uint8_array(data: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)

    def serialize(self, message: Any, type_name: str) -> bytes:
        return bytes(self.typestore.serialize_cdr(message, type_name))
