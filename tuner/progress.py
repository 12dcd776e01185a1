"""One short line per trial event instead of Ray's periodic status tables."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback


class TrialProgress(Callback):
    """Prints trial starts, each reported epoch, and how each trial ended."""

    def __init__(self, metric: str, max_epochs: int) -> None:
        self.metric, self.max_epochs = metric, max_epochs
        self.started = time.perf_counter()
        self.last_epoch: dict[str, int] = {}

    def _t(self) -> str:
        return f"[{time.perf_counter() - self.started:7.1f}s]"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(trial.config.items()))
        print(f"{self._t()} start    {trial.trial_id}  {params}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        epoch = int(result.get("epoch", 0))
        self.last_epoch[trial.trial_id] = epoch
        value = result.get(self.metric)
        print(f"{self._t()} epoch    {trial.trial_id}  {epoch:3d}/{self.max_epochs}  "
              f"{self.metric} {_fmt(value)}  val_r2 {_fmt(result.get('val_r2'))}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epoch = self.last_epoch.get(trial.trial_id, 0)
        how = "finished" if epoch >= self.max_epochs else "stopped"
        print(f"{self._t()} {how:8s} {trial.trial_id}  after {epoch} epochs", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"{self._t()} ERROR    {trial.trial_id}  (see its error.txt; the search goes on)",
              flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
