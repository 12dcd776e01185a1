"""Turn a stored search experiment into a report: trials table, summary, best config, ablation.

`python -m tuner.results STORAGE/NAME` (or `build_report(path)`) reads plain files only:
`search_meta.json`, the journal (`journal.jsonl`: every trial, epoch, decision and ending,
see `tuner.journal`), each trial's `train_config.yaml` / `final.json`, and
`best_test.json`. Nothing is unpickled, so a copied or downloaded experiment folder is safe
to report on, and no Ray or running cluster is needed. An interrupted experiment reports
just as well (trials still unfinished, no `best_test.json`).

Selection uses validation metrics only (`tuner.journal.select_best`, the one notion of
"best" that the search also exports and scores); the test split appears solely where it was
evaluated once for the exported configuration (`best_test.json`) or for the fixed ablation
arms.

Output (CONTRACT), written all-or-nothing into STORAGE/NAME/report/:
trials.csv, trials.parquet, summary.md, best_config.yaml; the ablation kind adds
ablation.csv and ablation.md (and skips best_config.yaml: its arms are not a search).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from timesclip.cli_args import OneLineErrorParser
from timesclip.config import ABLATION_MEANINGS, ABLATIONS, TrainConfig
from timesclip.errors import ConfigError, UserError
from tuner.journal import (
    BEST_TEST_FILE,
    DIVERGED,
    ERROR,
    FINAL_FILE,
    JOURNAL_FILE,
    PENDING,
    RUNNING,
    TERMINATED,
    TRAIN_CONFIG_FILE,
    TRIALS_DIR,
    ExperimentState,
    TrialState,
    clip_line,
    as_float,
    best_value,
    load_state,
)
from tuner.journal import select_best as select_best_trial

META_FILE = "search_meta.json"
REPORT_DIR = "report"

#: Columns every trials table has, in this order (CONTRACT) — followed by extras and config.*.
CONTRACT_COLUMNS = ["trial_id", "status", "epochs_run", "best_val_rmse", "last_val_rmse",
                    "wall_seconds", "error"]
#: Further columns, after the CONTRACT ones and before config.<field>.
EXTRA_COLUMNS = ["stopped_by", "node", "best_epoch", "best_val_mae", "best_val_r2", "best_val_mape",
                 "best_val_loss", "test_rmse", "test_mae", "test_r2", "test_mape",
                 "params_total", "params_trainable", "params_frozen", "train_seconds",
                 "backbone", "num_failures", "retry_errors", "trial_dir"]
METRICS = ("rmse", "mae", "r2", "mape")
ABLATION_SWITCHES = ("use_vision", "use_contrastive", "use_variate_selection",
                     "language_backbone")
UNFINISHED = (RUNNING, PENDING)
#: Reference rows after the arms of the ablation table, in this order (tuner.baselines).
REFERENCE_ROWS = ("mean", "ridge", "hgb")

Echo = Callable[[str], Any]


@dataclass
class ReportPaths:
    """Where the report went; `None` for a file that was deliberately not written."""

    directory: Path
    trials_csv: Path
    trials_parquet: Path
    summary_md: Path
    best_config: Path | None = None
    ablation_csv: Path | None = None
    ablation_md: Path | None = None
    best_trial_id: str | None = None
    notes: list[str] = field(default_factory=list)  # one line each: what was skipped and why
    index_html: Path | None = None  # the human view (figures in figures/ beside it)

    def files(self) -> list[Path]:
        """The files actually written, in a stable order."""
        candidates = [self.trials_csv, self.trials_parquet, self.summary_md, self.best_config,
                      self.ablation_csv, self.ablation_md, self.index_html]
        return [p for p in candidates if p is not None]


@dataclass
class TrialRecord:
    """Everything stored about one trial, read once and then tabulated."""

    trial_id: str
    status: str  # TERMINATED | DIVERGED | ERROR | RUNNING | PENDING (tuner.journal)
    trial_dir: Path
    params: dict[str, Any]  # the sampled values (ablation: arm + seed), as journaled
    history: pd.DataFrame  # one row per journaled epoch, sorted by epoch
    train_config: dict[str, Any] | None  # train_config.yaml, None if the trial never started
    final: dict[str, Any] | None  # final.json, None unless fit() returned
    error: str  # short error line ("" unless status is ERROR or DIVERGED)
    num_failures: int  # infrastructure failures Ray retried
    wall_seconds: float  # summed over driver runs
    stopped_by: str = "unfinished"
    node: str = ""
    retries: list[str] = field(default_factory=list)
    state: TrialState | None = None


# ---------------------------------------------------------------------------------- reading
def load_meta(experiment_dir: Path) -> dict[str, Any]:
    """search_meta.json of an experiment, or a one-line UserError saying what to pass."""
    hint = "pass the STORAGE/NAME directory of a `python -m tuner.search` run"
    if not experiment_dir.is_dir():
        raise UserError(f"{experiment_dir} is not a directory: {hint}")
    meta_path = experiment_dir / META_FILE
    if not meta_path.is_file():
        raise UserError(f"{experiment_dir} is not a search experiment (no {META_FILE}): {hint}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{meta_path} is unreadable ({exc}); it is written by tuner.search "
                        "before the search starts: rerun or restore it") from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path} must hold a JSON object; rerun tuner.search")
    return meta


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when absent or half-written (interrupted run)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None


def history_frame(trial: TrialState) -> pd.DataFrame:
    """The journaled epochs of one trial, one row per epoch, sorted."""
    rows = [{**metrics, "epoch": epoch} for epoch, metrics in sorted(trial.history.items())]
    return pd.DataFrame(rows)


def load_trials(experiment_dir: Path, state: ExperimentState | None = None
                ) -> list[TrialRecord]:
    """Every trial of the journal, with the files it left in its folder."""
    if state is None:
        state = load_state(experiment_dir)
    if not state.trials and not (experiment_dir / JOURNAL_FILE).exists():
        raise UserError(f"{experiment_dir} has no {JOURNAL_FILE} yet (the search was stopped "
                        "before its first trial was recorded): rerun tuner.search with "
                        "--resume or start it again")
    records = []
    for trial in state.trials.values():
        trial_dir = experiment_dir / TRIALS_DIR / trial.dirname
        end = trial.end or {}
        error = str(end.get("error") or "") if trial.status in (ERROR, DIVERGED) else ""
        records.append(TrialRecord(
            trial_id=trial.tid, status=trial.status, trial_dir=trial_dir,
            params=dict(trial.params), history=history_frame(trial),
            train_config=_read_yaml(trial_dir / TRAIN_CONFIG_FILE),
            final=_read_json(trial_dir / FINAL_FILE), error=error,
            num_failures=len(trial.retries), wall_seconds=trial.wall_seconds,
            stopped_by=trial.stopped_by, node=trial.node or "",
            retries=[r.get("error", "") for r in trial.retries], state=trial))
    return records


# ---------------------------------------------------------------------------------- tables
_num = as_float


def _config_columns(meta: dict[str, Any]) -> list[str]:
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
        return _num(final["train_seconds"])
    if "time_this_iter_s" in rec.history:
        return float(pd.to_numeric(rec.history["time_this_iter_s"], errors="coerce").sum())
    return float("nan")


def _best_row(history: pd.DataFrame, metric: str, mode: str) -> int | None:
    if metric not in history:
        return None
    values = pd.to_numeric(history[metric], errors="coerce").astype(float)
    values = values.where(np.isfinite(values))
    if values.notna().sum() == 0:
        return None
    return int(values.idxmin() if mode == "min" else values.idxmax())


def _scalar(value: Any) -> Any:
    """Parquet/CSV-friendly cell: containers become JSON text, numpy scalars plain Python."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, np.generic):
        return value.item()
    return value


