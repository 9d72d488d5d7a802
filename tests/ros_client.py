"""A test client of the real aura node, run as its own process under a sourced ROS 2 + aura_ros workspace.

tests/test_ros_real.py starts it with `python3 tests/ros_client.py NAMESPACE` and drives it with one JSON command per
line on stdin; every command gets one JSON reply line on stdout ({"ok": true, ...} or {"ok": false, "error": ...}).
It needs only rclpy, the generated aura_ros messages and numpy, so it runs exactly as a robot's own client would.

Commands (field "op"):
  connect   {"timeout"}                           wait until the node is discovered (service, subscriptions)
  clock     {"sec"}                               publish /clock (the node runs with use_sim_time), every 50 ms
  image     {"width", "height", "encoding", "seed", "sec", "nanosec", "frame_id", "repeat", ...fuzz overrides}
  query     {"text"} or {"raw_hex"}               std_msgs/String on the query topic (raw_hex: serialized CDR)
  audio     {"hex", "stamped"}                    AudioData on `speech`, or AudioDataStamped on `speech_stamped`
  ask       {"question", "request_id", "timeout"} call the `ask` service
  wait      {"count", "timeout"}                  wait until `count` segmentations have arrived
  received  {}                                    every segmentation so far, summarised, plus labels/overlays
  late      {"timeout"}                           a new transient-local subscriber: what it gets at once
  quit      {}
"""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Dict, List

import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from std_msgs.msg import String

from aura_ros.msg import AmodalSegmentation
from aura_ros.srv import Ask

RELIABLE = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC3": 3, "8UC1": 1, "yuv422": 2, "yuyv": 2}


