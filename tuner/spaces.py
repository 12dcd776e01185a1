"""Declarative YAML search spaces -> an Optuna define-by-run sampler.

A researcher describes a search in a small YAML file (see search_spaces/*.yaml) instead of
Python: which TrainConfig fields to sample, from which distribution, under which
condition, and with what budget. This module reads such a file, rejects every mistake it
can detect before a cluster is booked (one line naming the file and the key), and turns
the space into the define-by-run function that Ray Tune's OptunaSearch calls per trial.

Why define-by-run rather than a fixed dict of distributions: conditional parameters.
`contrastive_weight` only matters when `use_contrastive` is true; sampling it anyway would
waste TPE's attention on a dimension with no effect. With define-by-run Optuna only sees
a parameter in the trials where it is active.

Schema (top level): description, kind (search | ablation), budget, resources, base, and
either parameters (kind search) or ablation (kind ablation). Parameter names are
TrainConfig field names; a `choice` with `fields` sets several fields at once (a pair such
as patch_length/stride), sampled as a string label "6/3" because Optuna's categorical
choices must be primitives.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from timesclip.config import ABLATIONS, TrainConfig
from timesclip.errors import ConfigError

if TYPE_CHECKING:  # optuna is only needed for the annotation; Ray passes a wrapper anyway
    import optuna

#: Metrics a trial reports per epoch that a search can optimise, and their natural mode.
METRIC_MODES: dict[str, str] = {
    "val_rmse": "min",
    "val_loss": "min",
    "val_mae": "min",
    "val_mape": "min",
    "val_r2": "max",
}

PARAM_TYPES = ("loguniform", "uniform", "int", "choice", "fixed")

#: Keys each parameter type accepts (besides `type` and `condition`).
_TYPE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # type: (required keys, optional keys)
    "loguniform": (("low", "high"), ()),
    "uniform": (("low", "high"), ()),
    "int": (("low", "high"), ("step", "log")),
    "choice": (("choices",), ("fields",)),
    "fixed": (("value",), ()),
}

_TOP_KEYS = ("description", "kind", "budget", "resources", "base", "parameters", "ablation")
_BUDGET_KEYS = ("num_samples", "max_epochs", "grace_period", "reduction_factor", "metric",
                "mode", "max_concurrent", "startup_trials")
#: Optuna's TPESampler default number of random start-up trials.
DEFAULT_STARTUP_TRIALS = 10
_RESOURCE_KEYS = ("cpus_per_trial", "gpus_per_trial")
_ABLATION_KEYS = ("arms", "seeds")

#: Fields a space may not set: the per-trial epoch count IS budget.max_epochs (ASHA's
#: max_t), so a second value for it could only disagree with the scheduler.
_RESERVED = {"epochs": "it follows budget.max_epochs (the ASHA max_t); set that instead"}

_FIELD_TYPES: dict[str, str] = {f.name: str(f.type) for f in fields(TrainConfig)}


# ---------------------------------------------------------------------------- data types
@dataclass
class Budget:
    """How much search to run and how ASHA judges trials."""

    num_samples: int  # trials to start (for an ablation: arms x seeds)
    max_epochs: int  # per-trial epoch budget = ASHA max_t = TrainConfig.epochs
    grace_period: int  # epochs every trial gets before ASHA may stop it
    reduction_factor: float  # ASHA keeps 1/reduction_factor of trials at each rung
    metric: str  # reported metric to optimise, e.g. val_rmse
    mode: str  # "min" | "max"
    max_concurrent: int  # trials running at once (ConcurrencyLimiter)
    # random trials before TPE models the results (Optuna's n_startup_trials)
    startup_trials: int = DEFAULT_STARTUP_TRIALS


@dataclass
class Resources:
    """What Ray reserves for one trial."""

    cpus_per_trial: float
    gpus_per_trial: float  # fractional: several trials share one GPU


@dataclass
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
    fields: list[str] = field(default_factory=list)  # TrainConfig fields this parameter sets
    condition: dict | None = None  # {"field": f, "equals": v} or {"field": f, "in": [...]}

    @property
    def is_pair(self) -> bool:
        """True for a choice whose every choice sets several fields (e.g. patch/stride)."""
        return self.type == "choice" and self.fields != [self.name]

    def labels(self) -> list[str]:
        """Primitive stand-ins for pair choices: [6, 3] -> "6/3" (Optuna needs primitives)."""
        assert self.choices is not None
        return [_pair_label(c) for c in self.choices]


@dataclass
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

        _, constants = self._walk(pick)
        return constants or None

    def _walk(self, pick: Callable[[ParamSpec], Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Visit parameters in file order, honouring conditions.

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
            current = getattr(TrainConfig(), name)
        if "equals" in condition:
            return _same(current, condition["equals"])
        return any(_same(current, option) for option in condition["in"])

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

    def trial_config(self, base_config: TrainConfig, sampled: dict[str, Any], *,
                     overrides: dict[str, Any] | None = None) -> TrainConfig:
        """The complete, validated TrainConfig of one trial.

        Precedence, lowest first: `base_config` (from --config or defaults) <- the space's
        `base` <- `overrides` (command-line flags that must beat the space's base, e.g.
        --backbone) <- the sampled values (a Ray trial config or an ablation_grid() entry;
        pair labels such as "6/3" are expanded) ; finally epochs = budget.max_epochs.
        """
        where = f"{self.path}: trial config"
        merged = base_config.to_dict()
        merged.update(self.base)
        merged.update(overrides or {})
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
            elif key in _FIELD_TYPES:
                direct[key] = value
            else:
                raise ConfigError(f"{where}: unknown key '{key}' (not a TrainConfig field or a "
                                  f"parameter of space '{self.name}'){_suggest(key)}")
        for key, value in direct.items():
            if key in expanded and not _same(expanded[key], value):
                raise ConfigError(f"{where}: {key}={value!r} disagrees with the pair label "
                                  f"that sets it to {expanded[key]!r}")
        merged.update(expanded)
        merged.update(direct)
        merged["epochs"] = self.budget.max_epochs
        try:
            return TrainConfig.from_dict(merged, source=where)
        except ConfigError as exc:
            if str(exc).startswith(where):
                raise
            raise ConfigError(f"{where}: {exc}") from None

    def ablation_grid(self) -> list[dict[str, Any]]:
        """Every (arm, seed) run of an ablation space: [{"ablation": "E1", "seed": 0}, ...]."""
        if self.kind != "ablation":
            raise ConfigError(f"{self.path}: space '{self.name}' is a search space, "
                              "not an ablation grid (use define_by_run())")
        return [{"ablation": arm, "seed": seed} for arm in self.arms for seed in self.seeds]

    def with_overrides(self, **changes: Any) -> SearchSpace:
        """A copy with command-line budget/resource overrides applied and re-validated.

        Accepts the Budget and Resources field names (None values are ignored), e.g.
        `space.with_overrides(max_epochs=3, gpus_per_trial=0)`. For an ablation,
        grace_period follows max_epochs (ablation arms are never pruned).
        """
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(changes) - set(_BUDGET_KEYS) - set(_RESOURCE_KEYS))
        if unknown:
            raise ConfigError(f"unknown search override(s) {', '.join(unknown)}; known: "
                              f"{', '.join(_BUDGET_KEYS + _RESOURCE_KEYS)}")
        where = f"{self.path} (with command-line overrides)"
        raw_budget = {**vars(self.budget), **{k: v for k, v in changes.items()
                                              if k in _BUDGET_KEYS}}
        if self.kind == "ablation":
            if "num_samples" in changes:
                raise ConfigError(f"{where}: num_samples of an ablation is arms x seeds "
                                  f"({len(self.arms) * len(self.seeds)}); it cannot be set")
            if "max_epochs" in changes and "grace_period" not in changes:
                raw_budget["grace_period"] = raw_budget["max_epochs"]
        if "metric" in changes and "mode" not in changes:
            raw_budget.pop("mode")
        raw_resources = {**vars(self.resources), **{k: v for k, v in changes.items()
                                                    if k in _RESOURCE_KEYS}}
        budget = _parse_budget(raw_budget, where, self.kind, len(self.arms) * len(self.seeds))
        resources = _parse_resources(raw_resources, where)
        return replace(self, budget=budget, resources=resources)


# ---------------------------------------------------------------------------- loading
def list_spaces() -> list[str]:
    """Names of the spaces bundled in the search_spaces package (file stems)."""
    return sorted(p.name[: -len(".yaml")] for p in files("search_spaces").iterdir()
                  if p.name.endswith(".yaml"))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load a bundled space by name ("full") or a YAML file by path, fully validated."""
    text_name = str(name_or_path)
    bundled = list_spaces()
    is_pathlike = isinstance(name_or_path, Path) or "/" in text_name or "\\" in text_name \
        or text_name.endswith((".yaml", ".yml"))
    if not is_pathlike and text_name in bundled:
        resource = files("search_spaces") / f"{text_name}.yaml"
        return _parse(resource.read_text(), Path(str(resource)), text_name)
    path = Path(text_name).expanduser()
    if path.is_file():
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read search space {path}: {exc.strerror or exc}") from None
        return _parse(text, path, path.stem)
    if is_pathlike:
        raise ConfigError(f"search space file {path} not found; bundled spaces: "
                          f"{', '.join(bundled)}")
    raise ConfigError(f"unknown search space '{text_name}'; bundled spaces: "
                      f"{', '.join(bundled)}; or pass a path to a YAML file")


