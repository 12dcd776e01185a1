"""Reference predictors scored on the same split as the ablation arms.

SEED.md: the user's own model scored R² = -0.48 on test — worse than predicting the mean —
and nobody noticed. The ablation table and the report therefore always carry reference
predictors computed from the same DataBundle (train on train, select on val, score on test,
metrics in the yield's own units), so a model that cannot beat them is visible at a glance:
the training mean (the floor), ridge regression (the linear reference) and gradient boosting
on the same flattened window (the strongest classical reference a reviewer would ask for).

A forecasting experiment's references are those of Time-Series-Library tables: repeat the
last value (naive) and DLinear trained with TSLib's recipe on the same training windows
(`timesclip.forecast_baselines`), MSE / MAE on the standardised scale over every window.

`reference_results` is the report's side: it reloads the experiment's data from
`search_meta.json` (unless given) and fits the references only when the data still has the
fingerprint the search recorded, so the references always score the search's own split.
A finished forecasting search stored its references in best_test.json when it scored the
test split (`stored_references`): DLinear is not trained again for every report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from timesclip.config import TrainConfig
from timesclip.data import DataBundle, ForecastBundle, load_bundle
from timesclip.errors import UserError
from timesclip.forecast_baselines import forecast_baselines
from timesclip.metrics import better, regression_metrics
from tuner.journal import clip_line
from tuner.layout import META_FILE

#: Each task's reference rows, in the order every table lists them (after the arms).
REFERENCE_ROWS = {"yield": ("mean", "ridge", "hgb"), "forecast": ("naive", "dlinear")}
#: What each reference is, in summary.md / ablation.md / the ablation table's meaning column.
REFERENCE_MEANINGS = {
    "mean": "reference: predict the training mean",
    "ridge": "reference: ridge regression on the flattened input window",
    "hgb": "reference: gradient boosting on the flattened input window",
    "naive": "reference: repeat the last value of the lookback",
    "dlinear": "reference: DLinear (trend/seasonal + linear), TSLib's recipe",
}
#: ... and in the page's headline table.
REFERENCE_LABELS = {"mean": "reference: training mean",
                    "ridge": "reference: ridge regression",
                    "hgb": "reference: gradient boosting (HistGradientBoostingRegressor)",
                    "naive": "reference: naive (repeat the last value)",
                    "dlinear": "reference: DLinear"}

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
#: Seed of DLinear's training (the same reason).
DLINEAR_SEED = 0


@dataclass
class BaselineResult:
    """Test metrics of one reference predictor (own units) and how it was fitted."""

    name: str  # a REFERENCE_ROWS name
    test: dict[str, float]  # the task's metrics on the test split
    val: dict[str, float]  # same metrics on the validation split
    params: int  # number of fitted numbers (all trainable)
    detail: str  # one line for the table's note column
    extra: dict[str, float] = field(default_factory=dict)
    refit: bool = False  # test scored after a refit on train + val (beside a --cv search)


def mean_baseline(data: DataBundle, *, refit: bool = False) -> BaselineResult:
    """Predict the training-split mean yield for every sample (R² ~ 0 by construction);
    refit: the mean of train + val (a cross-validated search's retrain sees both)."""
    y = np.concatenate([data.train.y_raw, data.val.y_raw]) if refit else data.train.y_raw
    mean = float(np.mean(y))  # own units
    return BaselineResult(
        name="mean",
        test=regression_metrics(data.test.y_raw, np.full(len(data.test), mean)),
        val=regression_metrics(data.val.y_raw, np.full(len(data.val), mean)),
        params=1,
        detail=f"predicts the training mean yield ({mean:.4g})"
               + (f", of train + val ({len(y)} rows)" if refit else ""),
        extra={"train_mean": mean}, refit=refit,
    )


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)  # [N, T*V]


