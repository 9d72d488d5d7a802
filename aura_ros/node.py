"""The rclpy node: ROS glue only, over aura_ros.responder.AuraResponder (which the bag runner shares).

Parameters are declared with descriptors and validated at start (a bad one stops the node naming it), the model is
loaded once, images arrive with SensorDataQoS, inference runs on the responder's worker thread, and a MultiThreadedExecutor
keeps the `ask` service from blocking intake. Run: `ros2 run aura_ros aura_node` or `ros2 launch aura_ros aura.launch.py`.
"""
from __future__ import annotations

import array
import logging
import sys
import traceback
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.logging import LoggingSeverity, get_logger
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosidl_runtime_py.utilities import get_message
from sensor_msgs.msg import Image
from std_msgs.msg import String

from aura_ros.responder import ANSWER, OVERLAY, SEGMENTATION, TRANSCRIPT, VISIBLE_LABELS, AuraResponder
from aura_ros.params import AuraParameters, ParameterError

LOG = logging.getLogger(__name__)

QUERY_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Audio waits here while an utterance is transcribed (about 1 s on 2 cores): 100 chunks of 0.1 s keep 10 s.
SPEECH_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
# Latched: the newest segmentation is delivered to a subscriber that joins later (durability transient local).
SEGMENTATION_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
DETECTIONS = "detections"  # vision_msgs/Detection2DArray, when vision_msgs is installed
LOGGERS = ("aura_ros", "aura_core")  # Python loggers forwarded to the node's ROS logger


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
    """Forwards Python logging (used by aura_ros.responder and aura_core) to the node's rclpy logger."""

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