def _parse(text: str, path: Path, name: str) -> SearchSpace:
    """Parse and validate one space file; every error names `path` and the key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{at} ({problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys description, kind, budget, ...")
    _check_keys(data, _TOP_KEYS, ("description", "kind", "budget"), path, "top level")

    description = data["description"]
    if not isinstance(description, str) or not description.strip():
        raise ConfigError(f"{path}: description: must be a non-empty string")
    kind = data["kind"]
    if kind not in ("search", "ablation"):
        raise ConfigError(f"{path}: kind: must be 'search' or 'ablation', got {kind!r}")
    if kind == "search":
        if "ablation" in data:
            raise ConfigError(f"{path}: ablation: only allowed with kind: ablation")
        if "parameters" not in data:
            raise ConfigError(f"{path}: parameters: missing (a search space needs at least "
                              "one parameter)")
    else:
        if "parameters" in data:
            raise ConfigError(f"{path}: parameters: not allowed with kind: ablation (an "
                              "ablation runs fixed arms; put fixed values in base)")
        if "ablation" not in data:
            raise ConfigError(f"{path}: ablation: missing (needs arms: [E1, ...] and seeds)")

    if kind == "ablation" and isinstance(data.get("base"), dict):
        switches = {k for arm in ABLATIONS.values() for k in arm}
        clash = sorted(switches & set(data["base"]))
        if clash:  # before base is checked as a TrainConfig, which would blame the switch
            raise ConfigError(f"{path}: base.{clash[0]}: set by the ablation arms; remove it "
                              "from base")
    base = _parse_base(data.get("base"), path)
    parameters: list[ParamSpec] = []
    arms: list[str] = []
    seeds: list[int] = []
    if kind == "search":
        parameters = _parse_parameters(data["parameters"], base, path)
    else:
        arms, seeds = _parse_ablation(data["ablation"], base, path)

    raw_budget = data["budget"]
    if not isinstance(raw_budget, dict):
        raise ConfigError(f"{path}: budget: expected a mapping of {', '.join(_BUDGET_KEYS)}")
    required = ("max_epochs",) if kind == "ablation" else ("num_samples", "max_epochs",
                                                             "grace_period", "reduction_factor")
    _check_keys(raw_budget, _BUDGET_KEYS, required, path, "budget")
    budget = _parse_budget(raw_budget, str(path), kind, len(arms) * len(seeds))

    raw_resources = data.get("resources") or {}
    if not isinstance(raw_resources, dict):
        raise ConfigError(f"{path}: resources: expected a mapping of cpus_per_trial, "
                          "gpus_per_trial")
    _check_keys(raw_resources, _RESOURCE_KEYS, (), path, "resources")
    resources = _parse_resources({"cpus_per_trial": 1, "gpus_per_trial": 0, **raw_resources},
                                 str(path))

    space = SearchSpace(name=name, path=path, kind=kind, description=description.strip(),
                        budget=budget, resources=resources, base=base, parameters=parameters,
                        arms=arms, seeds=seeds)
    _check_samples(space)
    return space


def _parse_base(raw: Any, path: Path) -> dict[str, Any]:
    """Fixed values for every trial, coerced to field types and checked as a TrainConfig."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: base: expected a mapping of TrainConfig field: value")
    base: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}: base.{key}"
        _check_field_name(key, where)
        base[key] = _coerce(key, value, where)
    try:
        TrainConfig.from_dict(base, source=f"{path}: base")
    except ConfigError as exc:
        raise ConfigError(_prefixed(f"{path}: base", exc)) from None
    return base


