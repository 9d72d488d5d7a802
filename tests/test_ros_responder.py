"""AuraResponder (the node's and bag runner's shared logic) and AuraParameters validation, without ROS."""
import logging
import time

import pytest

from aura_ros import core, interfaces
from aura_ros.params import AuraParameters, ParameterError
from tests.ros_fixtures import ScenePipeline, collector, image_msg, rosbags_factory, scenes

S = core.NS_PER_S


@pytest.fixture(scope="module")
def factory():
    return rosbags_factory()


@pytest.fixture(scope="module")
def scene_list():
    return scenes(3, seed=1)


def responder(factory, pipeline, *, threaded=False, clock=None, **params):
    published, publish = collector()
    now = {"ns": 0}
    params.setdefault("speech_enabled", False)
    r = core.AuraResponder(pipeline=pipeline, factory=factory, publish=publish, params=AuraParameters(**params),
                           clock=clock or (lambda: now["ns"]), threaded=threaded)
    return r, published, now


def test_status_values_match_the_message_constants():
    cls = interfaces.make_typestore().types["aura_ros/msg/AmodalSegmentation"]
    for name in ("STATUS_OK", "STATUS_NO_IMAGE", "STATUS_EMPTY_QUERY", "STATUS_DROPPED", "STATUS_FAILED"):
        assert getattr(core, name) == getattr(cls, name), name


def test_answers_against_the_newest_frame_with_its_header(factory, scene_list):
    r, published, now = responder(factory, ScenePipeline(scene_list))
    for i, scene in enumerate(scene_list):
        now["ns"] = i * S
        assert r.on_image(image_msg(factory, scene.image, stamp_ns=100 * S + i, frame_id=f"cam{i}"))
    query = r.on_query(factory.make("std_msgs/msg/String", data="  what is there? "))
    seg = query.future.result(timeout=0)
    assert seg.status == core.STATUS_OK and seg.question == "what is there?"
    assert seg.header.frame_id == "cam2" and seg.header.stamp.nanosec == 2
    assert published["answer"][0].data == seg.answer and seg.answer.startswith("the ")
    for topic in ("visible_labels", "overlay"):
        assert published[topic][0].header is seg.header
    labels = published["visible_labels"][0]
    assert (labels.height, labels.width, labels.encoding) == (*scene_list[2].image.shape[:2], "mono8")


def test_no_frame_or_stale_frame_says_so_instead_of_guessing(factory, scene_list):
    pipeline = ScenePipeline(scene_list)
    r, published, now = responder(factory, pipeline, max_image_age=1.5)
    seg = r.on_query("where is it?").future.result(timeout=0)
    assert seg.status == core.STATUS_NO_IMAGE and "1.5" in seg.status_message and not seg.instances
    r.on_image(image_msg(factory, scene_list[0].image))
    now["ns"] = 2 * S
    seg = r.on_query("where is it?").future.result(timeout=0)
    assert seg.status == core.STATUS_NO_IMAGE and seg.header.stamp.sec == 2 and seg.header.frame_id == ""
    assert pipeline.questions == [] and "answer" not in published


def test_bad_messages_are_dropped_and_later_good_ones_answered(factory, scene_list, caplog):
    r, published, _ = responder(factory, ScenePipeline(scene_list))
    bad = image_msg(factory, scene_list[0].image)
    bad.encoding = "yuv422"
    short = image_msg(factory, scene_list[0].image)
    short.data = short.data[: short.step * 3]
    with caplog.at_level(logging.WARNING, logger="aura_ros.core"):
        assert not r.on_image(bad) and not r.on_image(bad) and not r.on_image(short)
        assert r.on_query(factory.make("std_msgs/msg/String", data="   ")) is None
    assert sum("yuv422" in m for m in caplog.messages) == 1  # unknown encodings warn once
    assert any("step*height" in m for m in caplog.messages)
    assert r.dropped_images == 3 and "segmentation" not in published
    r.on_image(image_msg(factory, scene_list[1].image))
    assert r.on_query("and now?").future.result(timeout=0).status == core.STATUS_OK


