"""The one set of sensor_msgs/Image <-> numpy and AuraResult -> message helpers, for the node and the bag runner alike.

Reading is duck-typed on field names (works on rclpy and rosbags messages); building goes through a message factory
with `make(type_name, **fields)` and `uint8_array(ndarray)` (rosbags: `interfaces.RosbagsFactory`; rclpy: the node's),
so no ROS import is needed here. Masks travel as mono8 0/255 crops of the amodal box with the source image's header.
"""
from __future__ import annotations

import array
from typing import Any, Optional, Protocol, Sequence, Tuple

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from aura_core.result import AuraInstance, AuraResult, Box

# encoding -> channels; the layouts the node reads and writes (8 bit per channel).
ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
# OpenCV-style type names cameras and cv_bridge send for the same layouts (cv_bridge reads 8UC3 as bgr8).
ALIASES = {"8uc1": "mono8", "8uc3": "bgr8", "8uc4": "bgra8"}
# Packed 4:2:2 YUV, 2 bytes per pixel (usb_cam, v4l2_camera): byte offsets of (Y0, U, Y1, V) in each pixel pair.
# sensor_msgs' "yuv422" is UYVY; "yuv422_yuy2" and the drivers' "yuyv" are YUYV.
YUV422 = {"yuv422": (1, 0, 3, 2), "uyvy": (1, 0, 3, 2), "yuv422_yuy2": (0, 1, 2, 3), "yuyv": (0, 1, 2, 3)}
MASK_ON = 255  # mono8 value of a mask pixel; 0 is off
# Overlay colours per instance (RGB), cycled.
PALETTE = np.array([(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)], np.uint8)
VISIBLE_ALPHA = 0.5  # how strongly a visible mask tints the overlay
HIDDEN_ALPHA = 0.25  # the same for the hidden (amodal minus visible) part


class MessageFactory(Protocol):
    def make(self, type_name: str, **fields: Any) -> Any: ...

    def uint8_array(self, data: np.ndarray) -> Any: ...


class ImageConversionError(ValueError):
    """An Image message that cannot be read: unknown encoding, inconsistent step or too little data."""


def message_bytes(data: Any) -> np.ndarray:
    """A uint8[] field (numpy array, bytes, array.array, memoryview or list of ints) as a flat uint8 array."""
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False).reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def input_encodings() -> Sequence[str]:
    """Every encoding an incoming Image may have (lower case; matching is case-insensitive)."""
    return sorted(set(ENCODINGS) | set(ALIASES) | set(YUV422))


def canonical_encoding(encoding: Any) -> str:
    """The encoding in lower case with aliases resolved (8UC3 -> bgr8); ImageConversionError when unsupported."""
    name = str(encoding).lower()
    name = ALIASES.get(name, name)
    if name not in ENCODINGS and name not in YUV422:
        raise ImageConversionError(f"image encoding {encoding!r} is not supported, expected one of {input_encodings()}")
    return name