def _parse_parameters(raw: Any, base: dict[str, Any], path: Path) -> list[ParamSpec]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: parameters: expected a non-empty mapping of "
                          "name: {type: ..., ...}")
    specs: list[ParamSpec] = []
    set_by: dict[str, str] = {}  # field -> parameter that sets it (earlier in the file)
    for name, body in raw.items():
        where = f"{path}: parameters.{name}"
        if not isinstance(name, str):
            raise ConfigError(f"{where}: parameter names must be strings (quote YAML "
                              "words like yes/no/on/off)")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: expected a mapping like {{type: loguniform, low: .., "
                              "high: ..}}")
        spec = _parse_param(name, body, where)
        for f in spec.fields:
            if f in base:
                raise ConfigError(f"{where}: {f} is also fixed in base; keep it in one place")
            if f in set_by:
                raise ConfigError(f"{where}: {f} is already set by parameter '{set_by[f]}'")
        if spec.condition is not None:
            later = {f for other, b in list(raw.items())[len(specs) + 1:]
                     for f in _declared_fields(other, b)}
            spec.condition = _parse_condition(spec.condition, path, f"parameters.{name}",
                                              specs, set_by, base, later)
        _check_candidates(spec, base, where)
        specs.append(spec)
        for f in spec.fields:
            set_by[f] = name
    return specs


def _declared_fields(name: Any, body: Any) -> list[str]:
    """Fields a not-yet-parsed parameter will set (for 'later parameter' messages)."""
    if isinstance(body, dict) and isinstance(body.get("fields"), list):
        return [str(f) for f in body["fields"]]
    return [str(name)]


def _parse_param(name: str, body: dict, where: str) -> ParamSpec:
    """One parameter body -> ParamSpec, with bounds, choices and field types checked."""
    kind = body.get("type")
    if kind is None:
        raise ConfigError(f"{where}.type: missing; one of {', '.join(PARAM_TYPES)}")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}.type: unknown type {kind!r}; one of "
                          f"{', '.join(PARAM_TYPES)}")
    required, optional = _TYPE_KEYS[kind]
    allowed = ("type", "condition") + required + optional
    for key in body:
        if key not in allowed:
            hint = _closest(str(key), allowed)
            raise ConfigError(f"{where}.{key}: not a key of a {kind} parameter"
                              f"{hint}; allowed: {', '.join(allowed)}")
    _check_missing(body, required, where, f"a {kind} parameter")

    pair_fields = body.get("fields")
    if pair_fields is not None:
        if not isinstance(pair_fields, list) or len(pair_fields) < 2:
            raise ConfigError(f"{where}.fields: expected a list of two or more TrainConfig "
                              "fields, e.g. [patch_length, stride]")
        for f in pair_fields:
            _check_field_name(f, f"{where}.fields")
        if len(set(pair_fields)) != len(pair_fields):
            raise ConfigError(f"{where}.fields: a field is listed twice")
        if name in _FIELD_TYPES:
            raise ConfigError(f"{where}: a choice with fields needs a name that is not a "
                              f"TrainConfig field (e.g. 'patch'), got '{name}'")
        if not name.isidentifier():  # Ray's OptunaSearch nests config keys containing "/"
            raise ConfigError(f"{where}: a choice with fields needs a plain identifier as "
                              f"its name (letters, digits, _), e.g. 'patch'")
        target_fields = list(pair_fields)
    else:
        _check_field_name(name, where)
        target_fields = [name]
    spec = ParamSpec(name=name, type=kind, fields=target_fields, condition=body.get("condition"))
    field_type = _FIELD_TYPES.get(name, "")

    if kind in ("loguniform", "uniform"):
        if field_type != "float":
            raise ConfigError(f"{where}.type: {kind} samples floats but {name} is {field_type}"
                              "; use type int or choice")
        spec.low = _number(body["low"], f"{where}.low")
        spec.high = _number(body["high"], f"{where}.high")
        spec.log = kind == "loguniform"
    elif kind == "int":
        if field_type not in ("int", "int | None"):
            raise ConfigError(f"{where}.type: int samples integers but {name} is {field_type}")
        spec.low = _integer(body["low"], f"{where}.low")
        spec.high = _integer(body["high"], f"{where}.high")
        spec.step = _integer(body.get("step", 1), f"{where}.step")
        log = body.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.log: must be true or false, got {log!r}")
        spec.log = log
        if spec.step < 1:
            raise ConfigError(f"{where}.step: must be >= 1, got {spec.step}")
        if log and spec.step != 1:
            raise ConfigError(f"{where}.step: log: true needs step 1 (Optuna cannot combine "
                              "them)")
    if kind in ("loguniform", "uniform", "int"):
        if spec.low > spec.high:
            raise ConfigError(f"{where}.low: low ({spec.low}) is greater than high "
                              f"({spec.high})")
        if spec.log and spec.low <= 0:
            raise ConfigError(f"{where}.low: a log scale needs low > 0, got {spec.low}")

    if kind == "choice":
        choices = body["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list")
        if pair_fields is not None:
            spec.choices = []
            for i, choice in enumerate(choices):
                if not isinstance(choice, list) or len(choice) != len(pair_fields):
                    raise ConfigError(f"{where}.choices[{i}]: expected a list of "
                                      f"{len(pair_fields)} values for "
                                      f"{', '.join(pair_fields)}, got {choice!r}")
                spec.choices.append([_coerce(f, v, f"{where}.choices[{i}]")
                                     for f, v in zip(pair_fields, choice)])
            labels = spec.labels()
            if len(set(labels)) != len(labels):
                raise ConfigError(f"{where}.choices: duplicate choices")
        else:
            spec.choices = [_coerce(name, v, f"{where}.choices[{i}]")
                            for i, v in enumerate(choices)]
            if any(isinstance(c, list) for c in spec.choices):
                raise ConfigError(f"{where}.choices: list-valued choices need a fields: "
                                  "[...] key naming the fields they set")
    elif kind == "fixed":
        spec.value = _coerce(name, body["value"], f"{where}.value")
    return spec


