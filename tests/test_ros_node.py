"""The rclpy glue (aura_ros.node). Needs a sourced ROS 2 (Humble/Jazzy) with this package built by colcon; skips otherwise."""
import importlib
import threading
import time

import pytest

from tests.ros_fixtures import ScenePipeline, image_msg, scenes

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (no ROS 2 here): the node glue is not exercised")


def _interfaces_built() -> bool:
    try:
        return hasattr(importlib.import_module("aura_ros.msg"), "AmodalSegmentation")
    except ImportError:
        return False


if not _interfaces_built():
    pytest.skip("aura_ros interfaces are not built (colcon build, then source install/setup.bash)", allow_module_level=True)

from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from aura_ros.msg import AmodalSegmentation  # noqa: E402
from aura_ros.node import AuraNode, RclpyFactory  # noqa: E402
from aura_ros.params import ParameterError  # noqa: E402
from aura_ros.srv import Ask  # noqa: E402


@pytest.fixture
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


def _overrides(**values):
    return [Parameter(name, value=value) for name, value in values.items()]


def test_node_answers_a_text_query_about_a_best_effort_camera_and_serves_ask(ros):
    scene = scenes(1, seed=2)[0]
    node = AuraNode(pipeline=ScenePipeline([scene]), parameter_overrides=_overrides(speech_enabled=False))
    peer = rclpy.create_node("peer")
    received = []
    done = threading.Event()
    peer.create_subscription(AmodalSegmentation, "segmentation", lambda m: (received.append(m), done.set()), 10)
    camera = peer.create_publisher(Image, "image", qos_profile_sensor_data)
    query = peer.create_publisher(String, "query", 10)
    client = peer.create_client(Ask, "ask")
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    executor.add_node(peer)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        frame = image_msg(RclpyFactory(), scene.image, encoding="bgr8", frame_id="cam", stamp_ns=42_000_000_007)
        deadline = time.monotonic() + 10
        while node.responder.frames.newest() is None and time.monotonic() < deadline:
            camera.publish(frame)
            time.sleep(0.05)
        query.publish(String(data="what is on the table?"))
        assert done.wait(10)
        seg = received[0]
        assert seg.status == AmodalSegmentation.STATUS_OK and seg.header.frame_id == "cam"
        assert seg.header.stamp.sec == 42 and seg.header.stamp.nanosec == 7 and len(seg.instances) == 2
        assert all(i.amodal_mask.header.frame_id == "cam" for i in seg.instances)
        assert client.wait_for_service(5)
        response = client.call_async(Ask.Request(question="and behind it?"))
        deadline = time.monotonic() + 10
        while not response.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert response.result().result.status == AmodalSegmentation.STATUS_OK
        assert response.result().result.question == "and behind it?"
    finally:
        executor.shutdown()
        node.destroy_node()
        peer.destroy_node()


def test_bad_parameter_stops_the_node_naming_it(ros):
    with pytest.raises(ParameterError, match="'queue_depth'"):
        AuraNode(pipeline=ScenePipeline([]), parameter_overrides=_overrides(queue_depth=0, speech_enabled=False))
