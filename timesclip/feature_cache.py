"""Frozen vision features, cached on disk across training runs and searches.

The features are a pure function of (data, render settings, backbone weights), and
computing them is the most expensive step of a short run at real size (minutes on a CPU),
so they are stored once per distinct input and loaded by every later run that has the
same inputs.

- Content-addressed: the file name is the SHA-256 of a canonical JSON description of
  everything the features depend on -- the data's content and split, the band set, the
  input window, image size (as asked and as resolved), line width, the renderer and cache
  format versions, and the backbone's identity: for `tiny` its config and a hash of its
  weights; for a local directory the content hash of its config and weight files (kept
  in `weights-sha256.json` by (path, size, mtime_ns), so a 600 MB file is hashed once);
  for a hub id the snapshot commit found in the local Hugging Face cache, else the id and
  its cached weight file's content hash. Any change gives another file, never a stale hit.
- Tensors only: safetensors files, no pickle. The description, per-split SHA-256 checksums
  and shapes travel in the file's own metadata, so an entry is checked against what it
  claims to be before use; a file that fails to parse, is truncated, or whose key,
  shapes or checksums disagree is recomputed and replaced, never loaded.
- Atomic: written to a temp file in the same directory, fsynced, then `os.replace`d; the
  loader only ever opens the final name, so a crash mid-write leaves nothing it accepts.

Default location: `$XDG_CACHE_HOME/timesclip/features` (else `~/.cache/timesclip/features`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from timesclip import atomic
from timesclip.config import TrainConfig
from timesclip.data import Bundle, ForecastBundle
from timesclip.features import FEATURE_DTYPES, SPLITS, compute_features, feature_settings
from timesclip.model.backbones import CLIP_CONFIG_FILE

#: Format tag of an entry; bump on any change to what is stored or how the key is built.
#: 2: the dtype is part of the key (forecasting features are float16), tensors are written
#: and checksummed without a copy in memory.
FORMAT = "timesclip-features/2"
SUFFIX = ".safetensors"
#: (path, size, mtime_ns) -> sha256 of local weight files, inside the cache directory.
WEIGHT_HASHES = "weights-sha256.json"
#: Files of a local checkpoint directory whose content identifies the weights it loads.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")

Log = Callable[[str], None]


class CacheEntryError(Exception):
    """A cache file that must not be used (unreadable, truncated, or not what it claims)."""


# ----------------------------------------------------------------------------- locations
def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/timesclip/features`, or `~/.cache/timesclip/features`."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    root = Path(base) if base else Path.home() / ".cache"
    return root / "timesclip" / "features"


# ----------------------------------------------------------------------------- the key
def data_content_hash(data: Bundle) -> str:
    """SHA-256 over what is actually drawn: the raw windows [N, T, V] of every split of a
    yield data set; the rows [R, V] of every split of a forecasting file and how its windows
    are cut from them (lookback, horizon, stride)."""
    h = hashlib.sha256()
    for split in SPLITS:
        if isinstance(data, ForecastBundle):
            part = data.split(split)
            x = np.ascontiguousarray(part.data, dtype="<f4")  # [R, V] rows of the split
            h.update(json.dumps([split, list(x.shape), part.lookback, part.horizon,
                                 part.stride]).encode())
        else:
            x = np.ascontiguousarray(getattr(data, split).x_raw, dtype="<f4")
            h.update(json.dumps([split, list(x.shape)]).encode())
        h.update(x)  # the buffer itself: no bytes copy
    return h.hexdigest()


@dataclass(frozen=True)
class FeatureKey:
    """The cache key: `parts` is what it was made of, `digest` its SHA-256 (the file name)."""

    digest: str
    parts: dict[str, Any]

    @property
    def canonical(self) -> str:
        return _canonical(self.parts)

    def path(self, cache_dir: str | Path) -> Path:
        return Path(cache_dir) / f"{self.digest}{SUFFIX}"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def cache_key(config: TrainConfig, data: Bundle, *,
              cache_dir: str | Path | None = None) -> FeatureKey | None:
    """The key of `config`'s features on `data`, or None when the backbone's weights cannot
    be identified without loading them (a hub id not in the local cache yet).

    `cache_dir` holds the weight-hash memo of local checkpoint directories.
    """
    identity = backbone_identity(config.backbone, cache_dir=cache_dir)
    if identity is None:
        return None
    native = identity.pop("native_image_size")
    parts = {
        "format": FORMAT,
        "settings": feature_settings(config, data),
        "image_size_px": int(config.image_px(native)),
        "data_content": data_content_hash(data),
        "split_sizes": {s: len(getattr(data, s)) for s in SPLITS},
        "backbone": identity,
        "output": "CLIPVisionModel pooler_output",
        "dtype": _dtype_name(FEATURE_DTYPES[config.task]),
    }
    return FeatureKey(hashlib.sha256(_canonical(parts).encode()).hexdigest(), parts)


# ----------------------------------------------------------------------------- backbones
_TINY_IDENTITY: dict[str, Any] = {}


def backbone_identity(name: str, *, cache_dir: str | Path | None = None
                      ) -> dict[str, Any] | None:
    """What identifies the vision weights `name` loads (see the module docstring), plus
    `native_image_size`. None when it cannot be told offline."""
    from timesclip.model.backbones import TINY, _classify

    if name == TINY:
        return dict(_tiny_identity())
    if _classify(name) == "dir":
        return _directory_identity(Path(os.path.expanduser(name)), cache_dir)
    return _hub_identity(name, cache_dir)


def _tiny_identity() -> dict[str, Any]:
    """Config and weight hash of the tiny vision tower (built once per process, ~0.1 s)."""
    if not _TINY_IDENTITY:
        import torch

        from timesclip.model.backbones import TINY, load_backbone, tiny_configs

        tower = load_backbone(TINY).vision
        assert tower is not None
        h = hashlib.sha256()
        for key, value in sorted(tower.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().to(torch.float32).contiguous().numpy().tobytes())
        vision_config = tiny_configs()[1]
        _TINY_IDENTITY.update(kind="tiny", vision_config=vision_config.to_diff_dict(),
                              weights_sha256=h.hexdigest(),
                              native_image_size=int(vision_config.image_size))
    return _TINY_IDENTITY


def _native_size(config_file: Path) -> int | None:
    """The vision tower's image size from a CLIP config.json (None if unreadable)."""
    try:
        config = json.loads(config_file.read_text())
        size = (config.get("vision_config") or {}).get("image_size", 224)
        return int(size if isinstance(size, int) else size[0])
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _directory_identity(path: Path, cache_dir: str | Path | None) -> dict[str, Any] | None:
    config_file = path / CLIP_CONFIG_FILE
    native = _native_size(config_file)
    if native is None:
        return None
    files = sorted(p for p in path.iterdir() if p.is_file() and (
        p.name == CLIP_CONFIG_FILE or p.name.endswith(_WEIGHT_SUFFIXES)))
    hashes = {p.name: file_sha256(p, cache_dir=cache_dir) for p in files}
    return {"kind": "directory", "files_sha256": hashes, "native_image_size": native}