def _parse_condition(raw: Any, path: Path, section: str, earlier: list[ParamSpec],
                     set_by: dict[str, str], base: dict[str, Any],
                     later: set[str]) -> dict:
    """Check a condition refers to an earlier parameter (or base) with reachable values."""
    where = f"{path}: {section}.condition"
    if not isinstance(raw, dict) or "field" not in raw:
        raise ConfigError(f"{where}: expected {{field: NAME, equals: VALUE}} or "
                          "{field: NAME, in: [...]}")
    _check_keys(raw, ("field", "equals", "in"), ("field",), path, f"{section}.condition")
    if ("equals" in raw) == ("in" in raw):
        raise ConfigError(f"{where}: give exactly one of equals or in")
    target = raw["field"]
    if not isinstance(target, str) or target not in _FIELD_TYPES:
        raise ConfigError(f"{where}.field: unknown field {target!r}{_suggest(str(target))}")
    if target not in set_by and target not in base and target in later:
        raise ConfigError(f"{where}.field: '{target}' is set by a later parameter; move that "
                          "parameter above this one (conditions only look backwards)")
    if target not in set_by and target not in base:
        raise ConfigError(f"{where}.field: '{target}' is not set by an earlier parameter or "
                          "by base; define that parameter above this one (or fix it in base)")
    if "in" in raw:
        options = raw["in"]
        if not isinstance(options, list) or not options:
            raise ConfigError(f"{where}.in: expected a non-empty list")
        key = "in"
    else:
        options, key = [raw["equals"]], "equals"
    options = [_coerce(target, v, f"{where}.{key}") for v in options]
    parent = next((p for p in earlier if target in p.fields), None)
    if parent is not None:
        reachable = _reachable(parent, target)
        for option in options:
            if not _can_take(parent, reachable, option):
                raise ConfigError(f"{where}.{key}: {option!r} is never sampled by parameter "
                                  f"'{parent.name}', so this parameter would never be used")
    elif not any(_same(base[target], option) for option in options):
        raise ConfigError(f"{where}: never holds, base sets {target} to {base[target]!r}; "
                          "remove the condition or the parameter")
    return {"field": target, key: options[0] if key == "equals" else options}


