"""Speech: espeak-ng audio -> pocketsphinx transcript -> query -> answer, and bad audio dropped."""
import logging

import numpy as np
import pytest

from aura_ros import core, interfaces
from aura_ros.params import AuraParameters
from aura_ros.speech import SpeechError, SpeechTranscriber
from tests.ros_fixtures import ScenePipeline, collector, espeak_available, image_msg, rosbags_factory, scenes, speak, write_grammar

pytest.importorskip("pocketsphinx", reason="pocketsphinx is not installed")
pytestmark = pytest.mark.skipif(espeak_available() is not None, reason=str(espeak_available()))

CHUNK = 3200  # bytes per AudioData message: 0.1 s at 16 kHz mono


def _feed(transcriber, audio, chunk=CHUNK):
    heard = []
    for start in range(0, len(audio), chunk):
        heard += transcriber.feed(audio[start : start + chunk])
    return heard + transcriber.flush()


def test_grammar_gives_exact_transcripts_one_per_utterance(tmp_path):
    grammar = write_grammar(tmp_path)
    audio = speak("what is the blue square") + speak("where is the green ball")
    assert _feed(SpeechTranscriber(grammar=str(grammar)), audio) == ["what is the blue square", "where is the green ball"]


def test_without_grammar_the_shipped_english_model_hears_words():
    heard = _feed(SpeechTranscriber(), speak("where is the red box"))
    assert len(heard) == 1 and heard[0].startswith("where is the")


def test_stereo_at_another_rate_is_mixed_down(tmp_path):
    mono = np.frombuffer(speak("where is the green ball", sample_rate=8000), "<i2")
    stereo = np.stack([mono, mono], axis=1).astype("<i2").tobytes()
    transcriber = SpeechTranscriber(sample_rate=8000, channels=2, grammar=str(write_grammar(tmp_path)))
    assert _feed(transcriber, stereo, chunk=1600) == ["where is the green ball"]


def test_garbage_audio_is_rejected_or_unheard():
    transcriber = SpeechTranscriber()
    with pytest.raises(SpeechError, match="S16LE"):
        transcriber.feed(b"\x01\x02\x03")
    noise = np.random.default_rng(0).integers(-200, 200, 16000, dtype=np.int16).tobytes()
    assert _feed(transcriber, noise) == []


def test_spoken_question_is_published_as_transcript_and_answered(tmp_path, caplog):
    factory = rosbags_factory()
    scene = scenes(1, seed=11)[0]
    pipeline = ScenePipeline([scene])
    published, publish = collector()
    params = AuraParameters(speech_grammar=str(write_grammar(tmp_path)))
    responder = core.AuraResponder(pipeline=pipeline, factory=factory, publish=publish, params=params, clock=lambda: 0)
    responder.on_image(image_msg(factory, scene.image, frame_id="cam"))
    audio_type = interfaces.AUDIO_DATA_TYPE
    with caplog.at_level(logging.WARNING, logger="aura_ros.core"):
        responder.on_audio(factory.make(audio_type, data=np.frombuffer(b"\x01\x02\x03", np.uint8)))  # half a sample
    assert any("dropping audio" in m for m in caplog.messages)
    audio = np.frombuffer(speak("where is the red box"), np.uint8)
    for start in range(0, audio.size, CHUNK):
        responder.on_audio(factory.make(audio_type, data=audio[start : start + CHUNK]))
    responder.flush_audio()
    assert [m.data for m in published["transcript"]] == ["where is the red box"]
    assert pipeline.questions == ["where is the red box"]
    seg = published["segmentation"][0]
    assert seg.status == core.STATUS_OK and seg.question == "where is the red box" and seg.header.frame_id == "cam"
