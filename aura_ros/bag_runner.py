"""aura-bag: replay a rosbag2 (sqlite3 or mcap) through the node's request logic, offline and without ROS.

Camera, query and speech topics in; a bag with the node's output topics out (mcap by default, message definitions
stored so `ros2 bag`, Foxglove or rosbags can decode aura_ros/msg/*). Answers are computed in place, so the output
depends only on the input bag: each output is stamped (bag time) with the message that triggered it.

    aura-bag --input in_bag --output out_bag --checkpoint runs/default/model
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from tqdm import tqdm

from aura_ros import interfaces
from aura_ros.loading import load_pipeline
from aura_ros.params import AuraParameters
from aura_ros.responder import (
    ANSWER,
    OUTPUT_TOPICS,
    OVERLAY,
    SEGMENTATION,
    TRANSCRIPT,
    VISIBLE_LABELS,
    AuraResponder,
)

LOG = logging.getLogger(__name__)

OUTPUT_TYPES = {
    SEGMENTATION: interfaces.SEGMENTATION_TYPE,
    ANSWER: interfaces.STRING_TYPE,
    TRANSCRIPT: interfaces.STRING_TYPE,
    VISIBLE_LABELS: interfaces.IMAGE_TYPE,
    OVERLAY: interfaces.IMAGE_TYPE,
}


@dataclass
class BagSummary:
    """What one replay did: input message counts per kind and output message counts per topic."""

    images: int
    queries: int
    audio_chunks: int
    skipped: int
    outputs: Dict[str, int]
    statuses: Dict[int, int]


def check_paths(input_bag: Path, output_bag: Path) -> None:
    """Fails early, naming the option, when the input is missing or the output exists (before loading a model)."""
    if not Path(input_bag).exists():
        raise FileNotFoundError(f"--input: bag {input_bag} does not exist")
    if Path(output_bag).exists():
        raise FileExistsError(f"--output: {output_bag} exists already; rosbag2 writers never overwrite")


def _topic(namespace: str, name: str) -> str:
    return "/" + "/".join(part for part in (namespace.strip("/"), name) if part)


def run_bag(
    *,
    input_bag: Path,
    output_bag: Path,
    pipeline: Any,
    params: AuraParameters,
    image_topic: str = "/image",
    query_topic: str = "/query",
    speech_topic: str = "/speech",
    namespace: str = "",
    storage: str = "mcap",
    distro: str = "humble",
    progress: bool = True,
) -> BagSummary:
    """Replays input_bag through an AuraResponder into output_bag; bad messages are logged and skipped."""
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.serde import SerdeError

    input_bag, output_bag = Path(input_bag), Path(output_bag)
    check_paths(input_bag, output_bag)
    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"--storage: {storage!r} is not one of {sorted(plugins)}")

    typestore = interfaces.make_typestore(distro)
    factory = interfaces.RosbagsFactory(typestore)
    inputs = {image_topic: "image", query_topic: "query", speech_topic: "speech"}
    counts: Counter = Counter()
    statuses: Counter = Counter()

    with AnyReader([input_bag], default_typestore=typestore) as reader:
        interfaces.register_missing(reader.typestore, {interfaces.AUDIO_DATA_TYPE})
        connections = [c for c in reader.connections if c.topic in inputs]
        present = {c.topic for c in connections}
        if image_topic not in present:
            LOG.warning("image topic %s is not in %s (topics: %s): every query will be answered 'no image'",
                        image_topic, input_bag, sorted(reader.topics))
        if not {query_topic, speech_topic} & present:
            LOG.warning("neither %s nor %s is in %s: nothing to answer", query_topic, speech_topic, input_bag)

        writer = Writer(output_bag, version=8, storage_plugin=plugins[storage])
        writer.open()
        out_connections = {
            name: writer.add_connection(_topic(namespace, name), OUTPUT_TYPES[name], typestore=typestore)
            for name in OUTPUT_TOPICS
        }
        now = {"ns": 0}

        def publish(name: str, message: Any) -> None:
            counts["out:" + name] += 1
            if name == SEGMENTATION:
                statuses[int(message.status)] += 1
            writer.write(out_connections[name], now["ns"], factory.serialize(message, OUTPUT_TYPES[name]))

        responder = AuraResponder(
            pipeline=pipeline, factory=factory, publish=publish, params=params, clock=lambda: now["ns"], threaded=False
        )
        try:
            total = sum(c.msgcount for c in connections)
            for connection, timestamp, raw in tqdm(
                reader.messages(connections=connections), total=total, desc="aura-bag", unit="msg", disable=not progress
            ):
                now["ns"] = timestamp
                kind = inputs[connection.topic]
                try:
                    message = reader.deserialize(raw, connection.msgtype)
                except (AnyReaderError, SerdeError, KeyError, ValueError) as error:
                    LOG.warning("skipping undecodable %s message at %d ns: %s", connection.topic, timestamp, error)
                    counts["skipped"] += 1
                    continue
                counts[kind] += 1
                accepted = _dispatch(responder, kind, message)
                if not accepted:
                    counts["skipped"] += 1
            responder.flush_audio()
        finally:
            writer.close()
    return BagSummary(
        images=counts["image"],
        queries=counts["query"],
        audio_chunks=counts["speech"],
        skipped=counts["skipped"],
        outputs={name: counts["out:" + name] for name in OUTPUT_TOPICS},
        statuses=dict(statuses),
    )


def _dispatch(responder: AuraResponder, kind: str, message: Any) -> bool:
    """Hands one decoded input to the responder; False when it was dropped as bad."""
    if kind == "image":
        return responder.on_image(message)
    if kind == "query":
        return responder.on_query(message) is not None
    responder.on_audio(message)
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aura-bag", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, type=Path, help="input rosbag2 directory (sqlite3 or mcap)")
    parser.add_argument("--output", required=True, type=Path, help="output rosbag2 directory (must not exist)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", default="", help="AURA checkpoint directory (default: the embedded model)")
    model.add_argument("--config", default="", help="named random-init model config instead, e.g. 'tiny' (tests)")
    parser.add_argument("--params", type=Path, help="ROS parameter file, e.g. config/aura.yaml (node parameters)")
    parser.add_argument("--image-topic", default="/image")
    parser.add_argument("--query-topic", default="/query")
    parser.add_argument("--speech-topic", default="/speech")
    parser.add_argument("--namespace", default="", help="prefix of the output topics, e.g. /aura")
    parser.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"], help="output storage (mcap reads on Humble too)")
    parser.add_argument("--distro", default="humble", choices=["humble", "jazzy"], help="standard message definitions to store")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides: Dict[str, Any] = {}
    if args.checkpoint:
        overrides["checkpoint"] = args.checkpoint
    if args.config:
        overrides["model_config"] = args.config
        overrides["checkpoint"] = ""
    if args.params:
        params = AuraParameters.from_yaml(args.params, overrides)
    else:
        params = AuraParameters.from_mapping(overrides, source="command line")
    check_paths(args.input, args.output)
    summary = run_bag(
        input_bag=args.input,
        output_bag=args.output,
        pipeline=load_pipeline(params),
        params=params,
        image_topic=args.image_topic,
        query_topic=args.query_topic,
        speech_topic=args.speech_topic,
        namespace=args.namespace,
        storage=args.storage,
        distro=args.distro,
        progress=not args.no_progress,
    )
    lines: List[str] = [
        f"input: {summary.images} images, {summary.queries} text queries, {summary.audio_chunks} audio chunks, "
        f"{summary.skipped} skipped as bad",
        "output: " + ", ".join(f"{_topic(args.namespace, k)} {v}" for k, v in summary.outputs.items()),
        "statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(summary.statuses.items())),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