def _reachable(parent: ParamSpec, target: str) -> list[Any] | None:
    """The discrete values `parent` can give `target`, or None for a numeric range."""
    if parent.type == "fixed":
        return [parent.value]
    if parent.type == "choice":
        assert parent.choices is not None
        if parent.is_pair:
            index = parent.fields.index(target)
            return [c[index] for c in parent.choices]
        return list(parent.choices)
    return None


def _can_take(parent: ParamSpec, reachable: list[Any] | None, option: Any) -> bool:
    if reachable is not None:
        return any(_same(option, r) for r in reachable)
    return isinstance(option, (int, float)) and parent.low <= option <= parent.high


def _check_candidates(spec: ParamSpec, base: dict[str, Any], where: str) -> None:
    """Each value the parameter can take must make a valid TrainConfig with base."""
    if spec.type in ("loguniform", "uniform", "int"):
        candidates = [("low", [spec.low]), ("high", [spec.high])]
    elif spec.type == "choice":
        assert spec.choices is not None
        candidates = [(f"choices[{i}]", c if spec.is_pair else [c])
                      for i, c in enumerate(spec.choices)]
    else:
        candidates = [("value", [spec.value])]
    for key, values in candidates:
        trial = {**base, **dict(zip(spec.fields, values))}
        try:
            TrainConfig.from_dict(trial, source=f"{where}.{key}")
        except ConfigError as exc:
            shown = values[0] if len(values) == 1 else values
            raise ConfigError(_prefixed(f"{where}.{key}", exc, f"{shown!r} is invalid "
                                        "(checked with base and TrainConfig defaults)")) from None


