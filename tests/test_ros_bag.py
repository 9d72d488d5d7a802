"""aura-bag end to end: a bag written here from synthetic scenes and queries -> the runner -> an output bag."""

import numpy as np
import pytest

from aura_ros import bag_runner, conversions, interfaces, responder
from aura_ros.params import AuraParameters
from tests.ros_fixtures import ScenePipeline, espeak_available, image_msg, read_bag, scenes, speak, words, write_bag

S = responder.NS_PER_S
IMAGE, QUERY = "/camera/image_raw", "/question"


def _string(typestore, text):
    return typestore.types[interfaces.STRING_TYPE](data=text)


def _input_messages(typestore, scene_list):
    """A timeline with good and bad messages; returns the messages and the questions that must get an answer."""
    factory = interfaces.RosbagsFactory(typestore)
    bad_encoding = image_msg(factory, scene_list[0].image, stamp_ns=3 * S)
    bad_encoding.encoding = "bayer_rggb8"  # a real camera encoding the node does not read
    short = image_msg(factory, scene_list[0].image, stamp_ns=4 * S)
    short.data = short.data[: short.step * (short.height - 1)]
    img, txt = interfaces.IMAGE_TYPE, interfaces.STRING_TYPE
    messages = [
        (QUERY, txt, 1 * S, _string(typestore, "is anything there?")),  # before any image: 'no image'
        (IMAGE, img, 2 * S, image_msg(factory, scene_list[0].image, stamp_ns=1000 * S + 1, frame_id="cam_a")),
        (QUERY, txt, 2 * S + 1, _string(typestore, "what can I grab?")),
        (IMAGE, img, 3 * S, bad_encoding),
        (IMAGE, img, 4 * S, short),
        (QUERY, txt, 4 * S + 1, _string(typestore, "   ")),
        (QUERY, txt, 4 * S + 2, b"\x00\x01\x00\x00\xff\xff\xff\x7f"),  # undecodable CDR
        (IMAGE, img, 5 * S, image_msg(factory, scene_list[1].image, encoding="bgra8", pad=3, stamp_ns=1005 * S + 7,
                                       frame_id="cam_b")),
        (QUERY, txt, 5 * S + 1, _string(typestore, "what is behind the front object?")),
        (QUERY, txt, 9 * S, _string(typestore, "and now?")),  # 4 s after the last frame: too old
    ]
    return messages


@pytest.fixture(scope="module")
def scene_list():
    return scenes(2, seed=7)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_runner_answers_good_messages_skips_bad_ones_and_keeps_headers(tmp_path, scene_list, storage):
    typestore = interfaces.make_typestore()
    source = tmp_path / "in"
    write_bag(source, typestore, _input_messages(typestore, scene_list), storage=storage)
    pipeline = ScenePipeline(scene_list, objects=2)
    summary = bag_runner.run_bag(input_bag=source, output_bag=tmp_path / "out", pipeline=pipeline,
                                 params=AuraParameters(speech_enabled=False), image_topic=IMAGE, query_topic=QUERY,
                                 namespace="/aura", storage=storage, progress=False)
    assert summary.skipped == 4 and summary.images == 4 and summary.queries == 5
    assert summary.statuses == {responder.STATUS_OK: 2, responder.STATUS_NO_IMAGE: 2}
    assert pipeline.questions == ["what can I grab?", "what is behind the front object?"]

    out = read_bag(tmp_path / "out")  # decodes with the definitions stored in the bag only
    segmentations = [m for _, m in out["/aura/segmentation"]]
    assert [s.question for s in segmentations] == [
        "is anything there?", "what can I grab?", "what is behind the front object?", "and now?"]
    assert [s.status for s in segmentations] == [1, 0, 0, 1]
    assert segmentations[0].header.stamp.sec == 1 and segmentations[0].header.frame_id == ""
    answered = {"cam_a": (scene_list[0], (1000, 1)), "cam_b": (scene_list[1], (1005, 7))}
    for seg in segmentations[1:3]:
        scene, stamp = answered[seg.header.frame_id]
        assert (seg.header.stamp.sec, seg.header.stamp.nanosec) == stamp
        assert (seg.image_height, seg.image_width) == scene.image.shape[:2] and len(seg.instances) == 2
        for instance, truth in zip(seg.instances, scene.objects):
            box = instance.amodal_box
            assert 0 <= box.x_offset and box.x_offset + box.width <= seg.image_width
            assert 0 <= box.y_offset and box.y_offset + box.height <= seg.image_height
            for mask in (instance.amodal_mask, instance.visible_mask):
                assert (mask.width, mask.height) == (box.width, box.height)
                assert (mask.header.frame_id, mask.header.stamp.sec) == (seg.header.frame_id, stamp[0])
            visible, amodal = conversions.instance_masks_full(instance, scene.image.shape[:2])
            np.testing.assert_array_equal(amodal, truth.amodal)
            np.testing.assert_array_equal(visible, truth.visible)
    for topic in ("/aura/visible_labels", "/aura/overlay"):
        assert [m.header.frame_id for _, m in out[topic]] == ["cam_a", "cam_b"]
    assert [m.data for _, m in out["/aura/answer"]] == [s.answer for s in segmentations[1:3]]
    # Outputs are stamped in bag time with the message that asked.
    assert [t for t, _ in out["/aura/segmentation"]] == [1 * S, 2 * S + 1, 5 * S + 1, 9 * S]


