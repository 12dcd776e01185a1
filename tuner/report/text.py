"""How numbers and provenance read in every report file (summary.md, ablation.md,
index.html and the figures' captions), so the three views print the same value the same way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tuner.journal import as_float, clip_line
from tuner.outcomes import Proposer

#: Axis and table labels of the metrics a search can optimise.
METRIC_LABELS = {"val_rmse": "validation RMSE", "val_mae": "validation MAE",
                 "val_r2": "validation R²", "val_mape": "validation MAPE %",
                 "val_loss": "validation loss", "val_mse": "validation MSE"}


#: How a split metric is named in a table header (test RMSE, test R², ...).
METRIC_NAMES = {"rmse": "RMSE", "mae": "MAE", "r2": "R²", "mape": "MAPE %", "mse": "MSE"}


def fmt(value: Any, digits: int = 4) -> str:
    """Compact number formatting for tables; missing values print as '–'."""
    if value is None or value is pd.NA:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            return "–"
        return f"{float(value):.{digits}g}"
    return str(value)


def pm(mean: Any, std: Any) -> str:
    """`mean ± std` of an ablation cell; the std is left out when it is undefined (n = 1)."""
    mean, std = as_float(mean), as_float(std)
    if not math.isfinite(mean):
        return "–"
    return fmt(mean) if not math.isfinite(std) else f"{fmt(mean)} ± {fmt(std, 2)}"


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def backbone_line(backbone: str) -> str:
    """summary.md / ablation.md: which backbone produced the numbers (a toy one, loudly)."""
    if backbone == "tiny":
        return ("backbone: `tiny` — these numbers come from a random toy backbone (smoke "
                "test), NOT from pretrained CLIP")
    return f"backbone: `{backbone}` (pretrained CLIP weights)"


def data_line(meta: dict[str, Any]) -> str:
    """summary.md / ablation.md: which data produced the numbers (synthetic, loudly)."""
    data = meta.get("data") or {}
    label = "SYNTHETIC data" if data.get("synthetic") else "data"
    return (f"{label}: {data.get('description', '?')} (fingerprint "
            f"`{data.get('fingerprint', '?')}`)")


def provenance(meta: dict[str, Any]) -> str:
    """One line for captions (in the page and in each PNG): which data and backbone."""
    data = meta.get("data") or {}
    backbone = str(meta.get("backbone", "?"))
    kind = "SYNTHETIC data" if data.get("synthetic") else "data"
    bb = ("backbone tiny (random toy weights, NOT pretrained CLIP)" if backbone == "tiny"
          else f"backbone {backbone}")
    return f"{kind}: {data.get('description', '?')} · {bb}"


def selection_line(meta: dict[str, Any]) -> str:
    """How a search chose (summary.md and index.html): the one validation split, or the
    mean over the folds of --cv and the retrain its test score belongs to."""
    metric, mode = meta.get("metric", "val_rmse"), meta.get("mode", "min")
    folds = meta.get("folds")
    if meta.get("cv") is None or not folds:
        return (f"{metric} ({mode}) on the validation split; the test split is never used "
                "to choose")
    return (f"{metric} ({mode}) as the mean over {len(folds)} cross-validation folds (--cv "
            f"{meta['cv']}: {'; '.join(map(str, folds))} held out in turn); the selected "
            "configuration was retrained on every training row for its selected epochs, and "
            "only that model was scored on test")


def retrain_note(best_test: dict[str, Any] | None) -> str | None:
    """What the test score of a cross-validated search belongs to (None otherwise)."""
    if not best_test or "retrain_rows" not in best_test:
        return None
    return (f"the configuration retrained on all {best_test['retrain_rows']} training rows "
            f"for {best_test.get('retrain_epochs')} epochs (the last epoch's weights)")


def proposers_line(meta: dict[str, Any], trials: pd.DataFrame) -> str | None:
    """Who proposed the trials: how many came from TPE's model and how many were its random
    start-up (None for a search without TPE, or an earlier version's experiment)."""
    if meta.get("searcher") != "tpe" or "proposed_by" not in trials:
        return None
    counts = trials["proposed_by"].astype(str).value_counts()
    model, startup = int(counts.get(Proposer.MODEL.value, 0)), \
        int(counts.get(Proposer.STARTUP.value, 0))
    if model + startup == 0:
        return None
    startup_trials = (meta.get("budget") or {}).get("startup_trials", "?")
    return (f"TPE proposed {model} of {len(trials)} trials from its model; {startup} were its "
            f"random start-up (until {startup_trials} trials had finished)")


def short(exc: BaseException, limit: int = 160) -> str:
    """An exception as one short line (for a note in place of a figure)."""
    return clip_line(str(exc), limit) or type(exc).__name__


__all__ = ["METRIC_LABELS", "METRIC_NAMES", "backbone_line", "data_line", "fmt",
           "metric_label", "pm", "proposers_line", "provenance", "retrain_note",
           "selection_line", "short"]