def test_inference_error_is_reported_in_status_and_the_next_query_still_works(factory, scene_list):
    r, published, _ = responder(factory, ScenePipeline(scene_list[:1]))
    r.on_image(image_msg(factory, scene_list[2].image))  # unknown to the pipeline: it raises KeyError
    seg = r.on_query("q").future.result(timeout=0)
    assert seg.status == core.STATUS_FAILED and "KeyError" in seg.status_message
    r.on_image(image_msg(factory, scene_list[0].image))
    assert r.on_query("q").future.result(timeout=0).status == core.STATUS_OK


def test_worker_keeps_intake_free_and_drops_the_oldest_query_when_full(factory, scene_list, caplog):
    pipeline = ScenePipeline(scene_list, delay=0.3)
    r, published, _ = responder(factory, pipeline, threaded=True, clock=time.monotonic_ns, queue_depth=2,
                                precompute_embedding=False)
    try:
        r.on_image(image_msg(factory, scene_list[0].image, frame_id="first"))
        running = r.submit("q0")
        assert pipeline.started.wait(5)
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="aura_ros.core"):
            queued = [r.submit(f"q{i}") for i in range(1, 4)]  # depth 2: q1 is dropped when q3 arrives
        for i in range(20):
            r.on_image(image_msg(factory, scene_list[i % 3].image, frame_id=f"f{i}"))
        intake = time.monotonic() - start
        assert intake < 0.2, f"intake blocked for {intake:.2f} s while a query ran"
        assert queued[0].future.result(timeout=5).status == core.STATUS_DROPPED
        assert any("dropping the oldest query 'q1'" in m for m in caplog.messages)
        assert running.future.result(timeout=5).header.frame_id == "first"
        last = queued[2].future.result(timeout=5)
        assert last.status == core.STATUS_OK and last.header.frame_id == "f19"  # the newest frame at its turn
        assert last.latency > 0.3
        assert pipeline.questions == ["q0", "q2", "q3"]
    finally:
        r.close()


def test_idle_worker_precomputes_the_newest_embedding(factory, scene_list):
    pipeline = ScenePipeline(scene_list)
    r, _, _ = responder(factory, pipeline, threaded=True, clock=time.monotonic_ns)
    try:
        r.on_image(image_msg(factory, scene_list[1].image))
        deadline = time.monotonic() + 5
        while not pipeline.embedded and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(pipeline.embedded) == 1
    finally:
        r.close()


def test_close_answers_pending_queries_as_dropped(factory, scene_list):
    pipeline = ScenePipeline(scene_list, delay=0.2)
    r, _, _ = responder(factory, pipeline, threaded=True, clock=time.monotonic_ns, precompute_embedding=False)
    r.on_image(image_msg(factory, scene_list[0].image))
    first = r.submit("a")
    pipeline.started.wait(5)
    pending = r.submit("b")
    r.close()
    assert pending.future.result(timeout=0).status == core.STATUS_DROPPED
    assert first.future.result(timeout=5).status == core.STATUS_OK


@pytest.mark.parametrize("name, value, why", [
    ("backend", "tflite", "not one of"),
    ("max_image_age", 0.0, "> 0"),
    ("queue_depth", 0, "at least 1"),
    ("device", "gpu", "cpu, cuda"),
    ("max_new_tokens", "64", "expected int"),
    ("speech_grammar", "/nonexistent/g.jsgf", "does not exist"),
    ("checkpoint", "/nonexistent/ckpt", "not a directory"),
    ("publish_overlay", 1, "expected bool"),
])
def test_bad_parameter_is_named_with_the_reason(name, value, why):
    with pytest.raises(ParameterError, match=f"'{name}'.*{why}"):
        AuraParameters(**{name: value})


def test_engine_dir_must_exist(tmp_path):
    with pytest.raises(ParameterError, match="'engine_dir'"):
        AuraParameters(backend="onnxruntime", engine_dir=str(tmp_path / "missing"))
    assert AuraParameters(backend="onnxruntime", engine_dir=str(tmp_path)).backend == "onnxruntime"


def test_parameter_file_is_read_and_unknown_names_rejected(tmp_path):
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "config" / "aura.yaml"
    params = AuraParameters.from_yaml(config, {"model_config": "tiny"})
    assert params.model_config == "tiny" and params.queue_depth >= 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("aura:\n  ros__parameters:\n    queue_dept: 3\n")
    with pytest.raises(ParameterError, match="queue_dept"):
        AuraParameters.from_yaml(bad)
    assert set(AuraParameters.descriptions()) == set(AuraParameters.defaults())
    assert all(AuraParameters.descriptions().values())
