"""Regression metrics in the target's own units (t/ha, bu/ac, ... whatever the CSV holds).

Everything here takes de-normalised values: a model is judged by the error a user sees,
not by the error on standardised targets.
"""

from __future__ import annotations

import re

import numpy as np

#: |y| below this is treated as this in MAPE, so near-zero yields cannot blow it up.
MAPE_FLOOR = 1e-6


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, R² and MAPE (percent) of predictions against targets.

    R² is 1 - SS_res / SS_tot: 0 means "as good as predicting the mean of these targets",
    negative means worse than that — the outcome SEED.md says must be visible.
    """
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch: {y_true.shape} targets vs {y_pred.shape} predictions")
    if y_true.size == 0:
        raise ValueError("no samples to score")
    err = y_pred - y_true
    ss_res = float(np.sum(err**2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": r2,
        "mape": float(100.0 * np.mean(np.abs(err) / np.maximum(np.abs(y_true), MAPE_FLOOR))),
    }


# ----------------------------------------------------------------------------- metric names
#: Per-epoch metric names of a yield run's report (CONTRACT).
EPOCH_METRICS = ("epoch", "train_loss", "train_regression_loss", "train_contrastive_loss",
                 "val_loss", "val_rmse", "val_mae", "val_r2", "val_mape", "lr")
#: Per-epoch metric names of a forecasting run's report (MSE / MAE on the standardised
#: scale, over every validation window).
FORECAST_EPOCH_METRICS = ("epoch", "train_loss", "train_regression_loss",
                          "train_contrastive_loss", "val_loss", "val_mse", "val_mae", "lr")
#: TrainConfig.task -> the per-epoch metric names its runs report.
TASK_EPOCH_METRICS = {"yield": EPOCH_METRICS, "forecast": FORECAST_EPOCH_METRICS}

#: A cross-validated run (timesclip.cv) reports the mean over its folds under the names
#: above, the number of folds under this key, and each fold's value under fold_key(k, name).
CV_FOLDS_KEY = "cv_folds"
_FOLD_KEY = re.compile(r"^fold\d+_[a-z0-9_]+$")


def fold_key(k: int, name: str) -> str:
    """The report key of fold k's value of metric `name`: 'fold0_val_rmse' (flat scalars,
    which Ray's results, the journal's JSON and TensorBoard all carry)."""
    return f"fold{k}_{name}"


def is_cv_key(key: str) -> bool:
    """Whether a reported key is one only a cross-validated run reports (a fold's value or
    the fold count), so that whoever keeps the per-epoch values keeps these too."""
    return key == CV_FOLDS_KEY or bool(_FOLD_KEY.match(key))

#: Every per-epoch metric a run can be judged by (the trainer's `monitor`, a search's
#: metric), with the direction that is better. The one owner of these names and modes.
METRIC_MODES: dict[str, str] = {
    "val_rmse": "min",
    "val_loss": "min",
    "val_mae": "min",
    "val_mape": "min",
    "val_r2": "max",
    "val_mse": "min",
}


def better(value: float, best: float | None, mode: str) -> bool:
    """Whether `value` beats `best` (None: nothing yet) under `mode` ("min" | "max").

    Strictly better: on a tie the earlier epoch or trial keeps its place. The one
    comparison behind "best" everywhere: the trainer's best checkpoint and early stopping,
    and the search's selection (`tuner.outcomes`). Non-finite values never win."""
    if not isinstance(value, (int, float)) or not np.isfinite(value):
        return False
    if best is None or not np.isfinite(best):
        return True
    return value < best if mode == "min" else value > best


# ----------------------------------------------------------------------------- forecasting
#: Metric names of a forecasting split (metrics.json `val`/`test`, baselines), CONTRACT.
FORECAST_METRICS = ("mse", "mae")
#: A yield run's metrics (`regression_metrics`), in table order.
YIELD_METRICS = ("rmse", "mae", "r2", "mape")
#: Each task's split metrics, in table order; the first is the task's error metric (the
#: default monitor and search metric is `val_` + it).
TASK_METRICS = {"yield": YIELD_METRICS, "forecast": FORECAST_METRICS}


class ForecastErrors:
    """Running MSE / MAE over forecast windows, fed batch by batch (nothing materialised).

    Scored as TSLib scores: on the standardised scale, the mean over every window, horizon
    step and variate. Sums are float64, so the order of the batches does not matter."""

    def __init__(self) -> None:
        self.sq = 0.0
        self.abs = 0.0
        self.count = 0

    def add(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        """y_true, y_pred [B, H, V] (any equal shapes)."""
        y_true = np.asarray(y_true, dtype=np.float64)
        y_pred = np.asarray(y_pred, dtype=np.float64)
        if y_true.shape != y_pred.shape:
            raise ValueError(f"shape mismatch: {y_true.shape} targets vs {y_pred.shape} "
                             "predictions")
        err = y_pred - y_true
        self.sq += float(np.sum(err * err))
        self.abs += float(np.sum(np.abs(err)))
        self.count += err.size

    def result(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("no forecast windows to score")
        return {"mse": self.sq / self.count, "mae": self.abs / self.count}


def forecast_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MSE and MAE of forecasts [N, H, V] against targets, on the scale they are given in."""
    errors = ForecastErrors()
    errors.add(y_true, y_pred)
    return errors.result()
