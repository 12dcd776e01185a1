"""Turn a stored search experiment into a report: trials table, summary, best config, ablation.

`python -m tuner.results STORAGE/NAME` (or `build_report(path)`) reads only what is on disk:
Ray's experiment state (through `ray.tune.ExperimentAnalysis`, no running cluster needed),
each trial's `result.json` / `train_config.yaml` / `final.json` / `error.txt`, and the
`search_meta.json` that `tuner.search` writes before it starts. It therefore works just as
well for an experiment that was interrupted half-way (trials still RUNNING or PENDING in the
state file, trials without results, no `best_test.json`).

Selection uses validation metrics only; the test split appears solely where it was evaluated
once for an exported configuration (`best_test.json`) or for the fixed ablation arms.

Output (CONTRACT), written all-or-nothing into STORAGE/NAME/report/:
trials.csv, trials.parquet, summary.md, best_config.yaml; the ablation kind adds
ablation.csv and ablation.md (and skips best_config.yaml: its arms are not a search).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
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

META_FILE = "search_meta.json"
BEST_TEST_FILE = "best_test.json"
REPORT_DIR = "report"
# Files a trial writes next to Ray's own (see tuner/trainable.py).
TRAIN_CONFIG_FILE = "train_config.yaml"
FINAL_FILE = "final.json"
RESULT_FILE = "result.json"
ERROR_FILE = "error.txt"

#: Columns every trials table has, in this order (CONTRACT) — followed by extras and config.*.
CONTRACT_COLUMNS = ["trial_id", "status", "epochs_run", "best_val_rmse", "last_val_rmse",
                    "wall_seconds", "error"]
#: Further columns, after the CONTRACT ones and before config.<field>.
EXTRA_COLUMNS = ["stopped_by", "best_epoch", "best_val_mae", "best_val_r2", "best_val_mape",
                 "best_val_loss", "test_rmse", "test_mae", "test_r2", "test_mape",
                 "params_total", "params_trainable", "params_frozen", "train_seconds",
                 "backbone", "num_failures", "trial_dir"]
METRICS = ("rmse", "mae", "r2", "mape")
ABLATION_SWITCHES = ("use_vision", "use_contrastive", "use_variate_selection",
                     "language_backbone")
UNFINISHED = ("RUNNING", "PENDING", "PAUSED")

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

    def files(self) -> list[Path]:
        """The files actually written, in a stable order."""
        candidates = [self.trials_csv, self.trials_parquet, self.summary_md, self.best_config,
                      self.ablation_csv, self.ablation_md]
        return [p for p in candidates if p is not None]


@dataclass
class TrialRecord:
    """Everything stored about one trial, read once and then tabulated."""

    trial_id: str
    status: str  # Ray's trial status, RUNNING kept as written in the state file
    trial_dir: Path
    params: dict[str, Any]  # Ray's trial config (the sampled values / ablation arm + seed)
    history: pd.DataFrame  # one row per reported epoch (deduplicated, sorted by epoch)
    train_config: dict[str, Any] | None  # train_config.yaml, None if the trial never started
    final: dict[str, Any] | None  # final.json, None unless fit() returned
    error: str  # short error line ("" unless status is ERROR)
    num_failures: int
    wall_seconds: float  # Ray's time_total_s of the last report


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


def read_history(path: Path) -> pd.DataFrame:
    """Ray's result.json (one JSON object per line) as a frame, one row per epoch.

    A line cut off by an interrupted write is skipped. When Ray restarted a trial from a
    checkpoint the same epoch can be reported twice: the later report wins.
    """
    rows = []
    try:
        text = path.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append({k: v for k, v in row.items() if not isinstance(v, (dict, list))})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    key = "epoch" if "epoch" in frame else "training_iteration"
    if key in frame:
        frame = frame.drop_duplicates(subset=key, keep="last").sort_values(key, kind="stable")
    return frame.reset_index(drop=True)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# An exception line as Python prints it: starts in column 0, dotted name, then ": msg" or EOL.
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s(.*))?$")
_EXC_NAME_HINT = re.compile(r"(Error|Exception|Interrupt|Exit|Failure|Warning)$")
_MAX_ERROR = 300


def summarize_error(text: str) -> str:
    """One short line from Ray's error.txt: the exception(s) with their messages.

    error.txt holds "Failure # N (occurred at ...)" blocks, each a Ray-wrapped traceback.
    The user's exception is the first exception line of the last block; if Ray itself then
    failed while handling it (e.g. copying an exception whose __init__ takes extra arguments
    fails with TypeError), the last exception line differs and is appended after " -> ".
    """
    text = _ANSI.sub("", text)
    blocks = re.split(r"^Failure # \d+.*$", text, flags=re.MULTILINE)
    block = next((b for b in reversed(blocks) if b.strip()), "")
    lines = block.splitlines()
    found: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _EXC_LINE.match(line)
        name = match.group(1) if match else ""
        if match and _EXC_NAME_HINT.search(name) and not name.endswith("StartTraceback"):
            message = [match.group(2) or ""]
            # A multi-line message continues in column 0 until a blank line.
            j = i + 1
            while j < len(lines) and lines[j].strip() and not lines[j].startswith(" "):
                if lines[j].startswith(("The above exception", "During handling", "ray::")):
                    break
                message.append(lines[j].strip())
                j += 1
            short = name.rsplit(".", 1)[-1]
            joined = " ".join(m for m in message if m).strip()
            found.append(f"{short}: {joined}" if joined else short)
            i = j
            continue
        i += 1
    if not found:
        first = next((ln.strip() for ln in lines if ln.strip() and not ln.startswith(" ")), "")
        return _clip(first or "failed (error.txt has no exception line)")
    summary = found[0] if found[0] == found[-1] else f"{found[0]} -> {found[-1]}"
    return _clip(summary)


def _clip(text: str, limit: int = _MAX_ERROR) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _raw_statuses(experiment_dir: Path) -> dict[str, str]:
    """trial_id -> status exactly as written in the newest experiment_state file.

    Ray's loader turns RUNNING into PENDING (ready to resume); for a report of an
    interrupted search the stored RUNNING is the truth, so it is read here directly.
    """
    states = sorted(experiment_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
        out = {}
        for entry in data.get("trial_data", []):
            state = json.loads(entry[0])
            out[str(state["trial_id"])] = str(state["status"])
        return out
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return {}


def load_trials(experiment_dir: Path) -> list[TrialRecord]:
    """Every trial of Ray's experiment state, with the files it left in its directory."""
    from ray.tune import ExperimentAnalysis  # heavy import, only when reading trials

    # Ray warns when a trial's result.json is missing (normal for an interrupted search);
    # the files are read and judged below, so its warning would only be noise here.
    ea_logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = ea_logger.level
    ea_logger.setLevel(logging.ERROR)
    try:
        analysis = ExperimentAnalysis(str(experiment_dir))
    except ValueError as exc:
        if "experiment snapshot" not in str(exc) and "No experiment" not in str(exc):
            raise
        raise UserError(f"{experiment_dir} has no Ray experiment state yet (the search was "
                        "stopped before its first trial was recorded): rerun tuner.search "
                        "with --resume or start it again") from None
    finally:
        ea_logger.setLevel(level)
    raw = _raw_statuses(experiment_dir)
    records = []
    for trial in analysis.trials:
        # trial.path is the storage copy (re-pointed by Ray to where the experiment lives
        # now); trial.local_path would need ray.init(), so it is never touched here.
        trial_dir = Path(trial.path)
        status = raw.get(trial.trial_id, str(trial.status))
        history = read_history(trial_dir / RESULT_FILE)
        error = ""
        if status == "ERROR":
            text = trial.get_error() if trial.run_metadata.error_filename else None
            if text is None and (trial_dir / ERROR_FILE).is_file():
                text = (trial_dir / ERROR_FILE).read_text(errors="replace")
            error = summarize_error(text) if text else "failed (no error.txt stored)"
        wall = float("nan")
        if "time_total_s" in history:
            wall = float(history["time_total_s"].iloc[-1])
        records.append(TrialRecord(
            trial_id=str(trial.trial_id), status=status, trial_dir=trial_dir,
            params=dict(trial.config or {}), history=history,
            train_config=_read_yaml(trial_dir / TRAIN_CONFIG_FILE),
            final=_read_json(trial_dir / FINAL_FILE), error=error,
            num_failures=int(trial.run_metadata.num_failures or 0), wall_seconds=wall))
    return records


