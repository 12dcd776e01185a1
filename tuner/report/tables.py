"""The report's tables: one row per trial (trials.csv / trials.parquet) and the ablation table.

The trials table (CONTRACT) starts with `CONTRACT_COLUMNS`, then `EXTRA_COLUMNS` (plus
`best_<metric>` when the search metric has no column of its own), then `config.<field>` for
every sampled parameter. A trial's best_* columns are the metrics of ONE epoch: the one
`tuner.outcomes.best_value` picks for the search metric. Rows are ordered as selection
ranks them (trials that ended normally first, then by `timesclip.metrics.better`, ties by
trial id), so the first row is the trial `tuner.outcomes.select_best` exports.

Dtypes are fixed per column so CSV and Parquet hold the same table.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from timesclip.config import ABLATION_MEANINGS, ABLATIONS
from timesclip.metrics import YIELD_METRICS, better
from tuner.journal import as_float
from tuner.layout import TRIAL_ID
from tuner.outcomes import Status, best_value
from tuner.report.baselines import REFERENCE_MEANINGS, REFERENCE_ROWS, BaselineResult
from tuner.report.read import TrialRecord, metrics_of, task_of

#: Columns every trials table has, in this order (CONTRACT) — followed by extras and config.*.
CONTRACT_COLUMNS = [TRIAL_ID, "status", "epochs_run", "best_val_rmse", "last_val_rmse",
                    "wall_seconds", "error"]
#: Test metrics of a yield trial (final.json) and of its references, in table order (the
#: forecasting task's are mse, mae: `metrics_of(meta)`).
METRICS = YIELD_METRICS


def extra_columns(meta: dict[str, Any]) -> list[str]:
    """The columns after the CONTRACT ones and before config.<field>: the task's validation
    metrics at the best epoch, val_loss there, the search metric if it is none of those,
    the task's test metrics, then the trial's bookkeeping."""
    metrics = metrics_of(meta)
    best = [f"best_val_{m}" for m in metrics if f"best_val_{m}" not in CONTRACT_COLUMNS]
    best.append("best_val_loss")
    metric = f"best_{meta.get('metric', 'val_rmse')}"
    if metric not in CONTRACT_COLUMNS + best:
        best.append(metric)
    last = [f"last_val_{m}" for m in metrics[:1] if f"last_val_{m}" not in CONTRACT_COLUMNS]
    return ["stopped_by", "proposed_by", "node", "best_epoch", *best, *last,
            *(f"test_{m}" for m in metrics), "params_total", "params_trainable",
            "params_frozen", "train_seconds", "backbone", "num_failures", "retry_errors",
            "trial_dir"]


#: The extra columns of a yield search (the forecasting task's: `extra_columns(meta)`).
EXTRA_COLUMNS = extra_columns({"metric": "val_rmse"})
#: TrainConfig switches an ablation arm sets (columns of the ablation kind's trials table).
ABLATION_SWITCHES = ("use_vision", "use_contrastive", "use_variate_selection",
                     "language_backbone")


def config_columns(meta: dict[str, Any]) -> list[str]:
    """The parameter names with a `config.<name>` column, in the search's order."""
    names = [str(n) for n in meta.get("sampled_names") or []]
    if meta.get("kind") == "ablation":
        for extra in ("ablation", "seed", *ABLATION_SWITCHES):
            if extra not in names:
                names.append(extra)
    return names


def _config_value(record: TrialRecord, name: str, kind: str) -> Any:
    """The value a trial sampled for `name`; empty when the parameter was not active in
    this trial (e.g. temperature with the contrastive loss off). Ablation switches come
    from the arm, i.e. the trial's resolved TrainConfig."""
    if name in record.params:
        return record.params[name]
    if kind == "ablation" and name in ABLATION_SWITCHES and record.train_config:
        return record.train_config.get(name)
    return None


def _train_seconds(rec: TrialRecord) -> float:
    """fit()'s training time when the trial finished, else the summed epoch times."""
    final = rec.final or {}
    if final.get("train_seconds") is not None:
        return as_float(final["train_seconds"])
    if "time_this_iter_s" in rec.history:
        return float(pd.to_numeric(rec.history["time_this_iter_s"], errors="coerce").sum())
    return float("nan")