def trials_table(records: Sequence[TrialRecord], meta: dict[str, Any]) -> pd.DataFrame:
    """One row per trial, CONTRACT columns first, sorted best-first by the search metric."""
    metric = str(meta.get("metric", "val_rmse"))
    mode = str(meta.get("mode", "min"))
    budget = meta.get("budget") or {}
    max_epochs = budget.get("max_epochs")
    max_epochs = int(max_epochs) if max_epochs is not None else None
    config_names = _config_columns(meta)
    kind = str(meta.get("kind", "search"))
    rows = []
    for rec in records:
        hist = rec.history
        epochs_run = rec.state.epochs_run if rec.state is not None else len(hist)
        final = rec.final or {}
        best = _best_row(hist, metric, mode)
        row: dict[str, Any] = {
            "trial_id": rec.trial_id, "status": rec.status, "epochs_run": epochs_run,
            "best_val_rmse": float("nan"), "last_val_rmse": float("nan"),
            "wall_seconds": rec.wall_seconds, "error": rec.error,
            "stopped_by": rec.stopped_by, "node": rec.node, "best_epoch": pd.NA,
        }
        for name in ("val_rmse", "val_mae", "val_r2", "val_mape", "val_loss"):
            row[f"best_{name}"] = float("nan")
        if best is not None:
            for name in ("val_rmse", "val_mae", "val_r2", "val_mape", "val_loss"):
                if name in hist:
                    row[f"best_{name}"] = _num(hist[name].iloc[best])
            row["best_epoch"] = int(hist["epoch"].iloc[best])
        if metric not in ("val_rmse", "val_mae", "val_r2", "val_mape", "val_loss"):
            row[f"best_{metric}"] = _num(hist[metric].iloc[best]) if best is not None \
                else float("nan")
        if "val_rmse" in hist:
            row["last_val_rmse"] = _num(hist["val_rmse"].iloc[-1])
        test = final.get("test") or {}
        for name in METRICS:
            row[f"test_{name}"] = _num(test.get(name))
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
        for name in config_names:
            row[f"config.{name}"] = _scalar(_config_value(rec, name, kind))
        rows.append(row)

    extras = list(EXTRA_COLUMNS)
    if f"best_{metric}" not in CONTRACT_COLUMNS + extras:
        extras.insert(extras.index("best_val_loss") + 1, f"best_{metric}")
    columns = CONTRACT_COLUMNS + extras + [f"config.{n}" for n in config_names]
    frame = _tidy_types(pd.DataFrame(rows, columns=columns))
    # Best first among the trials selection may pick (ended normally), then the others: the
    # first row is the trial tuner.journal.select_best exports.
    sort_col = f"best_{metric}" if f"best_{metric}" in frame else "best_val_rmse"
    key = pd.to_numeric(frame[sort_col], errors="coerce").astype(float)
    frame = frame.assign(_eligible=(frame["status"] != TERMINATED).astype(int),
                         _key=key if mode == "min" else -key,
                         _id=frame["trial_id"].astype(str))
    frame = frame.sort_values(["_eligible", "_key", "_id"], na_position="last", kind="stable")
    return frame.drop(columns=["_eligible", "_key", "_id"]).reset_index(drop=True)