class AuraNodeLogic:
    """What the plain and the lifecycle node share; mixed into an rclpy Node (AuraNode) or LifecycleNode (lifecycle.py).

    `_configure` declares and validates the parameters, loads the model, creates the publishers and the responder;
    `_activate` starts intake (subscriptions and the `ask` service); `_deactivate` stops it again.
    """

    _releasing = False  # set by _release: from then on nothing is published

    def _configure(self, pipeline: Optional[Any] = None, loader: Optional[Callable[[AuraParameters], Any]] = None) -> None:
        self._releasing = False
        self._log_handler = RosLogHandler(self.get_logger())
        self._log_levels = {name: logging.getLogger(name).level for name in LOGGERS}
        for name in LOGGERS:  # INFO from aura_ros / aura_core reaches the ROS logger (Python's default is WARNING)
            logging.getLogger(name).addHandler(self._log_handler)
            logging.getLogger(name).setLevel(logging.DEBUG if self.get_logger().is_enabled_for(LoggingSeverity.DEBUG)
                                             else logging.INFO)
        self.params = self._declare_parameters()
        if self.params.speech_enabled:  # no speech model: stop now, naming speech_model, before the AURA model loads
            from aura_ros.speech import check_model

            check_model(self.params)
        if pipeline is None:
            from aura_ros.loading import load_pipeline  # imports aura_core (torch) only when the node loads a model

            pipeline = (loader or load_pipeline)(self.params)
        from aura_ros.msg import AmodalSegmentation

        self._outputs = {
            # The last segmentation stays available to late subscribers (a planner that starts after the question).
            SEGMENTATION: self.create_publisher(AmodalSegmentation, SEGMENTATION, SEGMENTATION_QOS),
            ANSWER: self.create_publisher(String, ANSWER, 10),
            TRANSCRIPT: self.create_publisher(String, TRANSCRIPT, 10),
            VISIBLE_LABELS: self.create_publisher(Image, VISIBLE_LABELS, 10),
            OVERLAY: self.create_publisher(Image, OVERLAY, 10),
        }
        self._detections = self._detection_publisher() if self.params.publish_detections else None
        self.dropped_callbacks = 0
        self.responder = AuraResponder(
            pipeline=pipeline,
            factory=RclpyFactory(),
            publish=self._publish,
            params=self.params,
            clock=lambda: self.get_clock().now().nanoseconds,
            threaded=True,
            speech_required=True,
        )
        self._setup_diagnostics()

    def _activate(self) -> None:
        before = set(self.subscriptions) | set(self.services)
        intake = MutuallyExclusiveCallbackGroup()
        self.create_subscription(Image, "image", self._guarded(self.responder.on_image, "image"), qos_profile_sensor_data,
                                 callback_group=intake)
        self.create_subscription(String, "query", self._guarded(self.responder.on_query, "query"), QUERY_QOS,
                                 callback_group=intake)
        if self.params.speech_enabled and self.responder.transcriber is not None:
            self._subscribe_speech()
        # Reentrant: several asks wait at once, each in its own executor thread (see executor_threads).
        from aura_ros.srv import Ask

        self.create_service(Ask, "ask", self._on_ask, callback_group=ReentrantCallbackGroup())
        self._intake = [entity for entity in list(self.subscriptions) + list(self.services) if entity not in before]

    def _deactivate(self) -> None:
        """Stops intake: the subscriptions and the service go; publishers, model and queue stay."""
        for entity in getattr(self, "_intake", []):
            if entity in set(self.subscriptions):
                self.destroy_subscription(entity)
            else:
                self.destroy_service(entity)
        self._intake = []

    def _setup_diagnostics(self) -> None:
        self._diagnostics = None
        if self.params.diagnostics_period > 0:
            try:
                from diagnostic_msgs.msg import DiagnosticArray
            except ImportError:
                self.get_logger().warning("diagnostic_msgs is not installed: no /diagnostics")
            else:
                self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
                # A steady clock: diagnostics keep coming under use_sim_time even when /clock stops.
                self.create_timer(self.params.diagnostics_period, self.publish_diagnostics,
                                  clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _detection_publisher(self) -> Optional[Any]:
        try:
            from vision_msgs.msg import Detection2DArray
        except ImportError:
            self.get_logger().info("vision_msgs is not installed: no detections output")
            return None
        return self.create_publisher(Detection2DArray, DETECTIONS, 10)

    def publish_diagnostics(self) -> Any:
        """One DiagnosticArray on /diagnostics: drops, queue depth, answers, worker state and latency; returns it."""
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        stats = {**self.responder.stats(), "dropped_callbacks": self.dropped_callbacks}
        level, message = DiagnosticStatus.OK, "ok"
        if not stats["worker_alive"]:
            level, message = DiagnosticStatus.ERROR, "inference worker is not running"
        elif stats["queue_depth"] >= self.params.queue_depth:
            level, message = DiagnosticStatus.WARN, "query queue full: questions are being dropped"
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: inference", message=message,
                                  hardware_id=self.params.device,
                                  values=[KeyValue(key=key, value=str(value)) for key, value in stats.items()])
        report = DiagnosticArray(status=[status])
        report.header.stamp = self.get_clock().now().to_msg()
        if self._diagnostics is not None and self.context.ok():
            self._diagnostics.publish(report)
        return report

    def detections_msg(self, segmentation: Any) -> Any:
        """vision_msgs/Detection2DArray of a segmentation: per instance its amodal box, phrase as class, score, id."""
        from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

        out = Detection2DArray(header=segmentation.header)
        for instance in segmentation.instances:
            box = instance.amodal_box
            detection = Detection2D(header=segmentation.header, id=str(instance.id))
            detection.bbox.center.position.x = box.x_offset + box.width / 2.0
            detection.bbox.center.position.y = box.y_offset + box.height / 2.0
            detection.bbox.size_x, detection.bbox.size_y = float(box.width), float(box.height)
            hypothesis = ObjectHypothesisWithPose()
            hypothesis.hypothesis.class_id = instance.phrase
            hypothesis.hypothesis.score = float(instance.amodal_score)
            detection.results.append(hypothesis)
            out.detections.append(detection)
        return out

    def _declare_parameters(self) -> AuraParameters:
        descriptions = AuraParameters.descriptions()
        values = {}
        for name, default in AuraParameters.defaults().items():
            # dynamic_typing: our validator names a wrongly typed value instead of rclpy's generic type error.
            descriptor = ParameterDescriptor(description=descriptions[name], read_only=True, dynamic_typing=True)
            if self.has_parameter(name):  # a lifecycle node configured again after cleanup
                values[name] = self.get_parameter(name).value
                continue
            values[name] = self.declare_parameter(name, default, descriptor).value
        # rclpy ignores values for undeclared names; a typo in the parameter file must not fall back to a default.
        unknown = sorted(name for name in getattr(self, "_parameter_overrides", {})
                         if not self.has_parameter(name) and not name.startswith("qos_overrides."))
        if unknown:
            raise ParameterError(unknown[0], f"unknown parameter (not declared by the node); known: {sorted(values)}")
        return AuraParameters.from_mapping(values, source="node parameters")

    def _publish(self, topic: str, message: Any) -> None:
        """Publishes unless the context is shut down (Ctrl-C shuts it before destroy_node runs) or the node is being
        destroyed (a worker still answering when close() gave up waiting for it)."""
        if not self.context.ok() or self._releasing:
            return
        try:
            self._outputs[topic].publish(message)
        except Exception as error:  # noqa: BLE001 - shut down or destroyed between the check and the call
            if self.context.ok() and not self._releasing:
                raise
            LOG.debug("not published on %s after shutdown: %s", topic, error)
            return
        if topic == SEGMENTATION and self._detections is not None and message.status == message.STATUS_OK:
            try:
                self._detections.publish(self.detections_msg(message))
            except Exception as error:  # noqa: BLE001 - an optional output must not cost the answer
                self.get_logger().error(f"no detections for {message.request_id}: {type(error).__name__}: {error}")

    def _guarded(self, callback: Callable[[Any], Any], what: str) -> Callable[[Any], None]:
        """An intake callback that logs and drops whatever it cannot handle, so no message can stop spin()."""

        def guarded(msg: Any) -> None:
            try:
                callback(msg)
            except Exception as error:  # noqa: BLE001 - the node keeps serving; the message is dropped
                self.dropped_callbacks += 1
                self.get_logger().error(f"dropping a {what} message: {type(error).__name__}: {error}",
                                        throttle_duration_sec=1.0)

        return guarded

    def _subscribe_speech(self) -> None:
        try:
            from audio_common_msgs.msg import AudioData
        except ImportError:
            self.get_logger().warning("audio_common_msgs is not installed: speech input disabled")
            return
        speech = MutuallyExclusiveCallbackGroup()  # one transcriber: both speech topics feed it one chunk at a time
        self.create_subscription(AudioData, "speech", self._guarded(self.responder.on_audio, "speech"), SPEECH_QOS,
                                 callback_group=speech)
        try:
            from audio_common_msgs.msg import AudioDataStamped
        except ImportError:
            return
        self.create_subscription(AudioDataStamped, "speech_stamped",
                                 self._guarded(lambda msg: self.responder.on_audio(msg.audio), "speech_stamped"),
                                 SPEECH_QOS, callback_group=speech)

    def _on_ask(self, request: Any, response: Any) -> Any:
        """Service: queue the question like any other and wait, in this callback's own executor thread, for its result.

        Never forever: after ask_timeout seconds the response is STATUS_FAILED saying so; a dead worker or a node
        shutting down answers at once. At most queue_depth + 1 asks wait at a time (a full queue drops the oldest
        question, which resolves its ask), and `executor_threads` leaves threads beyond those for intake.
        """
        query = self.responder.submit(request.question, request_id=getattr(request, "request_id", ""))
        try:
            response.result = query.future.result(timeout=self.params.ask_timeout)
        except FutureTimeout:
            response.result = self.responder.expire(query, f"no answer within ask_timeout = {self.params.ask_timeout:g} s")
        return response

    def _release(self) -> None:
        """Stops the worker (pending questions are answered dropped) and gives the Python loggers back."""
        if getattr(self, "responder", None) is not None:
            self.responder.close()
        self._releasing = True  # a worker still busy after close() gave up waiting must not publish on destroyed handles
        if getattr(self, "_log_handler", None) is not None:
            for name in LOGGERS:
                logging.getLogger(name).removeHandler(self._log_handler)
                logging.getLogger(name).setLevel(self._log_levels[name])
            self._log_handler = None


