"""The feature cache at forecasting scale: fp16 entries, keys that follow the windows, and
storing / loading without a second copy of the features in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from real_data import forecast_csv
from search_helpers import benchmark_module

from timesclip.config import TrainConfig
from timesclip.data import load_bundle
from timesclip.feature_cache import (
    FORMAT,
    FeatureKey,
    cache_key,
    load_entry,
    load_or_compute,
    store_entry,
)
from timesclip.features import compute_features, feature_key


@pytest.fixture(scope="module")
def head_csv(tmp_path_factory):
    frame = pd.read_csv(forecast_csv("ETTh1"), nrows=500)
    path = tmp_path_factory.mktemp("forecast-cache") / "etth1_head.csv"
    frame.to_csv(path, index=False)
    return path


def small(**changes) -> TrainConfig:
    settings = dict(task="forecast", backbone="tiny", lookback=24, horizon=12,
                    borders="ratio", train_stride=8, device="cpu")
    return TrainConfig(**{**settings, **changes})


def test_forecast_entries_are_fp16_and_hit_identically(head_csv, tmp_path, one_torch_thread):
    config = small()
    data = load_bundle(config, [head_csv])
    calls = []

    def compute():
        calls.append(1)
        return compute_features(config, data, progress=None)

    first, hit = load_or_compute(config, data, cache_dir=tmp_path, compute=compute)
    second, hit2 = load_or_compute(config, data, cache_dir=tmp_path, compute=compute)
    assert (hit, hit2, len(calls)) == (False, True, 1)
    for split in ("train", "val", "test"):
        assert first[split].dtype == second[split].dtype == torch.float16
        assert torch.equal(first[split], second[split])
    entry = cache_key(config, data, cache_dir=tmp_path).path(tmp_path)
    assert json.loads(_header(entry))["train"]["dtype"] == "F16"  # fp16 on disk
    rows = sum(len(data.split(s)) for s in ("train", "val", "test"))
    assert entry.stat().st_size < rows * 7 * 64 * 2 + 16_384  # 2 bytes per value + header
    assert oct(entry.stat().st_mode & 0o777) == "0o644"
    assert cache_key(config, data, cache_dir=tmp_path).parts["format"] == FORMAT


def _header(path: Path) -> str:
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    return raw[8:8 + size].decode()


def test_keys_follow_the_windows(head_csv, tmp_path):
    config = small()
    data = load_bundle(config, [head_csv])
    key = cache_key(config, data, cache_dir=tmp_path)
    # the stride picks other training windows; lookback and horizon other windows (the
    # data fingerprint holds both): the search's key and the cache's key both change
    for change in (dict(train_stride=4), dict(lookback=36), dict(horizon=24)):
        other_config = small(**change)
        other = load_bundle(other_config, [head_csv])
        assert cache_key(other_config, other, cache_dir=tmp_path).digest != key.digest, change
        assert feature_key(other_config, other) != feature_key(config, data), change
    assert key.parts["dtype"] == "float16"
    assert cache_key(TrainConfig(backbone="tiny"), load_bundle(
        TrainConfig(), None), cache_dir=tmp_path).parts["dtype"] == "float32"  # yield


def test_store_and_load_hold_no_second_copy(tmp_path):
    """Peak memory (VmHWM) of storing and of loading a 54 MB fp16 entry: storing adds
    (almost) nothing, loading adds the one copy it returns, never two."""
    bench = benchmark_module("forecast_features")  # its memory probes
    rss_kb, reset_peak = bench.rss_kb, bench.reset_peak
    n = 40_000
    key = FeatureKey("0" * 64, {"dtype": "float16"})
    shapes = {"train": (n, 7, 64), "val": (n // 4, 7, 64), "test": (n // 4, 7, 64)}
    feats = {s: torch.empty(shape, dtype=torch.float16).normal_()
             for s, shape in shapes.items()}
    size = sum(t.numel() * 2 for t in feats.values()) // 1024
    path = tmp_path / "big.safetensors"
    store_entry(tmp_path / "warm.safetensors", key, {s: t[:2] for s, t in feats.items()})
    load_entry(tmp_path / "warm.safetensors", key, {s: (2, 7) for s in shapes})  # imports
    before = rss_kb("VmRSS")
    reset_peak()
    store_entry(path, key, feats)
    store_extra = rss_kb("VmHWM") - before
    del feats
    before = rss_kb("VmRSS")
    reset_peak()
    loaded = load_entry(path, key, {s: shape[:2] for s, shape in shapes.items()})
    load_extra = rss_kb("VmHWM") - before
    assert sum(t.numel() * 2 for t in loaded.values()) // 1024 == size > 50_000
    assert store_extra < 0.2 * size, (store_extra, size)
    assert load_extra < 1.25 * size, (load_extra, size)