def _tidy_types(frame: pd.DataFrame) -> pd.DataFrame:
    """Stable dtypes so CSV and Parquet agree: nullable ints, one Python type per column."""
    for col in ("best_epoch", "params_total", "params_trainable", "params_frozen"):
        if col in frame:
            frame[col] = pd.array(frame[col].tolist(), dtype="Int64")
    for col in ("epochs_run", "num_failures"):
        if col in frame:
            frame[col] = frame[col].astype("int64")
    for col in ("trial_id", "status", "error", "stopped_by", "node", "backbone",
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


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def ablation_table(trials: pd.DataFrame, references: list[Any] | None,
                   reference_note: str) -> pd.DataFrame:
    """Rows E1..E5 (mean and sample std over finished seeds) plus the reference baselines."""
    rows = []
    arms = trials["config.ablation"].astype(str) if "config.ablation" in trials else None
    for arm in ABLATIONS:
        sub = trials[arms == arm] if arms is not None else trials.iloc[0:0]
        done = sub[np.isfinite(pd.to_numeric(sub["test_rmse"], errors="coerce").astype(float))]
        if "config.seed" in done:
            done = done.sort_values("config.seed", kind="stable")
        n = len(done)
        row: dict[str, Any] = {"row": arm, "kind": "arm", "meaning": ABLATION_MEANINGS[arm],
                               "n": n, "trials": len(sub)}
        row["seeds"] = ",".join(str(s) for s in done["config.seed"]) \
            if "config.seed" in done else ""
        for name in METRICS:
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
    for name in REFERENCE_ROWS:
        ref = next((r for r in references or [] if r.name == name), None)
        row = {"row": name, "kind": "reference", "meaning": _REFERENCE_MEANINGS[name],
               "n": 1 if ref is not None else 0, "trials": 0, "seeds": ""}
        for metric in METRICS:
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


_REFERENCE_MEANINGS = {
    "mean": "reference: predict the training mean",
    "ridge": "reference: ridge regression on the flattened input window",
    "hgb": "reference: gradient boosting on the flattened input window",
}


def reference_results(meta: dict[str, Any], data_bundle: Any | None, *,
                      echo: Echo | None = None) -> tuple[list[Any] | None, str]:
    """Mean/ridge/gradient-boosting baselines on the experiment's split, or (None, reason)
    when unavailable. `echo` receives the progress lines of the slower fits."""
    from tuner.baselines import reference_baselines

    expected = str((meta.get("data") or {}).get("fingerprint") or "")
    if data_bundle is None:
        try:
            from timesclip.data import load_bundle

            config = TrainConfig.from_dict(meta.get("base_config") or {}, source=META_FILE)
            data_bundle = load_bundle(config, (meta.get("data") or {}).get("paths"))
        except UserError as exc:
            return None, f"the search data could not be reloaded ({exc})"
    got = str(getattr(data_bundle, "fingerprint", ""))
    if expected and got != expected:
        return None, (f"data changed since the search (fingerprint {got} now, {expected} "
                      "in search_meta.json)")
    try:
        return reference_baselines(data_bundle, echo=echo), ""
    except (ValueError, np.linalg.LinAlgError) as exc:
        return None, f"baseline fit failed ({clip_line(str(exc), 120)})"


# ---------------------------------------------------------------------------------- markdown
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (pandas.to_markdown would need `tabulate`)."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


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


def _backbone_line(backbone: str) -> str:
    if backbone == "tiny":
        return ("backbone: `tiny` — these numbers come from a random toy backbone (smoke "
                "test), NOT from pretrained CLIP")
    return f"backbone: `{backbone}` (pretrained CLIP weights)"


def _data_line(meta: dict[str, Any]) -> str:
    data = meta.get("data") or {}
    label = "SYNTHETIC data" if data.get("synthetic") else "data"
    return (f"{label}: {data.get('description', '?')} (fingerprint "
            f"`{data.get('fingerprint', '?')}`)")


def _key_params(row: pd.Series, names: Sequence[str]) -> str:
    return ", ".join(f"{n}={fmt(row.get(f'config.{n}'))}" for n in names)


def asha_rungs(budget: dict[str, Any]) -> list[int]:
    """Epoch counts at which ASHA compares trials, as Ray's ASHA bracket computes them.

    Milestones are grace * rf^k (rf may be fractional; a trial is judged at the first epoch
    >= the milestone); every trial is stopped at max_epochs (max_t), so it closes the list.
    """
    try:
        grace = max(float(budget["grace_period"]), 1.0)
        factor = float(budget["reduction_factor"])
        max_epochs = int(budget["max_epochs"])
    except (KeyError, TypeError, ValueError):
        return []
    if factor <= 1 or max_epochs < 1:
        return [max_epochs] if max_epochs >= 1 else []
    count = int(math.log(max_epochs / grace) / math.log(factor) + 1) if max_epochs >= grace \
        else 0
    epochs = {math.ceil(grace * factor**k - 1e-9) for k in range(count)}
    return sorted(e for e in epochs if e < max_epochs) + [max_epochs]


def _rung_table(trials: pd.DataFrame, budget: dict[str, Any]) -> str:
    rungs = asha_rungs(budget)
    epochs = sorted(set(rungs) | {int(e) for e in trials["epochs_run"]})
    kinds = ["asha", "early_stopping", "completed", "error", "unfinished", "no_results"]
    rows = []
    for epoch in epochs:
        at = trials[trials["epochs_run"] == epoch]
        counts = [int((at["stopped_by"] == k).sum()) for k in kinds]
        reached = int((trials["epochs_run"] >= epoch).sum())
        rows.append([epoch, "yes" if epoch in rungs else "", reached, *counts])
    headers = ["epochs", "ASHA rung", "reached", "stopped by ASHA", "early stopping",
               "completed", "error", "unfinished", "no results"]
    return markdown_table(headers, rows)


def write_summary(path: Path, meta: dict[str, Any], trials: pd.DataFrame,
                  best: dict[str, Any] | None, best_test: dict[str, Any] | None,
                  notes: Sequence[str], ablation: pd.DataFrame | None,
                  references: list[Any] | None = None, *,
                  progress: dict[str, Any] | None = None,
                  state: ExperimentState | None = None) -> None:
    """summary.md: what ran, on which backbone and data, how it ended, and what won."""
    progress = progress or {}
    kind = meta.get("kind", "search")
    metric, mode = meta.get("metric", "val_rmse"), meta.get("mode", "min")
    budget = meta.get("budget") or {}
    names = _config_columns(meta)
    out = [f"# Search report: {meta.get('name', '?')}", ""]
    out += [f"- space: `{meta.get('space', '?')}` (kind: {kind})",
            f"- {_backbone_line(str(meta.get('backbone', '?')))}",
            f"- {_data_line(meta)}",
            f"- selection: {metric} ({mode}) on the validation split; the test split is "
            "never used to choose",
            "- budget: " + ", ".join(f"{k}={v}" for k, v in budget.items()),
            f"- search: {meta.get('searcher', 'tpe')} sampler, "
            f"{meta.get('scheduler', 'asha')} scheduler, seed {meta.get('seed', '?')}",
            f"- wall time: {fmt(progress.get('wall_seconds'), 4)} s over "
            f"{progress.get('drivers', 1)} driver run(s)"
            + (f"; {progress.get('interruptions')} interrupted ("
               + ", ".join(str(s) for s in progress.get("signals") or []) + ")"
               + (" and resumed" if progress.get("finished") else "")
               if progress.get("interruptions") else ""),
            "- resources per trial: " + ", ".join(
                f"{k}={v}" for k, v in (meta.get("resources") or {}).items()),
            "- versions: " + ", ".join(
                f"{k} {v}" for k, v in (meta.get("versions") or {}).items()),
            f"- started: {meta.get('started', '?')}; report generated: "
            f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}", ""]

    out += ["## Trials by status", ""]
    status_counts = trials["status"].value_counts().sort_index()
    out.append(markdown_table(["status", "trials"], list(status_counts.items())
                              + [["total", len(trials)]]))
    stop_counts = trials["stopped_by"].value_counts().sort_index()
    out += ["", markdown_table(["ended by", "trials"], list(stop_counts.items())), ""]
    if progress and not progress.get("finished", True):
        out += [f"**interrupted: {progress['ended']} of {progress['total']} trials "
                "finished.** Continue with the same command plus `--resume` (same "
                "--storage and --name); no best configuration is exported and the test "
                "split is not touched until every trial has finished.", ""]

    if meta.get("scheduler", "asha") == "asha" and kind != "ablation":
        out += ["## ASHA rungs", "",
                "How many trials ended after each number of epochs (rungs = grace_period x "
                "reduction_factor^k, capped at max_epochs).", "",
                _rung_table(trials, budget), ""]
    else:
        out += ["## Epochs per trial", "",
                "No scheduler stops trials here (FIFO): each ran to max_epochs or to its own "
                "early stopping.", "",
                markdown_table(["epochs", "trials"], sorted(
                    trials["epochs_run"].value_counts().items())), ""]

    out += [f"## Top {min(5, len(trials))} trials (validation {metric})", ""]
    top = trials.head(5)
    out.append(markdown_table(
        ["rank", "trial_id", "best_val_rmse", "best epoch", "epochs", "ended by", "params"],
        [[i + 1, r["trial_id"], fmt(r["best_val_rmse"]), fmt(r["best_epoch"]),
          r["epochs_run"], r["stopped_by"], _key_params(r, names)]
         for i, (_, r) in enumerate(top.iterrows())]))
    out.append("")

    failed = trials[trials["status"].isin([ERROR, DIVERGED])]
    out += [f"## Failures ({len(failed)})", "",
            "Diverged trials (a non-finite loss: a property of the sampled configuration) "
            "are not retried; failed ones exhausted --max-failures.", ""]
    out += [f"- `{r['trial_id']}` ({r['status'].lower()}) after {r['epochs_run']} "
            f"epoch(s): {r['error']}" for _, r in failed.iterrows()] or ["none"]
    out.append("")
    retried = trials[trials["num_failures"] > 0]
    out += [f"## Retried trials ({len(retried)})", "",
            "Infrastructure failures (a lost node, a killed worker) retried from the "
            "trial's last checkpoint.", ""]
    out += [f"- `{r['trial_id']}` retried {r['num_failures']}x (last on node "
            f"{r['node'] or '?'}): {r['retry_errors']}" for _, r in retried.iterrows()] \
        or ["none"]
    out.append("")

    if kind == "ablation":
        out += ["## Ablation", "", "See ablation.md / ablation.csv (test split, mean ± std "
                "over seeds, with the mean, ridge and gradient-boosting (hgb) reference rows). "
                "best_config.yaml is not "
                "written for an ablation experiment: its arms are fixed switch settings, not "
                "a search.", ""]
        if ablation is not None:
            out += [_ablation_markdown_table(ablation), ""]
    else:
        out += ["## Best configuration", ""]
        if best is None:
            out += [f"No trial without an error has both a finite {metric} and a stored "
                    f"{TRAIN_CONFIG_FILE}: best_config.yaml was not written.", ""]
        else:
            out += [f"- trial `{best['trial_id']}`: {metric} = {fmt(best['value'])} at epoch "
                    f"{fmt(best['epoch'])} (validation split)",
                    "- exported to best_config.yaml (a complete TrainConfig + provenance; "
                    "run it with `python -m timesclip train --config best_config.yaml`)"]
            if best_test is not None:
                test = best_test.get("test") or {}
                out.append("- test split, evaluated once for the exported configuration"
                           f" (trial `{best_test.get('trial_id')}`): "
                           + ", ".join(f"{k.upper()} {fmt(test.get(k))}" for k in METRICS))
                if str(best_test.get("trial_id")) != best["trial_id"]:
                    out.append(f"- note: best_test.json was evaluated for trial "
                               f"`{best_test.get('trial_id')}`, not for `{best['trial_id']}`")
                for ref in references or []:
                    meaning = _REFERENCE_MEANINGS.get(ref.name, ref.name)
                    out.append(f"- {meaning} (same test split): "
                               + ", ".join(f"{k.upper()} {fmt(ref.test.get(k))}"
                                           for k in METRICS))
            else:
                out.append("- no best_test.json: the test split was not evaluated (search "
                           "interrupted or still running)")
            out.append("")
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    path.write_text("\n".join(out))


def _pm(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "–"
    return fmt(mean) if not math.isfinite(std) else f"{fmt(mean)} ± {fmt(std, 2)}"


def _ablation_markdown_table(table: pd.DataFrame) -> str:
    rows = [[r["row"], r["meaning"], r["n"], *(_pm(r[f"test_{m}_mean"], r[f"test_{m}_std"])
                                             for m in METRICS),
             fmt(r["train_seconds_mean"], 3), fmt(r["params_total"]),
             fmt(r["params_trainable"]), fmt(r["params_frozen"]), r["note"]]
            for _, r in table.iterrows()]
    return markdown_table(["row", "meaning", "n", "test RMSE", "test MAE", "test R²",
                           "test MAPE %", "train s (mean)", "params total", "trainable",
                           "frozen", "note"], rows)


def write_ablation_md(path: Path, meta: dict[str, Any], table: pd.DataFrame) -> None:
    seeds = int(table.loc[table["kind"] == "arm", "n"].max() or 0)
    out = [f"# Ablation: {meta.get('name', '?')}", "",
           f"- {_backbone_line(str(meta.get('backbone', '?')))}",
           f"- {_data_line(meta)}",
           f"- mean ± std over up to {seeds} seeds (column n = finished seeds), test split; "
           "std is the sample standard deviation (ddof=1) and is omitted when n = 1",
           "- RMSE / MAE in the yield's own units, MAPE in percent; R² < 0 is worse than "
           "predicting the test mean",
           "- reference rows `mean`, `ridge` and `hgb` (gradient boosting) are fitted on the "
           "same train split (ridge alpha and the hgb setting chosen on val) and scored once "
           "on the same test split", "",
           _ablation_markdown_table(table), ""]
    path.write_text("\n".join(out))


# ---------------------------------------------------------------------------------- export
def _plain(value: Any) -> Any:
    """YAML-safe Python values (numpy scalars and NaN would not round-trip)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def select_best(state: ExperimentState, records: dict[str, TrialRecord],
                meta: dict[str, Any]) -> dict[str, Any] | None:
    """The trial to export: `tuner.journal.select_best` (the search's own choice: ended
    normally, best validation value over epochs; never errored, diverged or unfinished
    trials, never a test metric), provided its train_config.yaml is stored."""
    metric, mode = str(meta.get("metric", "val_rmse")), str(meta.get("mode", "min"))
    trial = select_best_trial(state, metric, mode)
    if trial is None:
        return None
    rec = records[trial.tid]
    value, epoch = best_value(trial.history, metric, mode)
    if rec.train_config is None:
        return None
    return {"trial_id": trial.tid, "value": value, "epoch": epoch, "metric": metric,
            "record": rec}


def export_best_config(path: Path, best: dict[str, Any], meta: dict[str, Any],
                       best_test: dict[str, Any] | None) -> None:
    """best_config.yaml: the winner's full TrainConfig + a `provenance:` mapping."""
    rec: TrialRecord = best["record"]
    config = TrainConfig.from_dict(rec.train_config or {}, source=str(rec.trial_dir /
                                                                     TRAIN_CONFIG_FILE))
    data = meta.get("data") or {}
    provenance: dict[str, Any] = {
        "experiment": meta.get("name"),
        "space": meta.get("space"),
        "trial_id": best["trial_id"],
        "metric": {"name": best["metric"], "mode": meta.get("mode", "min"),
                   "value": best["value"], "epoch": best["epoch"], "split": "validation"},
        "data": {"description": data.get("description"), "fingerprint": data.get("fingerprint"),
                 "synthetic": data.get("synthetic"), "paths": data.get("paths")},
        "backbone": config.backbone,
        "versions": meta.get("versions") or {},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if best_test is not None:
        if str(best_test.get("trial_id")) == best["trial_id"]:
            provenance["test"] = {"split": "test", "evaluated": "once, for this configuration",
                                  **(best_test.get("test") or {})}
        else:
            provenance["test_note"] = (f"best_test.json holds trial {best_test.get('trial_id')}"
                                       ", not this one")
    provenance = _plain({k: (None if v is pd.NA else v) for k, v in provenance.items()})
    if provenance["metric"].get("epoch") is pd.NA:
        provenance["metric"]["epoch"] = None
    config.to_yaml(path, provenance=provenance)


# ---------------------------------------------------------------------------------- report
def build_report(experiment_dir: str | Path, *, data_bundle: Any | None = None,
                 echo: Echo = print, progress_echo: Echo | None = None) -> ReportPaths:
    """Rebuild STORAGE/NAME/report/ from what is stored; all files appear together or none.

    `data_bundle` (a timesclip.data.DataBundle) is used for the reference rows; when
    omitted it is rebuilt from search_meta.json and must match the stored data fingerprint.
    `echo` receives one line naming the report and its files, then one line per note (files
    skipped and why); `progress_echo` (default: `echo`) the progress of the slower steps.
    """
    progress_echo = echo if progress_echo is None else progress_echo
    raw = str(experiment_dir)
    if "://" in raw and not raw.startswith("file://"):
        raise UserError(f"{raw}: only local experiment directories can be read; copy it to "
                        "local disk first (e.g. `aws s3 sync`, `gsutil rsync`)")
    raw = raw.removeprefix("file://")
    exp_dir = Path(raw).expanduser().resolve()
    meta = load_meta(exp_dir)
    state = load_state(exp_dir)
    records = load_trials(exp_dir, state)
    by_id = {r.trial_id: r for r in records}
    trials = trials_table(records, meta)
    best_test = _read_json(exp_dir / BEST_TEST_FILE)
    kind = meta.get("kind", "search")
    notes: list[str] = []
    total = int((meta.get("budget") or {}).get("num_samples") or len(records))
    finished = len(state.ended) >= total and not state.unfinished
    progress = {"ended": len(state.ended), "total": total, "finished": finished,
                "wall_seconds": state.wall_seconds, "drivers": len(state.segments),
                "interruptions": state.interruptions,
                "signals": [s.signal or s.how for s in state.segments.values()
                            if s.how != "finished"]}

    ablation, references = None, None
    if kind == "ablation":
        references, reason = reference_results(meta, data_bundle, echo=progress_echo)
        if references is None:
            notes.append(f"reference baselines unavailable: {reason}")
        ablation = ablation_table(trials, references, reason)
        best = None
        notes.append("best_config.yaml not written: an ablation compares fixed arms, it is "
                     "not a search")
    else:
        references = None
        if best_test is not None:  # put the exported config's test score next to baselines
            references, reason = reference_results(meta, data_bundle, echo=progress_echo)
            if references is None:
                notes.append(f"reference baselines unavailable: {reason}")
        best = select_best(state, by_id, meta)
        if not finished:
            notes.append(f"best_config.yaml not written: the search is interrupted "
                         f"({len(state.ended)} of {total} trials finished); continue it with "
                         "--resume")
            best = None
        elif best is None:
            notes.append(f"best_config.yaml not written: no trial ended normally with "
                         f"both a finite {meta.get('metric', 'val_rmse')} and a stored "
                         f"{TRAIN_CONFIG_FILE}")

    final_dir = exp_dir / REPORT_DIR
    tmp_dir = Path(tempfile.mkdtemp(prefix=".report-tmp-", dir=exp_dir))
    try:
        trials.to_csv(tmp_dir / "trials.csv", index=False)
        trials.to_parquet(tmp_dir / "trials.parquet", engine="pyarrow", index=False)
        if best is not None:
            try:
                export_best_config(tmp_dir / "best_config.yaml", best, meta, best_test)
            except ConfigError as exc:
                notes.append(f"best_config.yaml not written: {exc}")
                best = None
        if ablation is not None:
            ablation.to_csv(tmp_dir / "ablation.csv", index=False)
            write_ablation_md(tmp_dir / "ablation.md", meta, ablation)
        progress_echo("report: drawing index.html and its figures ...")
        from tuner.report_html import write_html_report

        write_html_report(tmp_dir, experiment_dir=exp_dir, meta=meta, state=state,
                          trials=trials, best=best, best_test=best_test,
                          references=references, ablation=ablation, notes=notes,
                          progress=progress)
        write_summary(tmp_dir / "summary.md", meta, trials, best, best_test, notes, ablation,
                      references if kind != "ablation" else None, progress=progress,
                      state=state)
        _swap_in(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise

    paths = ReportPaths(
        directory=final_dir, trials_csv=final_dir / "trials.csv",
        trials_parquet=final_dir / "trials.parquet", summary_md=final_dir / "summary.md",
        best_config=final_dir / "best_config.yaml" if best is not None else None,
        ablation_csv=final_dir / "ablation.csv" if ablation is not None else None,
        ablation_md=final_dir / "ablation.md" if ablation is not None else None,
        best_trial_id=best["trial_id"] if best is not None else None, notes=notes,
        index_html=final_dir / "index.html")
    echo(f"report: {final_dir} ({', '.join(p.name for p in paths.files())})")
    for note in notes:
        echo(f"note: {note}")
    return paths


def _swap_in(new_dir: Path, final_dir: Path) -> None:
    """Replace `final_dir` by the finished `new_dir` with renames only.

    At every instant either the old complete report or the new complete one is in place
    (between the two renames the old one sits next to it under a hidden name).
    """
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".report-old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        final_dir.rename(old)
    new_dir.rename(final_dir)
    os.chmod(final_dir, 0o755)  # mkdtemp creates 0700
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------- CLI
def _top_text(path: Path, n: int = 3) -> str:
    trials = pd.read_csv(path, keep_default_na=False, na_values=[""])
    cols = [c for c in ("trial_id", "status", "stopped_by", "epochs_run", "best_val_rmse")
            if c in trials]
    rows = [[fmt(v) for v in row] for row in trials[cols].head(n).itertuples(index=False)]
    return markdown_table(cols, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineErrorParser(
        prog="python -m tuner.results",
        description=(
            "Rebuild the report of a stored search experiment: STORAGE/NAME/report/ with "
            "trials.csv, trials.parquet, summary.md and best_config.yaml (ablation "
            "experiments: ablation.csv and ablation.md instead of best_config.yaml). Works "
            "on finished and interrupted experiments; needs no running Ray cluster."),
        epilog="example: python -m tuner.results ~/ray_results/timesclip-full")
    parser.add_argument("experiment", metavar="STORAGE/NAME",
                        help="the experiment directory (--storage DIR plus --name NAME of "
                             "`python -m tuner.search`); it holds search_meta.json")
    args = parser.parse_args(argv)
    try:
        paths = build_report(args.experiment, echo=lambda _line: None,
                             progress_echo=lambda line: print(line, flush=True))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report written to {paths.directory}:")
    for file in paths.files():
        print(f"  {file}")
    for note in paths.notes:
        print(f"note: {note}")
    print("top trials (validation):")
    print(_top_text(paths.trials_csv))
    return 0


__all__ = ["CONTRACT_COLUMNS", "ReportPaths", "TrialRecord", "ablation_table", "asha_rungs",
           "build_report", "load_meta", "load_trials", "main", "markdown_table",
           "select_best", "trials_table"]


if __name__ == "__main__":
    sys.exit(main())
