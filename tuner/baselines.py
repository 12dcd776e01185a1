"""Reference predictors scored on the same split as the ablation arms.

SEED.md: the user's own model scored R² = -0.48 on test — worse than predicting the mean —
and nobody noticed. The ablation table and the report therefore always carry reference
predictors computed from the same DataBundle (train on train, select on val, score on test,
metrics in the yield's own units), so a model that cannot beat them is visible at a glance:
the training mean (the floor), ridge regression (the linear reference) and gradient boosting
on the same flattened window (the strongest classical reference a reviewer would ask for).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from timesclip.data import DataBundle
from timesclip.metrics import regression_metrics

#: Ridge penalties tried on the validation split (scaled inputs, scaled target).
RIDGE_ALPHAS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
#: HistGradientBoostingRegressor settings tried on the validation split. Few on purpose: the
#: grid is fitted on every report rebuild, and a wide grid would start to fit the val split.
HGB_GRID: tuple[dict[str, Any], ...] = (
    {"learning_rate": 0.05, "max_leaf_nodes": 7, "max_iter": 200},
    {"learning_rate": 0.05, "max_leaf_nodes": 31, "max_iter": 200},
    {"learning_rate": 0.1, "max_leaf_nodes": 7, "max_iter": 100},
    {"learning_rate": 0.1, "max_leaf_nodes": 31, "max_iter": 100},
)
#: Seed of the gradient-boosting fits (the report is rebuilt byte for byte).
HGB_SEED = 0


@dataclass
class BaselineResult:
    """Test metrics of one reference predictor (own units) and how it was fitted."""

    name: str  # "mean" | "ridge" | "hgb"
    test: dict[str, float]  # {"rmse", "mae", "r2", "mape"} on the test split
    val: dict[str, float]  # same metrics on the validation split
    params: int  # number of fitted numbers (all trainable)
    detail: str  # one line for the table's note column
    extra: dict[str, float] = field(default_factory=dict)


def mean_baseline(data: DataBundle) -> BaselineResult:
    """Predict the training-split mean yield for every sample (R² ~ 0 by construction)."""
    mean = float(np.mean(data.train.y_raw))  # own units
    return BaselineResult(
        name="mean",
        test=regression_metrics(data.test.y_raw, np.full(len(data.test), mean)),
        val=regression_metrics(data.val.y_raw, np.full(len(data.val), mean)),
        params=1,
        detail=f"predicts the training mean yield ({mean:.4g})",
        extra={"train_mean": mean},
    )


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)  # [N, T*V]


def ridge_baseline(data: DataBundle, alphas: Sequence[float] = RIDGE_ALPHAS) -> BaselineResult:
    """Linear ridge regression on the flattened, train-scaled input window.

    Fitted on train for every alpha; the alpha with the lowest validation RMSE is kept (the
    model is already fitted on train only, so no refit is needed and test stays unseen).
    """
    from sklearn.linear_model import Ridge

    x_train, x_val, x_test = _flat(data.train.x), _flat(data.val.x), _flat(data.test.x)
    y_train = np.asarray(data.train.y, dtype=np.float64)  # [N] scaled target
    best: tuple[float, float, Ridge] | None = None
    for alpha in alphas:
        model = Ridge(alpha=float(alpha)).fit(x_train, y_train)
        val_pred = data.scaler.inverse_y(model.predict(x_val))  # [N] own units
        rmse = regression_metrics(data.val.y_raw, val_pred)["rmse"]
        if best is None or rmse < best[0]:
            best = (rmse, float(alpha), model)
    assert best is not None, "alphas must not be empty"
    _, alpha, model = best
    val = regression_metrics(data.val.y_raw, data.scaler.inverse_y(model.predict(x_val)))
    test = regression_metrics(data.test.y_raw, data.scaler.inverse_y(model.predict(x_test)))
    return BaselineResult(
        name="ridge",
        test=test,
        val=val,
        params=int(x_train.shape[1]) + 1,
        detail=(f"ridge on the flattened scaled window ({x_train.shape[1]} inputs), "
                f"alpha={alpha:g} chosen on val"),
        extra={"alpha": alpha},
    )


def hgb_baseline(data: DataBundle, grid: Sequence[dict[str, Any]] = HGB_GRID, *,
                 seed: int = HGB_SEED) -> BaselineResult:
    """Gradient boosting (scikit-learn's HistGradientBoostingRegressor) on the flattened,
    train-scaled input window.

    Every setting of `grid` is fitted on train with a fixed seed and no internal early
    stopping (which would carve its own validation set out of train); the setting with the
    lowest validation RMSE is kept and only that model is scored on test.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    x_train, x_val, x_test = _flat(data.train.x), _flat(data.val.x), _flat(data.test.x)
    y_train = np.asarray(data.train.y, dtype=np.float64)  # [N] scaled target
    # One OpenMP thread: on a machine whose cores are busy (trials, other jobs) the threads
    # of each tree spin-wait on each other; measured on 2 busy cores with the Illinois data:
    # 4 s with one thread, over 4 minutes with two. The result is the same either way.
    with threadpool_limits(limits=1, user_api="openmp"):
        best: tuple[float, dict[str, Any], Any] | None = None
        for setting in grid:
            model = HistGradientBoostingRegressor(**setting, early_stopping=False,
                                                  random_state=seed).fit(x_train, y_train)
            val_pred = data.scaler.inverse_y(model.predict(x_val))  # [N] own units
            rmse = regression_metrics(data.val.y_raw, val_pred)["rmse"]
            if best is None or rmse < best[0]:
                best = (rmse, dict(setting), model)
        if best is None:
            raise ValueError("the gradient-boosting grid must not be empty")
        _, setting, model = best
        val_pred = data.scaler.inverse_y(model.predict(x_val))
        test_pred = data.scaler.inverse_y(model.predict(x_test))
    val = regression_metrics(data.val.y_raw, val_pred)
    test = regression_metrics(data.test.y_raw, test_pred)
    # Fitted numbers: one threshold or leaf value per tree node (scikit-learn keeps the
    # trees in a private list; the count is informational only).
    nodes = sum(len(p.nodes) for trees in getattr(model, "_predictors", []) for p in trees)
    shown = ", ".join(f"{k}={v:g}" for k, v in setting.items())
    return BaselineResult(
        name="hgb",
        test=test,
        val=val,
        params=int(nodes),
        detail=(f"gradient boosting on the flattened scaled window ({x_train.shape[1]} "
                f"inputs), {shown} chosen on val from {len(grid)} settings, seed {seed}"),
        extra={k: float(v) for k, v in setting.items()},
    )


def reference_baselines(data: DataBundle, *,
                        echo: Callable[[str], Any] | None = None) -> list[BaselineResult]:
    """Every reference, in the order the tables list them.

    `echo` gets one line before and after the gradient-boosting grid, the only part that
    takes noticeable time (seconds on a few thousand rows)."""
    out = [mean_baseline(data), ridge_baseline(data)]
    started = time.perf_counter()
    if echo is not None:
        echo(f"baselines: gradient boosting, {len(HGB_GRID)} settings fitted on "
             f"{len(data.train)} training rows, chosen on validation ...")
    out.append(hgb_baseline(data))
    if echo is not None:
        echo(f"baselines: gradient boosting done in {time.perf_counter() - started:.1f}s")
    return out


__all__ = ["HGB_GRID", "HGB_SEED", "RIDGE_ALPHAS", "BaselineResult", "hgb_baseline",
           "mean_baseline", "reference_baselines", "ridge_baseline"]
