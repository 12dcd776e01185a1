"""timesclip.feature_cache: keyed by everything the features depend on, checked on load,
written atomically, and used by `python -m timesclip train` so a second run skips the tower.

Tiny backbone, two bands, 160 rows: each vision pass takes a fraction of a second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionModel

from timesclip import atomic, feature_cache
from timesclip.data import load_bundle
from timesclip.feature_cache import (
    SPLITS,
    cache_key,
    file_sha256,
    load_or_compute,
)
from timesclip.features import compute_features, feature_key

BANDS = ["ndvi", "red"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def config(tiny_config):
    return tiny_config.replace(bands=BANDS)


@pytest.fixture(scope="module")
def bundle(config, small_csvs):
    return load_bundle(config, small_csvs)


class Counter:
    """compute() for load_or_compute: the real feature pass, counted."""

    def __init__(self, config, data) -> None:
        self.config, self.data, self.calls = config, data, 0

    def __call__(self):
        self.calls += 1
        return compute_features(self.config, self.data, progress=None)


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".safetensors"))


def _save_tiny_clip(path: Path, seed: int) -> None:
    from transformers import CLIPConfig, CLIPModel

    from timesclip.model.backbones import tiny_configs

    text, vision = tiny_configs()
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                         projection_dim=16)).save_pretrained(str(path))


# ----------------------------------------------------------------------------- hit / miss
def test_same_inputs_hit_and_return_identical_tensors(config, bundle, tmp_path):
    compute, logs = Counter(config, bundle), []
    first, hit = load_or_compute(config, bundle, cache_dir=tmp_path, compute=compute,
                                 log=logs.append)
    assert not hit and compute.calls == 1 and len(_entries(tmp_path)) == 1
    assert "computed and stored" in logs[-1] and _entries(tmp_path)[0][:12] in logs[-1]
    second, hit = load_or_compute(config, bundle, cache_dir=tmp_path, compute=compute,
                                  log=logs.append)
    assert hit and compute.calls == 1
    assert logs[-1].startswith("vision features: loaded from cache ") and str(tmp_path) in logs[-1]
    for split in SPLITS:
        assert torch.equal(first[split], second[split])
        assert second[split].shape == (len(getattr(bundle, split)), len(BANDS), 64)
    # settings that do not touch the features (optimiser, model) share the entry
    _, hit = load_or_compute(config.replace(lr=0.5, d_model=64, seed=9), bundle,
                             cache_dir=tmp_path, compute=compute)
    assert hit and compute.calls == 1


@pytest.mark.parametrize("change", ["bands", "image_size", "input_steps", "line_width",
                                    "split_seed", "precision"])
def test_a_changed_input_misses(change, config, bundle, small_csvs, tmp_path):
    compute = Counter(config, bundle)
    load_or_compute(config, bundle, cache_dir=tmp_path, compute=compute)
    other = {"bands": config.replace(bands=["ndvi", "evi"]),
             "image_size": config.replace(image_size=96),
             "input_steps": config.replace(input_steps=10),
             "line_width": config.replace(line_width=3.0),
             "split_seed": config.replace(split_seed=7),
             "precision": config.replace(precision="bf16")}[change]
    other_data = load_bundle(other, small_csvs)
    other_compute = Counter(other, other_data)
    features, hit = load_or_compute(other, other_data, cache_dir=tmp_path, compute=other_compute)
    assert not hit and other_compute.calls == 1 and len(_entries(tmp_path)) == 2
    assert feature_key(other, other_data) != feature_key(config, bundle)
    assert cache_key(other, other_data).digest != cache_key(config, bundle).digest


def test_a_changed_backbone_misses_also_in_the_same_directory(config, bundle, tmp_path):
    ckpt = tmp_path / "clip"
    _save_tiny_clip(ckpt, seed=1)
    cache = tmp_path / "cache"
    tiny = cache_key(config, bundle, cache_dir=cache)
    local = config.replace(backbone=str(ckpt))
    first = cache_key(local, bundle, cache_dir=cache)
    assert first.digest != tiny.digest and first.parts["backbone"]["kind"] == "directory"
    compute = Counter(local, bundle)
    _, hit = load_or_compute(local, bundle, cache_dir=cache, compute=compute)
    assert not hit and compute.calls == 1
    _, hit = load_or_compute(local, bundle, cache_dir=cache, compute=compute)
    assert hit and compute.calls == 1
    # new weights under the same path: content-addressed, so a miss
    _save_tiny_clip(ckpt, seed=2)
    assert cache_key(local, bundle, cache_dir=cache).digest != first.digest
    _, hit = load_or_compute(local, bundle, cache_dir=cache, compute=compute)
    assert not hit and compute.calls == 2


def test_weight_hashes_are_memoised_by_path_size_and_mtime(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    cache = tmp_path / "cache"
    cache.mkdir()
    real = file_sha256(weights, cache_dir=cache)
    memo_file = cache / feature_cache.WEIGHT_HASHES
    memo = json.loads(memo_file.read_text())
    assert memo[os.path.realpath(weights)]["sha256"] == real
    # an unchanged file (same size, same mtime) is not read again: the memo answers
    memo[os.path.realpath(weights)]["sha256"] = "memoised"
    memo_file.write_text(json.dumps(memo))
    assert file_sha256(weights, cache_dir=cache) == "memoised"
    # a rewritten file (new mtime) is hashed again
    stat = weights.stat()
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    again = file_sha256(weights, cache_dir=cache)
    assert again not in ("memoised", real) and len(again) == 64


def test_hub_ids_are_keyed_by_their_cached_snapshot_commit(config, bundle, tmp_path,
                                                           monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub = config.replace(backbone="someorg/some-clip")
    assert cache_key(hub, bundle) is None  # not in the local cache: cannot be identified
    repo = tmp_path / "hub" / "models--someorg--some-clip"
    keys = []
    for commit in ("a" * 40, "b" * 40):
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text(json.dumps({"vision_config": {"image_size": 64}}))
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        key = cache_key(hub, bundle)
        assert key.parts["backbone"] == {"kind": "hub", "id": "someorg/some-clip",
                                         "commit": commit}
        keys.append(key.digest)
    assert keys[0] != keys[1]


def test_feature_key_is_contained_in_the_cache_key(config, bundle):
    key = cache_key(config, bundle)
    settings = key.parts["settings"]
    assert feature_key(config, bundle) == "|".join(str(v) for v in settings.values())
    assert settings["data"] == bundle.fingerprint and settings["backbone"] == "tiny"
    assert key.parts["image_size_px"] == 64 and key.parts["backbone"]["kind"] == "tiny"


# ----------------------------------------------------------------------------- bad files
def _corrupt_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _corrupt_flip_a_feature_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x40  # inside the last tensor's data: the file still parses
    path.write_bytes(bytes(raw))


def _corrupt_other_key(path: Path) -> None:
    """Intact tensors and checksums, but made for another key (e.g. a file copied over)."""
    import safetensors
    import safetensors.torch

    with safetensors.safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    tensors = safetensors.torch.load(path.read_bytes())
    key = json.loads(meta["key"])
    key["settings"]["line_width"] = 99.0
    meta["key"] = json.dumps(key, sort_keys=True, separators=(",", ":"))
    safetensors.torch.save_file(tensors, str(path), metadata=meta)


def _corrupt_garbage(path: Path) -> None:
    path.write_bytes(b"not a safetensors file")


@pytest.mark.parametrize("corrupt", [_corrupt_truncate, _corrupt_flip_a_feature_byte,
                                     _corrupt_other_key, _corrupt_garbage],
                         ids=["truncated", "flipped-byte", "other-key", "garbage"])
def test_a_corrupted_entry_is_recomputed_and_replaced(corrupt, config, bundle, tmp_path):
    compute, logs = Counter(config, bundle), []
    good, _ = load_or_compute(config, bundle, cache_dir=tmp_path, compute=compute)
    path = tmp_path / _entries(tmp_path)[0]
    corrupt(path)
    again, hit = load_or_compute(config, bundle, cache_dir=tmp_path, compute=compute,
                                 log=logs.append)
    assert not hit and compute.calls == 2
    assert any("unusable" in line and str(path) in line for line in logs)
    for split in SPLITS:
        assert torch.equal(again[split], good[split])
    # the bad file was replaced by a good one
    _, hit = load_or_compute(config, bundle, cache_dir=tmp_path, compute=compute)
    assert hit and compute.calls == 2


def test_write_is_atomic(config, bundle, tmp_path, monkeypatch):
    compute, logs = Counter(config, bundle), []

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    # a failure between writing the temp file and renaming it into place
    monkeypatch.setattr(atomic.os, "replace", fail)
    features, hit = load_or_compute(config, bundle, cache_dir=tmp_path, compute=compute,
                                    log=logs.append)
    monkeypatch.undo()
    assert not hit and features is not None and "could not store" in logs[-1]
    assert list(tmp_path.iterdir()) == []  # no entry, no stray temp file
    # a complete temp file left by a killed writer is never taken for an entry
    load_or_compute(config, bundle, cache_dir=tmp_path, compute=compute)
    entry = tmp_path / _entries(tmp_path)[0]
    stray = tmp_path / f".{entry.name}.killed.tmp"
    entry.rename(stray)
    _, hit = load_or_compute(config, bundle, cache_dir=tmp_path, compute=compute)
    assert not hit and compute.calls == 3


def test_an_unwritable_cache_directory_does_not_fail_the_run(config, bundle, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    logs = []
    features, hit = load_or_compute(config, bundle, cache_dir=blocker / "cache",
                                    compute=Counter(config, bundle), log=logs.append)
    assert features is not None and not hit and "unusable" in logs[0]


def test_no_vision_branch_no_features(config, bundle, tmp_path):
    language_only = config.replace(use_vision=False, use_contrastive=False)
    assert load_or_compute(language_only, bundle, cache_dir=tmp_path) == (None, False)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the CLI
def test_second_train_run_loads_features_and_skips_the_tower(small_csvs, tmp_path, capsys):
    from timesclip.__main__ import main

    calls = []

    def count(module, args, output):
        if isinstance(module, CLIPVisionModel):
            calls.append(module)

    argv = ["train", "--backbone", "tiny", "--device", "cpu", "--d-model", "32",
            "--head-hidden", "32", "--bands", ",".join(BANDS), "--epochs", "1",
            "--data", *map(str, small_csvs), "--feature-cache", str(tmp_path / "cache")]
    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        assert main([*argv, "--out", str(tmp_path / "first")]) == 0
        first = capsys.readouterr().out
        tower_calls = len(calls)
        assert main([*argv, "--out", str(tmp_path / "second")]) == 0
        second = capsys.readouterr().out
        assert len(calls) == tower_calls > 0  # the second run never called the tower
        assert main([*argv[:-2], "--no-feature-cache", "--out", str(tmp_path / "third")]) == 0
        third = capsys.readouterr().out
        assert len(calls) > tower_calls
    finally:
        handle.remove()
    assert "computed and stored in cache" in first
    assert "vision features: loaded from cache" in second and "encoded once" not in second
    assert "from cache" not in third and "in cache" not in third and "encoded once" in third
    assert len(_entries(tmp_path / "cache")) == 1
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text())
               for run in ("first", "second", "third")]
    assert metrics[0]["test"] == metrics[1]["test"] == metrics[2]["test"]
    assert metrics[0]["params"] == metrics[1]["params"]
