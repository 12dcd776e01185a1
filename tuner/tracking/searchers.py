"""Ray Tune searchers that give every trial a stable id and resume from the journal.

- `JournaledOptunaSearch`: Ray's OptunaSearch (TPE or random, define-by-run). On resume it
  first hands out the unfinished trials again, re-attached to their Optuna trials, then
  asks Optuna for new ones until `num_samples` trials exist. How a trial's end is told to
  Optuna is `tuner.study.tell` (COMPLETE with its best value, PRUNED when ASHA stopped it or
  it diverged, FAIL on an infrastructure error).
- `FixedTrialsSearcher`: the ablation grid (arms x seeds) with the same resume logic.

Ray's trial ids change with every driver run; ours (`t0000`, `t0001`, ...) survive them.
Every trial's creation is journaled (`trial` line) before Tune starts it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import distribution_to_json
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tuner import faults
from tuner.internals import optuna_search_completed, optuna_search_study, optuna_search_trials
from tuner.journal import TrialState
from tuner.layout import TRIAL_ID, trial_id_for
from tuner.outcomes import DIVERGED_KEY, STOP, STORAGE_FULL_KEY, Proposer
from tuner.study import (
    PROPOSED_BY_ATTR,
    RAY_TRIAL_ID_ATTR,
    TRIAL_ID_ATTR,
    name_objective,
    sampler_state,
    tell,
)
from tuner.tracking.ledger import Ledger


@dataclass
class Replay:
    """An unfinished trial to run again in this driver (from its last checkpoint)."""

    trial: TrialState
    optuna_trial_id: int | None = None  # storage id of its re-created RUNNING Optuna trial


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _ended_on_its_own(trial: TrialState, result: dict | None) -> bool:
    """Whether a completion reached while the search stops (a signal, a full disk) is a
    real end."""
    if (result or {}).get(STORAGE_FULL_KEY):
        return False
    if trial.diverged or (result or {}).get("done"):
        return True
    return bool(trial.decisions) and trial.decisions[-1][1] == STOP


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
        return {**replay.trial.params, TRIAL_ID: replay.trial.tid}

    def _on_replay(self, ray_id: str, replay: Replay) -> None:
        pass

    def _record_end(self, ray_id: str, result: dict | None, error: bool
                    ) -> tuple[TrialState, dict[str, Any]] | None:
        """Journal the end of a trial Ray reports complete, unless it is no end: a trial
        removed without a result, or one cut short by SIGINT/SIGTERM (--resume continues
        it). Returns (trial, end record) or None."""
        trial = self.ledger.trial(ray_id)
        if trial is None or (result is None and not error) or \
                (result or {}).get(STORAGE_FULL_KEY) or \
                (self.ledger.halted and not error and not _ended_on_its_own(trial, result)):
            return None
        return trial, self.ledger.record_end(trial, error=error,
                                             error_text=self.ledger.errors.get(ray_id, ""))

    def _create(self, ray_id: str, params: dict[str, Any], **fields: Any) -> dict[str, Any]:
        index = self.ledger.state.next_index
        tid = trial_id_for(index)
        self.ledger.record("trial", tid=tid, index=index, ray_id=ray_id, params=params,
                           dir=self._dirname(tid, params), **fields)
        self.ledger.tid_by_ray[ray_id] = tid
        self._to_create -= 1
        return {**params, TRIAL_ID: tid}


class JournaledOptunaSearch(_ResumingMixin, OptunaSearch):
    """OptunaSearch whose trials are journaled, resumable and told the right state."""

    def __init__(self, *, ledger: Ledger, replays: Sequence[Replay], to_create: int,
                 dirname: Callable[[str, dict[str, Any]], str],
                 startup_trials: int | None, **kwargs: Any) -> None:
        """startup_trials: TPE's random start-up count (None: a RandomSampler)."""
        super().__init__(**kwargs)
        self.ledger = ledger
        self.startup_trials = startup_trials
        self._replays = deque(replays)
        self._to_create = to_create
        self._dirname = dirname
        self._reported: dict[str, set[int]] = {}
        name_objective(self.study, self.ledger.metric)

    @property
    def study(self) -> optuna.Study:
        return optuna_search_study(self)

    def _on_replay(self, ray_id: str, replay: Replay) -> None:
        assert replay.optuna_trial_id is not None
        optuna_search_trials(self)[ray_id] = optuna.trial.Trial(self.study,
                                                                replay.optuna_trial_id)
        self._reported[ray_id] = set(replay.trial.history)

    def suggest(self, trial_id: str) -> dict | str | None:
        replay = self._next_replay(trial_id)
        if replay is not None:
            return replay
        if self._to_create <= 0:
            return Searcher.FINISHED
        proposed_by = self._proposer()
        params = super().suggest(trial_id)
        if not isinstance(params, dict):
            return params
        faults.hit("after_ask")
        ot_trial = optuna_search_trials(self)[trial_id]
        distributions = {k: distribution_to_json(d) for k, d in ot_trial.distributions.items()}
        config = self._create(
            trial_id, params,
            optuna={"number": ot_trial.number, "distributions": distributions},
            sampler=sampler_state(self.study.sampler), proposed_by=proposed_by)
        ot_trial.set_user_attr(TRIAL_ID_ATTR, config[TRIAL_ID])
        ot_trial.set_user_attr(PROPOSED_BY_ATTR, proposed_by)
        ot_trial.set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
        self._reported[trial_id] = set()
        return config

    def _proposer(self) -> str:
        """Who proposes the next trial: TPE's model, or its random start-up (Optuna's
        own rule: fewer finished trials than n_startup_trials), or a RandomSampler."""
        if self.startup_trials is None:
            return Proposer.RANDOM
        finished = self.study.get_trials(deepcopy=False, states=(
            optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
        return Proposer.STARTUP if len(finished) < self.startup_trials else Proposer.MODEL

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get(DIVERGED_KEY) or trial_id in optuna_search_completed(self):
            return
        value, epoch = result.get(self.metric), result.get("epoch")
        if not _finite(value) or epoch is None:
            return
        self._report(trial_id, int(epoch), float(value))

    def _report(self, trial_id: str, epoch: int, value: float) -> None:
        done = self._reported.setdefault(trial_id, set())
        trials = optuna_search_trials(self)
        if epoch in done or trial_id not in trials:
            return
        trials[trial_id].report(value, epoch)
        done.add(epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        completed = optuna_search_completed(self)
        if trial_id in completed:
            return
        ended = self._record_end(trial_id, result, error)
        if ended is None:
            return
        trial, end = ended
        completed.add(trial_id)
        ot_trial = optuna_search_trials(self).get(trial_id)
        if ot_trial is None:
            return
        for epoch in trial.epochs:  # every epoch, also the one ASHA stopped it at
            value = trial.history[epoch].get(self.metric)
            if _finite(value):
                self._report(trial_id, epoch, float(value))
        ot_trial.set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
        tell(self.study, ot_trial, trial, end, self.metric)


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
        return self._create(trial_id, dict(self._pending.popleft()), optuna=None,
                            proposed_by=Proposer.GRID)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._done:
            return
        if self._record_end(trial_id, result, error) is not None:
            self._done.add(trial_id)


__all__ = ["FixedTrialsSearcher", "JournaledOptunaSearch", "Replay"]
