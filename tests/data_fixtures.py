"""Shared fixtures of the data tests: a tiny synthetic data set built once per session."""
from pathlib import Path

import pytest

from aura_core.data.synthetic import generate_dataset


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, train=6, val=3, seed=3, size=96)
    return root
