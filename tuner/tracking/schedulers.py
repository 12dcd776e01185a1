"""Ray Tune schedulers that journal every decision before Tune acts on it.

- `JournaledASHA`: Ray's AsyncHyperBandScheduler whose rung records are keyed by our stable
  trial ids, journaled with each decision and restored on resume: a resumed search makes
  the decisions an uninterrupted one would make for the same reports (Ray's own
  `Tuner.restore` starts ASHA from empty records).
- `JournaledFIFO`: no early stopping (`--scheduler fifo`, the ablation grid), same journal.

Both stop a diverged trial at once. ASHA's private records are reached through
`tuner.internals` only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from timesclip.atomic import write_text
from tuner import faults
from tuner.internals import asha_bracket, asha_forget, asha_metric_op, asha_rungs
from tuner.journal import summarize_error
from tuner.outcomes import (
    CKPT_KEY,
    CONTINUE,
    DIVERGED_DETAILS,
    DIVERGED_KEY,
    FIT_ENDS_KEY,
    REPEAT_KEY,
    STOP,
    STORAGE_FULL_KEY,
    kept_metrics,
)
from tuner.tracking.ledger import Ledger


class _Proxy:
    """Stands in for a Ray Trial inside ASHA's bracket, which only reads `trial_id`."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def node_label(result: dict[str, Any]) -> str | None:
    """`10.0.0.5/3f2a9c1b`: the node's IP and the start of Ray's node id."""
    ip, node_id = result.get("node_ip"), str(result.get("node_id") or "")
    if not ip and not node_id:
        return None
    return f"{ip or '?'}/{node_id[:8]}" if node_id else str(ip)


def error_text(trial: Any) -> str:
    """One line from a failed Ray trial's error file."""
    text = ""
    try:
        if trial.error_file and Path(trial.error_file).is_file():
            text = Path(trial.error_file).read_text(errors="replace")
    except OSError:
        text = ""
    return summarize_error(text) if text else "failed (no error text stored)"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class _JournalingScheduler:
    """Result journaling shared by the two schedulers below."""

    ledger: Ledger

    def _journal_result(self, trial: Any, result: dict[str, Any], decision: str,
                        rung: tuple[float, float] | None) -> None:
        tid = self.ledger.tid(trial.trial_id)
        if tid is None:
            return
        fields: dict[str, Any] = {"tid": tid, "epoch": int(result.get("epoch", 0)),
                                  "node": node_label(result), "decision": decision}
        if result.get(DIVERGED_KEY):
            fields["diverged"] = {k.removeprefix("diverged_"): result.get(k)
                                  for k in DIVERGED_DETAILS}
        else:
            fields["metrics"] = kept_metrics(result)
            fields["ckpt"] = result.get(CKPT_KEY)
            if result.get(FIT_ENDS_KEY):
                fields["fit_ends"] = True
        if rung is not None:
            fields["rung"] = list(rung)
        self.ledger.record("result", **fields)

    def _record_error(self, trial: Any) -> None:
        self.ledger.errors[trial.trial_id] = error_text(trial)

    def _storage_full(self, result: dict[str, Any]) -> bool:
        """A trial found the storage full: nothing is journaled (nothing can be), the
        search stops; the trial stays unfinished and --resume continues it."""
        if not result.get(STORAGE_FULL_KEY):
            return False
        self.ledger.storage_full = str(result[STORAGE_FULL_KEY])
        return True


