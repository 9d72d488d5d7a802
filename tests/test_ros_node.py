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


# ------------------------------------------------------------------ faults found by reading the node (issue 10)
import contextlib  # noqa: E402
import logging  # noqa: E402

from aura_ros.node import executor_threads  # noqa: E402
from aura_ros.responder import STATUS_FAILED, STATUS_OK  # noqa: E402


@contextlib.contextmanager
def running(node, *, threads=None):
    """Spins `node` as main() does (its own executor, executor_threads threads) and a peer node in another executor."""
    executor = MultiThreadedExecutor(num_threads=threads or executor_threads(node.params))
    executor.add_node(node)
    peer = rclpy.create_node("peer")
    peer_executor = MultiThreadedExecutor(num_threads=2)
    peer_executor.add_node(peer)
    spinners = [threading.Thread(target=e.spin, daemon=True) for e in (executor, peer_executor)]
    for spinner in spinners:
        spinner.start()
    try:
        yield peer, spinners[0]
    finally:
        executor.shutdown()
        peer_executor.shutdown()
        node.destroy_node()
        peer.destroy_node()


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_an_unexpected_error_in_an_intake_callback_does_not_stop_the_node(ros):
    scene = scenes(1, seed=2)[0]
    node = AuraNode(pipeline=ScenePipeline([scene]), parameter_overrides=_overrides(speech_enabled=False))
    real_put = node.responder.frames.put
    calls = []

    def broken_put(*args):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("something nobody foresaw")
        return real_put(*args)

    node.responder.frames.put = broken_put
    with running(node) as (peer, spinner):
        camera = peer.create_publisher(Image, "image", qos_profile_sensor_data)
        frame = image_msg(RclpyFactory(), scene.image, frame_id="cam")
        assert _wait(lambda: (camera.publish(frame), len(calls) >= 2)[1]), "no image got through after the error"
        assert spinner.is_alive() and node.dropped_callbacks == 1
        assert node.responder.submit("still there?").future.result(10).status == STATUS_OK


def test_concurrent_asks_do_not_starve_image_intake_and_time_out(ros):
    gate = threading.Event()
    scene = scenes(1, seed=2)[0]
    node = AuraNode(pipeline=ScenePipeline([scene], gate=gate),
                    parameter_overrides=_overrides(speech_enabled=False, ask_timeout=3.0, precompute_embedding=False))
    try:
        with running(node) as (peer, _):
            camera = peer.create_publisher(Image, "image", qos_profile_sensor_data)
            frame = image_msg(RclpyFactory(), scene.image, frame_id="cam")
            assert _wait(lambda: (camera.publish(frame), node.responder.frames.count > 0)[1])
            client = peer.create_client(Ask, "ask")
            assert client.wait_for_service(5)
            asks = [client.call_async(Ask.Request(question=f"q{i}", request_id=f"r{i}")) for i in range(6)]
            assert _wait(lambda: node.responder.pipeline.started.is_set())
            time.sleep(0.5)  # every ask is now waiting in an executor thread
            before = node.responder.frames.count
            assert _wait(lambda: (camera.publish(frame), node.responder.frames.count > before + 3)[1], 5), \
                "image intake starved by waiting asks"
            assert _wait(lambda: all(a.done() for a in asks), 15), "an ask never answered"
            results = [a.result().result for a in asks]
            assert [r.request_id for r in results] == [f"r{i}" for i in range(6)]
            assert all(r.status != STATUS_OK for r in results)  # the gate never opened: dropped or timed out
            assert any(r.status == STATUS_FAILED and "ask_timeout" in r.status_message for r in results)
    finally:
        gate.set()


def test_shutdown_after_the_context_is_gone_publishes_nothing_and_raises_nothing(ros):
    gate = threading.Event()
    scene = scenes(1, seed=2)[0]
    node = AuraNode(pipeline=ScenePipeline([scene], gate=gate),
                    parameter_overrides=_overrides(speech_enabled=False, precompute_embedding=False))
    node.responder.on_image(image_msg(RclpyFactory(), scene.image))
    first = node.responder.submit("running")
    assert node.responder.pipeline.started.wait(10)
    pending = node.responder.submit("pending")
    rclpy.shutdown()  # what SIGINT does (Humble and Jazzy) before main() reaches destroy_node()
    threading.Timer(0.5, gate.set).start()
    node.destroy_node()  # before: RCLError publishing the dropped answer on a dead context
    assert pending.future.result(5).status != STATUS_OK
    assert first.future.result(10) is not None


def test_python_logs_of_aura_ros_and_aura_core_reach_the_ros_logger_at_info(ros, monkeypatch):
    from aura_ros.node import RosLogHandler

    seen = []
    monkeypatch.setattr(RosLogHandler, "emit", lambda self, record: seen.append((record.name, record.levelno)))
    node = AuraNode(pipeline=ScenePipeline([]), parameter_overrides=_overrides(speech_enabled=False))
    try:
        logging.getLogger("aura_ros.responder").info("hello from the responder")
        logging.getLogger("aura_core.pipeline").info("hello from the model")
        assert ("aura_ros.responder", logging.INFO) in seen and ("aura_core.pipeline", logging.INFO) in seen
    finally:
        node.destroy_node()