def _hub_identity(name: str, cache_dir: str | Path | None) -> dict[str, Any] | None:
    """Snapshot commit of `name` in the local HF cache; else the content of its weights."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, CLIP_CONFIG_FILE)
    except Exception:  # not a valid repo id: nothing cached under it
        return None
    if not isinstance(found, str):  # None or the "known missing" marker
        return None
    config_file = Path(found)
    native = _native_size(config_file)
    if native is None:
        return None
    snapshot = config_file.parent
    if snapshot.parent.name == "snapshots" and len(snapshot.name) == 40:
        return {"kind": "hub", "id": name, "commit": snapshot.name, "native_image_size": native}
    for weights in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(name, weights)
        if isinstance(hit, str):
            return {"kind": "hub", "id": name, "weights": weights,
                    "weights_sha256": file_sha256(Path(hit), cache_dir=cache_dir),
                    "native_image_size": native}
    return None


def file_sha256(path: Path, *, cache_dir: str | Path | None = None) -> str:
    """SHA-256 of a file's content, memoised by (real path, size, mtime_ns) in
    `cache_dir/weights-sha256.json`: a big weight file is read once, not on every run."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    memo_file = Path(cache_dir) / WEIGHT_HASHES if cache_dir is not None else None
    memo: dict[str, Any] = {}
    if memo_file is not None:
        with contextlib.suppress(OSError, ValueError):
            memo = json.loads(memo_file.read_text())
        if not isinstance(memo, dict):
            memo = {}
        entry = memo.get(real)
        if isinstance(entry, dict) and entry.get("size") == stat.st_size and \
                entry.get("mtime_ns") == stat.st_mtime_ns and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    if memo_file is not None:
        memo[real] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        with contextlib.suppress(OSError):  # a memo that cannot be written only costs time
            atomic.write_bytes(memo_file, (json.dumps(memo, indent=1) + "\n").encode())
    return digest


