"""Find a space file, read it, and check every rule between its keys before Ray starts.

`tuner.spaces.schema` checks each section on its own (keys, types); this module checks
what spans keys and sections, in file order so the first mistake of a file is the one
reported: a field set in one place only, conditions that look backwards at values that
can occur, each bound and choice valid for TrainConfig with `base`, the budget's and
resources' rules (the same functions the command-line flags go through), and whole
trial configs (the lowest and highest sample, every ablation arm). Every error is one
line naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
from importlib.resources import files
from pathlib import Path
from typing import Any

from timesclip.config import ABLATIONS, TrainConfig, coerce_field
from timesclip.errors import ConfigError
from tuner.spaces.budget import check_budget, check_resources
from tuner.spaces.messages import field_hint, prefixed
from tuner.spaces.model import RESERVED, ParamSpec, SearchSpace, same
from tuner.spaces.schema import (
    PARAMETER_TYPES,
    AblationSection,
    Condition,
    ResourcesSection,
    SpaceFile,
    budget_section,
    read_yaml,
    validated,
)

#: TrainConfig field -> its type as written in the class ("float", "int | None", ...).
_FIELD_TYPES: dict[str, str] = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
_RANGES = ("loguniform", "uniform", "int")


# ---------------------------------------------------------------------------- finding
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
        return parse_space(resource.read_text(), Path(str(resource)), text_name)
    path = Path(text_name).expanduser()
    if path.is_file():
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read search space {path}: {exc.strerror or exc}") from None
        return parse_space(text, path, path.stem)
    if is_pathlike:
        raise ConfigError(f"search space file {path} not found; bundled spaces: "
                          f"{', '.join(bundled)}")
    raise ConfigError(f"unknown search space '{text_name}'; bundled spaces: "
                      f"{', '.join(bundled)}; or pass a path to a YAML file")


# ---------------------------------------------------------------------------- the file
def parse_space(text: str, path: Path, name: str) -> SearchSpace:
    """Parse and validate one space file; every error names `path` and the key."""
    data = read_yaml(text, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys description, kind, budget, ...")
    top = validated(SpaceFile, data, at=f"{path}: ", section_at=f"{path}: top level",
                    what="the top level")
    kind = top.kind
    if kind == "search":
        if top.ablation is not None:
            raise ConfigError(f"{path}: ablation: only allowed with kind: ablation")
        if top.parameters is None:
            raise ConfigError(f"{path}: parameters: missing (a search space needs at least "
                              "one parameter)")
    else:
        if top.parameters is not None:
            raise ConfigError(f"{path}: parameters: not allowed with kind: ablation (an "
                              "ablation runs fixed arms; put fixed values in base)")
        if top.ablation is None:
            raise ConfigError(f"{path}: ablation: missing (needs arms: [E1, ...] and seeds)")

    base = _parse_base(top.base or {}, path, kind)
    parameters: list[ParamSpec] = []
    arms: list[str] = []
    seeds: list[int] = []
    if kind == "search":
        parameters = _parse_parameters(top.parameters, base, path)
    else:
        arms, seeds = _parse_ablation(top.ablation, path)

    validated(budget_section(kind), top.budget, at=f"{path}: budget.",
              section_at=f"{path}: budget", what=f"a {kind} budget")
    budget = check_budget(top.budget, kind=kind, grid_size=len(arms) * len(seeds),
                          where=lambda key: f"{path}: budget.{key}")
    raw_resources = top.resources or {}
    validated(ResourcesSection, raw_resources, at=f"{path}: resources.",
              section_at=f"{path}: resources", what="resources")
    resources = check_resources(raw_resources, where=lambda key: f"{path}: resources.{key}")

    space = SearchSpace(name=name, path=path, kind=kind, description=top.description,
                        budget=budget, resources=resources, base=base, parameters=parameters,
                        arms=arms, seeds=seeds)
    _check_samples(space)
    return space


def _parse_base(raw: dict[Any, Any], path: Path, kind: str) -> dict[str, Any]:
    """Fixed values for every trial, read as their fields' types, checked as a TrainConfig."""
    if kind == "ablation":
        switches = {k for arm in ABLATIONS.values() for k in arm}
        clash = [k for k in raw if k in switches]
        if clash:  # before base is checked as a TrainConfig, which would blame the switch
            raise ConfigError(f"{path}: base.{clash[0]}: set by the ablation arms; remove it "
                              "from base")
        if "seed" in raw:
            raise ConfigError(f"{path}: base.seed: set per run by ablation.seeds; remove it "
                              "from base")
    base: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}: base.{key}"
        _check_field_name(key, where)
        base[key] = coerce_field(key, value, where)
    try:
        TrainConfig.from_dict(base, source=f"{path}: base")
    except ConfigError as exc:
        raise ConfigError(prefixed(f"{path}: base", exc)) from None
    return base


