"""The driver-side pieces that keep the journal: a searcher, schedulers, a callback, a stopper.

Ray Tune runs the trials; Optuna samples; ASHA decides. These subclasses add one thing to
each: before the search acts on an event, the event is in `journal.jsonl` (see
`tuner.journal` for why that makes a killed driver harmless). They also give every trial a
stable id (`t0000`, `t0001`, ...) that survives a restart of the driver, while Ray's own
trial ids change with every driver run.

- `JournaledOptunaSearch`: Ray's OptunaSearch (TPE or random, define-by-run). On resume it
  first hands out the unfinished trials again, re-attached to their Optuna trials, then asks
  Optuna for new ones until `num_samples` trials exist. An ASHA-stopped trial is told to
  Optuna as PRUNED with its per-epoch values; a diverged one as PRUNED too (flagged), so
  TPE ranks it below every completed trial; a finished one as COMPLETE with its best
  validation value (the same number selection uses).
- `JournaledASHA`: Ray's AsyncHyperBandScheduler whose rung records are keyed by our trial
  ids, written to the journal with each decision, and restored on resume: a resumed search
  makes the decisions an uninterrupted one would make for the same reports (Ray's own
  `Tuner.restore` starts ASHA from empty records).
- `JournaledFIFO`: no early stopping, same journaling.
- `FixedTrialsSearcher`: the ablation grid (arms x seeds) with the same resume logic.
- `JournalCallback` (starts and retries), `InterruptStopper` (a graceful stop on SIGINT or
  SIGTERM: Tune stops every trial; the unfinished ones continue on `--resume`).
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune import Callback, Stopper
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from timesclip.atomic import write_text
from tuner.journal import (
    DIVERGED,
    ERROR,
    REPEAT_KEY,
    TERMINATED,
    ExperimentState,
    Journal,
    TrialState,
    best_value,
    summarize_error,
)

#: Key of our stable trial id inside each Ray trial config.
TID_KEY = "trial_id"
ASHA_STATE_FILE = "asha_state.json"
#: Per-epoch metrics kept in the journal (the trainer's CONTRACT names + Ray's timing).
KEPT_METRICS = ("epoch", "train_loss", "train_regression_loss", "train_contrastive_loss",
                "val_loss", "val_rmse", "val_mae", "val_r2", "val_mape", "lr",
                "epoch_seconds", "params_total", "params_trainable", "params_frozen",
                "time_this_iter_s")


class Ledger:
    """What the searcher, the scheduler and the callback share inside one driver run."""

    def __init__(self, journal: Journal, state: ExperimentState, *, metric: str, mode: str,
                 max_epochs: int, experiment_dir: Path | None) -> None:
        self.journal, self.state = journal, state
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.experiment_dir = experiment_dir
        self.tid_by_ray: dict[str, str] = {}
        self.errors: dict[str, str] = {}  # Ray trial id -> short error of its last failure
        self.interrupt_signal: int | None = None
        self.crash_after_results: int | None = _env_int("TIMESCLIP_CRASH_AFTER_RESULTS")
        self.results_seen = 0
        self.on_end: Callable[[TrialState], None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles its schedulers and callbacks for its own experiment snapshot: a copy
        # keeps no hook into this driver
        return {**self.__dict__, "on_end": None}

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

    def after_result(self) -> None:
        """Fault injection for the crash tests: die like a killed node would, at a point
        chosen by the test (TIMESCLIP_CRASH_AFTER_RESULTS=N, after the N-th result)."""
        self.results_seen += 1
        if self.crash_after_results is not None and self.results_seen >= \
                self.crash_after_results:
            os.kill(os.getpid(), 9)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


# ----------------------------------------------------------------------------- schedulers
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


def _metrics_of(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in KEPT_METRICS if k in result}


class _JournalingScheduler:
    """Shared result journaling of the two schedulers below."""

    ledger: Ledger

    def _journal_result(self, trial: Any, result: dict[str, Any], decision: str,
                        rung: tuple[float, float] | None) -> None:
        tid = self.ledger.tid(trial.trial_id)
        if tid is None:
            return
        fields: dict[str, Any] = {"tid": tid, "epoch": int(result.get("epoch", 0)),
                                  "node": node_label(result), "decision": decision}
        if result.get("diverged"):
            fields["diverged"] = {k.removeprefix("diverged_"): result.get(k)
                                  for k in ("diverged_epoch", "diverged_step",
                                            "diverged_loss", "diverged_message")}
        else:
            fields["metrics"] = _metrics_of(result)
            fields["ckpt"] = result.get("ckpt")
            if result.get("fit_ends"):
                fields["fit_ends"] = True
        if rung is not None:
            fields["rung"] = list(rung)
        self.ledger.record("result", **fields)

    def _record_error(self, trial: Any) -> None:
        text = ""
        try:
            if trial.error_file and Path(trial.error_file).is_file():
                text = Path(trial.error_file).read_text(errors="replace")
        except OSError:
            text = ""
        self.ledger.errors[trial.trial_id] = summarize_error(text) if text else \
            "failed (no error text stored)"


class JournaledFIFO(_JournalingScheduler, FIFOScheduler):
    """Runs every trial to its end (`--scheduler fifo`); a diverged trial is stopped."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__()
        self.ledger = ledger

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(REPEAT_KEY):  # an epoch already journaled, sent again to end a retry
            return TrialScheduler.CONTINUE
        action = TrialScheduler.STOP if result.get("diverged") else TrialScheduler.CONTINUE
        self._journal_result(trial, result, "stop" if action == TrialScheduler.STOP
                             else "continue", None)
        self.ledger.after_result()
        return action

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._record_error(trial)
        super().on_trial_error(tune_controller, trial)


