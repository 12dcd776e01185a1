"""The space file's schema: one pydantic model per section, and the YAML it is read from.

pydantic checks what a section may hold: its keys (an unknown key is an error naming the
closest known one), the keys it must have (all missing ones named in one line), and the
type and range of each value that is not a TrainConfig value. Values of TrainConfig
fields (base, bounds, choices, fixed values, condition values) are read by
`timesclip.config.coerce_field`, the reader `--config` and the flags use, so a value
means the same thing everywhere; budget and resource values by `check_budget` /
`check_resources`, which the command-line flags go through too. Rules between keys and
sections (a condition's parent, grace_period <= max_epochs, ...) are explicit checks in
`tuner.spaces.load`.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    create_model,
)

from timesclip.errors import ConfigError
from tuner.spaces.budget import (
    ABLATION_REQUIRED,
    BUDGET_KEYS,
    RESOURCE_KEYS,
    SEARCH_REQUIRED,
    Count,
    Integer,
)
from tuner.spaces.messages import dotted, one_line


class Section(BaseModel):
    """A mapping of the file with a fixed set of keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def keys(cls) -> list[str]:
        """The keys a file may write, in the order the documentation lists them."""
        return [f.alias or name for name, f in cls.model_fields.items()]

    @classmethod
    def required(cls) -> list[str]:
        return [f.alias or name for name, f in cls.model_fields.items() if f.is_required()]


class SpaceFile(Section):
    """The top level. Sections whose keys depend on `kind` (or on TrainConfig) are
    validated on their own once `kind` is known: budget, resources, base, parameters."""

    description: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    kind: Literal["search", "ablation"]
    budget: dict[Any, Any]
    resources: dict[Any, Any] | None = None
    base: dict[Any, Any] | None = None  # TrainConfig field -> value
    parameters: Annotated[dict[Any, Any], Field(min_length=1)] | None = None  # kind search
    ablation: dict[Any, Any] | None = None  # kind ablation


class AblationSection(Section):
    arms: Annotated[list[str], Field(min_length=1)]  # E1..E5, any case
    seeds: Annotated[list[Integer], Field(min_length=1)]  # TrainConfig.seed of each run


class Condition(Section):
    """`{field: F, equals: V}` or `{field: F, in: [V, ...]}` (exactly one of the two)."""

    field: str
    equals: Any = None
    in_: Annotated[list[Any], Field(min_length=1)] | None = Field(None, alias="in")


class Parameter(Section):
    """Keys every parameter type accepts; `type` picks the subclass."""

    type: str
    condition: dict[Any, Any] | None = None  # a Condition, checked against earlier ones
    #: How a message names a parameter of this type ("a loguniform parameter").
    what: ClassVar[str] = "a parameter"


class LogUniform(Parameter):
    type: Literal["loguniform"] = "loguniform"
    low: Any  # values of the field: read by coerce_field
    high: Any
    what: ClassVar[str] = "a loguniform parameter"


class Uniform(Parameter):
    type: Literal["uniform"] = "uniform"
    low: Any
    high: Any
    what: ClassVar[str] = "a uniform parameter"


class IntRange(Parameter):
    type: Literal["int"] = "int"
    low: Any
    high: Any
    step: Count = 1
    log: StrictBool = False  # needs step 1 and low > 0
    what: ClassVar[str] = "an int parameter"


class Choice(Parameter):
    type: Literal["choice"] = "choice"
    choices: Annotated[list[Any], Field(min_length=1)]
    # a pair (or more): the TrainConfig fields each choice sets, one value per field
    fields: Annotated[list[Any], Field(min_length=2)] | None = None
    what: ClassVar[str] = "a choice parameter"


class Fixed(Parameter):
    type: Literal["fixed"] = "fixed"
    value: Any
    what: ClassVar[str] = "a fixed parameter"


#: Parameter type -> its model, in the order the documentation lists them.
PARAMETER_TYPES: dict[str, type[Parameter]] = {
    "loguniform": LogUniform, "uniform": Uniform, "int": IntRange, "choice": Choice,
    "fixed": Fixed,
}


@functools.cache
def budget_section(kind: str) -> type[Section]:
    """The budget keys of a `kind` space: Budget's fields, the kind's required ones.

    Only the keys: the values go to check_budget, which judges the flags' values too.
    """
    required = SEARCH_REQUIRED if kind == "search" else ABLATION_REQUIRED
    spec: dict[str, Any] = {k: (Any, ... if k in required else None) for k in BUDGET_KEYS}
    return create_model(f"{kind.title()}Budget", __base__=Section, **spec)


#: The resources keys (values: check_resources).
ResourcesSection: type[Section] = create_model(
    "ResourcesSection", __base__=Section, **{k: (Any, None) for k in RESOURCE_KEYS})


def validated(model: type[Section], data: Any, *, at: str, section_at: str,
              what: str) -> Any:
    """`data` validated by `model`; its first problem as one ConfigError line.

    at: the prefix of a key's location ("file: budget."), section_at: the section's own
    ("file: budget"), what: the section as a phrase ("a search budget").
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, at=lambda loc: f"{at}{dotted(loc)}", what=what,
                                   allowed=model.keys(), required=model.required(),
                                   section_at=section_at)) from None


def read_yaml(text: str, path: Any) -> Any:
    """The YAML document (safe_load: a file never runs code); a syntax error in one line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where} ({problem})") from None


__all__ = ["PARAMETER_TYPES", "AblationSection", "Choice", "Condition", "Fixed", "IntRange",
           "LogUniform", "Parameter", "ResourcesSection", "Section", "SpaceFile", "Uniform",
           "budget_section", "read_yaml", "validated"]
