"""The request -> result logic shared by the rclpy node and the bag runner; no ROS imports.

`AuraResponder` takes messages in (image, text query, speech audio), keeps only the newest frame, answers each
question against it with an injected pipeline (anything with `ask(image, question) -> AuraResult`) and hands the
output messages to a `publish(topic, message)` callable. Threaded mode runs inference on one worker behind a bounded
queue, so intake never waits for the model; synchronous mode (bag runner) answers in place, deterministically.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, List, Optional, Set

import numpy as np

from aura_core.result import AuraResult
from aura_ros import conversions
from aura_ros.conversions import ImageConversionError, MessageFactory
from aura_ros.params import AuraParameters
from aura_ros.speech import SpeechError, SpeechTranscriber, make_transcriber

LOG = logging.getLogger(__name__)

# Output topics (relative names; the node namespaces them, the bag runner prefixes them).
SEGMENTATION = "segmentation"
ANSWER = "answer"
TRANSCRIPT = "transcript"
VISIBLE_LABELS = "visible_labels"
OVERLAY = "overlay"
OUTPUT_TOPICS = (SEGMENTATION, ANSWER, TRANSCRIPT, VISIBLE_LABELS, OVERLAY)

# Values of aura_ros/msg/AmodalSegmentation's status constants.
STATUS_OK = 0
STATUS_NO_IMAGE = 1
STATUS_EMPTY_QUERY = 2
STATUS_DROPPED = 3
STATUS_FAILED = 4

NS_PER_S = 1_000_000_000


@dataclass
class Frame:
    """The newest camera frame: its message header, RGB pixels and when it arrived (clock ns)."""

    header: Any
    rgb: np.ndarray
    received_ns: int
    sequence: int


class FrameStore:
    """Holds only the newest frame (thread-safe); older frames are simply replaced."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: Optional[Frame] = None
        self._count = 0

    def put(self, header: Any, rgb: np.ndarray, received_ns: int) -> Frame:
        with self._lock:
            self._count += 1
            self._frame = Frame(header=header, rgb=rgb, received_ns=received_ns, sequence=self._count)
            return self._frame

    def newest(self, now_ns: Optional[int] = None, max_age: Optional[float] = None) -> Optional[Frame]:
        """The newest frame, or None when there is none or it arrived more than max_age seconds before now_ns."""
        with self._lock:
            frame = self._frame
        if frame is None or max_age is None or now_ns is None:
            return frame
        return frame if now_ns - frame.received_ns <= max_age * NS_PER_S else None

    @property
    def count(self) -> int:
        return self._count


@dataclass
class Query:
    """One question waiting for an answer."""

    question: str
    received_ns: int  # clock time of arrival (stamps a result that has no source image)
    arrived: float = field(default_factory=time.monotonic)  # for the latency field
    future: Future = field(default_factory=Future)  # resolves to the AmodalSegmentation message


Publish = Callable[[str, Any], None]
Clock = Callable[[], int]