def _refit_rows(data: DataBundle) -> tuple[np.ndarray, np.ndarray]:
    """Train + val, train-scaled: what a chosen setting is refitted on when the search it
    stands beside retrained its own selection on every training row (--cv)."""
    x = np.concatenate([_flat(data.train.x), _flat(data.val.x)])  # [N_train + N_val, T*V]
    return x, np.concatenate([data.train.y, data.val.y]).astype(np.float64)


def ridge_baseline(data: DataBundle, alphas: Sequence[float] = RIDGE_ALPHAS, *,
                   refit: bool = False) -> BaselineResult:
    """Linear ridge regression on the flattened, train-scaled input window.

    Fitted on train for every alpha; the alpha with the lowest validation RMSE is kept (the
    model is already fitted on train only, so no refit is needed and test stays unseen).
    refit: the chosen alpha is fitted again on train + val before test is scored (as a
    cross-validated search retrains its selection), its `val` still the choosing fit's.
    """
    from sklearn.linear_model import Ridge

    x_train, x_val, x_test = _flat(data.train.x), _flat(data.val.x), _flat(data.test.x)
    y_train = np.asarray(data.train.y, dtype=np.float64)  # [N] scaled target
    best: tuple[float, float, Ridge] | None = None
    for alpha in alphas:
        model = Ridge(alpha=float(alpha)).fit(x_train, y_train)
        val_pred = data.scaler.inverse_y(model.predict(x_val))  # [N] own units
        rmse = regression_metrics(data.val.y_raw, val_pred)["rmse"]
        if better(rmse, best[0] if best else None, "min"):
            best = (rmse, float(alpha), model)
    if best is None:
        raise ValueError("no ridge penalty gave a finite validation RMSE (or none was given)")
    _, alpha, model = best
    val = regression_metrics(data.val.y_raw, data.scaler.inverse_y(model.predict(x_val)))
    if refit:
        model = Ridge(alpha=alpha).fit(*_refit_rows(data))
    test = regression_metrics(data.test.y_raw, data.scaler.inverse_y(model.predict(x_test)))
    return BaselineResult(
        name="ridge",
        test=test,
        val=val,
        params=int(x_train.shape[1]) + 1,
        detail=(f"ridge on the flattened scaled window ({x_train.shape[1]} inputs), "
                f"alpha={alpha:g} chosen on val"
                + (", refitted on train + val" if refit else "")),
        extra={"alpha": alpha}, refit=refit,
    )


def hgb_baseline(data: DataBundle, grid: Sequence[dict[str, Any]] = HGB_GRID, *,
                 seed: int = HGB_SEED, refit: bool = False) -> BaselineResult:
    """Gradient boosting (scikit-learn's HistGradientBoostingRegressor) on the flattened,
    train-scaled input window.

    Every setting of `grid` is fitted on train with a fixed seed and no internal early
    stopping (which would carve its own validation set out of train); the setting with the
    lowest validation RMSE is kept and only that model is scored on test (refit: that
    setting fitted again on train + val first, as in `ridge_baseline`).
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
            if better(rmse, best[0] if best else None, "min"):
                best = (rmse, dict(setting), model)
        if best is None:
            raise ValueError("no gradient-boosting setting gave a finite validation RMSE (or "
                             "the grid is empty)")
        _, setting, model = best
        val_pred = data.scaler.inverse_y(model.predict(x_val))
        if refit:
            model = HistGradientBoostingRegressor(**setting, early_stopping=False,
                                                  random_state=seed).fit(*_refit_rows(data))
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
                f"inputs), {shown} chosen on val from {len(grid)} settings, seed {seed}"
                + (", refitted on train + val" if refit else "")),
        extra={k: float(v) for k, v in setting.items()}, refit=refit,
    )


def reference_baselines(data: DataBundle, *, echo: Callable[[str], Any] | None = None,
                        refit: bool = False) -> list[BaselineResult]:
    """Every reference, in the order the tables list them.

    `echo` gets one line before and after the gradient-boosting grid, the only part that
    takes noticeable time (seconds on a few thousand rows). refit: each chosen setting is
    refitted on train + val before scoring test (beside a cross-validated search, whose
    exported model trained on every training row too)."""
    out = [mean_baseline(data, refit=refit), ridge_baseline(data, refit=refit)]
    started = time.perf_counter()
    if echo is not None:
        echo(f"baselines: gradient boosting, {len(HGB_GRID)} settings fitted on "
             f"{len(data.train)} training rows, chosen on validation"
             + (", the chosen one refitted on train + val" if refit else "") + " ...")
    out.append(hgb_baseline(data, refit=refit))
    if echo is not None:
        echo(f"baselines: gradient boosting done in {time.perf_counter() - started:.1f}s")
    return out


def forecast_references(data: ForecastBundle, *, echo: Callable[[str], Any] | None = None
                        ) -> list[BaselineResult]:
    """naive and DLinear on the experiment's windows (DLinear trained here, seeded)."""
    if echo is not None:
        echo(f"baselines: DLinear on {len(data.train)} training windows ...")
    found = forecast_baselines(data, seed=DLINEAR_SEED, log=echo)
    return [_forecast_result(name, found[name]) for name in REFERENCE_ROWS["forecast"]
            if name in found]


