"""Reading a stored experiment: what the report is built from, plain files only.

`read_experiment(path)` reads `search_meta.json`, the journal (`journal.jsonl`, replayed by
`tuner.journal.load_state`), each trial's `train_config.yaml` / `final.json` and
`best_test.json`. JSON and `yaml.safe_load` only, never a pickle (Ray's own state files in
`trials/` are not opened), so a copied or downloaded experiment folder is safe to report on
and no Ray is needed. An interrupted experiment reads just as well: trials still unfinished,
no `best_test.json`.

Folder names come from the journal and are data: every trial folder is resolved through
`ExperimentLayout.trial_dir`, which refuses a name that leaves the experiment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from timesclip.errors import UserError
from timesclip.metrics import TASK_METRICS
from tuner.journal import ExperimentState, TrialState, load_state
from tuner.layout import (
    BEST_TEST_FILE,
    FINAL_FILE,
    JOURNAL_FILE,
    META_FILE,
    TRAIN_CONFIG_FILE,
    ExperimentLayout,
)
from tuner.outcomes import Status, StopReason


@dataclass
class TrialRecord:
    """Everything stored about one trial, read once and then tabulated."""

    trial_id: str
    status: str  # a tuner.outcomes.Status value
    trial_dir: Path
    params: dict[str, Any]  # the sampled values (ablation: arm + seed), as journaled
    history: pd.DataFrame  # one row per journaled epoch, sorted by epoch
    train_config: dict[str, Any] | None  # train_config.yaml, None if the trial never started
    final: dict[str, Any] | None  # final.json, None unless fit() returned
    error: str  # short error line ("" unless status is ERROR or DIVERGED)
    num_failures: int  # infrastructure failures Ray retried
    wall_seconds: float  # summed over driver runs
    stopped_by: str = StopReason.UNFINISHED.value
    node: str = ""
    retries: list[str] = field(default_factory=list)
    state: TrialState | None = None
    proposed_by: str = ""  # a tuner.outcomes.Proposer value ("" in an earlier version's)

    @property
    def epochs(self) -> dict[int, dict[str, Any]]:
        """{epoch: metrics} as journaled: what `tuner.outcomes.best_value` reads."""
        if self.state is not None:
            return self.state.history
        if "epoch" not in self.history:
            return {}
        return {int(row["epoch"]): row for row in self.history.to_dict("records")}

    @property
    def epochs_run(self) -> int:
        return self.state.epochs_run if self.state is not None else len(self.history)


@dataclass
class Progress:
    """How far the search got: what the summary's header and the page's banner say."""

    ended: int
    total: int
    finished: bool  # every trial of the budget ended: only then is a best config exported
    wall_seconds: float  # summed over driver runs
    drivers: int
    interruptions: int
    signals: list[str] = field(default_factory=list)  # how each interrupted run ended


def task_of(meta: dict[str, Any]) -> str:
    """The experiment's task (yield | forecast); experiments of earlier versions: yield."""
    return str(meta.get("task") or (meta.get("base_config") or {}).get("task") or "yield")


def metrics_of(meta: dict[str, Any]) -> tuple[str, ...]:
    """The task's split metrics, in table order (timesclip.metrics.TASK_METRICS)."""
    return TASK_METRICS[task_of(meta)]


class MetaFields:
    """What search_meta.json says an experiment is, with the defaults of earlier versions."""

    meta: dict[str, Any]

    @property
    def task(self) -> str:
        return task_of(self.meta)

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "search"))

    @property
    def metric(self) -> str:
        return str(self.meta.get("metric", "val_rmse"))

    @property
    def mode(self) -> str:
        return str(self.meta.get("mode", "min"))


@dataclass
class Experiment(MetaFields):
    """A stored experiment as the report sees it."""

    layout: ExperimentLayout
    meta: dict[str, Any]
    state: ExperimentState
    records: list[TrialRecord]
    best_test: dict[str, Any] | None  # best_test.json: the exported config's test scores


    @property
    def progress(self) -> Progress:
        state = self.state
        total = int((self.meta.get("budget") or {}).get("num_samples") or len(self.records))
        return Progress(
            ended=len(state.ended), total=total,
            finished=len(state.ended) >= total and not state.unfinished,
            wall_seconds=state.wall_seconds, drivers=len(state.segments),
            interruptions=state.interruptions,
            signals=[str(s.signal or s.how) for s in state.segments.values()
                     if s.how != "finished"])


