"""The Ledger: what the searcher, the scheduler and the callbacks share in one driver run.

Every event that matters goes through `Ledger.record`: appended to the journal (durably),
then folded into the live `ExperimentState`, so the live view always equals what a replay
of the file gives. The ledger also maps Ray's trial ids (new in every driver run) to our
stable trial ids (`t0003`, kept across drivers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuner import faults
from tuner.journal import ExperimentState, Journal, TrialState
from tuner.outcomes import best_value, classify_end


class Ledger:
    """The journal, the live experiment state and the id map of one driver run."""

    def __init__(self, journal: Journal, state: ExperimentState, *, metric: str, mode: str,
                 max_epochs: int) -> None:
        self.journal, self.state = journal, state
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.tid_by_ray: dict[str, str] = {}
        self.errors: dict[str, str] = {}  # Ray trial id -> short error of its last failure
        self.interrupt_signal: int | None = None
        #: Set when a trial found the storage full: the search stops like on a signal.
        self.storage_full: str | None = None
        #: Called with a trial once its end is journaled (the driver prunes its folder).
        self.on_end: Callable[[TrialState], None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles its schedulers and callbacks for its own experiment snapshot: a copy
        # keeps no hook into this driver
        return {**self.__dict__, "on_end": None}

    @property
    def halted(self) -> bool:
        """Whether the search is being stopped (a signal, or a full disk): trials cut short
        now are unfinished, not ended."""
        return self.interrupt_signal is not None or self.storage_full is not None

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append to the journal (durably), then update the live state."""
        rec = self.journal.append(event, **fields)
        self.state.apply(rec)
        return rec

    def tid(self, ray_id: str) -> str | None:
        return self.tid_by_ray.get(ray_id)

    def trial(self, ray_id: str) -> TrialState | None:
        tid = self.tid(ray_id)
        return self.state.trials.get(tid) if tid else None

    def record_end(self, trial: TrialState, *, error: bool, error_text: str = ""
                   ) -> dict[str, Any]:
        """Journal how a trial ended (status, stop reason, its best value and epoch)."""
        status, stopped_by = classify_end(trial, self.max_epochs, error=error)
        value, epoch = best_value(trial.history, self.metric, self.mode)
        fields: dict[str, Any] = {"tid": trial.tid, "status": status, "stopped_by": stopped_by,
                                  "value": value, "best_epoch": epoch,
                                  "epochs_run": trial.epochs_run}
        if error:
            fields["error"] = error_text
        elif trial.diverged:
            d = trial.diverged
            fields["error"] = (f"diverged: non-finite loss ({d.get('loss')}) at epoch "
                               f"{d.get('epoch')}, step {d.get('step')}")
        record = self.record("end", **fields)
        faults.hit("after_end")
        if self.on_end is not None:
            self.on_end(trial)
        return record


__all__ = ["Ledger"]