def test_cli_reports_bad_paths_by_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="--input"):
        bag_runner.main(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out"), "--config", "tiny"])
    (tmp_path / "out").mkdir()
    typestore = interfaces.make_typestore()
    write_bag(tmp_path / "in", typestore, [(QUERY, interfaces.STRING_TYPE, 1, _string(typestore, "q"))])
    with pytest.raises(FileExistsError, match="--output"):
        bag_runner.run_bag(input_bag=tmp_path / "in", output_bag=tmp_path / "out", pipeline=None,
                           params=AuraParameters(speech_enabled=False))


@pytest.mark.skipif(espeak_available() is not None, reason=str(espeak_available()))
def test_cli_end_to_end_with_the_default_model_text_and_speech(tmp_path, scene_list, capsys, whisper):
    """aura-bag with the real AuraPipeline (the embedded default model): a text and a spoken question about synthetic
    frames, each answered with at least one well-formed instance."""
    typestore = interfaces.make_typestore()
    factory = interfaces.RosbagsFactory(typestore)
    audio = np.frombuffer(speak("where is the green ball"), np.uint8)
    chunk = 3200
    messages = [
        (IMAGE, interfaces.IMAGE_TYPE, 1 * S, image_msg(factory, scene_list[0].image, stamp_ns=77 * S, frame_id="cam")),
        (QUERY, interfaces.STRING_TYPE, 1 * S + 5, _string(typestore, "what can I use to cut bread?")),
        (IMAGE, interfaces.IMAGE_TYPE, 2 * S, image_msg(factory, scene_list[1].image, encoding="bgr8", stamp_ns=78 * S,
                                                        frame_id="cam")),
    ]
    for i, start in enumerate(range(0, audio.size, chunk)):
        data = factory.make(interfaces.AUDIO_DATA_TYPE, data=audio[start : start + chunk])
        messages.append(("/mic", interfaces.AUDIO_DATA_TYPE, 2 * S + 1 + i * 100_000_000, data))
    write_bag(tmp_path / "in", typestore, messages, storage="sqlite3")
    params = tmp_path / "aura.yaml"
    params.write_text("/**:\n  ros__parameters:\n    max_new_tokens: 24\n    max_image_age: 10.0\n")
    code = bag_runner.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--params", str(params),
                            "--image-topic", IMAGE, "--query-topic", QUERY, "--speech-topic", "/mic", "--no-progress"])
    assert code == 0 and "statuses: 0: 2" in capsys.readouterr().out
    out = read_bag(tmp_path / "out")
    transcripts = [m.data for _, m in out["/transcript"]]
    assert [words(t) for t in transcripts] == [["where", "is", "the", "green", "ball"]], transcripts
    segmentations = [m for _, m in out["/segmentation"]]
    assert [s.question for s in segmentations] == ["what can I use to cut bread?", transcripts[0]]
    assert [s.header.stamp.sec for s in segmentations] == [77, 78]
    for seg, scene in zip(segmentations, scene_list):
        assert seg.status == responder.STATUS_OK and (seg.image_height, seg.image_width) == scene.image.shape[:2]
        assert "[SEG]" not in seg.answer and seg.answer.strip()
        assert seg.instances, f"no instance for {seg.question!r}: {seg.answer!r}"  # the trained model names an object
        for instance in seg.instances:
            box = instance.amodal_box
            assert box.width > 0 and box.height > 0
            assert box.x_offset + box.width <= seg.image_width and box.y_offset + box.height <= seg.image_height
            assert (instance.amodal_mask.width, instance.amodal_mask.height) == (box.width, box.height)
    assert [m.header.stamp.sec for _, m in out["/visible_labels"]] == [77, 78]