# ----------------------------------------------------------------------------- files
def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")  # "float32", "float16"


def _tensor_sha256(tensor: Any) -> str:
    """SHA-256 of a contiguous CPU tensor's bytes, read through its buffer (no copy: a
    forecasting entry's train split is hundreds of MB at real size)."""
    return hashlib.sha256(tensor.contiguous().numpy()).hexdigest()


def store_entry(path: str | Path, key: FeatureKey, features: Mapping[str, Any],
                **info: Any) -> None:
    """Write `features` ({split: [N, V, Hv]}, in the key's dtype) atomically as a
    safetensors file at `path`, with the key, per-split checksums and `info` (e.g. compute
    time) in its metadata. safetensors writes from the tensors' own memory (save_file), so
    storing costs no second copy of the features."""
    import safetensors.torch
    import torch

    dtype = getattr(torch, key.parts.get("dtype", "float32"))
    tensors = {s: features[s].detach().to("cpu", dtype).contiguous() for s in SPLITS}
    meta = {"format": FORMAT, "digest": key.digest, "key": key.canonical,
            "sha256": _canonical({s: _tensor_sha256(t) for s, t in tensors.items()}),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **{k: str(v) for k, v in info.items()}}
    with atomic.replacing(Path(path)) as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, 0o644)  # save_file creates the file anew (0600); others read the cache


def load_entry(path: str | Path, key: FeatureKey, expect: Mapping[str, tuple[int, int]]
               ) -> dict[str, Any]:
    """The features stored at `path`, after checking them; raises CacheEntryError.

    expect: {split: (rows, variates)}; the feature width must agree across splits, the
    dtype is the key's. Each split is read once into its own tensor (from safetensors'
    memory map) and checksummed through its buffer: one copy of the features in memory.
    """
    import torch
    from safetensors import safe_open

    dtype = getattr(torch, key.parts.get("dtype", "float32"))
    try:
        with safe_open(str(path), framework="pt") as entry:  # validates header and offsets
            meta = entry.metadata() or {}
            tensors = {name: entry.get_tensor(name) for name in entry.keys()}  # noqa: SIM118
    except OSError as exc:
        raise CacheEntryError(f"cannot read it ({exc.strerror or exc})") from None
    except Exception as exc:  # SafetensorError, short or garbled files alike
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CacheEntryError(f"not a valid safetensors file ({reason[:120]})") from None
    if meta.get("format") != FORMAT or meta.get("digest") != key.digest \
            or meta.get("key") != key.canonical:
        raise CacheEntryError("its stored key does not match the requested one")
    if set(tensors) != set(SPLITS):
        raise CacheEntryError(f"it holds {sorted(tensors)}, not {list(SPLITS)}")
    widths = {int(t.shape[-1]) for t in tensors.values() if t.dim() == 3}
    for split in SPLITS:
        t = tensors[split]
        if t.dtype != dtype or t.dim() != 3 or tuple(t.shape[:2]) != \
                tuple(expect[split]) or len(widths) != 1:
            raise CacheEntryError(f"{split} has shape {tuple(t.shape)} ({t.dtype}), expected "
                                  f"[{expect[split][0]}, {expect[split][1]}, width] "
                                  f"{_dtype_name(dtype)}")
    try:
        sums = json.loads(meta.get("sha256", ""))
    except ValueError:
        sums = None
    if not isinstance(sums, dict) or any(sums.get(s) != _tensor_sha256(tensors[s])
                                         for s in SPLITS):
        raise CacheEntryError("its content does not match its stored checksums")
    return {s: tensors[s] for s in SPLITS}