class AuraResponder:
    """Intake callbacks plus answering; construct once per node/bag run, then feed it messages."""

    def __init__(
        self,
        *,
        pipeline: Any,
        factory: MessageFactory,
        publish: Publish,
        params: AuraParameters,
        clock: Clock,
        threaded: bool = False,
        transcriber: Optional[SpeechTranscriber] = None,
    ) -> None:
        self.pipeline = pipeline
        self.factory = factory
        self.publish = publish
        self.params = params
        self.clock = clock
        self.threaded = threaded
        if transcriber is None and params.speech_enabled:
            transcriber = make_transcriber(
                sample_rate=params.speech_sample_rate,
                channels=params.speech_channels,
                grammar=params.speech_grammar,
                silence_window=params.speech_silence,
                max_utterance=params.speech_max_utterance,
            )
        self.transcriber = transcriber
        self.frames = FrameStore()
        self._queue: Deque[Query] = collections.deque()
        self._condition = threading.Condition()
        self._pipeline_lock = threading.Lock()  # the pipeline and its cached embedding are not thread-safe
        self._embedded_sequence = 0
        self._warned_encodings: Set[str] = set()
        self._worker: Optional[threading.Thread] = None
        self._stopping = False
        self.dropped_images = 0
        self.dropped_queries = 0
        if threaded:
            self._worker = threading.Thread(target=self._work, name="aura-worker", daemon=True)
            self._worker.start()

    # ------------------------------------------------------------------ intake
    def on_image(self, msg: Any) -> bool:
        """Stores an Image message as the newest frame; a bad one is logged and dropped (returns False)."""
        try:
            rgb = conversions.image_to_rgb(msg)
        except ImageConversionError as error:
            self.dropped_images += 1
            encoding = str(getattr(msg, "encoding", ""))
            if encoding.lower() not in conversions.ENCODINGS:
                if encoding not in self._warned_encodings:
                    self._warned_encodings.add(encoding)
                    LOG.warning("dropping images: %s (warned once per encoding)", error)
            else:
                LOG.warning("dropping image: %s", error)
            return False
        self.frames.put(msg.header, rgb, self.clock())
        if self.threaded:
            with self._condition:
                self._condition.notify()
        return True

    def on_query(self, text: Any) -> Optional[Query]:
        """A text question (str or std_msgs/String); empty ones are logged and dropped (returns None)."""
        question = str(getattr(text, "data", text)).strip()
        if not question:
            LOG.warning("dropping an empty query")
            return None
        return self.submit(question)

    def on_audio(self, msg: Any) -> List[str]:
        """A chunk of PCM S16LE speech (audio_common_msgs/AudioData); each finished utterance becomes a query."""
        if self.transcriber is None:
            return []
        try:
            transcripts = self.transcriber.feed(conversions.message_bytes(msg.data).tobytes())
        except SpeechError as error:
            LOG.warning("dropping audio: %s", error)
            return []
        self._handle_transcripts(transcripts)
        return transcripts

    def flush_audio(self) -> List[str]:
        """Transcribes an utterance still open (end of a bag or shutdown)."""
        if self.transcriber is None:
            return []
        transcripts = self.transcriber.flush()
        self._handle_transcripts(transcripts)
        return transcripts

    def _handle_transcripts(self, transcripts: List[str]) -> None:
        for transcript in transcripts:
            LOG.info("heard: %s", transcript)
            self.publish(TRANSCRIPT, self.factory.make("std_msgs/msg/String", data=transcript))
            self.on_query(transcript)

    # ------------------------------------------------------------------ answering
    def submit(self, question: str) -> Query:
        """Queues a question (threaded) or answers it now; the query's future resolves to the segmentation message."""
        query = Query(question=question, received_ns=self.clock())
        if not question.strip():
            query.future.set_result(self._finish(query, None, STATUS_EMPTY_QUERY, "the question is empty"))
            return query
        if not self.threaded:
            self._answer(query)
            return query
        with self._condition:
            if len(self._queue) >= self.params.queue_depth:
                oldest = self._queue.popleft()
                self.dropped_queries += 1
                LOG.warning("query queue full (%d): dropping the oldest query %r", self.params.queue_depth, oldest.question)
                oldest.future.set_result(self._finish(oldest, None, STATUS_DROPPED, "dropped: query queue full"))
            self._queue.append(query)
            self._condition.notify()
        return query

    def _answer(self, query: Query) -> None:
        frame = self.frames.newest(self.clock(), self.params.max_image_age)
        if frame is None:
            why = f"no camera frame received in the last {self.params.max_image_age:g} s"
            LOG.warning("cannot answer %r: %s", query.question, why)
            query.future.set_result(self._finish(query, None, STATUS_NO_IMAGE, why))
            return
        try:
            with self._pipeline_lock:
                result = self.pipeline.ask(frame.rgb, query.question)
                self._embedded_sequence = frame.sequence
        except Exception as error:  # noqa: BLE001 - a model failure must not kill the node; it is reported in status
            LOG.exception("inference failed for %r", query.question)
            query.future.set_result(self._finish(query, None, STATUS_FAILED, f"{type(error).__name__}: {error}"))
            return
        query.future.set_result(self._finish(query, frame, STATUS_OK, "", result))

    def _finish(
        self, query: Query, frame: Optional[Frame], status: int, why: str, result: Optional[AuraResult] = None
    ) -> Any:
        """Builds and publishes every output of one query; returns the segmentation message."""
        header = frame.header if frame is not None else conversions.make_header(self.factory, query.received_ns)
        segmentation = conversions.segmentation_msg(
            self.factory,
            header=header,
            question=query.question,
            status=status,
            status_message=why,
            result=result,
            latency=time.monotonic() - query.arrived,
        )
        self.publish(SEGMENTATION, segmentation)
        if result is not None and frame is not None:
            self.publish(ANSWER, self.factory.make("std_msgs/msg/String", data=result.answer_text))
            labels = conversions.visible_labels(result)
            self.publish(VISIBLE_LABELS, conversions.numpy_to_image(self.factory, labels, "mono8", header))
            if self.params.publish_overlay:
                picture = conversions.overlay(frame.rgb, result)
                self.publish(OVERLAY, conversions.numpy_to_image(self.factory, picture, "rgb8", header))
        return segmentation

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._stopping and not self._embedding_due():
                    self._condition.wait()
                if self._stopping:
                    return
                query = self._queue.popleft() if self._queue else None
            try:
                if query is not None:
                    self._answer(query)
                else:
                    self._embed_newest()
            except Exception:  # noqa: BLE001 - keep serving; the error is logged with its traceback
                LOG.exception("worker error")
                if query is not None and not query.future.done():
                    query.future.set_result(self._finish(query, None, STATUS_FAILED, "worker error"))

    def _embedding_due(self) -> bool:
        return (
            self.params.precompute_embedding
            and hasattr(self.pipeline, "set_image")
            and self.frames.count > self._embedded_sequence
        )

    @property
    def embedding_current(self) -> bool:
        """True when the pipeline holds the image embedding of the newest frame (the next query skips the backbone)."""
        return self.frames.count > 0 and self._embedded_sequence == self.frames.count

    def _embed_newest(self) -> None:
        """While idle: caches the newest frame's image embedding so the next query skips the vision backbone."""
        frame = self.frames.newest()
        if frame is None:
            return
        with self._pipeline_lock:
            self.pipeline.set_image(frame.rgb)
            self._embedded_sequence = frame.sequence

    def close(self, timeout: float = 10.0) -> None:
        """Stops the worker after the query it is running; pending queries are answered as dropped."""
        with self._condition:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            self._condition.notify_all()
        for query in pending:
            query.future.set_result(self._finish(query, None, STATUS_DROPPED, "dropped: shutting down"))
        if self._worker is not None:
            self._worker.join(timeout)
