"""A loaded search space and how a trial is drawn from it.

`SearchSpace.define_by_run` is what Ray Tune's OptunaSearch calls per trial. Why
define-by-run rather than a fixed dict of distributions: conditional parameters.
`contrastive_weight` only matters when `use_contrastive` is true; sampling it anyway would
waste TPE's attention on a dimension with no effect. With define-by-run Optuna only sees a
parameter in the trials where it is active.

A pair choice (`fields: [patch_length, stride]`) sets several fields at once; Optuna sees
it as a string label "6/3" because its categorical choices must be primitives, and
`trial_config` expands the label again.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timesclip.config import ABLATIONS, TrainConfig
from timesclip.errors import ConfigError
from tuner.spaces.budget import Budget, Resources
from tuner.spaces.messages import field_hint, prefixed

if TYPE_CHECKING:  # optuna is only needed for the annotation; Ray passes a wrapper anyway
    import optuna

#: Fields a space may not set: the per-trial epoch count IS budget.max_epochs (ASHA's
#: max_t), so a second value for it could only disagree with the scheduler.
RESERVED = {"epochs": "it follows budget.max_epochs (the ASHA max_t); set that instead"}


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One sampled (or fixed) parameter of a search space."""

    name: str  # a TrainConfig field, or for a pair choice a free label such as "patch"
    type: str  # loguniform | uniform | int | choice | fixed
    low: Any = None
    high: Any = None
    step: int | None = None  # int only
    log: bool = False  # loguniform, or int with log: true
    choices: list | None = None  # choice only; for a pair: list of lists, one per field
    value: Any = None  # fixed only
    fields: list[str] = dataclasses.field(default_factory=list)  # TrainConfig fields it sets
    condition: dict | None = None  # {"field": f, "equals": v} or {"field": f, "in": [...]}

    @property
    def is_pair(self) -> bool:
        """True for a choice whose every choice sets several fields (e.g. patch/stride)."""
        return self.type == "choice" and self.fields != [self.name]

    def labels(self) -> list[str]:
        """Primitive stand-ins for pair choices: [6, 3] -> "6/3" (Optuna needs primitives)."""
        assert self.choices is not None
        return [pair_label(c) for c in self.choices]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A loaded, validated search space (or ablation grid) and its budget."""

    name: str
    path: Path
    kind: str  # "search" | "ablation"
    description: str
    budget: Budget
    resources: Resources
    base: dict[str, Any]  # TrainConfig field -> value fixed for every trial
    parameters: list[ParamSpec]
    arms: list[str]  # ablation ids (kind ablation), else []
    seeds: list[int]  # seeds per arm (kind ablation), else []

    # ----------------------------------------------------------------- sampling
    def define_by_run(self, trial: optuna.Trial) -> dict[str, Any] | None:
        """Sample one trial's parameters for OptunaSearch (define-by-run).

        Conditional parameters are suggested only when their condition holds, so Optuna
        never learns a distribution for an inactive dimension. Returns the constants that
        are not Optuna parameters (fixed values, and the fields a pair label stands for):
        Ray's OptunaSearch merges a returned dict into the trial config.
        """
        if self.kind != "search":
            raise ConfigError(f"{self.path}: space '{self.name}' is an ablation grid; "
                              "it has no parameters to sample (use ablation_grid())")

        def pick(p: ParamSpec) -> Any:
            if p.type == "loguniform":
                return trial.suggest_float(p.name, p.low, p.high, log=True)
            if p.type == "uniform":
                return trial.suggest_float(p.name, p.low, p.high)
            if p.type == "int":
                return trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
            if p.type == "choice" and p.is_pair:
                label = trial.suggest_categorical(p.name, p.labels())
                return p.choices[p.labels().index(label)]  # type: ignore[index]
            if p.type == "choice":
                return trial.suggest_categorical(p.name, p.choices)  # type: ignore[arg-type]
            return p.value  # fixed: not an Optuna parameter

        _, constants = self.walk(pick)
        return constants or None

    def walk(self, pick: Callable[[ParamSpec], Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Visit parameters in file order, honouring conditions; `pick` gives each value.

        Returns (field values of every active parameter, the constants to hand back to
        Ray: fixed parameters and expanded pairs).
        """
        values: dict[str, Any] = {}
        inactive: set[str] = set()
        constants: dict[str, Any] = {}
        for p in self.parameters:
            if not self._holds(p.condition, values, inactive):
                inactive.update(p.fields)
                continue
            value = pick(p)
            if p.is_pair:
                for f, v in zip(p.fields, value):
                    values[f] = constants[f] = v
            else:
                values[p.name] = value
                if p.type == "fixed":
                    constants[p.name] = value
        return values, constants

    def _holds(self, condition: dict | None, values: dict[str, Any], inactive: set[str]) -> bool:
        """Evaluate a condition: sampled values, then base, then TrainConfig defaults.

        A condition on a parameter that was itself inactive is false: a child of an
        unused switch is unused too (hybrid_alpha when contrastive_mode was not sampled).
        """
        if condition is None:
            return True
        name = condition["field"]
        if name in values:
            current = values[name]
        elif name in inactive:
            return False
        elif name in self.base:
            current = self.base[name]
        else:
            current = _defaults()[name]
        if "equals" in condition:
            return same(current, condition["equals"])
        return any(same(current, option) for option in condition["in"])

    # ----------------------------------------------------------------- configs
    def sampled_names(self) -> list[str]:
        """TrainConfig fields this space can set per trial (the results' config.* columns)."""
        if self.kind == "ablation":
            switches = list(ABLATIONS[self.arms[0]]) if self.arms else []
            return switches + ["seed"]
        names: list[str] = []
        for p in self.parameters:
            for f in p.fields:
                if f not in names:
                    names.append(f)
        return names

    def base_config(self, config: TrainConfig | None = None) -> TrainConfig:
        """`config` (default: TrainConfig's defaults) <- the space's `base` <- epochs =
        budget.max_epochs: the complete base of a run that has no command-line flags.

        A caller with flags merges them on top of this (or builds its own base in the same
        order) before handing it to `trial_config`.
        """
        merged = {**(config or TrainConfig()).to_dict(), **self.base,
                  "epochs": self.budget.max_epochs}
        where = f"{self.path}: base"
        try:
            return TrainConfig.from_dict(merged, source=where)
        except ConfigError as exc:
            raise ConfigError(prefixed(where, exc)) from None

    def trial_config(self, base: TrainConfig, sampled: Mapping[str, Any]) -> TrainConfig:
        """The complete, validated TrainConfig of one trial: `base` <- the sampled values.

        base: complete already: the space's `base`, --config, the command-line flags and
        epochs = budget.max_epochs merged by the caller (see `base_config`).
        sampled: a Ray trial config (Optuna's parameters and the constants define_by_run
        returned) or an ablation_grid() entry; a pair label such as "6/3" (or [6, 3]) is
        expanded to its fields, an ablation id to its switches.
        """
        where = f"{self.path}: trial config"
        pairs = {p.name: p for p in self.parameters if p.is_pair}
        direct: dict[str, Any] = {}
        expanded: dict[str, Any] = {}
        for key, value in sampled.items():
            if key == "ablation" and self.kind == "ablation":
                arm = str(value).upper()
                if arm not in ABLATIONS:
                    raise ConfigError(f"{where}: unknown ablation {value!r}; choose one of "
                                      f"{', '.join(ABLATIONS)}")
                expanded.update(ABLATIONS[arm])
            elif key in pairs:
                expanded.update(_expand_pair(pairs[key], value, where))
            elif key in RESERVED:
                raise ConfigError(f"{where}: {key} cannot be sampled: {RESERVED[key]}")
            elif key in _defaults():
                direct[key] = value
            else:
                raise ConfigError(f"{where}: unknown key '{key}' (not a TrainConfig field or a "
                                  f"parameter of space '{self.name}'){field_hint(str(key))}")
        for key, value in direct.items():
            if key in expanded and not same(expanded[key], value):
                raise ConfigError(f"{where}: {key}={value!r} disagrees with the pair label "
                                  f"that sets it to {expanded[key]!r}")
        merged = {**base.to_dict(), **expanded, **direct}
        try:
            return TrainConfig.from_dict(merged, source=where)
        except ConfigError as exc:
            raise ConfigError(prefixed(where, exc)) from None

    def ablation_grid(self) -> list[dict[str, Any]]:
        """Every (arm, seed) run of an ablation space: [{"ablation": "E1", "seed": 0}, ...]."""
        if self.kind != "ablation":
            raise ConfigError(f"{self.path}: space '{self.name}' is a search space, "
                              "not an ablation grid (use define_by_run())")
        return [{"ablation": arm, "seed": seed} for arm in self.arms for seed in self.seeds]