# ---------------------------------------------------------------------------------- tables
def _num(value: Any) -> float:
    """A float or NaN (None, strings and non-finite values all become NaN)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out if math.isfinite(out) else float("nan")


def _config_columns(meta: dict[str, Any]) -> list[str]:
    names = [str(n) for n in meta.get("sampled_names") or []]
    if meta.get("kind") == "ablation":
        for extra in ("ablation", "seed", *ABLATION_SWITCHES):
            if extra not in names:
                names.append(extra)
    return names


def _config_value(record: TrialRecord, name: str) -> Any:
    """The value a trial ran with: its resolved TrainConfig first, the sampled params second."""
    fields = set(TrainConfig.field_names())
    if name in fields and record.train_config and name in record.train_config:
        return record.train_config[name]
    return record.params.get(name)


def _stopped_by(record: TrialRecord, epochs_run: int, max_epochs: int | None) -> str:
    """Why a trial ended: asha | early_stopping | completed | error | unfinished | no_results."""
    if record.status == "ERROR":
        return "error"
    if record.status in UNFINISHED:
        return "unfinished"
    if record.final is not None:
        return "early_stopping" if record.final.get("stopped_early") else "completed"
    if epochs_run == 0:
        return "no_results"
    # ASHA stops a trial at max_t with the same STOP it uses for weak trials, before the
    # trainable can write final.json: reaching max_epochs therefore still counts as completed.
    if max_epochs is not None and epochs_run >= max_epochs:
        return "completed"
    return "asha"


def _epochs_reported(history: pd.DataFrame) -> int:
    """Highest epoch reported (Ray's training_iteration when no epoch field is present)."""
    for key in ("epoch", "training_iteration"):
        if key in history:
            top = pd.to_numeric(history[key], errors="coerce").max()
            if pd.notna(top):
                return int(top)
    return len(history)


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
    rows = []
    for rec in records:
        hist = rec.history
        epochs_run = _epochs_reported(hist)
        final = rec.final or {}
        if epochs_run == 0 and final.get("epochs_run"):
            epochs_run = int(final["epochs_run"])
        best = _best_row(hist, metric, mode)
        row: dict[str, Any] = {
            "trial_id": rec.trial_id, "status": rec.status, "epochs_run": epochs_run,
            "best_val_rmse": float("nan"), "last_val_rmse": float("nan"),
            "wall_seconds": rec.wall_seconds, "error": rec.error,
            "stopped_by": _stopped_by(rec, epochs_run, max_epochs),
            "best_epoch": pd.NA,
        }
        for name in ("val_rmse", "val_mae", "val_r2", "val_mape", "val_loss"):
            row[f"best_{name}"] = float("nan")
        if best is not None:
            for name in ("val_rmse", "val_mae", "val_r2", "val_mape", "val_loss"):
                if name in hist:
                    row[f"best_{name}"] = _num(hist[name].iloc[best])
            if "epoch" in hist:
                row["best_epoch"] = int(hist["epoch"].iloc[best])
        elif final.get("best_val_rmse") is not None:  # results missing, final.json present
            row["best_val_rmse"] = _num(final["best_val_rmse"])
            row["best_epoch"] = final.get("best_epoch", pd.NA)
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
            row[f"params_{name}"] = int(value) if value is not None else pd.NA
        row["train_seconds"] = _num(final.get("train_seconds"))
        row["backbone"] = str((rec.train_config or {}).get("backbone")
                              or final.get("backbone") or meta.get("backbone") or "")
        row["num_failures"] = rec.num_failures
        row["trial_dir"] = rec.trial_dir.name
        for name in config_names:
            row[f"config.{name}"] = _scalar(_config_value(rec, name))
        rows.append(row)

    extras = list(EXTRA_COLUMNS)
    if f"best_{metric}" not in CONTRACT_COLUMNS + extras:
        extras.insert(extras.index("best_val_loss") + 1, f"best_{metric}")
    columns = CONTRACT_COLUMNS + extras + [f"config.{n}" for n in config_names]
    frame = _tidy_types(pd.DataFrame(rows, columns=columns))
    sort_col = f"best_{metric}" if f"best_{metric}" in frame else "best_val_rmse"
    key = pd.to_numeric(frame[sort_col], errors="coerce").astype(float)
    frame = frame.assign(_key=key if mode == "min" else -key, _id=frame["trial_id"].astype(str))
    frame = frame.sort_values(["_key", "_id"], na_position="last", kind="stable")
    return frame.drop(columns=["_key", "_id"]).reset_index(drop=True)


def _tidy_types(frame: pd.DataFrame) -> pd.DataFrame:
    """Stable dtypes so CSV and Parquet agree: nullable ints, one Python type per column."""
    for col in ("best_epoch", "params_total", "params_trainable", "params_frozen"):
        if col in frame:
            frame[col] = pd.array(frame[col].tolist(), dtype="Int64")
    for col in ("epochs_run", "num_failures"):
        if col in frame:
            frame[col] = frame[col].astype("int64")
    for col in ("trial_id", "status", "error", "stopped_by", "backbone", "trial_dir"):
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
    for name in ("mean", "ridge"):
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
}