def _check_samples(space: SearchSpace) -> None:
    """Build whole trial configs (lowest and highest picks; every ablation arm) up front."""
    where = f"{space.path}"
    if space.kind == "ablation":
        for entry in space.ablation_grid()[:: max(1, len(space.seeds))]:
            try:
                space.trial_config(TrainConfig(), entry)
            except ConfigError as exc:
                raise ConfigError(f"{where}: ablation.arms: arm {entry['ablation']} with base "
                                  f"is invalid: {_strip(exc)}") from None
        return

    def lowest(p: ParamSpec) -> Any:
        return p.low if p.type in ("loguniform", "uniform", "int") else \
            (p.choices[0] if p.type == "choice" else p.value)  # type: ignore[index]

    def highest(p: ParamSpec) -> Any:
        return p.high if p.type in ("loguniform", "uniform", "int") else \
            (p.choices[-1] if p.type == "choice" else p.value)  # type: ignore[index]

    for label, pick in (("lowest", lowest), ("highest", highest)):
        values, _ = space._walk(pick)
        try:
            space.trial_config(TrainConfig(), values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: parameters: the {label} sample {values} is not a "
                              f"valid TrainConfig: {_strip(exc)}") from None


def _parse_ablation(raw: Any, base: dict[str, Any], path: Path) -> tuple[list[str], list[int]]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: ablation: expected a mapping with arms and seeds")
    _check_keys(raw, _ABLATION_KEYS, _ABLATION_KEYS, path, "ablation")
    arms = raw["arms"]
    if not isinstance(arms, list) or not arms:
        raise ConfigError(f"{path}: ablation.arms: expected a non-empty list such as "
                          "[E1, E2, E3, E4, E5]")
    normalised: list[str] = []
    for arm in arms:
        key = str(arm).upper()
        if key not in ABLATIONS:
            raise ConfigError(f"{path}: ablation.arms: unknown arm {arm!r}; choose from "
                              f"{', '.join(ABLATIONS)}")
        if key in normalised:
            raise ConfigError(f"{path}: ablation.arms: {key} is listed twice")
        normalised.append(key)
    seeds = raw["seeds"]
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"{path}: ablation.seeds: expected a non-empty list of integers, "
                          f"got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: ablation.seeds: a seed is listed twice")
    if "seed" in base:
        raise ConfigError(f"{path}: base.seed: set per run by ablation.seeds; remove it "
                          "from base")
    return normalised, list(seeds)