# ----------------------------------------------------------------------------- the API
def lookup(config: TrainConfig, data: Bundle, directory: Path, say: Log
           ) -> tuple[dict[str, Any] | None, FeatureKey | None]:
    """(features, key) from the cache at `directory`: (None, key) on a miss or an entry that
    fails its checks (said in one line), (None, None) when the weights cannot be identified
    without loading them. A cache that cannot be read never fails the run."""
    key = _key_or_none(config, data, directory, say)
    if key is None:
        return None, None
    path = key.path(directory)
    if not path.exists():
        return None, key
    expect = {s: (len(getattr(data, s)), len(data.bands)) for s in SPLITS}
    try:
        features = load_entry(path, key, expect)
    except CacheEntryError as exc:
        say(f"vision features: cache entry {path} is unusable ({exc}); recomputing")
        return None, key
    n = sum(rows for rows, _ in expect.values())
    what = "windows" if isinstance(data, ForecastBundle) else "samples"
    say(f"vision features: loaded from cache {path} ({n} {what} x {len(data.bands)} bands; "
        f"key {key.digest[:12]}; no ViT time, --no-feature-cache recomputes)")
    return features, key


def store(config: TrainConfig, data: Bundle, directory: Path, key: FeatureKey | None,
          features: Mapping[str, Any], seconds: float, say: Log) -> None:
    """Store freshly computed features under `key` (None: identify the weights now, e.g. a
    hub checkpoint downloaded by the computation). A cache that cannot be written never
    fails the run: it is said in one line."""
    if key is None:
        key = _key_or_none(config, data, directory, say)
    if key is None:
        say(f"vision features: not cached (cannot identify the weights of "
            f"{config.backbone!r} without loading them)")
        return
    path = key.path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        store_entry(path, key, features, seconds=f"{seconds:.3f}", backbone=config.backbone)
    except OSError as exc:
        say(f"vision features: could not store them in {directory} ({exc.strerror or exc})")
    else:
        say(f"vision features: computed and stored in cache {path}")


def load_or_compute(config: TrainConfig, data: Bundle, *,
                    cache_dir: str | Path | None = None,
                    compute: Callable[[], Mapping[str, Any] | None] | None = None,
                    log: Log | None = None) -> tuple[dict[str, Any] | None, bool]:
    """The vision features of `config` on `data`, from the cache when they are there.

    Returns (features {split: [N, V, Hv]} or None without a vision branch, hit). On a miss,
    or an entry that fails its checks, `compute()` runs (default:
    `timesclip.features.compute_features(config, data, log=log)`) and its result is stored.
    A cache that cannot be read or written never fails the run: it is said in one line
    and the features are computed. cache_dir: default `default_cache_dir()`.
    `log` gets one line saying whether the features were loaded (and from where) or
    computed and stored.
    """
    if not config.use_vision:
        return None, False
    say = log or (lambda _msg: None)
    if compute is None:
        def compute() -> Mapping[str, Any] | None:
            return compute_features(config, data, log=log)

    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        say(f"vision features: cache directory {directory} unusable "
            f"({exc.strerror or exc}); computing without the cache")
        return _as_dict(compute()), False
    features, key = lookup(config, data, directory, say)
    if features is not None:
        return features, True
    start = time.perf_counter()
    features = _as_dict(compute())
    store(config, data, directory, key, features, time.perf_counter() - start, say)
    return features, False


def _key_or_none(config: TrainConfig, data: Bundle, directory: Path,
                 say: Log) -> FeatureKey | None:
    """cache_key, with unreadable weight files meaning "no key" rather than a failed run."""
    try:
        return cache_key(config, data, cache_dir=directory)
    except OSError as exc:
        say(f"vision features: cannot identify the weights of {config.backbone!r} "
            f"({exc.strerror or exc}); not using the cache")
        return None


def _as_dict(features: Mapping[str, Any] | None) -> dict[str, Any]:
    if features is None:
        raise ValueError("compute() returned no features for a configuration with vision")
    return {s: features[s] for s in SPLITS}


__all__ = ["FORMAT", "CacheEntryError", "FeatureKey", "backbone_identity", "cache_key",
           "data_content_hash", "default_cache_dir", "file_sha256",
           "load_entry", "load_or_compute", "lookup", "store", "store_entry"]