class JournaledFIFO(_JournalingScheduler, FIFOScheduler):
    """Runs every trial to its end (`--scheduler fifo`); a diverged trial is stopped."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__()
        self.ledger = ledger

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(REPEAT_KEY):  # an epoch already journaled, sent again to end a retry
            return TrialScheduler.CONTINUE
        if self._storage_full(result):
            return TrialScheduler.STOP
        stop = bool(result.get(DIVERGED_KEY))
        self._journal_result(trial, result, STOP if stop else CONTINUE, None)
        faults.hit("after_result")
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._record_error(trial)
        super().on_trial_error(tune_controller, trial)


class JournaledASHA(_JournalingScheduler, AsyncHyperBandScheduler):
    """ASHA with rung records keyed by stable trial ids, journaled and restorable."""

    def __init__(self, ledger: Ledger, *, time_attr: str, metric: str, mode: str,
                 max_t: int, grace_period: int, reduction_factor: float,
                 state_file: Path | None = None) -> None:
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t,
                         grace_period=grace_period, reduction_factor=reduction_factor)
        self.ledger = ledger
        # our own copies of the settings (Ray keeps them in private attributes)
        self.time_attr, self.search_metric, self.search_mode = time_attr, metric, mode
        self.max_t, self.reduction_factor = max_t, reduction_factor
        self.state_file = state_file

    # -- state ----------------------------------------------------------------------
    def rung_records(self) -> dict[float, dict[str, float]]:
        """{milestone: {trial id: metric value}} of the (single) bracket, in metric units."""
        op = asha_metric_op(self)
        return {float(m): {tid: float(v) * op for tid, v in rec.items()}
                for m, rec in asha_rungs(self)}

    def restore(self, rungs: list[tuple[float, str, float]]) -> int:  # type: ignore[override]
        """Put journaled records back into the bracket; returns how many were restored.

        (Overrides Ray's pickle-based `restore(path)`, which this search never uses.)
        """
        op = asha_metric_op(self)
        by_milestone = {float(m): rec for m, rec in asha_rungs(self)}
        count = 0
        for milestone, tid, value in rungs:
            rec = by_milestone.get(float(milestone))
            if rec is None or tid in rec:
                continue
            rec[tid] = float(value) * op
            count += 1
        return count

    def snapshot(self, path: Path | None = None) -> None:
        """Write the rung records as plain JSON (atomically): what ASHA knows right now."""
        path = path or self.state_file
        if path is None:
            return
        payload = {"metric": self.search_metric, "mode": self.search_mode, "max_t": self.max_t,
                   "reduction_factor": self.reduction_factor,
                   "rungs": [{"milestone": m, "records": dict(sorted(rec.items()))}
                             for m, rec in sorted(self.rung_records().items())]}
        write_text(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")

    # -- decisions ------------------------------------------------------------------
    def _bracket_result(self, trial: Any, tid: str, result: dict
                        ) -> tuple[str, tuple[float, float] | None]:
        bracket = asha_bracket(self, trial.trial_id)
        op = asha_metric_op(self)
        before = {m: tid in rec for m, rec in asha_rungs(self)}
        action = bracket.on_result(_Proxy(tid), result[self.time_attr],
                                   op * result[self.search_metric])
        rung = None
        for milestone, rec in asha_rungs(self):  # the one bracket `bracket` is
            if tid in rec and not before[milestone]:
                rung = (float(milestone), float(rec[tid]) * op)
        return action, rung

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(REPEAT_KEY):  # an epoch already journaled, sent again to end a retry
            return TrialScheduler.CONTINUE
        if self._storage_full(result):
            return TrialScheduler.STOP
        tid = self.ledger.tid(trial.trial_id)
        usable = self.time_attr in result and _finite(result.get(self.search_metric))
        if tid is None or result.get(DIVERGED_KEY) or not usable:
            stop = bool(result.get(DIVERGED_KEY))
            self._journal_result(trial, result, STOP if stop else CONTINUE, None)
            faults.hit("after_result")
            return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE
        rung = None
        if result[self.time_attr] >= self.max_t:
            action = TrialScheduler.STOP  # max_t: the trial is complete, not cut
        else:
            action, rung = self._bracket_result(trial, tid, result)
        self._journal_result(trial, result, STOP if action == TrialScheduler.STOP
                             else CONTINUE, rung)
        if rung is not None:
            self.snapshot()
        faults.hit("after_result")  # the crash tests' kill point: journaled and snapshot
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        tid = self.ledger.tid(trial.trial_id)
        if asha_bracket(self, trial.trial_id) is None:
            return
        if tid is not None and self.time_attr in result and not self.ledger.halted and \
                _finite(result.get(self.search_metric)) and not result.get(DIVERGED_KEY):
            _, rung = self._bracket_result(trial, tid, result)
            if rung is not None:
                self.ledger.record("rung", tid=tid, rung=list(rung))
                self.snapshot()
        asha_forget(self, trial.trial_id)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._record_error(trial)
        super().on_trial_error(tune_controller, trial)


__all__ = ["JournaledASHA", "JournaledFIFO", "error_text", "node_label"]