def _scalar(value: Any) -> Any:
    """Parquet/CSV-friendly cell: containers become JSON text, numpy scalars plain Python."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _row(rec: TrialRecord, meta: dict[str, Any], metric: str, mode: str,
         config_names: Sequence[str]) -> dict[str, Any]:
    hist = rec.history
    final = rec.final or {}
    row: dict[str, Any] = {
        TRIAL_ID: rec.trial_id, "status": rec.status, "epochs_run": rec.epochs_run,
        "best_val_rmse": float("nan"), "last_val_rmse": float("nan"),
        "wall_seconds": rec.wall_seconds, "error": rec.error,
        "stopped_by": rec.stopped_by, "proposed_by": rec.proposed_by, "node": rec.node,
        "best_epoch": pd.NA,
    }
    epochs = rec.epochs
    metrics = metrics_of(meta)
    _, best_epoch = best_value(epochs, metric, mode)
    at_best = epochs[best_epoch] if best_epoch is not None else {}
    for name in dict.fromkeys((*(f"val_{m}" for m in metrics), "val_loss", metric)):
        row[f"best_{name}"] = as_float(at_best.get(name))
    if best_epoch is not None:
        row["best_epoch"] = int(best_epoch)
    for name in ("val_rmse", f"val_{metrics[0]}"):
        if name in hist:
            row[f"last_{name}"] = as_float(hist[name].iloc[-1])
    test = final.get("test") or {}
    for name in metrics:
        row[f"test_{name}"] = as_float(test.get(name))
    params = final.get("params") or {}
    for name in ("total", "trainable", "frozen"):
        value = params.get(name)
        if value is None and f"params_{name}" in hist:
            value = hist[f"params_{name}"].iloc[-1]
        row[f"params_{name}"] = int(value) if value is not None and not _is_nan(value) \
            else pd.NA
    row["train_seconds"] = _train_seconds(rec)
    row["backbone"] = str((rec.train_config or {}).get("backbone")
                          or final.get("backbone") or meta.get("backbone") or "")
    row["num_failures"] = rec.num_failures
    row["retry_errors"] = " | ".join(rec.retries)
    row["trial_dir"] = rec.trial_dir.name
    kind = str(meta.get("kind", "search"))
    for name in config_names:
        row[f"config.{name}"] = _scalar(_config_value(rec, name, kind))
    return row


def _selection_order(mode: str, key: str) -> Any:
    """Sort key of a row as selection ranks it: ended normally first, then the better
    value (`timesclip.metrics.better`, the comparison selection itself uses), then the
    trial id (ties go to the earlier trial)."""

    def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
        ended_a, ended_b = a["status"] == Status.TERMINATED, b["status"] == Status.TERMINATED
        if ended_a != ended_b:
            return -1 if ended_a else 1
        if better(a[key], b[key], mode):
            return -1
        if better(b[key], a[key], mode):
            return 1
        return (a[TRIAL_ID] > b[TRIAL_ID]) - (a[TRIAL_ID] < b[TRIAL_ID])

    return functools.cmp_to_key(compare)


def trials_table(records: Sequence[TrialRecord], meta: dict[str, Any]) -> pd.DataFrame:
    """One row per trial, CONTRACT columns first, sorted best-first by the search metric."""
    metric = str(meta.get("metric", "val_rmse"))
    mode = str(meta.get("mode", "min"))
    config_names = config_columns(meta)
    rows = [_row(rec, meta, metric, mode, config_names) for rec in records]
    rows.sort(key=_selection_order(mode, f"best_{metric}"))
    columns = CONTRACT_COLUMNS + extra_columns(meta) + [f"config.{n}" for n in config_names]
    return _tidy_types(pd.DataFrame(rows, columns=columns))


def _tidy_types(frame: pd.DataFrame) -> pd.DataFrame:
    """Stable dtypes so CSV and Parquet agree: nullable ints, one Python type per column."""
    for col in ("best_epoch", "params_total", "params_trainable", "params_frozen"):
        if col in frame:
            frame[col] = pd.array(frame[col].tolist(), dtype="Int64")
    for col in ("epochs_run", "num_failures"):
        if col in frame:
            frame[col] = frame[col].astype("int64")
    for col in (TRIAL_ID, "status", "error", "stopped_by", "proposed_by", "node", "backbone",
                "retry_errors", "trial_dir"):
        if col in frame:
            frame[col] = frame[col].fillna("").astype(str)
    for col in [c for c in frame.columns if c.startswith("config.")]:
        values = [v for v in frame[col].tolist() if v is not None and not _is_nan(v)]
        kinds = {type(v) for v in values}
        if kinds <= {int, float} and float in kinds:
            frame[col] = frame[col].astype(float)
        elif len(kinds) > 1 and not kinds <= {int, float}:
            frame[col] = [None if v is None or _is_nan(v) else str(v) for v in frame[col]]
    return frame


def ablation_table(trials: pd.DataFrame, references: list[BaselineResult] | None,
                   reference_note: str, meta: dict[str, Any] | None = None) -> pd.DataFrame:
    """Rows E1..E5 (mean and sample std over finished seeds) plus the reference baselines,
    in the task's metrics (meta: search_meta.json; omitted: a yield experiment)."""
    meta = meta or {}
    metrics, primary = metrics_of(meta), f"test_{metrics_of(meta)[0]}"
    rows = []
    arms = trials["config.ablation"].astype(str) if "config.ablation" in trials else None
    for arm in ABLATIONS:
        sub = trials[arms == arm] if arms is not None else trials.iloc[0:0]
        done = sub[np.isfinite(pd.to_numeric(sub[primary], errors="coerce").astype(float))]
        if "config.seed" in done:
            done = done.sort_values("config.seed", kind="stable")
        n = len(done)
        row: dict[str, Any] = {"row": arm, "kind": "arm", "meaning": ABLATION_MEANINGS[arm],
                               "n": n, "trials": len(sub)}
        row["seeds"] = ",".join(str(s) for s in done["config.seed"]) \
            if "config.seed" in done else ""
        for name in metrics:
            values = done[f"test_{name}"].astype(float).to_numpy()
            row[f"test_{name}_mean"] = float(values.mean()) if n else float("nan")
            row[f"test_{name}_std"] = float(values.std(ddof=1)) if n > 1 else float("nan")
        row["train_seconds_mean"] = float(done["train_seconds"].astype(float).mean()) \
            if n else float("nan")
        for part in ("total", "trainable", "frozen"):
            col = done[f"params_{part}"].dropna() if n else pd.Series([], dtype="Int64")
            row[f"params_{part}"] = int(col.iloc[0]) if len(col) else pd.NA
        if len(sub) == 0:
            row["note"] = "no trials"
        elif n < len(sub):
            other = sub[~sub.index.isin(done.index)]
            counts = other["stopped_by"].value_counts().sort_index()
            row["note"] = (f"{len(sub) - n} of {len(sub)} trials without test metrics ("
                           + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")")
        else:
            row["note"] = ""
        rows.append(row)
    for name in REFERENCE_ROWS[task_of(meta)]:
        ref = next((r for r in references or [] if r.name == name), None)
        row = {"row": name, "kind": "reference", "meaning": REFERENCE_MEANINGS[name],
               "n": 1 if ref is not None else 0, "trials": 0, "seeds": ""}
        for metric in metrics:
            row[f"test_{metric}_mean"] = float(ref.test[metric]) if ref else float("nan")
            row[f"test_{metric}_std"] = float("nan")
        row["train_seconds_mean"] = float("nan")  # kept out: a timing would differ per rebuild
        for part in ("total", "trainable", "frozen"):
            row[f"params_{part}"] = (ref.params if part != "frozen" else 0) if ref else pd.NA
        row["note"] = ref.detail if ref else f"unavailable: {reference_note}"
        rows.append(row)
    frame = pd.DataFrame(rows)
    for col in ("params_total", "params_trainable", "params_frozen"):
        frame[col] = pd.array(frame[col].tolist(), dtype="Int64")
    return frame


__all__ = ["ABLATION_SWITCHES", "CONTRACT_COLUMNS", "EXTRA_COLUMNS", "METRICS", "extra_columns",
           "ablation_table", "config_columns", "trials_table"]