def reference_results(meta: dict[str, Any],
                      data_bundle: Any | None) -> tuple[list[Any] | None, str]:
    """Mean/ridge baselines on the experiment's split, or (None, reason) when unavailable."""
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
        return reference_baselines(data_bundle), ""
    except (ValueError, np.linalg.LinAlgError) as exc:
        return None, f"baseline fit failed ({_clip(str(exc), 120)})"


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
                  references: list[Any] | None = None) -> None:
    """summary.md: what ran, on which backbone and data, how it ended, and what won."""
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
    unfinished = int(trials["status"].isin(UNFINISHED).sum())
    if unfinished:
        out += [f"**Interrupted:** {unfinished} trial(s) never finished; resume with "
                "`python -m tuner.search ... --resume` (same --storage and --name).", ""]

    out += ["## ASHA rungs", "",
            "How many trials ended after each number of epochs (rungs = grace_period x "
            "reduction_factor^k, capped at max_epochs).", "",
            _rung_table(trials, budget), ""]

    out += [f"## Top {min(5, len(trials))} trials (validation {metric})", ""]
    top = trials.head(5)
    out.append(markdown_table(
        ["rank", "trial_id", "best_val_rmse", "best epoch", "epochs", "ended by", "params"],
        [[i + 1, r["trial_id"], fmt(r["best_val_rmse"]), fmt(r["best_epoch"]),
          r["epochs_run"], r["stopped_by"], _key_params(r, names)]
         for i, (_, r) in enumerate(top.iterrows())]))
    out.append("")

    failed = trials[trials["status"] == "ERROR"]
    out += [f"## Failures ({len(failed)})", ""]
    out += [f"- `{r['trial_id']}` after {r['epochs_run']} epoch(s): {r['error']}"
            for _, r in failed.iterrows()] or ["none"]
    out.append("")

    if kind == "ablation":
        out += ["## Ablation", "", "See ablation.md / ablation.csv (test split, mean ± std "
                "over seeds, with the mean and ridge reference rows). best_config.yaml is not "
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
           "- reference rows `mean` and `ridge` are fitted on the same train split (ridge "
           "alpha chosen on val) and scored once on the same test split", "",
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


def select_best(trials: pd.DataFrame, records: dict[str, TrialRecord],
                meta: dict[str, Any]) -> dict[str, Any] | None:
    """Best trial with a finite metric and a stored train_config.yaml (table is sorted).

    Trials that raised are skipped: a configuration that diverged (non-finite loss) or
    crashed is not one to recommend, however good its last validation score looked.
    """
    metric = str(meta.get("metric", "val_rmse"))
    col = f"best_{metric}" if f"best_{metric}" in trials else "best_val_rmse"
    for _, row in trials.iterrows():
        value = _num(row[col])
        rec = records[row["trial_id"]]
        if math.isfinite(value) and rec.train_config is not None and rec.status != "ERROR":
            return {"trial_id": row["trial_id"], "value": value, "epoch": row["best_epoch"],
                    "metric": metric, "record": rec}
    return None


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
                 echo: Echo = print) -> ReportPaths:
    """Rebuild STORAGE/NAME/report/ from what is stored; all files appear together or none.

    `data_bundle` (a timesclip.data.DataBundle) is used for the ablation reference rows; when
    omitted it is rebuilt from search_meta.json and must match the stored data fingerprint.
    `echo` receives one line naming the report and its files, then one line per note (files
    skipped and why).
    """
    raw = str(experiment_dir)
    if "://" in raw and not raw.startswith("file://"):
        raise UserError(f"{raw}: only local experiment directories can be read; copy it to "
                        "local disk first (e.g. `aws s3 sync`, `gsutil rsync`)")
    raw = raw.removeprefix("file://")
    exp_dir = Path(raw).expanduser().resolve()  # Ray's reader needs an absolute path
    meta = load_meta(exp_dir)
    records = load_trials(exp_dir)
    by_id = {r.trial_id: r for r in records}
    trials = trials_table(records, meta)
    best_test = _read_json(exp_dir / BEST_TEST_FILE)
    kind = meta.get("kind", "search")
    notes: list[str] = []

    ablation, references = None, None
    if kind == "ablation":
        references, reason = reference_results(meta, data_bundle)
        if references is None:
            notes.append(f"reference baselines unavailable: {reason}")
        ablation = ablation_table(trials, references, reason)
        best = None
        notes.append("best_config.yaml not written: an ablation compares fixed arms, it is "
                     "not a search")
    else:
        references = None
        if best_test is not None:  # put the exported config's test score next to baselines
            references, reason = reference_results(meta, data_bundle)
            if references is None:
                notes.append(f"reference baselines unavailable: {reason}")
        best = select_best(trials, by_id, meta)
        if best is None:
            notes.append(f"best_config.yaml not written: no trial without an error has "
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
        write_summary(tmp_dir / "summary.md", meta, trials, best, best_test, notes, ablation,
                      references if kind != "ablation" else None)
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
        best_trial_id=best["trial_id"] if best is not None else None, notes=notes)
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
        paths = build_report(args.experiment, echo=lambda _line: None)
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
           "read_history", "summarize_error", "trials_table"]


if __name__ == "__main__":
    sys.exit(main())
