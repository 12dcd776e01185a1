"""Where the search keeps its Optuna study, and how it is opened.

The study lives in `STORAGE/NAME/optuna.journal`: Optuna's own journal storage, an
append-only file of JSON operations (`JournalStorage` over `JournalFileBackend`). It
replaced an SQLite database (`optuna.db`) for two reasons:

- speed: the driver asks, reports and tells Optuna between trial events. For a trial of
  three epochs in the quick space with TPE, that took ~34 ms with SQLite (its ORM; ask
  21 ms, tell 7 ms) and ~5 ms with the file journal (`benchmarks/study_storage.py`, 24-40
  trials); with concurrent trials that time delays the other trials' hand-offs;
- shared storage: `--storage` is a shared folder on a cluster, often NFS, where SQLite's
  locking is unreliable; the file journal needs no fcntl() locks.

Only the search driver writes the study. The study is derived data: `--resume` rebuilds it
from `journal.jsonl` (`rebuild_study`), so a line cut short by a killed driver never
matters. Experiments of earlier versions still have `optuna.db`: the report reads it, and
`--resume` replaces it with `optuna.journal`.

All Optuna study code lives here: opening a study (read-only for the report), rebuilding it
from the journal, telling it a trial's end (live and rebuilt alike through
`tuner.outcomes.optuna_state`), the samplers, and their random state.
"""

from __future__ import annotations

import base64
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import json_to_distribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState as OptunaState
from optuna.trial import create_trial

from tuner.internals import sampler_rngs, storage_trial_id
from tuner.journal import ExperimentState, TrialState
from tuner.layout import LEGACY_OPTUNA_DB, OPTUNA_JOURNAL, TRIAL_ID
from tuner.outcomes import optuna_state

#: The study's user attributes naming our stable trial id and Ray's trial id, and who
#: proposed the trial (tuner.outcomes.Proposer).
TRIAL_ID_ATTR, RAY_TRIAL_ID_ATTR, PROPOSED_BY_ATTR = TRIAL_ID, "ray_trial_id", "proposed_by"


class _NoWrites(JournalFileOpenLock):
    """The lock of a read-only study: taking it (which every append does) fails. (A file
    lock of Optuna's public API with acquire refused; it never creates its lock file.)"""

    def acquire(self) -> bool:
        raise PermissionError("the Optuna study is opened read-only")

    def release(self) -> None:
        pass


def study_storage(path: str | Path, *, read_only: bool = False) -> JournalStorage:
    """An Optuna storage over the study journal at `path`.

    read_only: the file must exist, and every write is refused (the report opens a study it
    must never change, possibly in a copied or write-protected folder). Reading takes no
    lock and writes nothing; a write would have to take the lock, which refuses.
    """
    path = Path(path)
    if not read_only:
        return JournalStorage(JournalFileBackend(str(path)))
    if not path.is_file():  # the backend would create an empty file
        raise FileNotFoundError(f"no Optuna study at {path}")
    return JournalStorage(JournalFileBackend(str(path), lock_obj=_NoWrites(str(path))))


def find_study(experiment_dir: str | Path) -> Path | None:
    """The experiment's study file: optuna.journal, or an earlier version's optuna.db."""
    for name in (OPTUNA_JOURNAL, LEGACY_OPTUNA_DB):
        path = Path(experiment_dir) / name
        if path.is_file():
            return path
    return None


def open_stored_study(path: str | Path, study_name: str) -> optuna.Study:
    """`optuna.load_study` of a study file, read-only (a journal, or a legacy SQLite file
    opened in SQLite's own read-only mode)."""
    path = Path(path)
    if path.name == LEGACY_OPTUNA_DB:
        storage: Any = optuna.storages.RDBStorage(f"sqlite:///file:{path}?mode=ro&uri=true")
    else:
        storage = study_storage(path, read_only=True)
    return optuna.load_study(study_name=study_name, storage=storage)


def direction(mode: str) -> str:
    return "minimize" if mode == "min" else "maximize"


def name_objective(study: optuna.Study, metric: str) -> None:
    """Name the study's objective after the search metric, so optuna-dashboard and Optuna's
    plots show `val_rmse` instead of "Objective 0"."""
    if study.metric_names != [metric]:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric])


# ----------------------------------------------------------------------------- samplers
def make_sampler(searcher: str, seed: int, *, startup_trials: int,
                 constant_liar: bool = True) -> Any:
    """`--searcher`: Optuna's TPESampler (`startup_trials` random trials first) or
    RandomSampler, seeded alike.

    constant_liar: TPE counts the trials still running as if they had the worst value seen,
    so with several trials at a time it does not propose the same region again while those
    run (Optuna 5's default, said here; a space's `budget.constant_liar: false` turns it
    off, for benchmarks/search_efficiency.py to measure)."""
    if searcher == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if searcher == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials,
                                          constant_liar=constant_liar)
    raise ValueError(f"unknown searcher {searcher!r}")