def picture(width: int, height: int, seed: int) -> np.ndarray:
    """A deterministic RGB picture: a few coloured rectangles (one partly hiding another) on a grey ground."""
    rng = np.random.default_rng(seed)
    rgb = np.full((height, width, 3), 128, np.uint8)
    for _ in range(3):
        w, h = rng.integers(width // 5, width // 2), rng.integers(height // 5, height // 2)
        x, y = rng.integers(0, width - w), rng.integers(0, height - h)
        rgb[y:y + h, x:x + w] = rng.integers(0, 255, 3)
    return rgb


def mask_summary(mask: Image, box: Any) -> Dict[str, Any]:
    data = np.frombuffer(bytes(mask.data), np.uint8)
    ok = mask.encoding == "mono8" and mask.width == box.width and mask.height == box.height
    ok = ok and mask.step >= mask.width and data.size >= mask.step * mask.height
    values: List[int] = []
    if ok and mask.height and mask.width:
        crop = data[: mask.step * mask.height].reshape(mask.height, mask.step)[:, : mask.width]
        values = sorted(int(v) for v in np.unique(crop))
    return {"decodable": bool(ok), "values": values, "frame_id": mask.header.frame_id,
            "stamp": [mask.header.stamp.sec, mask.header.stamp.nanosec]}


def summary(msg: AmodalSegmentation) -> Dict[str, Any]:
    out = {
        "stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec], "frame_id": msg.header.frame_id,
        "status": int(msg.status), "status_message": msg.status_message, "question": msg.question,
        "answer": msg.answer, "size": [int(msg.image_height), int(msg.image_width)],
        "request_id": getattr(msg, "request_id", None), "instances": [],
    }
    for inst in msg.instances:
        out["instances"].append({
            "id": getattr(inst, "id", None), "phrase": inst.phrase, "occlusion_rate": float(inst.occlusion_rate),
            "amodal_box": [inst.amodal_box.x_offset, inst.amodal_box.y_offset, inst.amodal_box.width, inst.amodal_box.height],
            "amodal_mask": mask_summary(inst.amodal_mask, inst.amodal_box),
            "visible_mask": mask_summary(inst.visible_mask, inst.amodal_box),
        })
    return out


def image_summary(msg: Image) -> Dict[str, Any]:
    data = np.frombuffer(bytes(msg.data), np.uint8)
    values = sorted(int(v) for v in np.unique(data)) if msg.encoding == "mono8" else []
    return {"stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec], "frame_id": msg.header.frame_id,
            "encoding": msg.encoding, "size": [msg.height, msg.width], "bytes": int(data.size), "values": values}


class Client:
    def __init__(self, namespace: str) -> None:
        self.node = rclpy.create_node("aura_test_client", namespace=namespace)
        self.lock = threading.Lock()
        self.segmentations: List[Dict[str, Any]] = []
        self.images: Dict[str, List[Dict[str, Any]]] = {"visible_labels": [], "overlay": []}
        self.texts: Dict[str, List[str]] = {"answer": [], "transcript": []}
        self.camera = self.node.create_publisher(Image, "camera", qos_profile_sensor_data)
        self.query = self.node.create_publisher(String, "query", 100)
        self.clock = self.node.create_publisher(Clock, "/clock", 10)
        self.speech = None
        try:
            from audio_common_msgs.msg import AudioData

            self.speech = self.node.create_publisher(AudioData, "speech", 100)
            self.audio_type = AudioData
            from audio_common_msgs.msg import AudioDataStamped

            self.speech_stamped = self.node.create_publisher(AudioDataStamped, "speech_stamped", 100)
            self.stamped_type = AudioDataStamped
        except ImportError:
            pass
        self.node.create_subscription(AmodalSegmentation, "segmentation", self._on_segmentation, RELIABLE)
        for topic in self.images:
            self.node.create_subscription(Image, topic, lambda m, t=topic: self._append(self.images[t], image_summary(m)), RELIABLE)
        for topic in self.texts:
            self.node.create_subscription(String, topic, lambda m, t=topic: self._append(self.texts[t], m.data), RELIABLE)
        self.ask_client = self.node.create_client(Ask, "ask")
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _append(self, store: List[Any], item: Any) -> None:
        with self.lock:
            store.append(item)

    def _on_segmentation(self, msg: AmodalSegmentation) -> None:
        self._append(self.segmentations, summary(msg))

    # ------------------------------------------------------------------ commands
    def op_clock(self, sec: int) -> Dict[str, Any]:
        """Simulated time stands at `sec`: published now and then every 50 ms (a late subscriber gets it too)."""
        msg = Clock()
        msg.clock.sec = int(sec)
        self.clock.publish(msg)
        if not hasattr(self, "_clock_timer"):
            self._clock_msg = msg
            self._clock_timer = self.node.create_timer(0.05, lambda: self.clock.publish(self._clock_msg))
        self._clock_msg = msg
        return {}

    def op_image(self, width: int, height: int, encoding: str = "rgb8", seed: int = 0, sec: int = 0, nanosec: int = 0,
                 frame_id: str = "camera", repeat: int = 1, period: float = 0.05, step: int = -1, data_len: int = -1,
                 fill: int = -1) -> Dict[str, Any]:
        msg = Image()
        msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id = int(sec), int(nanosec), frame_id
        msg.height, msg.width, msg.encoding = int(height), int(width), encoding
        channels = CHANNELS.get(encoding, 3)
        if fill >= 0:  # fuzz: any bytes at all
            data = bytes([fill % 256]) * max(data_len, 0)
            msg.step = int(step if step >= 0 else width * channels)
        else:
            rgb = picture(width, height, seed)
            if encoding in ("bgr8", "bgra8"):
                rgb = rgb[:, :, ::-1]
            if encoding in ("mono8", "8UC1"):
                pixels = rgb[:, :, :1]
            elif encoding in ("rgba8", "bgra8"):
                pixels = np.concatenate([rgb, np.full((height, width, 1), 255, np.uint8)], axis=2)
            elif encoding in ("yuv422", "yuyv"):
                pixels = np.full((height, width, 2), 128, np.uint8)
                pixels[:, :, 0 if encoding == "yuyv" else 1] = rgb.mean(axis=2).astype(np.uint8)
            else:
                pixels = rgb
            data = np.ascontiguousarray(pixels).tobytes()
            msg.step = int(step if step >= 0 else width * channels)
            if step > width * channels:  # padded rows
                rows = np.frombuffer(data, np.uint8).reshape(height, width * channels)
                data = np.concatenate([rows, np.zeros((height, step - width * channels), np.uint8)], axis=1).tobytes()
            if data_len >= 0:
                data = data[:data_len]
        msg.data = data
        for index in range(int(repeat)):
            self.camera.publish(msg)
            if index + 1 < repeat:
                time.sleep(period)
        return {}

    def op_connect(self, timeout: float = 60.0) -> Dict[str, Any]:
        """Waits until the node is discovered: its service is up and it subscribes to camera, query and /clock."""
        deadline = time.monotonic() + timeout
        publishers = (self.camera, self.query, self.clock)
        while time.monotonic() < deadline:
            if self.ask_client.service_is_ready() and all(p.get_subscription_count() > 0 for p in publishers):
                return {"seconds_left": round(deadline - time.monotonic(), 1)}
            time.sleep(0.05)
        raise TimeoutError(f"the node was not discovered within {timeout} s")

    def op_query(self, text: str = "", raw_hex: str = "") -> Dict[str, Any]:
        if raw_hex:
            self.query.publish(bytes.fromhex(raw_hex))  # serialized CDR, e.g. a string that is not UTF-8
        else:
            self.query.publish(String(data=text))
        return {}

    def op_audio(self, hex: str, stamped: bool = False) -> Dict[str, Any]:  # noqa: A002 - the command's field name
        if self.speech is None:
            return {"skipped": "audio_common_msgs not installed"}
        audio = self.audio_type(data=bytes.fromhex(hex))
        if stamped:
            msg = self.stamped_type(audio=audio)
            msg.header.stamp = self.node.get_clock().now().to_msg()
            self.speech_stamped.publish(msg)
        else:
            self.speech.publish(audio)
        return {}

    def op_ask(self, question: str, request_id: str = "", timeout: float = 60.0) -> Dict[str, Any]:
        if not self.ask_client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError("the ask service did not appear")
        request = Ask.Request(question=question)
        if hasattr(request, "request_id"):
            request.request_id = request_id
        start = time.monotonic()
        future = self.ask_client.call_async(request)
        while not future.done() and time.monotonic() - start < timeout:
            time.sleep(0.01)
        if not future.done():
            raise TimeoutError(f"no answer from ask within {timeout} s")
        return {"result": summary(future.result().result), "seconds": time.monotonic() - start}

    def op_wait(self, count: int, timeout: float = 60.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.segmentations) >= count:
                    break
            time.sleep(0.01)
        with self.lock:
            return {"count": len(self.segmentations)}

    def op_received(self) -> Dict[str, Any]:
        with self.lock:
            return {"segmentations": list(self.segmentations), "images": dict(self.images), "texts": dict(self.texts)}

    def op_late(self, timeout: float = 10.0) -> Dict[str, Any]:
        got: List[Dict[str, Any]] = []
        sub = self.node.create_subscription(AmodalSegmentation, "segmentation", lambda m: got.append(summary(m)), LATCHED)
        deadline = time.monotonic() + timeout
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        self.node.destroy_subscription(sub)
        return {"got": got}


def main() -> int:
    rclpy.init()
    client = Client(sys.argv[1] if len(sys.argv) > 1 else "/")
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        if op == "quit":
            break
        try:
            reply = {"ok": True, **getattr(client, f"op_{op}")(**command)}
        except Exception as error:  # noqa: BLE001 - reported to the test
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)
    client.executor.shutdown()
    client.node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
