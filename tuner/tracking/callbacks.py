"""Tune callbacks of the driver: the journal's start/retry lines, progress, a graceful stop.

- `JournalCallback`: journals where trials start and the infrastructure failures Ray
  retries (each from the trial's last checkpoint).
- `TrialProgress`: one short line per trial event instead of Ray's periodic status tables;
  trials are named by their stable id (t0003), which the report, the trial folders and the
  Optuna study also use; times count from this driver run's start.
- `InterruptStopper`: ends the whole experiment once the driver got SIGINT or SIGTERM, or a
  trial found the storage full (Tune stops every trial; the unfinished ones continue on
  `--resume`).
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback, Stopper

from tuner.layout import TRIAL_ID
from tuner.outcomes import DIVERGED_KEY, REPEAT_KEY, STORAGE_FULL_KEY, StopReason
from tuner.tracking.ledger import Ledger
from tuner.tracking.schedulers import error_text

#: How each stop reason reads in a progress line.
_ENDED_AS = {StopReason.COMPLETED: "finished", StopReason.ASHA: "stopped",
             StopReason.EARLY_STOPPING: "early-stop", StopReason.DIVERGED: "diverged",
             StopReason.ERROR: "error"}
#: Shown beside the search metric in each epoch line, when the trial reports it.
_SECOND_METRICS = ("val_r2", "val_mae")


class JournalCallback(Callback):
    """Journals where trials start and the infrastructure failures Ray retries."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = self.ledger.tid(trial.trial_id)
        if tid is not None:
            self.ledger.record("start", tid=tid, ray_id=trial.trial_id)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = self.ledger.tid(trial.trial_id)
        if tid is None:
            return
        node = getattr(getattr(trial, "temporary_state", None), "location", None)
        self.ledger.record("retry", tid=tid, error=error_text(trial),
                           node=getattr(node, "hostname", None))


class TrialProgress(Callback):
    """Prints trial starts, each reported epoch, and how each trial ended."""

    def __init__(self, ledger: Ledger, max_epochs: int) -> None:
        self.ledger, self.max_epochs = ledger, max_epochs
        self.metric = ledger.metric
        self.started = time.perf_counter()

    def _t(self) -> str:
        return f"[{time.perf_counter() - self.started:7.1f}s]"

    def _id(self, trial: Any) -> str:
        return self.ledger.tid(trial.trial_id) or trial.trial_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        state = self.ledger.trial(trial.trial_id)
        again = f" (continues after epoch {state.epochs_run})" if state and state.epochs_run \
            else ""
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(trial.config.items())
                           if k != TRIAL_ID)
        print(f"{self._t()} start    {self._id(trial)}{again}  {params}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if result.get(REPEAT_KEY):  # an epoch already shown, sent again to end a retry
            return
        if result.get(STORAGE_FULL_KEY):
            print(f"{self._t()} halted   {self._id(trial)}  the storage is full "
                  f"({result[STORAGE_FULL_KEY]}); stopping the search", flush=True)
            return
        if result.get(DIVERGED_KEY):
            print(f"{self._t()} diverged {self._id(trial)}  at epoch {result.get('epoch')}, "
                  f"step {result.get('diverged_step')} (not retried)", flush=True)
            return
        epoch = int(result.get("epoch", 0))
        second = next((m for m in _SECOND_METRICS if m != self.metric and m in result), None)
        extra = f"  {second} {_fmt(result.get(second))}" if second else ""
        print(f"{self._t()} epoch    {self._id(trial)}  {epoch:3d}/{self.max_epochs}  "
              f"{self.metric} {_fmt(result.get(self.metric))}{extra}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        state = self.ledger.trial(trial.trial_id)
        if state is None or not state.ended:
            return
        how = _ENDED_AS.get(state.stopped_by, str(state.stopped_by))
        print(f"{self._t()} {how:8s} {state.tid}  after {state.epochs_run} epochs", flush=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"{self._t()} retry    {self._id(trial)}  (worker failed; continues from its "
              "last checkpoint)", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"{self._t()} ERROR    {self._id(trial)}  (failed for good; see the report's "
              "error column; the search goes on)", flush=True)


class InterruptStopper(Stopper):
    """Ends the whole experiment once the driver got SIGINT or SIGTERM."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.ledger.halted


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


__all__ = ["InterruptStopper", "JournalCallback", "TrialProgress"]
