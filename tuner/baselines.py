"""Reference predictors scored on the same split as the ablation arms.

SEED.md: the user's own model scored R² = -0.48 on test — worse than predicting the mean —
and nobody noticed. The ablation table therefore always carries two trivial references
computed from the same DataBundle (train on train, select on val, score on test, metrics in
the yield's own units), so an arm that cannot beat them is visible at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from timesclip.data import DataBundle
from timesclip.metrics import regression_metrics

#: Ridge penalties tried on the validation split (scaled inputs, scaled target).
RIDGE_ALPHAS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


@dataclass
class BaselineResult:
    """Test metrics of one reference predictor (own units) and how it was fitted."""

    name: str  # "mean" | "ridge"
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


def ridge_baseline(data: DataBundle, alphas: Sequence[float] = RIDGE_ALPHAS) -> BaselineResult:
    """Linear ridge regression on the flattened, train-scaled input window.

    Fitted on train for every alpha; the alpha with the lowest validation RMSE is kept (the
    model is already fitted on train only, so no refit is needed and test stays unseen).
    """
    from sklearn.linear_model import Ridge

    def flat(x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64).reshape(len(x), -1)  # [N, T*V]

    x_train, x_val, x_test = flat(data.train.x), flat(data.val.x), flat(data.test.x)
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


def reference_baselines(data: DataBundle) -> list[BaselineResult]:
    """Both references, in the order the ablation table lists them."""
    return [mean_baseline(data), ridge_baseline(data)]


__all__ = ["RIDGE_ALPHAS", "BaselineResult", "mean_baseline", "reference_baselines",
           "ridge_baseline"]
