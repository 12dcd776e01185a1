"""Shared fixtures: a small synthetic data set in the user's CSV schema, written once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No model hub here: never let a test wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def small_csvs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """4 years x 40 fields of synthetic crop seasons (160 rows): fast to train on."""
    from timesclip.data import write_synthetic

    out = tmp_path_factory.mktemp("small-data")
    return write_synthetic(out, years=range(2016, 2020), n_per_year=40, seed=3)


@pytest.fixture(scope="session")
def tiny_config():
    """A CPU-sized TrainConfig for the tiny backbone."""
    from timesclip.config import TrainConfig

    return TrainConfig(backbone="tiny", d_model=32, head_hidden=32, n_heads=4, batch_size=16,
                       epochs=3, lr=1e-3, seed=1, device="cpu")


@pytest.fixture(scope="session")
def small_bundle(small_csvs, tiny_config):
    from timesclip.data import load_bundle

    return load_bundle(tiny_config, small_csvs)
