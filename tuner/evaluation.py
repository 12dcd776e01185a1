"""The test split, scored once per experiment, for the configuration the search selected.

`score_best_once` picks the trial with `tuner.outcomes.select_best` (validation only), loads
the `best.pt` of its last journaled checkpoint — the weights of the epoch with its best
monitored value, which is the search metric (the plan sets the trainer's `monitor` to it) —
and scores the test split with them. `best_test.json` records the trial, the selected epoch
and its validation value, and the epoch of the weights it scored; the two epochs agree by
construction and a disagreement is said in one line. The same forward pass yields the
per-sample predictions and the mean variate-selection attention, stored as plain CSV beside
it (best_test.json is written last: it marks the scoring as done), so the report reads them
and never scores the test split again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from timesclip.atomic import write_text
from timesclip.checkpoint import BEST, safe_load
from timesclip.data import DataBundle
from timesclip.features import feature_key
from timesclip.inference import load_for_inference, predict_with_attention
from timesclip.metrics import regression_metrics
from timesclip.plots import attention_frame, predictions_frame, write_csv
from tuner.journal import ExperimentState
from tuner.layout import (
    BEST_ATTENTION_FILE,
    BEST_PREDICTIONS_FILE,
    BEST_TEST_FILE,
    TRIAL_ID,
    ExperimentLayout,
)
from tuner.outcomes import best_value, select_best

Echo = Callable[[str], None]


def score_best_once(layout: ExperimentLayout, state: ExperimentState, *, metric: str,
                    mode: str, data: DataBundle, base_feature_key: str,
                    features: dict[str, Any] | None, echo: Echo) -> dict[str, Any] | None:
    """Score the selected trial on the test split unless that was done before; returns
    best_test.json's payload (None when no trial can be scored)."""
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
    ckdir = layout.checkpoint_dir(best.dirname, best.checkpoint)
    weights_epoch = int(safe_load(ckdir / BEST, "the trial's checkpoint is damaged").get(
        "epoch", -1))
    model, config, scaler, bands, backbone = load_for_inference(ckdir, device="cpu")
    shared = features is not None and feature_key(config, data) == base_feature_key
    split = data.test
    y_pred, attention = predict_with_attention(
        model, config, scaler, backbone, split.x_raw,
        features=features["test"] if shared else None)
    test = regression_metrics(split.y_raw, y_pred)
    write_csv(predictions_frame(split.y_raw, y_pred, split.years, split.index),
              layout.best_predictions)
    if attention is not None:
        write_csv(attention_frame(attention, bands), layout.best_attention, index=True)
    value, epoch = best_value(best.history, metric, mode)
    if weights_epoch != epoch:
        echo(f"warning: trial {best.tid} was selected at epoch {epoch} but its best.pt holds "
             f"epoch {weights_epoch} (its monitor is {config.monitor_metric}, the search "
             f"metric {metric}); the test score below belongs to epoch {weights_epoch}")
    payload = {TRIAL_ID: best.tid, metric: value, "selected_epoch": epoch,
               "epoch": weights_epoch, "test": test,
               "checkpoint": str(ckdir.relative_to(layout.root)),
               "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "predictions": BEST_PREDICTIONS_FILE,
               "attention": BEST_ATTENTION_FILE if attention is not None else None,
               "bands": [str(b) for b in bands],
               "use_variate_selection": bool(config.use_variate_selection)}
    write_text(layout.best_test, json.dumps(payload, indent=2) + "\n")
    echo(f"best trial {best.tid}: {metric} {value:.4f} (epoch {epoch}); test (evaluated "
         f"once) RMSE {test['rmse']:.3f}, R2 {test['r2']:+.3f}, with the weights of epoch "
         f"{weights_epoch}")
    return payload


__all__ = ["score_best_once"]