def _parse_budget(raw: dict[str, Any], where: str, kind: str, grid_size: int) -> Budget:
    """Budget values with types, ranges and their relations checked."""
    def key(name: str) -> str:
        return f"{where}: budget.{name}"

    metric = raw.get("metric", "val_rmse")
    if metric not in METRIC_MODES:
        raise ConfigError(f"{key('metric')}: unknown metric {metric!r}; one of "
                          f"{', '.join(METRIC_MODES)}")
    mode = raw.get("mode", METRIC_MODES[metric])
    if mode not in ("min", "max"):
        raise ConfigError(f"{key('mode')}: must be min or max, got {mode!r}")
    if mode != METRIC_MODES[metric]:
        raise ConfigError(f"{key('mode')}: {metric} is better when "
                          f"{'lower' if METRIC_MODES[metric] == 'min' else 'higher'}; "
                          f"use mode: {METRIC_MODES[metric]}")
    max_epochs = _integer(raw["max_epochs"], key("max_epochs"), minimum=1)
    if kind == "ablation":
        if "num_samples" in raw and raw["num_samples"] != grid_size:
            raise ConfigError(f"{key('num_samples')}: an ablation runs arms x seeds = "
                              f"{grid_size} trials; remove num_samples or set it to that")
        num_samples = grid_size
        grace = _integer(raw.get("grace_period", max_epochs), key("grace_period"), minimum=1)
        if grace != max_epochs:
            raise ConfigError(f"{key('grace_period')}: an ablation runs every arm to the "
                              f"end (no pruning); set it to max_epochs ({max_epochs}) or "
                              "remove it")
        reduction = _number(raw.get("reduction_factor", 2), key("reduction_factor"))
    else:
        num_samples = _integer(raw["num_samples"], key("num_samples"), minimum=1)
        grace = _integer(raw["grace_period"], key("grace_period"), minimum=1)
        reduction = _number(raw["reduction_factor"], key("reduction_factor"))
        if grace > max_epochs:
            raise ConfigError(f"{key('grace_period')}: grace_period ({grace}) must be <= "
                              f"max_epochs ({max_epochs})")
    if not reduction > 1:
        raise ConfigError(f"{key('reduction_factor')}: must be > 1 (ASHA keeps "
                          f"1/reduction_factor of trials per rung), got {reduction}")
    max_concurrent = _integer(raw.get("max_concurrent", 1), key("max_concurrent"), minimum=1)
    startup = _integer(raw.get("startup_trials", DEFAULT_STARTUP_TRIALS),
                       key("startup_trials"), minimum=1)
    return Budget(num_samples=num_samples, max_epochs=max_epochs, grace_period=grace,
                  reduction_factor=float(reduction), metric=metric, mode=mode,
                  max_concurrent=max_concurrent, startup_trials=startup)


def _parse_resources(raw: dict[str, Any], where: str) -> Resources:
    cpus = _number(raw["cpus_per_trial"], f"{where}: resources.cpus_per_trial")
    gpus = _number(raw["gpus_per_trial"], f"{where}: resources.gpus_per_trial")
    if not cpus > 0:
        raise ConfigError(f"{where}: resources.cpus_per_trial: must be > 0, got {cpus}")
    if gpus < 0:
        raise ConfigError(f"{where}: resources.gpus_per_trial: must be >= 0, got {gpus}")
    if gpus > 1 and not float(gpus).is_integer():
        raise ConfigError(f"{where}: resources.gpus_per_trial: Ray shares a GPU only in "
                          f"fractions below 1; above 1 use a whole number, got {gpus}")
    return Resources(cpus_per_trial=float(cpus), gpus_per_trial=float(gpus))