def _forecast_result(name: str, scores: dict[str, dict[str, float]]) -> BaselineResult:
    detail = ("repeats the lookback's last value for every step" if name == "naive" else
              f"trend/seasonal decomposition + linear, TSLib's recipe, seed {DLINEAR_SEED}")
    return BaselineResult(name=name, test=dict(scores["test"]), val=dict(scores["val"]),
                          params=0, detail=detail)


def stored_references(best_test: dict[str, Any] | None) -> list[BaselineResult] | None:
    """The references a forecasting search stored beside its one test score, if any."""
    stored = (best_test or {}).get("baselines")
    if not isinstance(stored, dict):
        return None
    return [_forecast_result(name, stored[name]) for name in REFERENCE_ROWS["forecast"]
            if name in stored]


def reference_results(meta: dict[str, Any], data_bundle: DataBundle | None, *,
                      echo: Callable[[str], Any] | None = None
                      ) -> tuple[list[BaselineResult] | None, str]:
    """The references on the experiment's split, or (None, reason) when unavailable.

    `data_bundle` omitted: the data is reloaded from search_meta.json. Either way it must
    have the fingerprint the search recorded. `echo` receives the progress lines of the
    slower fits."""
    expected = str((meta.get("data") or {}).get("fingerprint") or "")
    if data_bundle is None:
        try:
            config = TrainConfig.from_dict(meta.get("base_config") or {}, source=META_FILE)
            data_bundle = load_bundle(config, (meta.get("data") or {}).get("paths"))
        except UserError as exc:
            return None, f"the search data could not be reloaded ({exc})"
    got = str(getattr(data_bundle, "fingerprint", ""))
    if expected and got != expected:
        return None, (f"data changed since the search (fingerprint {got} now, {expected} "
                      f"in {META_FILE})")
    try:
        if isinstance(data_bundle, ForecastBundle):
            return forecast_references(data_bundle, echo=echo), ""
        return reference_baselines(data_bundle, echo=echo,
                                   refit=meta.get("cv") is not None), ""
    except (ValueError, np.linalg.LinAlgError) as exc:
        return None, f"baseline fit failed ({clip_line(str(exc), 120)})"


__all__ = ["DLINEAR_SEED", "HGB_GRID", "HGB_SEED", "REFERENCE_LABELS", "REFERENCE_MEANINGS",
           "REFERENCE_ROWS", "RIDGE_ALPHAS", "BaselineResult", "forecast_references",
           "hgb_baseline", "mean_baseline", "reference_baselines", "reference_results",
           "ridge_baseline", "stored_references"]