class AuraNode(AuraNodeLogic, Node):
    """Declares parameters, loads the model once, wires topics and the `ask` service to an AuraResponder."""

    def __init__(self, *, pipeline: Optional[Any] = None, loader: Optional[Callable[[AuraParameters], Any]] = None,
                 **node_options: Any) -> None:
        super().__init__("aura", **node_options)
        self._configure(pipeline, loader)
        self._activate()
        self.get_logger().info(f"ready: backend {self.params.backend} on {self.params.device}")

    def destroy_node(self) -> None:
        self._release()
        super().destroy_node()


def spin(executor: Any, node: AuraNode) -> None:
    """Spins until shutdown. An error that escapes rclpy itself (a message it cannot deserialize, e.g. a string that
    is not UTF-8, fails before any callback of ours runs) is logged and spinning goes on: no input ends the node."""
    while node.context.ok():
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            return
        except Exception as error:  # noqa: BLE001 - logged; the message that caused it is dropped
            if not node.context.ok():
                return
            node.dropped_callbacks += 1
            node.get_logger().error(f"dropping a message rclpy could not take: {type(error).__name__}: {error}",
                                    throttle_duration_sec=1.0)


def executor_threads(params: AuraParameters) -> int:
    """Executor threads: every ask that can wait at once (queue_depth + the one being answered) plus three for intake."""
    return params.queue_depth + 4


def main(argv: Optional[List[str]] = None) -> int:
    rclpy.init(args=argv)
    try:
        node = AuraNode()
    except ParameterError as error:
        get_logger("aura").fatal(str(error))
        rclpy.try_shutdown()
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        rclpy.try_shutdown()
        return 0
    except Exception as error:  # noqa: BLE001 - a clean message instead of a raw traceback (--log-level debug shows it)
        get_logger("aura").fatal(f"cannot start: {type(error).__name__}: {error}")
        get_logger("aura").debug(traceback.format_exc())
        rclpy.try_shutdown()
        return 1
    return run(node)


def run(node: Any) -> int:
    """Spins `node` on a multi-threaded executor until shutdown, then releases it and the context; exit code 0."""
    executor = MultiThreadedExecutor(num_threads=executor_threads(node.params))
    executor.add_node(node)
    try:
        spin(executor, node)
    finally:
        node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
