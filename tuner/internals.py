"""Every private attribute of Ray Tune and Optuna this package relies on, in one place.

Resume restores what Ray's and Optuna's public APIs cannot hand back: ASHA's rung records,
the Optuna trials OptunaSearch holds for running Ray trials, and the sampler's random
state. Those live in private attributes. They are read and written only through the
functions below, and `PRIVATE_API` lists each of them; `tests/test_internals.py` builds the
real objects and fails with the attribute's name when a Ray or Optuna release removes or
renames one (pyproject.toml bounds both to the major versions tested).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: (class, attribute, what resume or journaling uses it for).
PRIVATE_API: tuple[tuple[str, str, str], ...] = (
    ("ray.tune.schedulers.AsyncHyperBandScheduler", "_brackets[0]._rungs",
     "ASHA's rung records, restored from the journal on --resume"),
    ("ray.tune.schedulers.AsyncHyperBandScheduler", "_trial_info",
     "the bracket of a running trial (decisions keyed by our stable trial ids)"),
    ("ray.tune.schedulers.AsyncHyperBandScheduler", "_metric_op",
     "the sign ASHA stores rung values with (min: -1)"),
    ("ray.tune.search.optuna.OptunaSearch", "_ot_trials",
     "the Optuna trial of each running Ray trial (re-attached on --resume)"),
    ("ray.tune.search.optuna.OptunaSearch", "_ot_study", "the study trials are told to"),
    ("ray.tune.search.optuna.OptunaSearch", "_completed_trials",
     "Ray trials already told to Optuna"),
    ("optuna.trial.FrozenTrial", "_trial_id",
     "the storage id of a trial added to a rebuilt study (to re-attach it on --resume)"),
    ("optuna.samplers.TPESampler", "_rng.rng",
     "the sampler's numpy RandomState, journaled so --resume continues its stream"),
    ("optuna.samplers.TPESampler", "_random_sampler._rng.rng",
     "the start-up sampler's RandomState (same reason)"),
)


# ----------------------------------------------------------------------------- ASHA
def asha_rungs(scheduler: Any) -> list[tuple[float, dict[str, float]]]:
    """[(milestone, {trial key: stored value})] of ASHA's single bracket (live objects)."""
    return scheduler._brackets[0]._rungs


def asha_bracket(scheduler: Any, ray_trial_id: str) -> Any:
    """The bracket a running Ray trial was assigned to (None once it has left)."""
    return scheduler._trial_info.get(ray_trial_id)


def asha_forget(scheduler: Any, ray_trial_id: str) -> None:
    """Drop a completed trial from ASHA's running trials (what Ray's own
    on_trial_complete does after its bracket update)."""
    scheduler._trial_info.pop(ray_trial_id, None)


def asha_metric_op(scheduler: Any) -> float:
    """The sign ASHA multiplies metric values with before storing them (it maximises)."""
    return scheduler._metric_op or 1.0


# ----------------------------------------------------------------------------- OptunaSearch
def optuna_search_trials(searcher: Any) -> dict[str, Any]:
    """{Ray trial id: optuna.Trial} of an OptunaSearch (live dict)."""
    return searcher._ot_trials


def optuna_search_study(searcher: Any) -> Any:
    return searcher._ot_study


def optuna_search_completed(searcher: Any) -> set[str]:
    return searcher._completed_trials


def storage_trial_id(frozen: Any) -> int:
    """The storage id of a FrozenTrial (optuna.Trial(study, id) re-attaches to it)."""
    return frozen._trial_id


# ----------------------------------------------------------------------------- samplers
def sampler_rngs(sampler: Any) -> dict[str, np.random.RandomState]:
    """The numpy RandomStates a TPE or random sampler draws from, by role: "rng" (the
    sampler's own) and "random" (TPE's start-up RandomSampler)."""
    out = {}
    for name, holder in (("rng", sampler), ("random", getattr(sampler, "_random_sampler",
                                                                None))):
        rng = getattr(getattr(holder, "_rng", None), "rng", None)
        if isinstance(rng, np.random.RandomState):
            out[name] = rng
    return out


__all__ = ["PRIVATE_API", "asha_bracket", "asha_forget", "asha_metric_op", "asha_rungs",
           "optuna_search_completed", "optuna_search_study", "optuna_search_trials",
           "sampler_rngs", "storage_trial_id"]
