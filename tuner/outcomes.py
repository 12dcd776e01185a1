"""How a trial ends, what a search measures, and the one place a best is picked.

- `Status` (the report's CONTRACT column `status`) and `StopReason` (`stopped_by`): what a
  trial's end is called in the journal, the tables, the summary, the HTML page and the
  Optuna study's user attributes.
- Metric names and their modes come from `timesclip.metrics` (the trainer reports them);
  `metric_mode` is how the search reads them.
- `best_value` (a trial's best epoch) and `select_best` (the experiment's best trial) are
  THE notion of "best": the export, the test scoring, the tables, Optuna and the report's
  running best all call them. They compare with `timesclip.metrics.better`, the same
  comparison the trainer uses for its best checkpoint, so the epoch a search selects is
  the epoch whose weights `best.pt` holds.
- `classify_end` and `optuna_state` map a trial's journaled history to its end, and that end
  to the state Optuna is told, once for the live search and for a rebuilt study alike.

Pure Python: no Ray, no Optuna (the study module turns `optuna_state`'s name into Optuna's
enum), so the journal, the report and the driver all import it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any, Protocol, TypeVar

from timesclip.errors import ConfigError
from timesclip.metrics import EPOCH_METRICS, METRIC_MODES, better, is_cv_key


class Status(str, Enum):
    """A trial's status (CONTRACT column `status` of trials.csv)."""

    TERMINATED = "TERMINATED"  # ended normally: completed, early-stopped or stopped by ASHA
    DIVERGED = "DIVERGED"  # non-finite loss: a property of its configuration, never retried
    ERROR = "ERROR"  # an infrastructure failure that exhausted --max-failures
    RUNNING = "RUNNING"  # unfinished: started
    PENDING = "PENDING"  # unfinished: never started

    def __str__(self) -> str:
        return self.value


#: Statuses of a trial that has ended (the others are unfinished).
ENDED = (Status.TERMINATED, Status.DIVERGED, Status.ERROR)
UNFINISHED = (Status.RUNNING, Status.PENDING)


class StopReason(str, Enum):
    """What ended a trial (column `stopped_by`)."""

    COMPLETED = "completed"  # ran max_epochs
    EARLY_STOPPING = "early_stopping"  # the trainer's own early stopping
    ASHA = "asha"  # stopped at a rung by ASHA
    DIVERGED = "diverged"
    ERROR = "error"
    UNFINISHED = "unfinished"

    def __str__(self) -> str:
        return self.value


class Proposer(str, Enum):
    """Who proposed a trial's configuration (column `proposed_by`)."""

    MODEL = "model"  # TPE's density model
    STARTUP = "startup"  # TPE's random start-up (fewer finished trials than startup_trials)
    RANDOM = "random"  # --searcher random
    GRID = "grid"  # the ablation grid

    def __str__(self) -> str:
        return self.value


#: The scheduler's decision on a reported epoch, as journaled.
CONTINUE, STOP = "continue", "stop"

# ----------------------------------------------------------------------------- results
#: Per-epoch values a trial reports and the journal keeps: the trainer's CONTRACT metric
#: names (`timesclip.metrics`), its extras, and Ray's timing.
KEPT_METRICS = (*EPOCH_METRICS, "val_mse", "epoch_seconds", "params_total",
                "params_trainable", "params_frozen", "time_this_iter_s")


def kept_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """What the journal keeps of one reported epoch: KEPT_METRICS, and a cross-validated
    trial's fold values and fold count (`timesclip.cv.is_cv_key`)."""
    kept = {k: result[k] for k in KEPT_METRICS if k in result}
    return {**kept, **{k: result[k] for k in sorted(result) if is_cv_key(k)}}
#: The result key naming the checkpoint folder of a reported epoch (journaled as `ckpt`).
CKPT_KEY = "ckpt"
#: The trainer's flag on the last epoch its fit() trains (budget spent or early stopping).
FIT_ENDS_KEY = "fit_ends"
#: Marks a result that only repeats an already journaled epoch (a retry that had nothing
#: left to train reports it so Ray can close the trial; it is not journaled).
REPEAT_KEY = "repeat"
#: A result that says the trial's storage is full (ENOSPC): not an end, not journaled; the
#: driver stops the search and --resume continues the trial.
STORAGE_FULL_KEY = "storage_full"
#: A result that reports a non-finite loss instead of an epoch (and its details).
DIVERGED_KEY = "diverged"
DIVERGED_DETAILS = ("diverged_epoch", "diverged_step", "diverged_loss", "diverged_message")