def image_to_numpy(msg: Any) -> np.ndarray:
    """Pixels of an Image message in its own channel order: (H, W, C) uint8, or (H, W) for mono8.

    Honours `step` (row padding); packed YUV 4:2:2 comes back as its raw (H, W, 2) bytes. Raises
    ImageConversionError naming the problem.
    """
    encoding = canonical_encoding(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    channels = 2 if encoding in YUV422 else ENCODINGS[encoding]
    if encoding in YUV422 and width % 2:
        raise ImageConversionError(f"{encoding} image width {width} is odd (pixels come in pairs)")
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image size {width}x{height} is empty")
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageConversionError(f"image step {step} is smaller than width*channels = {row_bytes} for {encoding}")
    data = message_bytes(msg.data)
    if data.size < step * height:
        raise ImageConversionError(f"image data has {data.size} bytes, expected step*height = {step * height}")
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    if channels == 1:
        return rows
    return rows.reshape(height, width, channels)


def image_to_rgb(msg: Any) -> np.ndarray:
    """An Image message as a contiguous, writable (H, W, 3) uint8 RGB copy (the model's input; owns its memory)."""
    pixels = image_to_numpy(msg)
    encoding = canonical_encoding(msg.encoding)
    if encoding in YUV422:
        return yuv422_to_rgb(pixels, YUV422[encoding])
    if encoding == "mono8":
        return np.repeat(pixels[:, :, None], 3, axis=2)
    if encoding.startswith("bgr"):
        pixels = pixels[:, :, 2::-1]
    return np.array(pixels[:, :, :3], order="C", copy=True)


def yuv422_to_rgb(pixels: np.ndarray, order: Tuple[int, int, int, int]) -> np.ndarray:
    """(H, W, 2) packed 4:2:2 bytes -> (H, W, 3) RGB (BT.601, studio swing, as V4L2 cameras deliver it)."""
    height, width = pixels.shape[:2]
    pairs = pixels.reshape(height, width // 2, 4).astype(np.float32)
    y0, u, y1, v = (pairs[:, :, i] for i in order)
    y = np.stack([y0, y1], axis=2).reshape(height, width) - 16.0
    u = np.repeat(u, 2, axis=1) - 128.0
    v = np.repeat(v, 2, axis=1) - 128.0
    rgb = np.stack([1.164 * y + 1.596 * v, 1.164 * y - 0.392 * u - 0.813 * v, 1.164 * y + 2.017 * u], axis=2)
    return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


def numpy_to_image(factory: MessageFactory, pixels: np.ndarray, encoding: str, header: Any) -> Any:
    """An Image message from a (H, W, C) or (H, W) uint8 array laid out as `encoding`, with a dense step."""
    if encoding not in ENCODINGS:
        raise ImageConversionError(f"image encoding {encoding!r} is not supported, expected one of {sorted(ENCODINGS)}")
    channels = ENCODINGS[encoding]
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim == 2 and channels == 1:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] != channels:
        raise ImageConversionError(f"array of shape {pixels.shape} does not fit encoding {encoding} ({channels} channels)")
    height, width = pixels.shape[:2]
    return factory.make(
        "sensor_msgs/msg/Image",
        header=header,
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=width * channels,
        data=factory.uint8_array(pixels),
    )


def make_header(factory: MessageFactory, stamp_ns: int, frame_id: str = "") -> Any:
    """A std_msgs/Header for a time in nanoseconds."""
    stamp = factory.make("builtin_interfaces/msg/Time", sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))
    return factory.make("std_msgs/msg/Header", stamp=stamp, frame_id=frame_id)


def mask_crop(mask: np.ndarray, box: Optional[Box]) -> np.ndarray:
    """A bool HxW mask cut to `box` as mono8 0/255; (0, 0) for no box."""
    if box is None:
        return np.zeros((0, 0), np.uint8)
    crop = mask[box.y : box.y + box.height, box.x : box.x + box.width]
    return np.where(crop, MASK_ON, 0).astype(np.uint8)


def paste_mask(crop: np.ndarray, x_offset: int, y_offset: int, image_size: Tuple[int, int]) -> np.ndarray:
    """Inverse of `mask_crop` for planners: a mono8 crop at (x_offset, y_offset) -> bool mask of image_size (H, W)."""
    full = np.zeros(image_size, dtype=bool)
    height, width = crop.shape
    full[y_offset : y_offset + height, x_offset : x_offset + width] = crop > 0
    return full


def region_of_interest(factory: MessageFactory, box: Optional[Box]) -> Any:
    """A RegionOfInterest with the real width/height of `box`; all zero for None."""
    box = box or Box(x=0, y=0, width=0, height=0)
    return factory.make(
        "sensor_msgs/msg/RegionOfInterest",
        x_offset=box.x,
        y_offset=box.y,
        height=box.height,
        width=box.width,
        do_rectify=False,
    )


