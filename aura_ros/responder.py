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
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Set

import numpy as np

from aura_core.result import AuraResult
from aura_ros import conversions
from aura_ros.conversions import ImageConversionError, MessageFactory
from aura_ros.params import AuraParameters
from aura_ros.speech import SpeechTranscriber, Transcript, make_transcriber, model_lexicon, model_vocabulary

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
    request_id: str = ""  # echoed in the segmentation: the caller's (ask) or one the responder assigns


def _quoted(question: str, limit: int = 80) -> str:
    """A question for a log line: repr, cut to `limit` characters (a 10 kB question must not flood the log)."""
    return repr(question) if len(question) <= limit else f"{question[:limit]!r}... ({len(question)} characters)"


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
        speech_required: bool = False,
    ) -> None:
        self.pipeline = pipeline
        self.factory = factory
        self.publish = publish
        self.params = params
        self.clock = clock
        self.threaded = threaded
        if transcriber is None and params.speech_enabled:
            # No model: speech_required (node) raises ParameterError('speech_model') now; else a warning, speech off.
            transcriber = make_transcriber(params, vocabulary=model_vocabulary(pipeline), lexicon=model_lexicon(pipeline),
                                          required=speech_required)
        self.transcriber = transcriber
        self.frames = FrameStore()
        self._queue: Deque[Query] = collections.deque()
        self._condition = threading.Condition()
        self._pipeline_lock = threading.Lock()  # the pipeline and its cached embedding are not thread-safe
        self._embedded_sequence = 0
        self._embedded_frame: Optional[Frame] = None  # the frame whose image embedding the pipeline holds
        self._request_counts: Dict[str, int] = collections.Counter()
        self._latencies: Deque[float] = collections.deque(maxlen=100)  # seconds, of the last answered queries
        self._warned_encodings: Set[str] = set()
        self._worker: Optional[threading.Thread] = None
        self._stopping = False
        self.dropped_images = 0
        self.dropped_queries = 0
        self.answered = 0
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
            if encoding.lower() not in conversions.input_encodings():
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
        return self.submit(question, request_id=self._next_id("query"))

    def on_audio(self, msg: Any) -> List[Transcript]:
        """A chunk of PCM S16LE speech (audio_common_msgs/AudioData, any size); each finished utterance becomes a query."""
        if self.transcriber is None:
            return []
        try:
            transcripts = self.transcriber.feed(conversions.message_bytes(msg.data).tobytes())
        except Exception:  # noqa: BLE001 - a recogniser failure drops that audio, never the node
            LOG.exception("speech recognition failed; audio dropped")
            return []
        self._handle_transcripts(transcripts)
        return transcripts

    def flush_audio(self) -> List[Transcript]:
        """Transcribes an utterance still open (end of a bag or shutdown); harmless when nothing is buffered."""
        if self.transcriber is None:
            return []
        try:
            transcripts = self.transcriber.flush()
        except Exception:  # noqa: BLE001 - as on_audio
            LOG.exception("speech recognition failed at the end of the stream; audio dropped")
            return []
        self._handle_transcripts(transcripts)
        return transcripts

    def _handle_transcripts(self, transcripts: List[Transcript]) -> None:
        for transcript in transcripts:
            LOG.info("heard: %r (confidence %.2f, %.1f s of speech, transcribed in %.2f s)",
                     transcript.text, transcript.confidence, transcript.audio_seconds, transcript.seconds)
            self.publish(TRANSCRIPT, self.factory.make("std_msgs/msg/String", data=transcript.text))
            if transcript.text.strip():  # a spoken question's answer carries request_id "speech-N"
                self.submit(transcript.text.strip(), request_id=self._next_id("speech"))

    # ------------------------------------------------------------------ answering
    def _next_id(self, source: str) -> str:
        with self._condition:
            self._request_counts[source] += 1
            return f"{source}-{self._request_counts[source]}"

    def submit(self, question: str, request_id: str = "") -> Query:
        """Queues a question (threaded) or answers it now; the query's future resolves to the segmentation message.

        Never leaves a future unresolved: after close() the question is answered STATUS_DROPPED at once, with a dead
        worker STATUS_FAILED at once. An empty request_id gets "ask-N".
        """
        query = Query(question=question, received_ns=self.clock(), request_id=request_id or self._next_id("ask"))
        if not question.strip():
            query.future.set_result(self._finish(query, None, STATUS_EMPTY_QUERY, "the question is empty"))
            return query
        if self._stopping:
            query.future.set_result(self._finish(query, None, STATUS_DROPPED, "dropped: shutting down"))
            return query
        if not self.threaded:
            self._answer(query)
            return query
        if self._worker is None or not self._worker.is_alive():
            LOG.error("the inference worker is not running: cannot answer %s", _quoted(question))
            query.future.set_result(self._finish(query, None, STATUS_FAILED, "the inference worker is not running"))
            return query
        with self._condition:
            if self._stopping:
                query.future.set_result(self._finish(query, None, STATUS_DROPPED, "dropped: shutting down"))
                return query
            if len(self._queue) >= self.params.queue_depth:
                oldest = self._queue.popleft()
                self.dropped_queries += 1
                LOG.warning("query queue full (%d): dropping the oldest query %s", self.params.queue_depth, _quoted(oldest.question))
                oldest.future.set_result(self._finish(oldest, None, STATUS_DROPPED, "dropped: query queue full"))
            self._queue.append(query)
            self._condition.notify()
        return query

    def _frame_to_answer(self) -> Optional[Frame]:
        """The frame a query is answered against: the newest within max_image_age, but, when the idle worker holds
        the image embedding of an older frame that is still within max_image_age, that one (on a live stream the newest
        frame is always newer than the embedded one, and answering it would embed again: the cache would never pay)."""
        now = self.clock()
        newest = self.frames.newest(now, self.params.max_image_age)
        embedded = self._embedded_frame
        if (newest is not None and embedded is not None and self.threaded and self._embedding_enabled()
                and now - embedded.received_ns <= self.params.max_image_age * NS_PER_S):
            return embedded
        return newest

    def _answer(self, query: Query) -> None:
        frame = self._frame_to_answer()
        if frame is None:
            why = f"no camera frame received in the last {self.params.max_image_age:g} s"
            LOG.warning("cannot answer %s: %s", _quoted(query.question), why)
            self._resolve(query, self._finish(query, None, STATUS_NO_IMAGE, why))
            return
        try:
            with self._pipeline_lock:
                result = self.pipeline.ask(frame.rgb, query.question)
                self._embedded_sequence = max(self._embedded_sequence, frame.sequence)
                self._embedded_frame = frame
        except Exception as error:  # noqa: BLE001 - a model failure must not kill the node; it is reported in status
            # One line for the operator (the query is answered STATUS_FAILED saying why); the traceback at debug level.
            LOG.error("inference failed for %s: %s: %s", _quoted(query.question), type(error).__name__, error)
            LOG.debug("inference failure", exc_info=True)
            self._resolve(query, self._finish(query, None, STATUS_FAILED, f"{type(error).__name__}: {error}"))
            return
        self._resolve(query, self._finish(query, frame, STATUS_OK, "", result))

    @staticmethod
    def _resolve(query: Query, segmentation: Any) -> None:
        """Hands the worker's segmentation to the query's caller, unless expire() already gave up on it: then the
        caller has its STATUS_FAILED, and the late answer (already published) goes to the topics only."""
        try:
            query.future.set_result(segmentation)
        except InvalidStateError:
            LOG.info("answered %s after its caller gave up; the answer went to the topics only", _quoted(query.question))

    def _finish(
        self, query: Query, frame: Optional[Frame], status: int, why: str, result: Optional[AuraResult] = None
    ) -> Any:
        """Builds every output of one query, then publishes them; returns the segmentation message.

        Everything is built before anything is published, so a failure half-way (a result that cannot become
        messages) publishes one STATUS_FAILED segmentation instead of an OK followed by a FAILED.
        """
        header = frame.header if frame is not None else conversions.make_header(self.factory, query.received_ns)
        latency = time.monotonic() - query.arrived
        outputs = []
        try:
            segmentation = conversions.segmentation_msg(
                self.factory, header=header, question=query.question, status=status, status_message=why,
                result=result, latency=latency, request_id=query.request_id)
            outputs.append((SEGMENTATION, segmentation))
            if result is not None and frame is not None:
                outputs.append((ANSWER, self.factory.make("std_msgs/msg/String", data=result.answer_text)))
                labels = conversions.visible_labels(result)
                outputs.append((VISIBLE_LABELS, conversions.numpy_to_image(self.factory, labels, "mono8", header)))
                if self.params.publish_overlay:
                    picture = conversions.overlay(frame.rgb, result)
                    outputs.append((OVERLAY, conversions.numpy_to_image(self.factory, picture, "rgb8", header)))
        except Exception as error:  # noqa: BLE001 - reported in status instead of half the outputs
            if result is None:
                raise
            LOG.exception("could not build the messages answering %s", _quoted(query.question))
            return self._finish(query, None, STATUS_FAILED, f"building the result messages: {type(error).__name__}: {error}")
        if status == STATUS_OK:
            self.answered += 1
            self._latencies.append(latency)
        for topic, message in outputs:
            self.publish(topic, message)
        return segmentation

    def expire(self, query: Query, why: str) -> Any:
        """Gives up on a query (the ask service's timeout): unqueues it and resolves it STATUS_FAILED with `why`.

        Returns the query's segmentation: that failure, or the real answer when it arrived in the meantime.
        """
        with self._condition:
            if query in self._queue:
                self._queue.remove(query)
        if not query.future.done():
            LOG.warning("giving up on %s: %s", _quoted(query.question), why)
            try:
                query.future.set_result(self._finish(query, None, STATUS_FAILED, why))
            except InvalidStateError:  # resolved by the worker between the check and here
                pass
        return query.future.result()

    def stats(self) -> Dict[str, Any]:
        """Counters for diagnostics: drops, queue depth, answers, worker state and latency of recent answers (s)."""
        with self._condition:
            depth = len(self._queue)
        latencies = sorted(self._latencies)
        return {
            "dropped_images": self.dropped_images,
            "dropped_queries": self.dropped_queries,
            "queue_depth": depth,
            "answered": self.answered,
            "worker_alive": bool(self._worker is not None and self._worker.is_alive()) if self.threaded else True,
            "latency_median": latencies[len(latencies) // 2] if latencies else 0.0,
            "latency_max": latencies[-1] if latencies else 0.0,
        }

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
                    self._resolve(query, self._finish(query, None, STATUS_FAILED, "worker error"))

    def _embedding_enabled(self) -> bool:
        return self.params.precompute_embedding and hasattr(self.pipeline, "set_image")

    def _embedding_due(self) -> bool:
        return self._embedding_enabled() and self.frames.count > self._embedded_sequence

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
            self._embedded_frame = frame

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