# ---------------------------------------------------------------------------- parameters
def _parse_parameters(raw: dict[Any, Any], base: dict[str, Any], path: Path
                      ) -> list[ParamSpec]:
    specs: list[ParamSpec] = []
    set_by: dict[str, str] = {}  # field -> parameter that sets it (earlier in the file)
    items = list(raw.items())
    for index, (name, body) in enumerate(items):
        where = f"{path}: parameters.{name}"
        if not isinstance(name, str):
            raise ConfigError(f"{where}: parameter names must be strings (quote YAML "
                              "words like yes/no/on/off)")
        spec, condition = _parse_param(name, body, where)
        for f in spec.fields:
            if f in base:
                raise ConfigError(f"{where}: {f} is also fixed in base; keep it in one place")
            if f in set_by:
                raise ConfigError(f"{where}: {f} is already set by parameter '{set_by[f]}'")
        if condition is not None:
            later = {f for other, b in items[index + 1:] for f in _declared_fields(other, b)}
            spec = dataclasses.replace(spec, condition=_parse_condition(
                condition, f"{where}.condition", specs, set_by, base, later))
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


def _parse_param(name: str, body: Any, where: str) -> tuple[ParamSpec, dict | None]:
    """One parameter body -> (ParamSpec without its condition, the raw condition)."""
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping like {{type: loguniform, low: .., "
                          "high: ..}")
    types = ", ".join(PARAMETER_TYPES)
    if "type" not in body:
        raise ConfigError(f"{where}.type: missing; one of {types}")
    kind = body["type"]
    if not isinstance(kind, str) or kind not in PARAMETER_TYPES:
        raise ConfigError(f"{where}.type: unknown type {kind!r}; one of {types}")
    model = PARAMETER_TYPES[kind]
    p = validated(model, body, at=f"{where}.", section_at=where, what=model.what)

    pair_fields = getattr(p, "fields", None)
    if pair_fields is not None:
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
        targets = list(pair_fields)
    else:
        _check_field_name(name, where)
        targets = [name]
    field_type = _FIELD_TYPES.get(name, "")
    values: dict[str, Any] = {}

    if kind in ("loguniform", "uniform") and field_type != "float":
        raise ConfigError(f"{where}.type: {kind} samples floats but {name} is {field_type}"
                          "; use type int or choice")
    if kind == "int" and field_type not in ("int", "int | None"):
        raise ConfigError(f"{where}.type: int samples integers but {name} is {field_type}")
    if kind in _RANGES:
        low, high = (_bound(name, getattr(p, key), f"{where}.{key}") for key in ("low", "high"))
        log = kind == "loguniform" or (kind == "int" and p.log)
        if kind == "int" and p.log and p.step != 1:
            raise ConfigError(f"{where}.step: log: true needs step 1 (Optuna cannot combine "
                              "them)")
        if low > high:
            raise ConfigError(f"{where}.low: low ({low}) is greater than high ({high})")
        if log and low <= 0:
            raise ConfigError(f"{where}.low: a log scale needs low > 0, got {low}")
        values = dict(low=low, high=high, log=log, step=p.step if kind == "int" else None)
    elif kind == "choice" and pair_fields is not None:
        choices = []
        for i, choice in enumerate(p.choices):
            if not isinstance(choice, list) or len(choice) != len(pair_fields):
                raise ConfigError(f"{where}.choices[{i}]: expected a list of "
                                  f"{len(pair_fields)} values for "
                                  f"{', '.join(pair_fields)}, got {choice!r}")
            choices.append([coerce_field(f, v, f"{where}.choices[{i}]")
                            for f, v in zip(pair_fields, choice)])
        values = dict(choices=choices)
    elif kind == "choice":
        choices = [coerce_field(name, v, f"{where}.choices[{i}]")
                   for i, v in enumerate(p.choices)]
        if any(isinstance(c, list) for c in choices):
            raise ConfigError(f"{where}.choices: list-valued choices need a fields: "
                              "[...] key naming the fields they set")
        values = dict(choices=choices)
    elif kind == "fixed":
        values = dict(value=coerce_field(name, p.value, f"{where}.value"))
    spec = ParamSpec(name=name, type=kind, fields=targets, **values)
    if spec.is_pair:
        labels = spec.labels()
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{where}.choices: duplicate choices")
    return spec, p.condition


def _bound(name: str, value: Any, where: str) -> int | float:
    """A range's low or high, read as the field's type (never None, even for `int | None`)."""
    if value is None:
        raise ConfigError(f"{where}: expected a number, got None")
    return coerce_field(name, value, where)


def _parse_condition(raw: dict, where: str, earlier: list[ParamSpec], set_by: dict[str, str],
                     base: dict[str, Any], later: set[str]) -> dict:
    """Check a condition refers to an earlier parameter (or base) with reachable values."""
    c = validated(Condition, raw, at=f"{where}.", section_at=where, what="a condition")
    given = c.model_fields_set
    if ("equals" in given) == ("in_" in given):
        raise ConfigError(f"{where}: give exactly one of equals or in")
    target = c.field
    if target not in _FIELD_TYPES:
        raise ConfigError(f"{where}.field: unknown field {target!r}{field_hint(target)}")
    if target not in set_by and target not in base and target in later:
        raise ConfigError(f"{where}.field: '{target}' is set by a later parameter; move that "
                          "parameter above this one (conditions only look backwards)")
    if target not in set_by and target not in base:
        raise ConfigError(f"{where}.field: '{target}' is not set by an earlier parameter or "
                          "by base; define that parameter above this one (or fix it in base)")
    key = "in" if "in_" in given else "equals"
    options = [coerce_field(target, v, f"{where}.{key}")
               for v in (c.in_ if key == "in" else [c.equals])]
    parent = next((p for p in earlier if target in p.fields), None)
    if parent is not None:
        reachable = _reachable(parent, target)
        for option in options:
            if not _can_take(parent, reachable, option):
                raise ConfigError(f"{where}.{key}: {option!r} is never sampled by parameter "
                                  f"'{parent.name}', so this parameter would never be used")
    elif not any(same(base[target], option) for option in options):
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
        return any(same(option, r) for r in reachable)
    return isinstance(option, (int, float)) and parent.low <= option <= parent.high


def _check_candidates(spec: ParamSpec, base: dict[str, Any], where: str) -> None:
    """Each value the parameter can take must make a valid TrainConfig with base."""
    if spec.type in _RANGES:
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
            raise ConfigError(prefixed(f"{where}.{key}", exc, f"{shown!r} is invalid "
                                       "(checked with base and TrainConfig defaults)")) from None


def _check_samples(space: SearchSpace) -> None:
    """Build whole trial configs (lowest and highest picks; every ablation arm) up front."""
    base = space.base_config()
    if space.kind == "ablation":
        for entry in space.ablation_grid()[:: max(1, len(space.seeds))]:
            try:
                space.trial_config(base, entry)
            except ConfigError as exc:
                raise ConfigError(f"{space.path}: ablation.arms: arm {entry['ablation']} with "
                                  f"base is invalid: {_strip(exc)}") from None
        return

    def lowest(p: ParamSpec) -> Any:
        if p.type in _RANGES:
            return p.low
        return p.choices[0] if p.type == "choice" else p.value  # type: ignore[index]

    def highest(p: ParamSpec) -> Any:
        if p.type in _RANGES:
            return p.high
        return p.choices[-1] if p.type == "choice" else p.value  # type: ignore[index]

    for label, pick in (("lowest", lowest), ("highest", highest)):
        values, _ = space.walk(pick)
        try:
            space.trial_config(base, values)
        except ConfigError as exc:
            raise ConfigError(f"{space.path}: parameters: the {label} sample {values} is not "
                              f"a valid TrainConfig: {_strip(exc)}") from None


# ---------------------------------------------------------------------------- ablation
def _parse_ablation(raw: Any, path: Path) -> tuple[list[str], list[int]]:
    section = validated(AblationSection, raw, at=f"{path}: ablation.",
                        section_at=f"{path}: ablation", what="ablation")
    arms: list[str] = []
    for arm in section.arms:
        key = arm.upper()
        if key not in ABLATIONS:
            raise ConfigError(f"{path}: ablation.arms: unknown arm {arm!r}; choose from "
                              f"{', '.join(ABLATIONS)}")
        if key in arms:
            raise ConfigError(f"{path}: ablation.arms: {key} is listed twice")
        arms.append(key)
    if len(set(section.seeds)) != len(section.seeds):
        raise ConfigError(f"{path}: ablation.seeds: a seed is listed twice")
    return arms, list(section.seeds)


# ---------------------------------------------------------------------------- helpers
def _check_field_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or name not in _FIELD_TYPES:
        raise ConfigError(f"{where}: unknown parameter {name!r}, not a TrainConfig field"
                          f"{field_hint(str(name))}")
    if name in RESERVED:
        raise ConfigError(f"{where}: {name} cannot be set in a search space: {RESERVED[name]}")


def _strip(exc: Exception) -> str:
    """The message of a trial-config error without its leading 'file: trial config:'."""
    text = str(exc)
    marker = ": trial config: "
    return text.split(marker, 1)[1] if marker in text else text


__all__ = ["list_spaces", "load_space", "parse_space"]
