"""Regression metrics in the target's own units (t/ha, bu/ac, ... whatever the CSV holds).

Everything here takes de-normalised values: a model is judged by the error a user sees,
not by the error on standardised targets.
"""

from __future__ import annotations

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