def instance_to_msg(factory: MessageFactory, instance: AuraInstance, header: Any, instance_id: int = 0) -> Any:
    """One AmodalInstance: boxes in source pixels and both masks cropped to the amodal box, carrying `header`.

    `instance_id` is the instance's value in the visible_labels image (its index + 1).
    """
    box = instance.amodal_box
    return factory.make(
        "aura_ros/msg/AmodalInstance",
        id=int(instance_id),
        phrase=instance.phrase,
        occlusion_rate=float(instance.occlusion_rate),
        visible_score=float(instance.visible_score),
        amodal_score=float(instance.amodal_score),
        amodal_box=region_of_interest(factory, box),
        visible_box=region_of_interest(factory, instance.visible_box),
        amodal_mask=numpy_to_image(factory, mask_crop(instance.amodal_mask, box), "mono8", header),
        visible_mask=numpy_to_image(factory, mask_crop(instance.visible_mask, box), "mono8", header),
    )


def segmentation_msg(
    factory: MessageFactory,
    *,
    header: Any,
    question: str,
    status: int,
    status_message: str = "",
    result: Optional[AuraResult] = None,
    latency: float = 0.0,
    request_id: str = "",
) -> Any:
    """An AmodalSegmentation; without a result (any failure status) it carries no instances and no image size.

    Instance i gets id i + 1, its value in the visible_labels image (`visible_labels`).
    """
    instances = [] if result is None else [
        instance_to_msg(factory, inst, header, index + 1) for index, inst in enumerate(result.instances)]
    height, width = (0, 0) if result is None else result.image_size
    return factory.make(
        "aura_ros/msg/AmodalSegmentation",
        header=header,
        request_id=str(request_id),
        status=int(status),
        status_message=status_message,
        question=question,
        answer="" if result is None else result.answer_text,
        image_height=int(height),
        image_width=int(width),
        latency=float(latency),
        instances=instances,
    )


def visible_labels(result: AuraResult) -> np.ndarray:
    """mono8 label image: pixels of instance i's visible mask hold i + 1, background 0 (later instances win)."""
    if len(result.instances) > 254:
        raise ValueError(f"{len(result.instances)} instances do not fit a mono8 label image (at most 254)")
    labels = np.zeros(result.image_size, np.uint8)
    for index, instance in enumerate(result.instances):
        labels[instance.visible_mask] = index + 1
    return labels


def overlay(image_rgb: np.ndarray, result: AuraResult) -> np.ndarray:
    """Picture for people: visible parts tinted strongly, hidden parts lightly, amodal box and phrase drawn."""
    canvas = image_rgb.astype(np.float32)
    for index, instance in enumerate(result.instances):
        colour = PALETTE[index % len(PALETTE)].astype(np.float32)
        hidden = instance.amodal_mask & ~instance.visible_mask
        canvas[instance.visible_mask] = (1 - VISIBLE_ALPHA) * canvas[instance.visible_mask] + VISIBLE_ALPHA * colour
        canvas[hidden] = (1 - HIDDEN_ALPHA) * canvas[hidden] + HIDDEN_ALPHA * colour
    picture = PILImage.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for index, instance in enumerate(result.instances):
        box = instance.amodal_box
        if box is None:
            continue
        colour = tuple(int(c) for c in PALETTE[index % len(PALETTE)])
        draw.rectangle([box.x, box.y, box.x + box.width - 1, box.y + box.height - 1], outline=colour)
        draw.text((box.x + 2, box.y + 1), f"{instance.phrase} ({instance.occlusion_rate:.0%} hidden)", fill=colour)
    return np.asarray(picture)


def instance_masks_full(instance_msg: Any, image_size: Tuple[int, int]) -> Sequence[np.ndarray]:
    """(visible, amodal) bool masks of image_size pasted back from an AmodalInstance message."""
    box = instance_msg.amodal_box
    return tuple(
        paste_mask(image_to_numpy(mask), int(box.x_offset), int(box.y_offset), image_size) if mask.width else np.zeros(image_size, bool)
        for mask in (instance_msg.visible_mask, instance_msg.amodal_mask)
    )