# ---------------------------------------------------------------------------- helpers
def _check_keys(data: dict, allowed: tuple[str, ...], required: tuple[str, ...],
                path: Path | str, section: str) -> None:
    """Unknown keys (with the closest known one) and missing required keys."""
    prefix = "" if section == "top level" else f"{section}."
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{path}: {prefix}{key}: unknown key in {section}"
                              f"{_closest(str(key), allowed)}; allowed: {', '.join(allowed)}")
    _check_missing(data, required, f"{path}: {section}", section)


def _check_missing(data: dict, required: tuple[str, ...], where: str, what: str) -> None:
    """Every missing required key in one line, so a new file is fixed in one edit."""
    missing = [key for key in required if key not in data]
    if missing:
        raise ConfigError(f"{where}: missing required key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(missing)} ({what} needs {', '.join(required)})")


def _check_field_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or name not in _FIELD_TYPES:
        raise ConfigError(f"{where}: unknown parameter {name!r}, not a TrainConfig field"
                          f"{_suggest(str(name))}")
    if name in _RESERVED:
        raise ConfigError(f"{where}: {name} cannot be set in a search space: {_RESERVED[name]}")


def _closest(word: str, options: tuple[str, ...] | list[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _suggest(name: str) -> str:
    return _closest(name, list(_FIELD_TYPES))


def _number(value: Any, where: str) -> float | int:
    """A finite number; YAML 1.1 reads `1e-3` as a string, so numeric strings are accepted."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return value


def _integer(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be >= {minimum}, got {value}")
    return value


def _coerce(name: str, value: Any, where: str) -> Any:
    """Check/convert one value to the type of TrainConfig field `name`."""
    kind = _FIELD_TYPES[name]
    if value is None:
        if kind.endswith("| None"):
            return None
        raise ConfigError(f"{where}: {name} cannot be null (it is {kind})")
    if kind == "float":
        try:
            return float(_number(value, where))
        except ConfigError:
            raise ConfigError(f"{where}: {name} must be a number, got {value!r}") from None
    if kind in ("int", "int | None"):
        try:
            return _integer(value, where)
        except ConfigError:
            raise ConfigError(f"{where}: {name} must be an integer, got {value!r}") from None
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {name} must be a string, got {value!r}")
        return value
    if kind == "list[str] | None":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {name} must be a list of strings, got {value!r}")
        return list(value)
    return value


def _same(a: Any, b: Any) -> bool:
    """Equality that does not confuse True with 1 (YAML users mean the bool)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _pair_label(choice: list[Any]) -> str:
    return "/".join(str(v) for v in choice)


def _expand_pair(spec: ParamSpec, value: Any, where: str) -> dict[str, Any]:
    """A pair parameter's label ("6/3") or list ([6, 3]) -> {patch_length: 6, stride: 3}."""
    assert spec.choices is not None
    labels = spec.labels()
    if isinstance(value, str) and value in labels:
        chosen = spec.choices[labels.index(value)]
    elif isinstance(value, (list, tuple)) and _pair_label(list(value)) in labels:
        chosen = spec.choices[labels.index(_pair_label(list(value)))]
    else:
        raise ConfigError(f"{where}: {spec.name}={value!r} is not one of "
                          f"{', '.join(labels)}")
    return dict(zip(spec.fields, copy.deepcopy(chosen)))


def _strip(exc: Exception) -> str:
    """The message of a nested error without its leading 'file: key:' location."""
    text = str(exc)
    for marker in (": trial config: ",):
        if marker in text:
            return text.split(marker, 1)[1]
    return text


def _prefixed(where: str, exc: ConfigError, what: str | None = None) -> str:
    """Re-anchor a TrainConfig error at the space file's key, keeping one line."""
    text = str(exc)
    if text.startswith(where):
        text = text[len(where):].lstrip(": ")
    return f"{where}: {what}: {text}" if what else f"{where}: {text}"


__all__ = ["METRIC_MODES", "PARAM_TYPES", "Budget", "ParamSpec", "Resources", "SearchSpace",
           "list_spaces", "load_space"]
