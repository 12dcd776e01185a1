"""One line per mistake: pydantic's ValidationError in the house style, and name hints.

pydantic collects every problem of a mapping with its location; a user fixing a space file
or a flag needs the ONE line `<where>: <what is wrong>` (exit code 2, no traceback). This
module picks that line: an unknown key first (with the closest known key), then all
missing keys of the section at once (so a new file is fixed in one edit), then the first
remaining problem in the section's key order, worded as the rest of the project words it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from timesclip.config import TrainConfig

#: A location inside a validated mapping, as pydantic reports it: ("choices", 1).
Loc = tuple[str | int, ...]


def closest(word: str, options: Sequence[str]) -> str:
    """" (did you mean 'x'?)" for the most similar option, or "" when none is close."""
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def field_hint(name: str) -> str:
    """The closest TrainConfig field name, as a did-you-mean hint."""
    return closest(name, TrainConfig.field_names())


def dotted(loc: Loc) -> str:
    """("choices", 1, "low") -> "choices[1].low"."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def shown(value: Any) -> str:
    """A bound or a value in a message: 1.0 -> 1, 0.25 -> 0.25, 'x' -> 'x'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def one_line(exc: ValidationError, *, at: Callable[[Loc], str], what: str,
             allowed: Sequence[str], required: Sequence[str],
             section_at: str | None = None, why: dict[str, str] | None = None) -> str:
    """The one line a user sees for `exc`, raised validating one flat section.

    at: names the location of a key ("file: budget.max_epochs", or "--max-epochs").
    what: the section as a phrase ("a search budget", "a loguniform parameter").
    allowed / required: the section's keys, for the unknown- and missing-key lines.
    section_at: names the section itself for the missing-keys line; None names each key.
    why: key -> the reason behind its rule, appended to a value's error.
    """
    errors = exc.errors(include_url=False)
    for error in errors:
        if error["type"] in ("extra_forbidden", "unexpected_keyword_argument", "invalid_key"):
            key = str(error["loc"][-1])
            return (f"{at(error['loc'])}: not a key of {what}{closest(key, allowed)}; "
                    f"allowed: {', '.join(allowed)}")
    missing = [str(e["loc"][-1]) for e in errors if e["type"] in ("missing", "missing_argument")]
    if missing:
        s = "s" if len(missing) > 1 else ""
        if section_at is None:
            return f"{at((missing[0],))}: required, not given ({what} needs {', '.join(required)})"
        return (f"{section_at}: missing required key{s} {', '.join(missing)} "
                f"({what} needs {', '.join(required)})")
    error = errors[0]
    reason = (why or {}).get(str(error["loc"][0])) if error["loc"] else None
    return f"{at(error['loc'])}: {_problem(error)}" + (f" ({reason})" if reason else "")


def _problem(error: Any) -> str:
    """pydantic's message for one value, worded as the project's own messages are."""
    kind, ctx, got = error["type"], error.get("ctx") or {}, error.get("input")
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"must be {bounds[kind]} {shown(limit)}, got {shown(got)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {got!r}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {got!r}"
    if kind == "finite_number":
        return f"expected a finite number, got {got!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {got!r}"
    if kind == "string_type":
        return f"expected text, got {got!r}"
    if kind in ("string_too_short",):
        return "must not be empty"
    if kind == "too_short":
        if ctx.get("min_length") == 1:
            return "expected a non-empty list" if isinstance(got, list) else "must not be empty"
        return f"expected at least {ctx.get('min_length')} items, got {got!r}"
    if kind == "list_type":
        return f"expected a list, got {got!r}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "dataclass_type"):
        return f"expected a mapping, got {got!r}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}, got {got!r}"
    if kind == "value_error":
        return str(ctx.get("error"))
    message = str(error["msg"])
    return f"{message[:1].lower()}{message[1:]}, got {got!r}"


def prefixed(where: str, exc: Exception, what: str | None = None) -> str:
    """Re-anchor a TrainConfig error at `where` (a space file's key), keeping one line.

    TrainConfig's own rules ("dropout must be in [0, 1), got 1.0") know no file; a value
    coerced with a source already starts with it, and is not prefixed twice.
    """
    text = str(exc)
    if text.startswith(where):
        text = text[len(where):].lstrip(": ")
    return f"{where}: {what}: {text}" if what else f"{where}: {text}"
