"""The rclpy node: ROS glue only, over aura_ros.core.AuraResponder (which the bag runner shares).

Parameters are declared with descriptors and validated at start (a bad one stops the node naming it), the model is
loaded once, images arrive with SensorDataQoS, inference runs on the responder's worker thread, and a MultiThreadedExecutor
keeps the `ask` service from blocking intake. Run: `ros2 run aura_ros aura_node` or `ros2 launch aura_ros aura.launch.py`.
"""
from __future__ import annotations

import array
import logging
import sys
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosidl_runtime_py.utilities import get_message
from sensor_msgs.msg import Image
from std_msgs.msg import String

from aura_ros.core import ANSWER, OVERLAY, SEGMENTATION, TRANSCRIPT, VISIBLE_LABELS, AuraResponder
from aura_ros.params import AuraParameters, ParameterError

LOG = logging.getLogger(__name__)

QUERY_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class RclpyFactory:
    """Message factory for aura_ros.conversions over the generated rclpy classes."""

    def __init__(self) -> None:
        self._classes: Dict[str, Any] = {}

    def make(self, type_name: str, **fields: Any) -> Any:
        cls = self._classes.get(type_name)
        if cls is None:
            cls = self._classes[type_name] = get_message(type_name)
        return cls(**fields)

    @staticmethod
    def uint8_array(data: np.ndarray) -> array.array:
        return array.array("B", np.ascontiguousarray(data, dtype=np.uint8).tobytes())


class RosLogHandler(logging.Handler):
    """Forwards Python logging (used by aura_ros.core and aura_core) to the node's rclpy logger."""

    def __init__(self, logger: Any) -> None:
        super().__init__()
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.ERROR:
            self.logger.error(message)
        elif record.levelno >= logging.WARNING:
            self.logger.warning(message)
        elif record.levelno >= logging.INFO:
            self.logger.info(message)
        else:
            self.logger.debug(message)


class AuraNode(Node):
    """Declares parameters, loads the model once, wires topics and the `ask` service to an AuraResponder."""

    def __init__(self, *, pipeline: Optional[Any] = None, loader: Optional[Callable[[AuraParameters], Any]] = None,
                 **node_options: Any) -> None:
        super().__init__("aura", **node_options)
        self._log_handler = RosLogHandler(self.get_logger())
        logging.getLogger("aura_ros").addHandler(self._log_handler)
        logging.getLogger("aura_core").addHandler(self._log_handler)
        self.params = self._declare_parameters()
        if pipeline is None:
            from aura_ros.bag_runner import load_pipeline

            pipeline = (loader or load_pipeline)(self.params)
        from aura_ros.msg import AmodalSegmentation
        from aura_ros.srv import Ask

        self._outputs = {
            SEGMENTATION: self.create_publisher(AmodalSegmentation, SEGMENTATION, 10),
            ANSWER: self.create_publisher(String, ANSWER, 10),
            TRANSCRIPT: self.create_publisher(String, TRANSCRIPT, 10),
            VISIBLE_LABELS: self.create_publisher(Image, VISIBLE_LABELS, 10),
            OVERLAY: self.create_publisher(Image, OVERLAY, 10),
        }
        self.responder = AuraResponder(
            pipeline=pipeline,
            factory=RclpyFactory(),
            publish=lambda topic, message: self._outputs[topic].publish(message),
            params=self.params,
            clock=lambda: self.get_clock().now().nanoseconds,
            threaded=True,
        )
        intake = MutuallyExclusiveCallbackGroup()
        self.create_subscription(Image, "image", self.responder.on_image, qos_profile_sensor_data, callback_group=intake)
        self.create_subscription(String, "query", self.responder.on_query, QUERY_QOS, callback_group=intake)
        if self.params.speech_enabled and self.responder.transcriber is not None:
            self._subscribe_speech()
        self.create_service(Ask, "ask", self._on_ask, callback_group=ReentrantCallbackGroup())
        self.get_logger().info(f"ready: backend {self.params.backend} on {self.params.device}")

    def _declare_parameters(self) -> AuraParameters:
        descriptions = AuraParameters.descriptions()
        values = {}
        for name, default in AuraParameters.defaults().items():
            # dynamic_typing: our validator names a wrongly typed value instead of rclpy's generic type error.
            descriptor = ParameterDescriptor(description=descriptions[name], read_only=True, dynamic_typing=True)
            values[name] = self.declare_parameter(name, default, descriptor).value
        return AuraParameters.from_mapping(values, source="node parameters")

    def _subscribe_speech(self) -> None:
        try:
            from audio_common_msgs.msg import AudioData
        except ImportError:
            self.get_logger().warning("audio_common_msgs is not installed: speech input disabled")
            return
        self.create_subscription(AudioData, "speech", self.responder.on_audio, QUERY_QOS,
                                 callback_group=MutuallyExclusiveCallbackGroup())

    def _on_ask(self, request: Any, response: Any) -> Any:
        """Service: queue the question like any other and wait (in this callback's own thread) for its result."""
        response.result = self.responder.submit(request.question).future.result()
        return response

    def destroy_node(self) -> None:
        self.responder.close()
        logging.getLogger("aura_ros").removeHandler(self._log_handler)
        logging.getLogger("aura_core").removeHandler(self._log_handler)
        super().destroy_node()


def main(argv: Optional[List[str]] = None) -> int:
    rclpy.init(args=argv)
    try:
        node = AuraNode()
    except ParameterError as error:
        get_logger("aura").fatal(str(error))
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