class JournaledASHA(_JournalingScheduler, AsyncHyperBandScheduler):
    """ASHA with rung records keyed by stable trial ids, journaled and restorable."""

    def __init__(self, ledger: Ledger, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ledger = ledger

    # -- state ----------------------------------------------------------------------
    def rung_records(self) -> dict[float, dict[str, float]]:
        """{milestone: {trial id: metric value}} of the (single) bracket, in metric units."""
        op = self._metric_op or 1.0
        return {float(m): {tid: float(v) * op for tid, v in rec.items()}
                for m, rec in self._brackets[0]._rungs}

    def restore(self, rungs: Sequence[tuple[float, str, float]]) -> int:  # type: ignore[override]
        """Put journaled records back into the bracket; returns how many were restored.

        (Overrides Ray's pickle-based `restore(path)`, which this search never uses.)
        """
        op = self._metric_op or 1.0
        by_milestone = {float(m): rec for m, rec in self._brackets[0]._rungs}
        count = 0
        for milestone, tid, value in rungs:
            rec = by_milestone.get(float(milestone))
            if rec is None or tid in rec:
                continue
            rec[tid] = float(value) * op
            count += 1
        return count

    def snapshot(self, path: Path) -> None:
        """Write the rung records as plain JSON (atomically): what ASHA knows right now."""
        payload = {"metric": self._metric, "mode": self._mode, "max_t": self._max_t,
                   "reduction_factor": self._reduction_factor,
                   "rungs": [{"milestone": m, "records": dict(sorted(rec.items()))}
                             for m, rec in sorted(self.rung_records().items())]}
        write_text(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")

    def _snapshot(self) -> None:
        if self.ledger.experiment_dir is not None:
            self.snapshot(self.ledger.experiment_dir / ASHA_STATE_FILE)

    # -- decisions ------------------------------------------------------------------
    def _bracket_result(self, trial: Any, tid: str, result: dict
                        ) -> tuple[str, tuple[float, float] | None]:
        bracket = self._trial_info[trial.trial_id]
        before = {m: tid in rec for m, rec in bracket._rungs}
        action = bracket.on_result(_Proxy(tid), result[self._time_attr],
                                   self._metric_op * result[self._metric])
        rung = None
        for milestone, rec in bracket._rungs:
            if tid in rec and not before[milestone]:
                rung = (float(milestone), float(rec[tid]) * self._metric_op)
        return action, rung

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(REPEAT_KEY):  # an epoch already journaled, sent again to end a retry
            return TrialScheduler.CONTINUE
        tid = self.ledger.tid(trial.trial_id)
        usable = self._time_attr in result and self._metric in result and \
            _finite(result.get(self._metric))
        if tid is None or result.get("diverged") or not usable:
            action = TrialScheduler.STOP if result.get("diverged") else TrialScheduler.CONTINUE
            self._journal_result(trial, result, "stop" if action == TrialScheduler.STOP
                                 else "continue", None)
            self.ledger.after_result()
            return action
        rung = None
        if result[self._time_attr] >= self._max_t and self._stop_last_trials:
            action = TrialScheduler.STOP  # max_t: the trial is complete, not cut
        else:
            action, rung = self._bracket_result(trial, tid, result)
        if action == TrialScheduler.STOP:
            self._num_stopped += 1
        self._journal_result(trial, result, "stop" if action == TrialScheduler.STOP
                             else "continue", rung)
        if rung is not None:
            self._snapshot()
        self.ledger.after_result()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        tid = self.ledger.tid(trial.trial_id)
        if trial.trial_id not in self._trial_info:
            return
        if tid is not None and self._time_attr in result and self._metric in result \
                and _finite(result.get(self._metric)) and not result.get("diverged"):
            _, rung = self._bracket_result(trial, tid, result)
            if rung is not None:
                self.ledger.record("rung", tid=tid, rung=list(rung))
                self._snapshot()
        del self._trial_info[trial.trial_id]

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._record_error(trial)
        super().on_trial_error(tune_controller, trial)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ----------------------------------------------------------------------------- outcomes
def classify_end(trial: TrialState, max_epochs: int, *, error: bool) -> tuple[str, str]:
    """(status, stopped_by) of a trial that Ray reports complete."""
    if error:
        return ERROR, "error"
    if trial.diverged:
        return DIVERGED, "diverged"
    last_decision = trial.decisions[-1][1] if trial.decisions else "continue"
    if trial.epochs_run >= max_epochs:
        return TERMINATED, "completed"
    if last_decision == "stop":
        return TERMINATED, "asha"
    return TERMINATED, "early_stopping"


def record_end(ledger: Ledger, trial: TrialState, *, error: bool,
               error_text: str = "") -> dict[str, Any]:
    status, stopped_by = classify_end(trial, ledger.max_epochs, error=error)
    value, epoch = best_value(trial.history, ledger.metric, ledger.mode)
    fields: dict[str, Any] = {"tid": trial.tid, "status": status, "stopped_by": stopped_by,
                              "value": value, "best_epoch": epoch,
                              "epochs_run": trial.epochs_run}
    if error:
        fields["error"] = error_text
    elif trial.diverged:
        d = trial.diverged
        fields["error"] = (f"diverged: non-finite loss ({d.get('loss')}) at epoch "
                           f"{d.get('epoch')}, step {d.get('step')}")
    record = ledger.record("end", **fields)
    if ledger.on_end is not None:
        ledger.on_end(trial)
    return record


def closable_at_resume(trial: TrialState, max_epochs: int) -> bool:
    """An unfinished trial whose end was decided but not journaled (the driver died in
    between): its last journaled report made the scheduler stop it, it diverged, or that
    report was its fit()'s last epoch (`fit_ends`: the epoch budget spent or early
    stopping). Such a trial is closed without running it again: a re-run would train
    nothing and report nothing."""
    if trial.ended:
        return False
    if trial.diverged or trial.fit_ends:
        return True
    return bool(trial.decisions) and trial.decisions[-1][1] == "stop"


# ----------------------------------------------------------------------------- searchers
@dataclass
class Replay:
    """An unfinished trial to run again in this driver (from its last checkpoint)."""

    trial: TrialState
    optuna_trial_id: int | None = None  # storage id of its re-created RUNNING Optuna trial


class _ResumingMixin:
    """Hands out replays first, then new trials, and journals every trial's creation."""

    ledger: Ledger
    _replays: deque[Replay]
    _to_create: int
    _dirname: Callable[[str, dict[str, Any]], str]

    def save(self, checkpoint_path: str) -> None:
        """Ray's own searcher checkpoint (a pickle for its Tuner.restore) is not written:
        this search resumes from the journal, so it would only cost time and disk."""

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("resume with `python -m tuner.search ... --resume`")

    def _next_replay(self, ray_id: str) -> dict[str, Any] | None:
        if not self._replays:
            return None
        replay = self._replays.popleft()
        self.ledger.tid_by_ray[ray_id] = replay.trial.tid
        self.ledger.record("attach", tid=replay.trial.tid, ray_id=ray_id)
        self._on_replay(ray_id, replay)
        return {**replay.trial.params, TID_KEY: replay.trial.tid}

    def _on_replay(self, ray_id: str, replay: Replay) -> None:
        pass

    def _record_end(self, trial_id: str, result: dict | None, error: bool
                    ) -> tuple[TrialState, dict[str, Any]] | None:
        """Journal the end of a trial Ray reports complete, unless it is no end: a trial
        removed without a result, or one cut short by SIGINT/SIGTERM (--resume continues
        it). Returns (trial, end record) or None."""
        trial = self.ledger.trial(trial_id)
        if trial is None or (result is None and not error) or \
                (self.ledger.interrupt_signal is not None and not error and
                 not _ended_on_its_own(trial, result)):
            return None
        return trial, record_end(self.ledger, trial, error=error,
                                 error_text=self.ledger.errors.get(trial_id, ""))

    def _create(self, ray_id: str, params: dict[str, Any], **fields: Any) -> dict[str, Any]:
        index = self.ledger.state.next_index
        tid = trial_id_for(index)
        self.ledger.record("trial", tid=tid, index=index, ray_id=ray_id, params=params,
                           dir=self._dirname(tid, params), **fields)
        self.ledger.tid_by_ray[ray_id] = tid
        self._to_create -= 1
        return {**params, TID_KEY: tid}


def trial_id_for(index: int) -> str:
    return f"t{index:04d}"


class JournaledOptunaSearch(_ResumingMixin, OptunaSearch):
    """OptunaSearch whose trials are journaled, resumable and told the right state."""

    def __init__(self, *, ledger: Ledger, replays: Sequence[Replay], to_create: int,
                 dirname: Callable[[str, dict[str, Any]], str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ledger = ledger
        self._replays = deque(replays)
        self._to_create = to_create
        self._dirname = dirname
        self._reported: dict[str, set[int]] = {}

    def _on_replay(self, ray_id: str, replay: Replay) -> None:
        import optuna

        assert replay.optuna_trial_id is not None
        self._ot_trials[ray_id] = optuna.trial.Trial(self._ot_study, replay.optuna_trial_id)
        self._reported[ray_id] = set(replay.trial.history)

    def suggest(self, trial_id: str) -> dict | str | None:
        replay = self._next_replay(trial_id)
        if replay is not None:
            return replay
        if self._to_create <= 0:
            return Searcher.FINISHED
        params = super().suggest(trial_id)
        if not isinstance(params, dict):
            return params
        ot_trial = self._ot_trials[trial_id]
        from optuna.distributions import distribution_to_json

        distributions = {k: distribution_to_json(d) for k, d in ot_trial.distributions.items()}
        config = self._create(
            trial_id, params,
            optuna={"number": ot_trial.number, "distributions": distributions},
            sampler=sampler_state(self._ot_study.sampler))
        ot_trial.set_user_attr("trial_id", config[TID_KEY])
        ot_trial.set_user_attr("ray_trial_id", trial_id)
        self._reported[trial_id] = set()
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get("diverged") or trial_id in self._completed_trials:
            return
        value, epoch = result.get(self.metric), result.get("epoch")
        if not _finite(value) or epoch is None:
            return
        self._report(trial_id, int(epoch), float(value))

    def _report(self, trial_id: str, epoch: int, value: float) -> None:
        done = self._reported.setdefault(trial_id, set())
        if epoch in done or trial_id not in self._ot_trials:
            return
        self._ot_trials[trial_id].report(value, epoch)
        done.add(epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        ended = self._record_end(trial_id, result, error)
        if ended is None:
            return
        trial, end = ended
        self._completed_trials.add(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        for epoch in trial.epochs:  # every epoch, also the one ASHA stopped it at
            value = trial.history[epoch].get(self.metric)
            if _finite(value):
                self._report(trial_id, epoch, float(value))
        ot_trial.set_user_attr("status", end["status"])
        ot_trial.set_user_attr("stopped_by", end["stopped_by"])
        ot_trial.set_user_attr("ray_trial_id", trial_id)
        tell_optuna(self._ot_study, ot_trial, end)


def _ended_on_its_own(trial: TrialState, result: dict | None) -> bool:
    """Whether a completion reached during a graceful stop is a real end."""
    if trial.diverged or (result or {}).get("done"):
        return True
    return bool(trial.decisions) and trial.decisions[-1][1] == "stop"


def tell_optuna(study: Any, ot_trial: Any, end: dict[str, Any]) -> None:
    """Tell a finished trial: COMPLETE (best value), PRUNED (ASHA-stopped or diverged:
    Optuna ranks pruned trials by their last reported epoch, below completed ones), or
    FAIL (an infrastructure error: the configuration itself says nothing)."""
    from optuna.trial import TrialState as OptunaState

    status, stopped_by, value = end["status"], end["stopped_by"], end.get("value")
    if status == ERROR:
        study.tell(ot_trial, state=OptunaState.FAIL)
    elif status == DIVERGED or stopped_by == "asha":
        study.tell(ot_trial, state=OptunaState.PRUNED)
    elif _finite(value):
        study.tell(ot_trial, float(value), state=OptunaState.COMPLETE)
    else:
        study.tell(ot_trial, state=OptunaState.FAIL)


class FixedTrialsSearcher(_ResumingMixin, Searcher):
    """A fixed list of trial configs (the ablation arms x seeds), resumable."""

    def __init__(self, *, ledger: Ledger, pending: Sequence[dict[str, Any]],
                 replays: Sequence[Replay], dirname: Callable[[str, dict[str, Any]], str],
                 metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.ledger = ledger
        self._pending = deque(pending)
        self._replays = deque(replays)
        self._to_create = len(self._pending)
        self._dirname = dirname
        self._done: set[str] = set()

    def suggest(self, trial_id: str) -> dict | str | None:
        replay = self._next_replay(trial_id)
        if replay is not None:
            return replay
        if not self._pending:
            return Searcher.FINISHED
        return self._create(trial_id, dict(self._pending.popleft()), optuna=None)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._done:
            return
        if self._record_end(trial_id, result, error) is not None:
            self._done.add(trial_id)


# ----------------------------------------------------------------------------- Optuna study
def rebuild_study(path: Path, *, study_name: str, direction: str,
                  state: ExperimentState, replays: Sequence[TrialState], metric: str
                  ) -> dict[str, int]:
    """Write the Optuna study anew from the journal and swap it in atomically.

    Every journaled trial appears once, in creation order (so Optuna's trial numbers equal
    our indexes): ended trials with their final state, value and per-epoch values; the
    trials about to be resumed as RUNNING. A trial Optuna had asked for but the journal
    never recorded (the driver died in between) is left out. Returns {trial id: Optuna
    storage trial id} for the resumed trials.
    """
    import optuna
    from optuna.distributions import json_to_distribution
    from optuna.trial import TrialState as OptunaState
    from optuna.trial import create_trial

    from tuner.study import study_storage

    tmp = path.with_name(f".{path.name}.rebuild-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    study = optuna.create_study(storage=study_storage(tmp), study_name=study_name,
                                direction=direction)
    resumed = {t.tid for t in replays}
    ids: dict[str, int] = {}
    for trial in state.trials.values():
        if trial.optuna is None:
            continue
        if not trial.ended and trial.tid not in resumed:
            continue
        distributions = {k: json_to_distribution(v)
                         for k, v in (trial.optuna.get("distributions") or {}).items()}
        params = {k: trial.params[k] for k in distributions if k in trial.params}
        intermediate = {e: float(h[metric]) for e, h in trial.history.items()
                        if _finite(h.get(metric))}
        attrs = {"trial_id": trial.tid, "ray_trial_id": trial.ray_ids[-1] if trial.ray_ids
                 else None}
        end = trial.end or {}
        if not trial.ended:
            frozen = create_trial(state=OptunaState.RUNNING, params=params,
                                  distributions=distributions, user_attrs=attrs,
                                  intermediate_values=intermediate)
        else:
            attrs.update(status=trial.status, stopped_by=trial.stopped_by)
            value = end.get("value")
            if trial.status == ERROR:
                kind, value = OptunaState.FAIL, None
            elif trial.status == DIVERGED or trial.stopped_by == "asha":
                kind = OptunaState.PRUNED
                value = intermediate[max(intermediate)] if intermediate else None
            elif _finite(value):
                kind = OptunaState.COMPLETE
            else:
                kind, value = OptunaState.FAIL, None
            frozen = create_trial(state=kind, value=value, params=params,
                                  distributions=distributions, user_attrs=attrs,
                                  intermediate_values=intermediate)
        study.add_trial(frozen)
        if not trial.ended:
            ids[trial.tid] = study.trials[-1]._trial_id
    tmp.replace(path)
    # A driver killed while appending leaves Optuna's lock (a symlink beside the file);
    # the next append would wait 30 s for it. Only the driver writes, and this one is
    # starting: the lock is stale.
    path.with_name(path.name + ".lock").unlink(missing_ok=True)
    return ids


# ----------------------------------------------------------------------------- sampler RNG
def sampler_state(sampler: Any) -> dict[str, Any] | None:
    """The random state of an Optuna TPE/random sampler as JSON (None if unknown).

    Restoring it on resume makes the sampler continue its random stream instead of starting
    over with the seed (which would suggest the first trials' configurations again)."""
    out = {}
    for name, holder in (("rng", sampler), ("random", getattr(sampler, "_random_sampler",
                                                                None))):
        rng = getattr(getattr(holder, "_rng", None), "rng", None)
        if isinstance(rng, np.random.RandomState):
            kind, keys, pos, has_gauss, cached = rng.get_state()
            out[name] = {"keys": base64.b64encode(np.asarray(keys, "<u4").tobytes()).decode(),
                         "pos": int(pos), "has_gauss": int(has_gauss),
                         "cached": float(cached), "kind": str(kind)}
    return out or None


def restore_sampler_state(sampler: Any, state: dict[str, Any] | None) -> bool:
    if not state:
        return False
    restored = False
    for name, holder in (("rng", sampler), ("random", getattr(sampler, "_random_sampler",
                                                                None))):
        saved = state.get(name)
        rng = getattr(getattr(holder, "_rng", None), "rng", None)
        if saved is None or not isinstance(rng, np.random.RandomState):
            continue
        keys = np.frombuffer(base64.b64decode(saved["keys"]), dtype="<u4").astype(np.uint32)
        rng.set_state((saved["kind"], keys, saved["pos"], saved["has_gauss"],
                       saved["cached"]))
        restored = True
    return restored


# ----------------------------------------------------------------------------- callbacks
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

        text = ""
        try:
            if trial.error_file and Path(trial.error_file).is_file():
                text = Path(trial.error_file).read_text(errors="replace")
        except OSError:
            pass
        node = getattr(getattr(trial, "temporary_state", None), "location", None)
        self.ledger.record("retry", tid=tid, error=summarize_error(text) if text else
                           "failed (no error text stored)",
                           node=getattr(node, "hostname", None))


class InterruptStopper(Stopper):
    """Ends the whole experiment once the driver got SIGINT or SIGTERM."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.ledger.interrupt_signal is not None
