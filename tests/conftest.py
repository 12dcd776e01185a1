"""Shared fixtures: a small synthetic data set in the user's CSV schema, written once."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

# No model hub here: never let a test wait on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tests (and the searches they start) cache vision features in a directory of their own,
# never in the user's ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="timesclip-test-cache-")


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


class _Payload:
    """Unpickling this creates `marker`: what a crafted checkpoint could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_crafted_checkpoint(path: Path, marker: Path, *, zip_format: bool = True) -> Path:
    """A checkpoint-looking file whose unpickling would create `marker`."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"epoch": 1, "config": {}, "model": _Payload(marker)}
    if zip_format:
        torch.save(payload, path)  # torch's own container, the pickle inside
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # a bare pickle (legacy format)
    return path


@pytest.fixture(scope="session")
def crafted_checkpoint() -> Callable[..., Path]:
    """write(path, marker, zip_format=True) -> path of a checkpoint that must never load."""
    return _write_crafted_checkpoint


def _expected_params(config, n_variates: int) -> dict[str, int]:
    """Parameter counts derived from what the model is made of, not from count_parameters:
    frozen = the CLIP towers that stay frozen (the vision tower when used, the pretrained
    text encoder unless fine-tuned), trainable = everything else the model holds."""
    from timesclip.model import TimesCLIP, load_backbone

    backbone = load_backbone(config.backbone)
    model = TimesCLIP(config, n_variates, backbone)
    encoder = sum(p.numel() for p in model.language.encoder_parameters())
    assert encoder > 0
    held = sum(p.numel() for p in model.parameters())
    frozen_text = encoder if config.language_backbone == "clip" and config.freeze_text else 0
    vision = sum(p.numel() for p in backbone.vision.parameters()) if config.use_vision else 0
    return {"total": held + vision, "trainable": held - frozen_text,
            "frozen": frozen_text + vision}


@pytest.fixture(scope="session")
def expected_params() -> Callable[..., dict[str, int]]:
    """expected(config, n_variates) -> {"total", "trainable", "frozen"}."""
    return _expected_params


@pytest.fixture(scope="module")
def one_torch_thread():
    """Toy-sized tower calls are dominated by thread start-up on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ablation_search(tmp_path_factory) -> dict:
    """One ablation search (5 arms x 2 seeds x 2 epochs, built-in synthetic data, tiny
    backbone), shared by the report test and the browser test: {"exp", "proc", "wall"}."""
    from search_helpers import cli

    storage = tmp_path_factory.mktemp("ablation")
    small = storage / "small.yaml"
    small.write_text("d_model: 32\nhead_hidden: 32\n")
    proc, wall = cli("tuner.search", "--space", "ablation", "--backbone", "tiny",
                     "--max-epochs", 2, "--seeds", "0,1", "--storage", storage,
                     "--name", "ab", "--config", small, "--num-cpus", 2, "--no-dashboard",
                     "--cpus-per-trial", 1, "--gpus-per-trial", 0)
    return {"exp": storage / "ab", "proc": proc, "wall": wall}
