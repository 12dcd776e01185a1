"""One short line per trial event instead of Ray's periodic status tables."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from tuner.journal import REPEAT_KEY


class TrialProgress(Callback):
    """Prints trial starts, each reported epoch, and how each trial ended.

    Trials are named by their stable id (t0003), which the report, the trial folders and
    the Optuna study also use; times count from this driver run's start."""

    def __init__(self, ledger: Any, max_epochs: int) -> None:
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
                           if k != "trial_id")
        print(f"{self._t()} start    {self._id(trial)}{again}  {params}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if result.get(REPEAT_KEY):  # an epoch already shown, sent again to end a retry
            return
        if result.get("diverged"):
            print(f"{self._t()} diverged {self._id(trial)}  at epoch {result.get('epoch')}, "
                  f"step {result.get('diverged_step')} (not retried)", flush=True)
            return
        epoch = int(result.get("epoch", 0))
        print(f"{self._t()} epoch    {self._id(trial)}  {epoch:3d}/{self.max_epochs}  "
              f"{self.metric} {_fmt(result.get(self.metric))}  "
              f"val_r2 {_fmt(result.get('val_r2'))}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        state = self.ledger.trial(trial.trial_id)
        if state is None or not state.ended:
            return
        how = {"completed": "finished", "asha": "stopped", "early_stopping": "early-stop",
               "diverged": "diverged"}.get(state.stopped_by, state.stopped_by)
        print(f"{self._t()} {how:8s} {state.tid}  after {state.epochs_run} epochs", flush=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"{self._t()} retry    {self._id(trial)}  (worker failed; continues from its "
              "last checkpoint)", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"{self._t()} ERROR    {self._id(trial)}  (failed for good; see the report's "
              "error column; the search goes on)", flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