# ---------------------------------------------------------------------------- helpers
@functools.cache
def _defaults() -> dict[str, Any]:
    """TrainConfig's defaults by field name (built once; conditions read them per trial)."""
    return TrainConfig().to_dict()


def same(a: Any, b: Any) -> bool:
    """Equality that does not confuse True with 1 (YAML users mean the bool)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def pair_label(choice: list[Any]) -> str:
    """The label Optuna sees for one choice of a pair: [6, 3] -> "6/3"."""
    return "/".join(str(v) for v in choice)


def _expand_pair(spec: ParamSpec, value: Any, where: str) -> dict[str, Any]:
    """A pair parameter's label ("6/3") or list ([6, 3]) -> {patch_length: 6, stride: 3}."""
    assert spec.choices is not None
    labels = spec.labels()
    if isinstance(value, str) and value in labels:
        chosen = spec.choices[labels.index(value)]
    elif isinstance(value, (list, tuple)) and pair_label(list(value)) in labels:
        chosen = spec.choices[labels.index(pair_label(list(value)))]
    else:
        raise ConfigError(f"{where}: {spec.name}={value!r} is not one of "
                          f"{', '.join(labels)}")
    return dict(zip(spec.fields, copy.deepcopy(chosen)))


__all__ = ["RESERVED", "ParamSpec", "SearchSpace", "pair_label", "same"]