def metric_mode(metric: str, where: str = "metric") -> str:
    """The mode ("min" | "max") of a metric a search can optimise; ConfigError otherwise."""
    if metric not in METRIC_MODES:
        raise ConfigError(f"{where}: unknown metric {metric!r}; one of "
                          f"{', '.join(METRIC_MODES)}")
    return METRIC_MODES[metric]


# ----------------------------------------------------------------------------- best
class _Trial(Protocol):
    status: Any
    history: Mapping[int, Mapping[str, Any]]


_T = TypeVar("_T", bound=_Trial)


def best_value(history: Mapping[int, Mapping[str, Any]], metric: str, mode: str
               ) -> tuple[float, int | None]:
    """The best finite value of `metric` over a trial's reported epochs, and its epoch (the
    earliest on a tie); (nan, None) when no epoch has a finite value.

    This is THE value of a trial: what selection, the tables, the summary and Optuna use.
    """
    best: float | None = None
    best_epoch = None
    for epoch in sorted(history):
        value = history[epoch].get(metric)
        if better(value, best, mode):
            best, best_epoch = float(value), int(epoch)
    return (math.nan if best is None else best), best_epoch


def select_best(trials: Iterable[_T], metric: str, mode: str) -> _T | None:
    """The one notion of "best trial": among trials that ended normally (TERMINATED:
    completed, early-stopped or stopped by ASHA; never errored, diverged or unfinished
    ones), the best `best_value`. Ties go to the earlier trial. Test metrics are never
    looked at."""
    chosen, chosen_value = None, None
    for trial in trials:
        if trial.status != Status.TERMINATED:
            continue
        value, _ = best_value(trial.history, metric, mode)
        if better(value, chosen_value, mode):
            chosen, chosen_value = trial, value
    return chosen


# ----------------------------------------------------------------------------- ends
def classify_end(trial: Any, max_epochs: int, *, error: bool) -> tuple[Status, StopReason]:
    """(status, stopped_by) of a trial that Ray reports complete."""
    if error:
        return Status.ERROR, StopReason.ERROR
    if trial.diverged:
        return Status.DIVERGED, StopReason.DIVERGED
    last_decision = trial.decisions[-1][1] if trial.decisions else CONTINUE
    epochs_run = max(trial.history) if trial.history else 0
    if epochs_run >= max_epochs:
        return Status.TERMINATED, StopReason.COMPLETED
    if last_decision == STOP:
        return Status.TERMINATED, StopReason.ASHA
    return Status.TERMINATED, StopReason.EARLY_STOPPING


def end_decided(trial: Any) -> bool:
    """Whether an unfinished trial's end was decided but not journaled (the driver died in
    between): its last journaled report made the scheduler stop it, it diverged, or that
    report was its fit()'s last epoch (the epoch budget spent or early stopping). Such a
    trial is closed at --resume without running it again: a re-run would train nothing and
    report nothing."""
    if trial.status in ENDED:
        return False
    if trial.diverged or trial.fit_ends:
        return True
    return bool(trial.decisions) and trial.decisions[-1][1] == STOP


def optuna_state(status: str, stopped_by: str, value: Any,
                 intermediate: Mapping[int, float]) -> tuple[str, float | None]:
    """The Optuna trial state (by name: COMPLETE | PRUNED | FAIL) and value of an ended trial.

    COMPLETE with its best value (the number selection uses); PRUNED for a trial ASHA
    stopped or that diverged (Optuna ranks pruned trials by their last reported epoch, below
    completed ones); FAIL for an infrastructure error (the configuration itself says
    nothing) or a trial without a finite value."""
    if status == Status.ERROR:
        return "FAIL", None
    if status == Status.DIVERGED or stopped_by == StopReason.ASHA:
        return "PRUNED", (intermediate[max(intermediate)] if intermediate else None)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return "COMPLETE", float(value)
    return "FAIL", None


__all__ = ["CKPT_KEY", "CONTINUE", "DIVERGED_DETAILS", "DIVERGED_KEY", "ENDED", "FIT_ENDS_KEY",
           "KEPT_METRICS", "METRIC_MODES", "REPEAT_KEY", "STOP", "STORAGE_FULL_KEY",
           "UNFINISHED", "Proposer", "Status", "StopReason", "best_value", "classify_end",
           "end_decided", "kept_metrics", "metric_mode", "optuna_state", "select_best"]
