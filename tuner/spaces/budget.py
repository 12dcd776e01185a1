"""A search's budget (how much to run, how ASHA judges) and each trial's resources.

ONE validator each, `check_budget` and `check_resources`, whatever the source of a value:
the space file's `budget:` / `resources:` sections and the command-line flags that
override them (`--grace-period`, `--gpus-per-trial`, ...) pass through the same rules, so
a value refused in a file is refused on the command line too, before Ray starts. The
caller says where each key came from with `where(key)`, and the error names that source:
`full.yaml: budget.grace_period: ...` or `--grace-period: ...`.

`Budget` and `Resources` are frozen pydantic dataclasses: the field types and ranges ARE
the rules for a single value (pydantic checks them), and they are still dataclasses
(`dataclasses.replace`, pickling for Ray). The rules between values (grace_period <=
max_epochs, the metric's direction, an ablation's fixed grid) are explicit below.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from timesclip.errors import ConfigError
from tuner.outcomes import metric_mode
from tuner.spaces.messages import one_line

#: At most this many random start-up trials (Optuna's own default for n_startup_trials).
MAX_STARTUP_TRIALS = 10


def startup_rule(num_samples: int) -> int:
    """Random start-up trials before TPE models the results, when the space names none:
    a quarter of the budget, at least 2 and at most 10.

    Why: until this many trials have finished, TPE draws exactly what RandomSampler would,
    so Optuna's fixed default of 10 left the budgets we ship (8 trials in the quick demo,
    6-8 in the end-to-end tests, 24 in the efficiency benchmark) all or mostly random. A
    quarter keeps three quarters of any budget for the model; two observations are the
    least its two densities (good / bad) can be built from; beyond 40 trials Optuna's 10
    is plenty (search_spaces/README.md)."""
    return min(MAX_STARTUP_TRIALS, max(2, -(-int(num_samples) // 4)))

#: The metric a search optimises when its space names none.
DEFAULT_METRIC = "val_rmse"
#: ASHA's reduction factor of an ablation space, which never prunes (kept for the record).
ABLATION_REDUCTION_FACTOR = 2

#: Budget keys a search space must give (an ablation needs only max_epochs: its grid sets
#: num_samples, and it runs every arm to the end).
SEARCH_REQUIRED = ("num_samples", "max_epochs", "grace_period", "reduction_factor")
ABLATION_REQUIRED = ("max_epochs",)


def _no_bool(expected: str) -> BeforeValidator:
    """pydantic's lax int/float read true as 1, and YAML reads an unquoted `yes` as true:
    a switch where a number is meant is a mistake, never the number 1."""
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected {expected}, got {value!r}")
        return value
    return BeforeValidator(check)


_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
#: A whole number (12, 12.0, "12"); never true/false.
Integer = Annotated[int, _no_bool("an integer")]
#: A whole number >= 1.
Count = Annotated[Integer, Field(ge=1)]
#: A finite number (2, 0.25, "1e-3": YAML 1.1 reads that as text); never true/false.
Number = Annotated[float, _no_bool("a number")]


@dataclass(frozen=True, kw_only=True, config=_STRICT)
class Budget:
    """How much search to run and how ASHA judges trials."""

    num_samples: Count  # trials to start (for an ablation: arms x seeds)
    max_epochs: Count  # per-trial epoch budget = ASHA max_t = TrainConfig.epochs
    grace_period: Count  # epochs every trial gets before ASHA may stop it
    reduction_factor: Annotated[Number, Field(gt=1)]  # ASHA keeps 1/factor per rung
    metric: str = DEFAULT_METRIC  # reported metric to optimise (timesclip.metrics names)
    mode: Literal["min", "max"]  # the metric's direction; check_budget derives it
    max_concurrent: Count = 1  # trials running at once (ConcurrencyLimiter)
    # random trials before TPE models the results (Optuna's n_startup_trials); None: by
    # `startup_rule` from num_samples once every flag is merged (see `resolved`)
    startup_trials: Count | None = None
    # TPE counts the trials still running as if they had the worst value seen, so it does
    # not propose their region again while they run (Optuna's constant_liar)
    constant_liar: bool = True

    def resolved(self) -> Budget:
        """This budget with the start-up count the rule gives, when none was set."""
        if self.startup_trials is not None:
            return self
        return dataclasses.replace(self, startup_trials=startup_rule(self.num_samples))


@dataclass(frozen=True, kw_only=True, config=_STRICT)
class Resources:
    """What Ray reserves for one trial."""

    cpus_per_trial: Annotated[Number, Field(gt=0)] = 1.0
    gpus_per_trial: Annotated[Number, Field(ge=0)] = 0.0  # a fraction shares one GPU


BUDGET_KEYS = tuple(f.name for f in fields(Budget))
RESOURCE_KEYS = tuple(f.name for f in fields(Resources))

#: The reason behind a key's rule, appended to its error.
_WHY = {"reduction_factor": "ASHA keeps 1/reduction_factor of the trials at each rung"}


def check_budget(raw: Mapping[str, Any], *, kind: str, grid_size: int,
                 where: Callable[[str], str]) -> Budget:
    """The validated Budget of a space of `kind` ("search" | "ablation").

    raw: budget keys -> values, from the space file and/or the command line.
    grid_size: arms x seeds of an ablation (its num_samples); ignored for a search.
    where: names the source of a key in an error, e.g. "full.yaml: budget.grace_period"
    or "--grace-period".
    An ablation may leave out num_samples (= grid_size), grace_period (= max_epochs: arms
    are never pruned) and reduction_factor; a search gives all of SEARCH_REQUIRED.
    """
    values = dict(raw)
    if kind == "ablation":
        values.setdefault("num_samples", grid_size)
        values.setdefault("reduction_factor", ABLATION_REDUCTION_FACTOR)
        if "max_epochs" in values:
            values.setdefault("grace_period", values["max_epochs"])
    metric = values.setdefault("metric", DEFAULT_METRIC)
    if not isinstance(metric, str):
        raise ConfigError(f"{where('metric')}: expected a metric name, got {metric!r}")
    natural = metric_mode(metric, where("metric"))
    values.setdefault("mode", natural)
    required = SEARCH_REQUIRED if kind == "search" else ABLATION_REQUIRED
    budget = _validated(Budget, values, where, f"a {kind} budget", required)

    if budget.mode != natural:
        better = "lower" if natural == "min" else "higher"
        raise ConfigError(f"{where('mode')}: {metric} is better when {better}; use mode: "
                          f"{natural}")
    if kind == "ablation":
        if budget.num_samples != grid_size:
            raise ConfigError(f"{where('num_samples')}: an ablation runs arms x seeds = "
                              f"{grid_size} trials; set it to {grid_size} or leave it out")
        if budget.grace_period != budget.max_epochs:
            raise ConfigError(f"{where('grace_period')}: an ablation runs every arm to the "
                              f"end (no pruning); set it to max_epochs ({budget.max_epochs}) "
                              "or leave it out")
    elif budget.grace_period > budget.max_epochs:
        raise ConfigError(f"{where('grace_period')}: grace_period ({budget.grace_period}) "
                          f"must be <= max_epochs ({budget.max_epochs})")
    return budget


def check_resources(raw: Mapping[str, Any], *, where: Callable[[str], str]) -> Resources:
    """The validated Resources of one trial (absent keys: 1 CPU, no GPU).

    where: names the source of a key in an error, as for check_budget.
    """
    resources = _validated(Resources, dict(raw), where, "resources", ())
    gpus = resources.gpus_per_trial
    if gpus > 1 and not gpus.is_integer():
        raise ConfigError(f"{where('gpus_per_trial')}: Ray shares a GPU only in fractions "
                          f"below 1; above 1 use a whole number, got {gpus:g}")
    return resources


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def _validated(cls: type, values: dict[str, Any], where: Callable[[str], str], what: str,
               required: tuple[str, ...]) -> Any:
    """pydantic's type and range checks, its first problem as one ConfigError line."""
    try:
        return _adapter(cls).validate_python(values)
    except ValidationError as exc:
        allowed = [f.name for f in fields(cls)]
        raise ConfigError(one_line(exc, at=lambda loc: where(str(loc[0])), what=what,
                                   allowed=allowed, required=required, why=_WHY)) from None


__all__ = ["ABLATION_REQUIRED", "BUDGET_KEYS", "DEFAULT_METRIC", "MAX_STARTUP_TRIALS",
           "RESOURCE_KEYS", "SEARCH_REQUIRED", "Budget", "Resources", "check_budget",
           "check_resources"]
