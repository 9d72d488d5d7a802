"""Offline speech -> text for the `speech` topic: raw PCM S16LE chunks in, one transcript per utterance out.

pocketsphinx with the US English model its wheel ships; an utterance ends when its voice activity detector hears
`silence_window` seconds of (mostly) silence. Dither is on because synthetic or gated audio is full of exact zeros,
which break pocketsphinx's feature extraction. An optional JSGF grammar restricts what can be heard.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import numpy as np

LOG = logging.getLogger(__name__)

SAMPLE_WIDTH = 2  # bytes per S16LE sample
MODEL_RATE = 16000  # Hz of the English acoustic model pocketsphinx ships; other rates are resampled to it


class SpeechError(ValueError):
    """Audio that cannot be decoded (e.g. a byte count that is not whole samples)."""


class SpeechTranscriber:
    """Streams PCM chunks through a voice activity endpointer into a pocketsphinx decoder."""

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        channels: int = 1,
        grammar: str = "",
        silence_window: float = 0.3,
        max_utterance: float = 15.0,
    ) -> None:
        import pocketsphinx

        self.channels = channels
        self.sample_rate = sample_rate
        self.max_utterance = max_utterance
        options = {"samprate": MODEL_RATE, "dither": True, "loglevel": "FATAL"}
        if grammar:
            if not Path(grammar).is_file():
                raise FileNotFoundError(f"speech_grammar: JSGF file {grammar} does not exist")
            options["jsgf"] = str(grammar)
        try:
            self._decoder = pocketsphinx.Decoder(**options)
            self._endpointer = pocketsphinx.Endpointer(window=silence_window, sample_rate=MODEL_RATE)
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"speech settings rejected by pocketsphinx (rate {sample_rate}, grammar {grammar!r}): {error}") from error
        self._pending = b""  # mono S16LE bytes not yet a whole endpointer frame
        self._utterance_bytes = 0
        self._decoding = False  # between start_utt and end_utt
        self._tail = np.zeros(0, np.float32)  # last input sample of the previous chunk (resampling continuity)
        self._phase = 0.0  # position of the next output sample, in input samples from the tail

    @property
    def in_utterance(self) -> bool:
        return bool(self._endpointer.in_speech)

    def feed(self, data: bytes) -> List[str]:
        """Adds interleaved S16LE samples; returns the transcripts of utterances that ended inside this chunk."""
        frame_size = SAMPLE_WIDTH * self.channels
        if len(data) % frame_size:
            raise SpeechError(f"audio chunk of {len(data)} bytes is not a whole number of {self.channels}-channel S16LE samples")
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32)
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1)
        self._pending += np.round(self._resample(samples)).astype("<i2").tobytes()
        transcripts: List[str] = []
        step = self._endpointer.frame_bytes
        limit = int(self.max_utterance * self._endpointer.sample_rate) * SAMPLE_WIDTH
        offset = 0
        while len(self._pending) - offset >= step:
            frame = self._pending[offset : offset + step]
            offset += step
            speech = self._endpointer.process(frame)
            if speech is None:
                continue
            self._decode(speech)
            if not self._endpointer.in_speech or self._utterance_bytes >= limit:
                if self._endpointer.in_speech:
                    LOG.warning("utterance longer than %.1f s: transcribing it now", self.max_utterance)
                transcripts.extend(self._finish())
        self._pending = self._pending[offset:]
        return transcripts

    def _resample(self, samples: np.ndarray) -> np.ndarray:
        """Linear interpolation to MODEL_RATE, continuous across chunks."""
        if self.sample_rate == MODEL_RATE:
            return samples
        signal = np.concatenate([self._tail, samples])
        if signal.size < 2:
            self._tail = signal
            return np.zeros(0, np.float32)
        step = self.sample_rate / MODEL_RATE
        positions = np.arange(self._phase, signal.size - 1, step)
        self._phase = (positions[-1] + step if positions.size else self._phase) - (signal.size - 1)
        self._tail = signal[-1:]
        return np.interp(positions, np.arange(signal.size), signal).astype(np.float32)

    def flush(self) -> List[str]:
        """Ends the stream (e.g. at the end of a bag): transcribes an utterance still in progress."""
        speech = self._endpointer.end_stream(self._pending)
        self._pending = b""
        if speech is not None:
            self._decode(speech)
        return self._finish() if self._decoding else []

    def _decode(self, speech: bytes) -> None:
        if not self._decoding:
            self._decoder.start_utt()
            self._decoding = True
            self._utterance_bytes = 0
        self._decoder.process_raw(speech)
        self._utterance_bytes += len(speech)

    def _finish(self) -> List[str]:
        self._decoder.end_utt()
        self._decoding = False
        self._utterance_bytes = 0
        hypothesis = self._decoder.hyp()
        text = "" if hypothesis is None else " ".join(hypothesis.hypstr.split())
        if not text:
            LOG.warning("speech: an utterance ended but no words were recognised; dropped")
            return []
        return [text]


def make_transcriber(
    *, sample_rate: int, channels: int, grammar: str, silence_window: float, max_utterance: float
) -> Optional[SpeechTranscriber]:
    """A transcriber, or None with a warning when pocketsphinx is not installed (speech input is then disabled)."""
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        LOG.warning("pocketsphinx is not installed: speech input disabled (pip install pocketsphinx)")
        return None
    return SpeechTranscriber(
        sample_rate=sample_rate, channels=channels, grammar=grammar, silence_window=silence_window, max_utterance=max_utterance
    )
