"""The test split, scored once per experiment, for the configuration the search selected.

A yield search stores the per-sample predictions and the attention; a forecasting search
the MSE / MAE over every test window, a few example windows, the error per horizon step,
the attention, and its references (naive, and DLinear trained on the same training windows)
so that no report trains DLinear again.


`score_best_once` picks the trial with `tuner.outcomes.select_best` (validation only), loads
the `best.pt` of its last journaled checkpoint — the weights of the epoch with its best
monitored value, which is the search metric (the plan sets the trainer's `monitor` to it) —
and scores the test split with them. `best_test.json` records the trial, the selected epoch
and its validation value, and the epoch of the weights it scored; the two epochs agree by
construction and a disagreement is said in one line. The same forward pass yields the
per-sample predictions and the mean variate-selection attention, stored as plain CSV beside
it (best_test.json is written last: it marks the scoring as done), so the report reads them
and never scores the test split again.

A cross-validated search (--cv) selected a configuration and an epoch count by the mean
over its folds; no single model of the trial is "the" selected one (there is one per fold,
each trained on part of the training rows). The configuration is retrained on every
training row for the selected number of epochs (`timesclip.cv.retrain`, into
`best_retrain/`, last epoch kept) and those weights are scored, once, the same way.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from typing import Any

from timesclip.atomic import write_text
from timesclip.checkpoint import BEST, safe_load
from timesclip.config import TrainConfig
from timesclip.cv import retrain
from timesclip.data import Bundle, DataBundle, ForecastBundle
from timesclip.data.folds import CvSpec
from timesclip.features import feature_key
from timesclip.forecast_baselines import forecast_baselines
from timesclip.forecast_plots import examples_frame, horizon_frame
from timesclip.inference import evaluate_forecast, load_for_inference, predict_with_attention
from timesclip.metrics import TASK_METRICS, regression_metrics
from timesclip.plots import attention_frame, predictions_frame, write_csv
from tuner.journal import ExperimentState
from tuner.layout import (
    BEST_ATTENTION_FILE,
    BEST_EXAMPLES_FILE,
    BEST_HORIZON_FILE,
    BEST_PREDICTIONS_FILE,
    BEST_TEST_FILE,
    TRAIN_CONFIG_FILE,
    TRIAL_ID,
    ExperimentLayout,
)
from tuner.outcomes import best_value, select_best
from tuner.report.baselines import DLINEAR_SEED

Echo = Callable[[str], None]


def score_best_once(layout: ExperimentLayout, state: ExperimentState, *, metric: str,
                    mode: str, data: Bundle, base_feature_key: str,
                    features: dict[str, Any] | None, echo: Echo,
                    cv: CvSpec | None = None) -> dict[str, Any] | None:
    """Score the selected trial on the test split unless that was done before; returns
    best_test.json's payload (None when no trial can be scored). cv: the search's --cv
    (the selected configuration is retrained first, see the module docstring)."""
    best = select_best(state.trials.values(), metric, mode)
    if best is None:
        echo(f"no trial ended with a finite {metric}: nothing to evaluate")
        return None
    if layout.best_test.exists():
        stored = json.loads(layout.best_test.read_text())
        echo(f"test split already scored once for trial {stored.get('trial_id')} "
             f"({BEST_TEST_FILE}); not scored again")
        return stored
    if not best.checkpoint:
        echo(f"best trial {best.tid} has no checkpoint: test split not scored")
        return None
    value, epoch = best_value(best.history, metric, mode)
    retrained: dict[str, Any] = {}
    if cv is not None:
        ckdir, retrained = _retrain_selected(layout, best.dirname, epoch, data, features,
                                             base_feature_key, echo)
    else:
        ckdir = layout.checkpoint_dir(best.dirname, best.checkpoint)
    weights_epoch = int(safe_load(ckdir / BEST, "the trial's checkpoint is damaged").get(
        "epoch", -1))
    model, config, scaler, bands, backbone = load_for_inference(ckdir, device="cpu")
    shared = features is not None and feature_key(config, data) == base_feature_key
    test_features = features["test"] if shared else None
    if isinstance(data, ForecastBundle):
        files, test, attention = _score_forecast(layout, model, config, backbone, data,
                                                 test_features, echo)
    else:
        split = data.test
        y_pred, attention = predict_with_attention(model, config, scaler, backbone,
                                                   split.x_raw, features=test_features)
        test = regression_metrics(split.y_raw, y_pred)
        write_csv(predictions_frame(split.y_raw, y_pred, split.years, split.index),
                  layout.best_predictions)
        files = {"predictions": BEST_PREDICTIONS_FILE}
    if attention is not None:
        write_csv(attention_frame(attention, bands), layout.best_attention, index=True)
    if weights_epoch != epoch:
        echo(f"warning: trial {best.tid} was selected at epoch {epoch} but its best.pt holds "
             f"epoch {weights_epoch} (its monitor is {config.monitor_metric}, the search "
             f"metric {metric}); the test score below belongs to epoch {weights_epoch}")
    payload = {TRIAL_ID: best.tid, metric: value, "selected_epoch": epoch,
               "epoch": weights_epoch, "test": test,
               "checkpoint": str(ckdir.relative_to(layout.root)),
               "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               **retrained, **files,
               "attention": BEST_ATTENTION_FILE if attention is not None else None,
               "bands": [str(b) for b in bands],
               "use_variate_selection": bool(config.use_variate_selection)}
    write_text(layout.best_test, json.dumps(payload, indent=2) + "\n")
    shown = ", ".join(f"{m.upper()} {test[m]:.4g}" for m in TASK_METRICS[config.task])
    how = (f"retrained on all {retrained['retrain_rows']} training rows for {weights_epoch} "
           "epochs" if retrained else f"with the weights of epoch {weights_epoch}")
    echo(f"best trial {best.tid}: {metric} {value:.4f}{' (mean over folds)' if cv else ''} "
         f"(epoch {epoch}); test (evaluated once) {shown}, {how}")
    return payload


def _retrain_selected(layout: ExperimentLayout, dirname: str, epochs: int | None,
                      data: Bundle, features: dict[str, Any] | None, base_feature_key: str,
                      echo: Echo) -> tuple[Any, dict[str, Any]]:
    """Retrain a cross-validated search's selected configuration on every training row for
    `epochs` (its selected epoch); returns the checkpoint folder to score and the fields
    best_test.json adds. A retrain a killed driver left half done starts again (it is
    deterministic: same config, same rows, same seed)."""
    if not isinstance(data, DataBundle) or epochs is None:
        raise RuntimeError("a cross-validated search selects a yield configuration at an "
                           "epoch; nothing to retrain")
    config = TrainConfig.from_yaml(layout.trial_dir(dirname) / TRAIN_CONFIG_FILE)
    shared = features is not None and feature_key(config, data) == base_feature_key
    out = layout.best_retrain
    shutil.rmtree(out, ignore_errors=True)
    rows = len(data.train) + len(data.val)
    echo(f"retraining the selected configuration on all {rows} training rows for {epochs} "
         f"epochs (its cross-validated best) -> {out.name}/")
    result = retrain(config, data, epochs, checkpoint_dir=out,  # scored by the caller
                     vision_features=features if shared else None, tb_dir=out,
                     evaluate_test=False)
    return out, {"retrain_rows": rows, "retrain_epochs": int(epochs),
                 "retrain_seconds": result.train_seconds}


def _score_forecast(layout: ExperimentLayout, model: Any, config: Any, backbone: Any,
                    data: ForecastBundle, features: Any, echo: Echo
                    ) -> tuple[dict[str, Any], dict[str, float], Any]:
    """Every test window of a forecasting file, once: the metrics, the figures' CSVs, and
    the references on the same windows. Returns (best_test.json fields, test metrics,
    attention [V, V] or None)."""
    result = evaluate_forecast(model, config, backbone, data.test, data.scaler,
                               features=features)
    write_csv(examples_frame(result), layout.best_examples)
    write_csv(horizon_frame(result), layout.best_horizon)
    echo(f"baselines: naive and DLinear on the same windows ({len(data.train)} training "
         "windows) ...")
    baselines = forecast_baselines(data, seed=DLINEAR_SEED, log=echo)
    return ({"examples": BEST_EXAMPLES_FILE, "horizon": BEST_HORIZON_FILE,
             "naive_on_test": result.naive, "baselines": baselines},
            dict(result.metrics), result.attention)


__all__ = ["score_best_once"]
