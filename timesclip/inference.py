"""A trained model put to use: load it from `best.pt`, predict a split, score it.

The evaluation CLI (`python -m timesclip evaluate`) and the search's one scoring of the
test split both go through `predict_with_attention` (yield) or `evaluate_forecast`
(forecast), so a metric printed anywhere comes from the same pass; the predictions, errors
and variate attention they return are what `timesclip.plots` and
`timesclip.forecast_plots` store as CSV and draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from timesclip.checkpoint import BEST, load_trainable_state, safe_load
from timesclip.config import TrainConfig
from timesclip.data import ForecastScaler, ForecastSplit, Scaler
from timesclip.errors import ConfigError
from timesclip.features import FEATURE_DTYPES
from timesclip.forecast_baselines import naive_forecast
from timesclip.metrics import ForecastErrors, regression_metrics
from timesclip.model import Backbone, TimesCLIP, compute_vision_features, load_backbone
from timesclip.progress import QUIET_SECONDS, progress_bar
from timesclip.runtime import resolve_device
from timesclip.task_data import EVAL_BATCH

#: Test windows `evaluate_forecast` keeps whole for the example figure.
N_EXAMPLES = 4


def load_for_inference(checkpoint: str | Path, device: str = "auto"
                       ) -> tuple[TimesCLIP, TrainConfig, Scaler | ForecastScaler, list[str],
                                  Backbone]:
    """Rebuild a trained model from `best.pt` (or a directory holding it): (model, config,
    training scaler -- a ForecastScaler for a forecasting checkpoint --, bands / variate
    names, backbone)."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / BEST
    if not path.exists():
        raise ConfigError(f"no checkpoint at {path}: pass a training --out directory or its "
                          f"{BEST}")
    ck = safe_load(path, f"pass a training --out directory or its {BEST}")
    try:
        config = TrainConfig.from_dict(ck["config"], source=str(path))
        kind = ForecastScaler if config.task == "forecast" else Scaler
        scaler, bands = kind.from_dict(ck["scaler"]), list(ck["bands"])
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
                x_raw, backbone.vision, image_size=config.image_px(backbone.image_size),
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


# ----------------------------------------------------------------------------- forecast
@dataclass
class ForecastEvaluation:
    """A forecasting model scored on every window of one split, with what the report draws.

    Errors are on the standardised scale (as TSLib scores); the example windows are the
    target variate (OT, the last column) in the file's own units."""

    metrics: dict[str, float]  # {"mse", "mae"} over every window, step and variate
    naive: dict[str, float]  # the repeat-last-value forecast on the same windows
    mse_per_step: np.ndarray  # [H] mean over windows and variates
    naive_mse_per_step: np.ndarray  # [H]
    attention: np.ndarray | None  # [V, V] mean over windows; None without selection
    example_windows: np.ndarray  # [K] window indices, in order
    history: np.ndarray  # [K, L] OT before each example window's forecast
    truth: np.ndarray  # [K, H]
    prediction: np.ndarray  # [K, H] TimesCLIP
    naive_prediction: np.ndarray  # [K, H]
    n_windows: int


def example_windows(n_windows: int, k: int = N_EXAMPLES) -> np.ndarray:
    """K window indices spread evenly over a split (first and last included): the same
    windows for every model scored on it, so figures of two runs compare."""
    return np.unique(np.linspace(0, n_windows - 1, min(k, n_windows)).round().astype(np.int64))


@torch.no_grad()
def evaluate_forecast(model: TimesCLIP, config: TrainConfig, backbone: Backbone,
                      split: ForecastSplit, scaler: ForecastScaler, *,
                      features: torch.Tensor | None = None, batch_size: int = EVAL_BATCH,
                      n_examples: int = N_EXAMPLES, image_batch: int | None = None,
                      progress: str | None = "vision features (evaluate)",
                      progress_file: TextIO | None = None) -> ForecastEvaluation:
    """Score a forecasting model on every window of `split`, in one streaming pass.

    The batches are those fit() scores a split with (`batch_size` windows from the first),
    so the metrics are fit()'s. `features` [N, V, Hv]: the split's frozen vision features
    when the caller has them (e.g. the search's shared ones); otherwise each batch's images
    are drawn and encoded as it goes (rounded to the stored dtype, as in training).
    `scaler`: the file's training scaler, for the example windows' units."""
    device = next(model.parameters()).device
    model.eval()
    n, h = len(split), split.horizon
    picks = example_windows(n, n_examples)
    errors, naive = ForecastErrors(), ForecastErrors()
    step_sq, naive_sq = np.zeros(h), np.zeros(h)  # [H] sums over windows and variates
    attention_sum: torch.Tensor | None = None
    kept: dict[str, list[np.ndarray]] = {"x": [], "y": [], "pred": [], "naive": []}
    encodes = config.use_vision and features is None  # a vision pass happens here
    with progress_bar(n * len(scaler.mean), progress if encodes else None, unit="img",
                      file=progress_file, delay=QUIET_SECONDS) as bar:
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            x, y = split.x(idx), split.y(idx)  # [B, L, V], [B, H, V]
            feats = None
            if config.use_vision and features is not None:
                feats = features[torch.from_numpy(idx)].to(device)  # [B, V, Hv]
            elif config.use_vision:
                assert backbone.vision is not None, "use_vision needs the vision tower"
                feats = compute_vision_features(
                    x, backbone.vision, image_size=config.image_px(backbone.image_size),
                    line_width=config.line_width, image_batch=image_batch, device=device,
                    progress=bar.update, precision=config.precision,
                ).to(FEATURE_DTYPES["forecast"]).to(device)  # [B, V, Hv] as trained on
            out = model(torch.from_numpy(x).to(device), feats)
            pred = out.y_pred.float().cpu().numpy()  # [B, H, V]
            last = naive_forecast(x, h)  # [B, H, V]
            errors.add(y, pred)
            naive.add(y, last)
            step_sq += ((pred.astype(np.float64) - y) ** 2).sum(axis=(0, 2))
            naive_sq += ((last.astype(np.float64) - y) ** 2).sum(axis=(0, 2))
            if out.attention is not None:
                batch_sum = out.attention.double().sum(dim=0).cpu()  # [V, V]
                attention_sum = batch_sum if attention_sum is None else attention_sum + batch_sum
            chosen = np.isin(idx, picks)
            for name, values in (("x", x), ("y", y), ("pred", pred), ("naive", last)):
                kept[name].append(values[chosen, :, -1])  # OT: the last column
    if n == 0:
        raise ValueError("no windows to score")
    v = len(scaler.mean)

    def own_units(values: list[np.ndarray]) -> np.ndarray:  # OT standardised -> file units
        return np.concatenate(values) * scaler.std[-1] + scaler.mean[-1]  # [K, T]

    return ForecastEvaluation(
        metrics=errors.result(), naive=naive.result(), mse_per_step=step_sq / (n * v),
        naive_mse_per_step=naive_sq / (n * v),
        attention=None if attention_sum is None else (attention_sum / n).numpy(),
        example_windows=picks, history=own_units(kept["x"]), truth=own_units(kept["y"]),
        prediction=own_units(kept["pred"]), naive_prediction=own_units(kept["naive"]),
        n_windows=n)


__all__ = ["N_EXAMPLES", "ForecastEvaluation", "evaluate_arrays", "evaluate_forecast",
           "example_windows", "load_for_inference", "predict_with_attention"]
