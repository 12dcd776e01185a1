"""The frozen vision features: what they depend on, their in-memory key, and the pass.

The features are a pure function of (data, render settings, backbone), so they are computed
once before training (or shared between many runs of a search) and never inside the
training step. `timesclip.feature_cache` keeps them on disk; it builds on this module,
never the other way round.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np
import torch

from timesclip.config import TrainConfig
from timesclip.data import Bundle, ForecastBundle
from timesclip.model import Backbone, compute_vision_features, load_backbone
from timesclip.model.render import RENDER_VERSION
from timesclip.model.vision import default_image_batch
from timesclip.progress import QUIET_SECONDS, progress_bar
from timesclip.runtime import apply_threads, resolve_device

SPLITS = ("train", "val", "test")
#: dtype of the features per task. Yield: float32, as the tower returns them (a few hundred
#: samples; unchanged numbers). Forecast: float16 -- tens of thousands of windows per file
#: (ETTm1 ~57k x 7 variates), half the memory and disk; the model casts each batch back to
#: float32. The features a run computes are already in this dtype, so a run that reads them
#: from the cache trains on exactly what a run that computed them did.
FEATURE_DTYPES = {"yield": torch.float32, "forecast": torch.float16}
#: Images per call of the forecast pass's inner loop (windows x variates): bounds the
#: float32 output of one call (ViT-B/16: 16384 x 768 x 4 B = 48 MB) whatever the file.
FORECAST_CHUNK_IMAGES = 16384


def feature_settings(config: TrainConfig, data: Bundle) -> dict[str, Any]:
    """What the features depend on, as the config and the data bundle name it (no I/O).

    `feature_key` is built from exactly this, and the on-disk cache key
    (`timesclip.feature_cache.cache_key`) contains it, so the cache key is a superset of
    the key the search uses to share features. A forecasting file's windows are fixed by
    its fingerprint (file, lookback, horizon, borders) and the training stride.
    """
    if config.task == "forecast":
        window: dict[str, Any] = {"lookback": int(config.lookback),
                                  "train_stride": int(config.train_stride)}
    else:
        window = {"input_steps": int(config.input_steps)}
    return {"data": data.fingerprint, "bands": list(data.bands), **window,
            "backbone": config.backbone, "image_size": config.image_size,
            "line_width": float(config.line_width), "renderer": RENDER_VERSION,
            "precision": config.precision}


def feature_key(config: TrainConfig, data: Bundle) -> str:
    """Identifies a set of frozen vision features: same key, same features.

    Made of `feature_settings`, which the on-disk cache key also contains (the cache adds
    the weights' and the data's content)."""
    return "|".join(str(v) for v in feature_settings(config, data).values())


def compute_features(config: TrainConfig, data: Bundle, backbone: Backbone | None = None,
                     *, device: torch.device | None = None,
                     log: Callable[[str], None] | None = None, image_batch: int | None = None,
                     progress: str | None = "vision features",
                     progress_file: TextIO | None = None) -> dict[str, torch.Tensor] | None:
    """Frozen CLIP-vision features for every split: {"train"|"val"|"test": [N, V, Hv]}
    (N samples, or windows of a forecasting file; dtype FEATURE_DTYPES[config.task]).

    None when the configuration has no vision branch. Run once per data set and share.
    All splits go through the tower in one pass, `image_batch` images per call (default:
    `default_image_batch`, bounded memory whatever the band count); a forecasting file's
    windows are cut from its rows a chunk at a time, never all at once. `progress` labels the
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
    image_size = config.image_px(backbone.image_size)
    batch = image_batch or default_image_batch(device, backbone.vision.config, image_size)
    n, v = sum(len(getattr(data, s)) for s in SPLITS), len(data.bands)
    what = "windows" if isinstance(data, ForecastBundle) else "samples"
    if log:
        log(f"vision features: {n} {what} x {v} bands = {n * v} images at {image_size}px, "
            f"{batch} per tower call on {device}")
    encode = functools.partial(compute_vision_features, vision=backbone.vision,
                               image_size=image_size, line_width=config.line_width,
                               image_batch=batch, device=device, precision=config.precision)
    start = time.perf_counter()
    with progress_bar(n * v, progress, unit="img", file=progress_file,
                      delay=QUIET_SECONDS) as bar:
        if isinstance(data, ForecastBundle):
            out = _forecast_features(data, encode, bar.update, backbone.vision, device)
        else:
            x = np.concatenate([getattr(data, s).x_raw for s in SPLITS])  # [N, T, V]
            feats = encode(x, progress=bar.update)  # [N, V, Hv]
            sizes = [len(getattr(data, s)) for s in SPLITS]
            # clone: views would each carry (and pickle, e.g. into Ray) the whole storage
            out = {s: part.clone() for s, part in zip(SPLITS, torch.split(feats, sizes))}
    seconds = time.perf_counter() - start
    if log:
        log(f"vision features: {n} {what} x {v} bands rendered at {image_size}px and encoded "
            f"once in {seconds:.1f}s ({n * v / max(seconds, 1e-9):.1f} images/s)")
    return out


def _forecast_features(data: ForecastBundle, encode: Callable[..., torch.Tensor],
                       progress: Callable[[int], Any], vision: torch.nn.Module,
                       device: torch.device) -> dict[str, torch.Tensor]:
    """{split: [N, V, Hv] float16}, filled a chunk of windows at a time: the windows are cut
    from the split's rows per chunk, so neither all windows nor all images ever exist, and
    each split's output is allocated once, in its final dtype (no concatenation, no copy)."""
    v = len(data.bands)
    hidden = int(vision.config.hidden_size)
    chunk = max(1, FORECAST_CHUNK_IMAGES // v)  # windows per call
    original = next(vision.parameters()).device
    vision.to(device)  # once, not per chunk (compute_vision_features keeps it there)
    try:
        out = {}
        for s in SPLITS:
            part = data.split(s)
            feats = torch.empty(len(part), v, hidden, dtype=FEATURE_DTYPES["forecast"])
            for start in range(0, len(part), chunk):
                idx = np.arange(start, min(start + chunk, len(part)))
                feats[start:start + len(idx)] = encode(part.x(idx), progress=progress)
            out[s] = feats  # [N, V, Hv]
    finally:
        vision.to(original)
    return out


__all__ = ["FEATURE_DTYPES", "FORECAST_CHUNK_IMAGES", "SPLITS", "compute_features",
           "feature_key", "feature_settings"]