def sampler_state(sampler: Any) -> dict[str, Any] | None:
    """The random state of an Optuna TPE/random sampler as JSON (None if unknown).

    Restoring it on resume makes the sampler continue its random stream instead of starting
    over with the seed (which would suggest the first trials' configurations again)."""
    out = {}
    for name, rng in sampler_rngs(sampler).items():
        kind, keys, pos, has_gauss, cached = rng.get_state()
        out[name] = {"keys": base64.b64encode(np.asarray(keys, "<u4").tobytes()).decode(),
                     "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached),
                     "kind": str(kind)}
    return out or None


def restore_sampler_state(sampler: Any, state: dict[str, Any] | None) -> bool:
    """Put a journaled random state back; returns whether anything was restored."""
    if not state:
        return False
    restored = False
    for name, rng in sampler_rngs(sampler).items():
        saved = state.get(name)
        if saved is None:
            continue
        keys = np.frombuffer(base64.b64decode(saved["keys"]), dtype="<u4").astype(np.uint32)
        rng.set_state((saved["kind"], keys, saved["pos"], saved["has_gauss"],
                       saved["cached"]))
        restored = True
    return restored


# ----------------------------------------------------------------------------- ends
def _intermediate(trial: TrialState, metric: str) -> dict[int, float]:
    return {e: float(h[metric]) for e, h in trial.history.items()
            if isinstance(h.get(metric), (int, float)) and math.isfinite(h[metric])}


def tell(study: optuna.Study, ot_trial: Any, trial: TrialState, end: dict[str, Any],
         metric: str) -> None:
    """Tell the live study how a trial ended (see `tuner.outcomes.optuna_state`)."""
    ot_trial.set_user_attr("status", str(end["status"]))
    ot_trial.set_user_attr("stopped_by", str(end["stopped_by"]))
    state, value = optuna_state(end["status"], end["stopped_by"], end.get("value"),
                                _intermediate(trial, metric))
    if state == "COMPLETE":
        study.tell(ot_trial, value, state=OptunaState.COMPLETE)
    else:  # a pruned trial's value is its last reported epoch, which Optuna already has
        study.tell(ot_trial, state=OptunaState[state])


def rebuild_study(path: Path, *, study_name: str, mode: str, metric: str,
                  state: ExperimentState, replays: Sequence[TrialState]) -> dict[str, int]:
    """Write the Optuna study anew from the journal and swap it in atomically.

    Every journaled trial appears once, in creation order (so Optuna's trial numbers equal
    our indexes): ended trials with their final state, value and per-epoch values; the
    trials about to be resumed as RUNNING. A trial Optuna had asked for but the journal
    never recorded (the driver died in between) is left out. Returns {trial id: Optuna
    storage trial id} for the resumed trials.
    """
    tmp = path.with_name(f".{path.name}.rebuild-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    study = optuna.create_study(storage=study_storage(tmp), study_name=study_name,
                                direction=direction(mode))
    name_objective(study, metric)
    resumed = {t.tid for t in replays}
    ids: dict[str, int] = {}
    for trial in state.trials.values():
        if trial.optuna is None or (not trial.ended and trial.tid not in resumed):
            continue
        distributions = {k: json_to_distribution(v)
                         for k, v in (trial.optuna.get("distributions") or {}).items()}
        params = {k: trial.params[k] for k in distributions if k in trial.params}
        intermediate = _intermediate(trial, metric)
        attrs = {TRIAL_ID_ATTR: trial.tid,
                 RAY_TRIAL_ID_ATTR: trial.ray_ids[-1] if trial.ray_ids else None}
        if trial.proposed_by is not None:
            attrs[PROPOSED_BY_ATTR] = trial.proposed_by
        if not trial.ended:
            kind, value = "RUNNING", None
        else:
            attrs.update(status=str(trial.status), stopped_by=str(trial.stopped_by))
            kind, value = optuna_state(trial.status, trial.stopped_by,
                                       (trial.end or {}).get("value"), intermediate)
        study.add_trial(create_trial(state=OptunaState[kind], value=value, params=params,
                                     distributions=distributions, user_attrs=attrs,
                                     intermediate_values=intermediate))
        if not trial.ended:
            ids[trial.tid] = storage_trial_id(study.trials[-1])
    tmp.replace(path)
    # A driver killed while appending leaves Optuna's lock (a symlink beside the file);
    # the next append would wait 30 s for it. Only the driver writes, and this one holds
    # the experiment lock: the lock is stale.
    path.with_name(path.name + ".lock").unlink(missing_ok=True)
    return ids


__all__ = ["PROPOSED_BY_ATTR", "RAY_TRIAL_ID_ATTR", "TRIAL_ID_ATTR", "direction", "find_study",
           "make_sampler", "name_objective", "open_stored_study", "rebuild_study",
           "restore_sampler_state", "sampler_state", "study_storage", "tell"]
