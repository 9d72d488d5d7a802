"""AuraResponder (the node's and bag runner's shared logic) and AuraParameters validation, without ROS."""
import logging
import threading
import time

import pytest

from aura_ros import interfaces
from aura_ros import responder as responder_module
from aura_ros.params import AuraParameters, ParameterError
from aura_ros.responder import NS_PER_S as S
from aura_ros.responder import STATUS_DROPPED, STATUS_FAILED, STATUS_NO_IMAGE, STATUS_OK, AuraResponder
from tests.ros_fixtures import ScenePipeline, collector, image_msg, scenes


@pytest.fixture(scope="module")
def scene_list():
    return scenes(3, seed=1)


def make_responder(factory, pipeline, *, threaded=False, clock=None, **params):
    published, publish = collector()
    now = {"ns": 0}
    params.setdefault("speech_enabled", False)
    r = AuraResponder(pipeline=pipeline, factory=factory, publish=publish, params=AuraParameters(**params),
                      clock=clock or (lambda: now["ns"]), threaded=threaded)
    return r, published, now


def test_status_values_match_the_message_constants():
    cls = interfaces.make_typestore().types["aura_ros/msg/AmodalSegmentation"]
    for name in ("STATUS_OK", "STATUS_NO_IMAGE", "STATUS_EMPTY_QUERY", "STATUS_DROPPED", "STATUS_FAILED"):
        assert getattr(responder_module, name) == getattr(cls, name), name


def test_answers_against_the_newest_frame_with_its_header(factory, scene_list):
    r, published, now = make_responder(factory, ScenePipeline(scene_list))
    for i, scene in enumerate(scene_list):
        now["ns"] = i * S
        assert r.on_image(image_msg(factory, scene.image, stamp_ns=100 * S + i, frame_id=f"cam{i}"))
    query = r.on_query(factory.make("std_msgs/msg/String", data="  what is there? "))
    seg = query.future.result(timeout=0)
    assert seg.status == STATUS_OK and seg.question == "what is there?"
    assert seg.header.frame_id == "cam2" and seg.header.stamp.nanosec == 2
    assert published["answer"][0].data == seg.answer and seg.answer.startswith("the ")
    for topic in ("visible_labels", "overlay"):
        assert published[topic][0].header is seg.header
    labels = published["visible_labels"][0]
    assert (labels.height, labels.width, labels.encoding) == (*scene_list[2].image.shape[:2], "mono8")


def test_no_frame_or_stale_frame_says_so_instead_of_guessing(factory, scene_list):
    pipeline = ScenePipeline(scene_list)
    r, published, now = make_responder(factory, pipeline, max_image_age=1.5)
    seg = r.on_query("where is it?").future.result(timeout=0)
    assert seg.status == STATUS_NO_IMAGE and "1.5" in seg.status_message and not seg.instances
    r.on_image(image_msg(factory, scene_list[0].image))
    now["ns"] = 2 * S
    seg = r.on_query("where is it?").future.result(timeout=0)
    assert seg.status == STATUS_NO_IMAGE and seg.header.stamp.sec == 2 and seg.header.frame_id == ""
    assert pipeline.questions == [] and "answer" not in published


def test_bad_messages_are_dropped_and_later_good_ones_answered(factory, scene_list, caplog):
    r, published, _ = make_responder(factory, ScenePipeline(scene_list))
    bad = image_msg(factory, scene_list[0].image)
    bad.encoding = "bayer_rggb8"
    short = image_msg(factory, scene_list[0].image)
    short.data = short.data[: short.step * 3]
    with caplog.at_level(logging.WARNING, logger="aura_ros.responder"):
        assert not r.on_image(bad) and not r.on_image(bad) and not r.on_image(short)
        assert r.on_query(factory.make("std_msgs/msg/String", data="   ")) is None
    assert sum("bayer_rggb8" in m for m in caplog.messages) == 1  # unknown encodings warn once
    assert any("step*height" in m for m in caplog.messages)
    assert r.dropped_images == 3 and "segmentation" not in published
    r.on_image(image_msg(factory, scene_list[1].image))
    assert r.on_query("and now?").future.result(timeout=0).status == STATUS_OK


def test_inference_error_is_reported_in_status_and_the_next_query_still_works(factory, scene_list):
    r, published, _ = make_responder(factory, ScenePipeline(scene_list[:1]))
    r.on_image(image_msg(factory, scene_list[2].image))  # unknown to the pipeline: it raises KeyError
    seg = r.on_query("q").future.result(timeout=0)
    assert seg.status == STATUS_FAILED and "KeyError" in seg.status_message
    r.on_image(image_msg(factory, scene_list[0].image))
    assert r.on_query("q").future.result(timeout=0).status == STATUS_OK


