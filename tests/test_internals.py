"""Every private Ray / Optuna attribute that resume relies on still exists.

`tuner.internals.PRIVATE_API` lists them; this test builds the real objects (a real ASHA
scheduler, a real OptunaSearch, real samplers) and resolves each path, so an upgrade that
removes or renames one fails here, naming the attribute, instead of in a user's resume.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler
from ray.tune.search.optuna import OptunaSearch

from tuner import internals
from tuner.internals import PRIVATE_API


def _objects() -> dict[str, Any]:
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(value=1.0))

    def space(trial: optuna.Trial) -> None:
        trial.suggest_float("x", 0.0, 1.0)

    return {
        "ray.tune.schedulers.AsyncHyperBandScheduler": AsyncHyperBandScheduler(
            time_attr="epoch", metric="val_rmse", mode="min", max_t=4, grace_period=1),
        "ray.tune.search.optuna.OptunaSearch": OptunaSearch(space=space, metric="val_rmse",
                                                            mode="min"),
        "optuna.samplers.TPESampler": optuna.samplers.TPESampler(seed=1),
        "optuna.trial.FrozenTrial": study.trials[0],
    }


def _resolve(obj: Any, path: str) -> Any:
    """`a.b[0].c` on obj (each step an attribute or an index)."""
    for name, index in re.findall(r"([A-Za-z_]\w*)(?:\[(\d+)\])?", path):
        obj = getattr(obj, name)
        if index:
            obj = obj[int(index)]
    return obj


@pytest.mark.parametrize(("owner", "attributes", "why"), PRIVATE_API,
                         ids=[f"{o.rsplit('.', 1)[-1]}.{a.split()[0]}" for o, a, _ in PRIVATE_API])
def test_private_attribute_still_exists(owner, attributes, why):
    module, _, cls = owner.rpartition(".")
    assert isinstance(_objects()[owner], getattr(importlib.import_module(module), cls))
    obj = _objects()[owner]
    for path in (p.strip() for p in attributes.split("/")):
        try:
            _resolve(obj, path)
        except (AttributeError, IndexError, KeyError) as exc:
            pytest.fail(f"{owner}.{path} is gone ({exc}); it is used for: {why}. Adapt "
                        "tuner/internals.py to the new release, or pin the old one")


def test_the_accessors_read_the_live_objects():
    """The accessors return the objects resume writes into (not copies)."""
    objects = _objects()
    asha = objects["ray.tune.schedulers.AsyncHyperBandScheduler"]
    rungs = internals.asha_rungs(asha)
    assert [m for m, _ in rungs] == [4, 1]  # grace 1, reduction factor 4, max_t 4
    rungs[-1][1]["t0000"] = -1.0
    assert internals.asha_rungs(asha)[-1][1]["t0000"] == -1.0
    assert internals.asha_metric_op(asha) == -1.0  # mode min: ASHA stores negated values
    searcher = objects["ray.tune.search.optuna.OptunaSearch"]
    assert internals.optuna_search_trials(searcher) == {}
    assert isinstance(internals.optuna_search_study(searcher), optuna.Study)
    assert internals.optuna_search_completed(searcher) == set()
    rngs = internals.sampler_rngs(objects["optuna.samplers.TPESampler"])
    assert set(rngs) == {"rng", "random"}
    assert isinstance(internals.storage_trial_id(objects["optuna.trial.FrozenTrial"]), int)


def test_pyproject_bounds_ray_and_optuna_to_the_tested_majors():
    import ray

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    ray_major, optuna_major = int(ray.__version__.split(".")[0]), \
        int(optuna.__version__.split(".")[0])
    assert re.search(rf'"ray\[[^\]]*\]>=[\d.]+,<{ray_major + 1}"', text), text
    assert re.search(rf'"optuna>=[\d.]+,<{optuna_major + 1}"', text), text