# ---------------------------------------------------------------------------------- files
def experiment_root(path: str | Path) -> Path:
    """The local folder of an experiment given as a path or a file:// URI."""
    raw = str(path)
    if "://" in raw and not raw.startswith("file://"):
        raise UserError(f"{raw}: only local experiment directories can be read; copy it to "
                        "local disk first (e.g. `aws s3 sync`, `gsutil rsync`)")
    return Path(raw.removeprefix("file://")).expanduser().resolve()


def load_meta(experiment_dir: str | Path) -> dict[str, Any]:
    """search_meta.json of an experiment, or a one-line UserError saying what to pass."""
    experiment_dir = Path(experiment_dir)
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


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when absent or half-written (interrupted run)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_yaml(path: Path) -> dict[str, Any] | None:
    """A YAML mapping from `path` (safe_load: plain data only), or None."""
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None


def history_frame(trial: TrialState) -> pd.DataFrame:
    """The journaled epochs of one trial, one row per epoch, sorted."""
    rows = [{**metrics, "epoch": epoch} for epoch, metrics in sorted(trial.history.items())]
    return pd.DataFrame(rows)


def load_trials(experiment_dir: str | Path, state: ExperimentState | None = None
                ) -> list[TrialRecord]:
    """Every trial of the journal, with the files it left in its folder."""
    layout = ExperimentLayout.at(experiment_dir)
    if state is None:
        state = load_state(layout.root)
    if not state.trials and not layout.journal.exists():
        raise UserError(f"{layout.root} has no {JOURNAL_FILE} yet (the search was stopped "
                        "before its first trial was recorded): rerun tuner.search with "
                        "--resume or start it again")
    records = []
    for trial in state.trials.values():
        trial_dir = layout.trial_dir(trial.dirname, JOURNAL_FILE)
        end = trial.end or {}
        failed = trial.status in (Status.ERROR, Status.DIVERGED)
        records.append(TrialRecord(
            trial_id=trial.tid, status=str(trial.status), trial_dir=trial_dir,
            params=dict(trial.params), history=history_frame(trial),
            train_config=read_yaml(trial_dir / TRAIN_CONFIG_FILE),
            final=read_json(trial_dir / FINAL_FILE),
            error=str(end.get("error") or "") if failed else "",
            num_failures=len(trial.retries), wall_seconds=trial.wall_seconds,
            stopped_by=str(trial.stopped_by), node=trial.node or "",
            retries=[r.get("error", "") for r in trial.retries], state=trial,
            proposed_by=str(trial.proposed_by or "")))
    return records


def read_experiment(path: str | Path) -> Experiment:
    """Everything the report needs from an experiment folder (a UserError when it is not
    one, or when its journal names a folder outside it)."""
    layout = ExperimentLayout.at(experiment_root(path))
    meta = load_meta(layout.root)
    state = load_state(layout.root)
    records = load_trials(layout.root, state)
    return Experiment(layout=layout, meta=meta, state=state, records=records,
                      best_test=checked_best_test(layout, read_json(layout.best_test)))


def checked_best_test(layout: ExperimentLayout, best_test: dict[str, Any] | None
                      ) -> dict[str, Any] | None:
    """best_test.json, after checking that every file it names is inside the experiment
    (UnsafePathError otherwise: the report stops in one line, it never reads elsewhere)."""
    if best_test is None:
        return None
    for key in ("predictions", "attention", "checkpoint", "examples", "horizon"):
        if best_test.get(key):
            layout.inside(str(best_test[key]), f"{BEST_TEST_FILE} ({key})")
    return best_test


__all__ = ["Experiment", "MetaFields", "Progress", "TrialRecord", "experiment_root",
           "history_frame", "load_meta", "load_trials", "metrics_of", "read_experiment",
           "read_json", "read_yaml", "task_of"]
