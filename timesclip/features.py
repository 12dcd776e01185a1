"""The frozen vision features: what they depend on, their in-memory key, and the pass.

The features are a pure function of (data, render settings, backbone), so they are computed
once before training (or shared between many runs of a search) and never inside the
training step. `timesclip.feature_cache` keeps them on disk; it builds on this module,
never the other way round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np
import torch

from timesclip.config import TrainConfig
from timesclip.data import DataBundle
from timesclip.model import Backbone, compute_vision_features, load_backbone
from timesclip.model.render import RENDER_VERSION
from timesclip.model.vision import default_image_batch
from timesclip.progress import QUIET_SECONDS, progress_bar
from timesclip.runtime import apply_threads, resolve_device

SPLITS = ("train", "val", "test")


def feature_settings(config: TrainConfig, data: DataBundle) -> dict[str, Any]:
    """What the features depend on, as the config and the data bundle name it (no I/O).

    `feature_key` is built from exactly this, and the on-disk cache key
    (`timesclip.feature_cache.cache_key`) contains it, so the cache key is a superset of
    the key the search uses to share features.
    """
    return {"data": data.fingerprint, "bands": list(data.bands),
            "input_steps": int(config.input_steps), "backbone": config.backbone,
            "image_size": config.image_size, "line_width": float(config.line_width),
            "renderer": RENDER_VERSION, "precision": config.precision}


def feature_key(config: TrainConfig, data: DataBundle) -> str:
    """Identifies a set of frozen vision features: same key, same features.

    Made of `feature_settings`, which the on-disk cache key also contains (the cache adds
    the weights' and the data's content)."""
    return "|".join(str(v) for v in feature_settings(config, data).values())


def compute_features(config: TrainConfig, data: DataBundle, backbone: Backbone | None = None,
                     *, device: torch.device | None = None,
                     log: Callable[[str], None] | None = None, image_batch: int | None = None,
                     progress: str | None = "vision features",
                     progress_file: TextIO | None = None) -> dict[str, torch.Tensor] | None:
    """Frozen CLIP-vision features for every split: {"train"|"val"|"test": [N, V, Hv]}.

    None when the configuration has no vision branch. Run once per data set and share.
    All splits go through the tower in one pass, `image_batch` images per call (default:
    `default_image_batch`, bounded memory whatever the band count). `progress` labels the
    progress output (a bar on a terminal, a line per ~10 % elsewhere, nothing for a pass
    shorter than QUIET_SECONDS; None: no progress output) written to
    `progress_file` (default stdout).
    """
    if not config.use_vision:
        return None
    apply_threads(config)
    if backbone is None or backbone.vision is None:
        backbone = load_backbone(config.backbone, need_vision=True)
    assert backbone.vision is not None
    device = device or resolve_device(config.device)
    image_size = config.image_size or backbone.image_size
    batch = image_batch or default_image_batch(device, backbone.vision.config, image_size)
    x = np.concatenate([getattr(data, s).x_raw for s in SPLITS])  # [N, T, V] all splits
    n, v = len(x), len(data.bands)
    if log:
        log(f"vision features: {n} samples x {v} bands = {n * v} images at {image_size}px, "
            f"{batch} per tower call on {device}")
    start = time.perf_counter()
    with progress_bar(n * v, progress, unit="img", file=progress_file,
                      delay=QUIET_SECONDS) as bar:
        feats = compute_vision_features(x, backbone.vision, image_size=image_size,
                                        line_width=config.line_width, image_batch=batch,
                                        device=device, progress=bar.update,
                                        precision=config.precision)  # [N, V, Hv]
    seconds = time.perf_counter() - start
    sizes = [len(getattr(data, s)) for s in SPLITS]
    # clone: views would each carry (and pickle, e.g. into Ray) the whole [N, V, Hv] storage
    out = {s: part.clone() for s, part in zip(SPLITS, torch.split(feats, sizes))}
    if log:
        log(f"vision features: {n} samples x {v} bands rendered at {image_size}px and encoded "
            f"once in {seconds:.1f}s ({n * v / max(seconds, 1e-9):.1f} images/s)")
    return out


__all__ = ["SPLITS", "compute_features", "feature_key", "feature_settings"]