def test_worker_keeps_intake_free_and_drops_the_oldest_query_when_full(factory, scene_list, caplog):
    gate = threading.Event()  # the model "runs" until the test opens the gate
    pipeline = ScenePipeline(scene_list, gate=gate)
    r, published, _ = make_responder(factory, pipeline, threaded=True, clock=time.monotonic_ns, queue_depth=2,
                                     precompute_embedding=False)
    try:
        r.on_image(image_msg(factory, scene_list[0].image, frame_id="first"))
        running = r.submit("q0")
        assert pipeline.started.wait(30)
        queued, taken = [], []

        def intake():  # while q0 is inside the model: three queries and twenty frames arrive
            queued.extend(r.submit(f"q{i}") for i in range(1, 4))  # depth 2: q1 is dropped when q3 arrives
            taken.extend(r.on_image(image_msg(factory, scene_list[i % 3].image, frame_id=f"f{i}")) for i in range(20))

        with caplog.at_level(logging.WARNING, logger="aura_ros.responder"):
            feeder = threading.Thread(target=intake)
            feeder.start()
            feeder.join(30)  # a deadlock guard, not a timing: intake must finish while the gate is still shut
            assert not feeder.is_alive(), "intake waited for the running query"
        assert taken == [True] * 20 and pipeline.questions == ["q0"] and not running.future.done()
        assert queued[0].future.result(timeout=0).status == STATUS_DROPPED  # answered at once, without the model
        assert any("dropping the oldest query 'q1'" in m for m in caplog.messages)
        opened = time.monotonic()
        gate.set()
        assert running.future.result(timeout=30).header.frame_id == "first"
        last = queued[2].future.result(timeout=30)
        assert last.status == STATUS_OK and last.header.frame_id == "f19"  # the newest frame at its turn
        assert last.latency >= opened - queued[2].arrived  # latency counts the wait in the queue, not only inference
        assert pipeline.questions == ["q0", "q2", "q3"]
    finally:
        gate.set()
        r.close()


def test_idle_worker_precomputes_the_newest_embedding(factory, scene_list):
    pipeline = ScenePipeline(scene_list)
    r, _, _ = make_responder(factory, pipeline, threaded=True, clock=time.monotonic_ns)
    try:
        r.on_image(image_msg(factory, scene_list[1].image))
        assert pipeline.embedding_set.wait(30)  # the idle worker embeds the frame without any query
        assert len(pipeline.embedded) == 1 and pipeline.questions == []
    finally:
        r.close()


def test_close_answers_pending_queries_as_dropped(factory, scene_list):
    gate = threading.Event()
    pipeline = ScenePipeline(scene_list, gate=gate)
    r, _, _ = make_responder(factory, pipeline, threaded=True, clock=time.monotonic_ns, precompute_embedding=False)
    r.on_image(image_msg(factory, scene_list[0].image))
    first = r.submit("a")
    assert pipeline.started.wait(30)
    pending = r.submit("b")
    closer = threading.Thread(target=r.close)
    closer.start()  # close() waits for the running query, so it runs beside the test
    try:
        assert pending.future.result(timeout=30).status == STATUS_DROPPED  # while "a" is still inside the model
        assert not first.future.done()
    finally:
        gate.set()
        closer.join(30)
    assert first.future.result(timeout=0).status == STATUS_OK and pipeline.questions == ["a"]


