"""A trained model put to use: load it from `best.pt`, predict a split, score it.

The evaluation CLI (`python -m timesclip evaluate`) and the search's one scoring of the
test split both go through `predict_with_attention`, so a metric printed anywhere comes
from the same pass; the per-sample predictions and the variate attention it returns are
what `timesclip.plots` stores as CSV and draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from timesclip.checkpoint import BEST, load_trainable_state, safe_load
from timesclip.config import TrainConfig
from timesclip.data import Scaler
from timesclip.errors import ConfigError
from timesclip.metrics import regression_metrics
from timesclip.model import Backbone, TimesCLIP, compute_vision_features, load_backbone
from timesclip.progress import QUIET_SECONDS, progress_bar
from timesclip.runtime import resolve_device


def load_for_inference(checkpoint: str | Path, device: str = "auto"
                       ) -> tuple[TimesCLIP, TrainConfig, Scaler, list[str], Backbone]:
    """Rebuild a trained model from `best.pt` (or a directory holding it)."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / BEST
    if not path.exists():
        raise ConfigError(f"no checkpoint at {path}: pass a training --out directory or its "
                          f"{BEST}")
    ck = safe_load(path, f"pass a training --out directory or its {BEST}")
    try:
        config = TrainConfig.from_dict(ck["config"], source=str(path))
        scaler, bands = Scaler.from_dict(ck["scaler"]), list(ck["bands"])
    except ConfigError as exc:  # a stored config that this version rejects
        raise ConfigError(f"{path}: the stored configuration is not valid: {exc}") from None
    except Exception as exc:  # missing keys, wrong types: not a checkpoint fit() wrote
        raise ConfigError(f"{path} is not a timesclip checkpoint ({type(exc).__name__}); "
                          f"pass a training --out directory or its {BEST}") from None
    config = config.replace(device=device) if device != "auto" else config
    backbone = load_backbone(config.backbone, need_vision=config.use_vision)
    torch.manual_seed(config.seed)
    model = TimesCLIP(config, n_variates=len(bands), backbone=backbone)
    load_trainable_state(model, ck["model"])
    return model.to(resolve_device(config.device)), config, scaler, bands, backbone


def evaluate_arrays(model: TimesCLIP, config: TrainConfig, scaler: Scaler, backbone: Backbone,
                    x_raw: np.ndarray, y_raw: np.ndarray, *, image_batch: int | None = None,
                    progress: str | None = "vision features (evaluate)",
                    progress_file: TextIO | None = None) -> dict[str, float]:
    """Score a trained model on raw windows [N, T, V] with the TRAINING scaler: the metrics
    of `predict_with_attention`'s predictions (one code path for both).

    The vision pass shows progress like `compute_features` (pass progress_file=sys.stderr
    when stdout carries the result)."""
    y_pred, _ = predict_with_attention(model, config, scaler, backbone, x_raw,
                                       image_batch=image_batch, progress=progress,
                                       progress_file=progress_file)
    return regression_metrics(y_raw, y_pred)


@torch.no_grad()
def predict_with_attention(model: TimesCLIP, config: TrainConfig, scaler: Scaler,
                           backbone: Backbone, x_raw: np.ndarray, *, batch_size: int = 256,
                           features: torch.Tensor | None = None,
                           image_batch: int | None = None,
                           progress: str | None = "vision features (evaluate)",
                           progress_file: TextIO | None = None
                           ) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions [N] in the target's own units and the variate-selection attention [V, V]
    averaged over the N samples (None when the model has no variate selection).

    Inputs are scaled with the TRAINING scaler, exactly as `evaluate_arrays`
    scores them, so metrics computed from these predictions are the evaluation's metrics.
    Each sample's attention rows sum to 1 (softmax over keys, eval mode: no dropout), so the
    rows of the mean do too. `features` [N, V, Hv]: the frozen vision features of exactly
    these windows when the caller has them (no vision pass then).
    """
    device = next(model.parameters()).device
    feats = None
    if config.use_vision and features is not None:
        feats = features.to(device)  # [N, V, Hv]
    elif config.use_vision:
        assert backbone.vision is not None, "use_vision needs the backbone's vision tower"
        n_images = int(x_raw.shape[0]) * int(x_raw.shape[2])
        with progress_bar(n_images, progress, unit="img", file=progress_file,
                          delay=QUIET_SECONDS) as bar:
            feats = compute_vision_features(
                x_raw, backbone.vision, image_size=config.image_size or backbone.image_size,
                line_width=config.line_width, image_batch=image_batch, device=device,
                progress=bar.update, precision=config.precision).to(device)  # [N, V, Hv]
    x = torch.as_tensor(scaler.transform_x(x_raw), device=device)  # [N, T, V]
    model.eval()
    preds: list[torch.Tensor] = []
    attention_sum: torch.Tensor | None = None
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size], None if feats is None else feats[i:i + batch_size])
        preds.append(out.y_pred.float().cpu())  # [b]
        if out.attention is not None:
            batch_sum = out.attention.detach().double().sum(dim=0).cpu()  # [V, V]
            attention_sum = batch_sum if attention_sum is None else attention_sum + batch_sum
    if not preds:
        raise ValueError("no samples to predict")
    y_pred = scaler.inverse_y(torch.cat(preds).numpy())  # [N] own units
    attention = None if attention_sum is None else (attention_sum / len(x)).numpy()
    return y_pred, attention


__all__ = ["evaluate_arrays", "load_for_inference", "predict_with_attention"]