def test_undeclared_parameter_in_the_file_stops_the_node_naming_it(ros):
    with pytest.raises(ParameterError, match="'queue_depht'.*unknown"):
        AuraNode(pipeline=ScenePipeline([]), parameter_overrides=_overrides(queue_depht=3, speech_enabled=False))


def test_a_late_subscriber_gets_the_last_segmentation(ros):
    scene = scenes(1, seed=2)[0]
    node = AuraNode(pipeline=ScenePipeline([scene]), parameter_overrides=_overrides(speech_enabled=False))
    with running(node) as (peer, _):
        node.responder.on_image(image_msg(RclpyFactory(), scene.image, frame_id="cam"))
        node.responder.submit("asked before anyone listened", request_id="early").future.result(10)
        from rclpy.qos import DurabilityPolicy, QoSProfile

        got = []
        peer.create_subscription(AmodalSegmentation, "segmentation", got.append,
                                 QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        assert _wait(lambda: bool(got), 5) and got[0].request_id == "early"


def test_diagnostics_and_vision_msgs_detections(ros):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from vision_msgs.msg import Detection2DArray

    scene = scenes(1, seed=2)[0]
    node = AuraNode(pipeline=ScenePipeline([scene]),
                    parameter_overrides=_overrides(speech_enabled=False, diagnostics_period=0.2))
    with running(node) as (peer, _):
        reports, detections = [], []
        peer.create_subscription(DiagnosticArray, "/diagnostics", reports.append, 10)
        peer.create_subscription(Detection2DArray, "detections", detections.append, 10)
        node.responder.on_image(image_msg(RclpyFactory(), scene.image, frame_id="cam"))
        bad = image_msg(RclpyFactory(), scene.image)
        bad.encoding = "bayer_rggb8"
        node.responder.on_image(bad)
        seg = node.responder.submit("what is there?").future.result(10)
        assert _wait(lambda: bool(detections) and len(reports) >= 2, 10)
        status = reports[-1].status[0]
        values = {kv.key: kv.value for kv in status.values}
        assert status.level == DiagnosticStatus.OK and "aura" in status.name
        assert values["answered"] == "1" and values["dropped_images"] == "1" and values["queue_depth"] == "0"
        assert {"dropped_queries", "latency_median", "latency_max", "worker_alive"} <= set(values)
        found = detections[-1]
        assert found.header.frame_id == "cam" and len(found.detections) == len(seg.instances)
        for detection, instance in zip(found.detections, seg.instances):
            box = instance.amodal_box
            assert detection.id == str(instance.id) and detection.results[0].hypothesis.class_id == instance.phrase
            assert detection.bbox.size_x == box.width and detection.bbox.center.position.x == box.x_offset + box.width / 2


def test_lifecycle_node_loads_the_model_on_configure_and_listens_on_activate(ros):
    from lifecycle_msgs.msg import State

    from aura_ros.lifecycle import AuraLifecycleNode

    scene = scenes(1, seed=2)[0]
    loads = []

    def loader(params):
        loads.append(params)
        return ScenePipeline([scene])

    def intake(node):
        return sorted(name.rsplit("/", 1)[-1] for name in [s.topic_name for s in node.subscriptions] +
                      [s.srv_name for s in node.services] if name.rsplit("/", 1)[-1] in ("image", "query", "ask"))

    node = AuraLifecycleNode(loader=loader, parameter_overrides=_overrides(speech_enabled=False))
    try:
        assert not loads and intake(node) == []  # nothing heavy happens at construction
        node.trigger_configure()
        assert len(loads) == 1 and intake(node) == [] and node._state_machine.current_state[1] == "inactive"
        node.trigger_activate()
        assert intake(node) == ["ask", "image", "query"]
        node.responder.on_image(image_msg(RclpyFactory(), scene.image, frame_id="cam"))
        assert node.responder.submit("what is there?").future.result(10).status == STATUS_OK
        node.trigger_deactivate()
        assert intake(node) == [] and node.responder is not None  # the model stays loaded
        node.trigger_cleanup()
        assert node.responder is None and node._state_machine.current_state[0] == State.PRIMARY_STATE_UNCONFIGURED
        node.trigger_configure()  # configure again after cleanup: the parameters are already declared
        assert len(loads) == 2 and node._state_machine.current_state[1] == "inactive"
    finally:
        node.destroy_node()
    bad = AuraLifecycleNode(loader=loader, parameter_overrides=_overrides(speech_enabled=False, queue_depth=0))
    try:
        bad.trigger_configure()  # a bad parameter fails the transition, naming it; the node stays unconfigured
        assert bad._state_machine.current_state[1] == "unconfigured" and len(loads) == 2
    finally:
        bad.destroy_node()