@pytest.mark.parametrize("name, value, why", [
    ("backend", "tflite", "not one of"),
    ("max_image_age", 0.0, "> 0"),
    ("queue_depth", 0, "at least 1"),
    ("device", "gpu", "cpu, cuda"),
    ("max_new_tokens", "64", "expected int"),
    ("speech_vocabulary", "mug,,spoon", "empty entry"),
    ("speech_max_utterance", 45.0, "at most 30"),
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


# ------------------------------------------------------------------ faults found by reading the node (issue 10)


def test_submit_after_close_and_with_a_dead_worker_resolves_at_once(factory, scene_list):
    r, _, _ = make_responder(factory, ScenePipeline(scene_list), threaded=True, clock=time.monotonic_ns)
    r.close()
    seg = r.submit("too late").future.result(timeout=1)  # before: never resolved
    assert seg.status == STATUS_DROPPED and "shutting down" in seg.status_message
    r, _, _ = make_responder(factory, ScenePipeline(scene_list), threaded=True, clock=time.monotonic_ns)
    r._stopping = True  # the worker exits as it would on an escaped error
    with r._condition:
        r._condition.notify_all()
    r._worker.join(10)
    r._stopping = False
    seg = r.submit("anyone there?").future.result(timeout=1)
    assert seg.status == STATUS_FAILED and "worker is not running" in seg.status_message


def test_expire_unqueues_a_waiting_query_and_fails_it(factory, scene_list):
    gate = threading.Event()
    r, published, _ = make_responder(factory, ScenePipeline(scene_list, gate=gate), threaded=True,
                                     clock=time.monotonic_ns, precompute_embedding=False)
    try:
        r.on_image(image_msg(factory, scene_list[0].image))
        running = r.submit("first")
        assert r.pipeline.started.wait(30)  # "first" is inside the model, "second" waits in the queue
        waiting = r.submit("second", request_id="mine")
        seg = r.expire(waiting, "no answer within ask_timeout = 1 s")
        assert seg.status == STATUS_FAILED and "ask_timeout" in seg.status_message and seg.request_id == "mine"
        assert r.stats()["queue_depth"] == 0
        gate.set()
        assert running.future.result(timeout=30).status == STATUS_OK
        assert r.expire(running, "late").status == STATUS_OK  # already answered: the answer stands
    finally:
        gate.set()
        r.close()


def test_a_query_given_up_while_inside_the_model_is_not_a_worker_error(factory, scene_list, caplog):
    gate = threading.Event()
    r, published, _ = make_responder(factory, ScenePipeline(scene_list, gate=gate), threaded=True,
                                     clock=time.monotonic_ns, precompute_embedding=False)
    try:
        r.on_image(image_msg(factory, scene_list[0].image))
        running = r.submit("first", request_id="slow")
        assert r.pipeline.started.wait(30)
        seg = r.expire(running, "no answer within ask_timeout = 1 s")  # the caller gives up mid-inference
        assert seg.status == STATUS_FAILED and seg.request_id == "slow"
        with caplog.at_level(logging.INFO, logger=responder_module.LOG.name):
            gate.set()
            after = r.submit("second").future.result(timeout=30)  # the worker finished "first" and kept serving
        assert after.status == STATUS_OK
        assert running.future.result() is seg  # the caller's answer stands
        assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]  # before: "worker error" + traceback
        late = [m for m in published["segmentation"] if m.request_id == "slow"]
        assert [m.status for m in late] == [STATUS_FAILED, STATUS_OK]  # the late answer still reaches the topics
        assert any("after its caller gave up" in rec.getMessage() for rec in caplog.records)
    finally:
        gate.set()
        r.close()


def test_request_ids_are_echoed_or_assigned(factory, scene_list):
    r, _, _ = make_responder(factory, ScenePipeline(scene_list))
    r.on_image(image_msg(factory, scene_list[0].image))
    assert r.submit("q", request_id="abc-1").future.result(timeout=0).request_id == "abc-1"
    assert r.submit("q").future.result(timeout=0).request_id == "ask-1"
    assert r.on_query("q").future.result(timeout=0).request_id == "query-1"
    assert r.on_query("q").future.result(timeout=0).request_id == "query-2"


def test_every_message_is_built_before_any_is_published(factory, scene_list):
    """A result that cannot become messages (here 255 instances: too many for a mono8 label image) publishes one
    STATUS_FAILED segmentation, not an OK segmentation followed by a crash or a FAILED one."""

    class Crowded(ScenePipeline):
        def ask(self, image, question):
            result = super().ask(image, question)
            result.instances[:] = [result.instances[0]] * 255
            return result

    r, published, _ = make_responder(factory, Crowded(scene_list))
    r.on_image(image_msg(factory, scene_list[0].image))
    seg = r.on_query("how many?").future.result(timeout=0)
    assert seg.status == STATUS_FAILED and "mono8" in seg.status_message
    assert [m.status for m in published["segmentation"]] == [STATUS_FAILED]
    assert "answer" not in published and "visible_labels" not in published


def test_live_stream_answers_against_the_embedded_frame_within_max_image_age(factory, scene_list):
    """On a live camera the newest frame is always newer than the one the idle worker embedded: the query is answered
    against the embedded frame (while it is within max_image_age), so the precomputed embedding is used."""

    class GatedEmbedding(ScenePipeline):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.embed_gate = threading.Event()
            self.asked = []

        def set_image(self, image):
            super().set_image(image)
            assert self.embed_gate.wait(30)

        def ask(self, image, question):
            self.asked.append(_key(image))
            return super().ask(image, question)

    from tests.ros_fixtures import _key

    pipeline = GatedEmbedding(scene_list)
    r, _, _ = make_responder(factory, pipeline, threaded=True, clock=time.monotonic_ns, max_image_age=30.0)
    try:
        r.on_image(image_msg(factory, scene_list[0].image, frame_id="embedded"))
        assert pipeline.embedding_set.wait(30)  # the worker is embedding frame 0 ...
        r.on_image(image_msg(factory, scene_list[1].image, frame_id="newer"))  # ... while the camera moves on
        query = r.submit("what is there?")
        pipeline.embed_gate.set()
        seg = query.future.result(timeout=30)
        assert seg.status == STATUS_OK and seg.header.frame_id == "embedded"
        assert pipeline.asked == [pipeline.embedded[0]]  # the image whose embedding is cached
    finally:
        pipeline.embed_gate.set()
        r.close()


def test_a_stale_embedded_frame_is_not_used(factory, scene_list):
    pipeline = ScenePipeline(scene_list)
    now = {"ns": 0}
    r, _, _ = make_responder(factory, pipeline, threaded=True, clock=lambda: now["ns"], max_image_age=1.0)
    try:
        r.on_image(image_msg(factory, scene_list[0].image, frame_id="old"))
        assert pipeline.embedding_set.wait(30)
        deadline = time.monotonic() + 30
        while not r.embedding_current and time.monotonic() < deadline:
            time.sleep(0.01)
        now["ns"] = int(1.5 * S)  # "old" (embedded) is now beyond max_image_age; whether or not the worker embeds
        r.on_image(image_msg(factory, scene_list[1].image, frame_id="new"))  # "new" first, the answer is about "new"
        assert r.submit("q").future.result(timeout=30).header.frame_id == "new"
    finally:
        r.close()
