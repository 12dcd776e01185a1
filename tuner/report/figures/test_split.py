"""The exported configuration on the test split: predicted against actual, and the mean
band-to-band attention of its variate selection.

Both are drawn from the CSVs the search stored when it scored the test split once (named in
`best_test.json`); nothing here loads a model or touches the test split again. The names in
`best_test.json` are data: each is resolved with `ExperimentLayout.inside`, and one that
points outside the experiment folder is refused (a note in place of the figure).
`stored_predictions` / `stored_attention` are the figures' data; `timesclip.plots` draws them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from timesclip.plots import (
    plot_attention,
    plot_predicted_vs_actual,
    read_attention,
    read_predictions,
)
from tuner.layout import BEST_TEST_FILE, INDEX_HTML, TRIAL_ID, ExperimentLayout, UnsafePathError
from tuner.report.figures.base import Drawer, FigureContext, Section
from tuner.report.text import short

TITLES = {"predictions": "Predicted vs actual (test split)",
          "attention": "Variate-selection attention"}


class Unavailable(Exception):
    """A stored figure input that cannot be used; its message is the page's note."""


class Refused(Unavailable):
    """A name in best_test.json that points outside the experiment folder (also a note in
    the report's notes: the file was altered)."""


def stored_file(layout: ExperimentLayout, best_test: dict[str, Any], key: str,
            reader: Callable[[Path], Any], absent: str) -> Any:
    """What `reader` reads from the file best_test.json names under `key`."""
    name = best_test.get(key)
    if not name:
        raise Unavailable(absent)
    try:
        path = layout.inside(str(name), BEST_TEST_FILE)
    except UnsafePathError as exc:
        raise Refused(str(exc)) from None
    if not path.is_file():
        raise Unavailable(absent)
    try:
        return reader(path)
    except (OSError, ValueError) as exc:
        raise Unavailable(f"{path.name} is unreadable: {short(exc)}") from None


def stored_predictions(layout: ExperimentLayout, best_test: dict[str, Any]) -> pd.DataFrame:
    """The exported configuration's per-sample test predictions (row, year, y_true, y_pred)."""
    return stored_file(layout, best_test, "predictions", read_predictions,
                   f"No per-sample test predictions were stored with {BEST_TEST_FILE} (an "
                   "experiment scored by an older version); the test metrics above still "
                   "hold.")


def stored_attention(layout: ExperimentLayout, best_test: dict[str, Any]) -> pd.DataFrame:
    """Its variate-selection attention [V, V], averaged over the test split."""
    return stored_file(layout, best_test, "attention", read_attention,
                   f"No attention matrix was stored with {BEST_TEST_FILE} (an experiment "
                   "scored by an older version).")


def unscored(ctx: FigureContext) -> str | None:
    """Why the exported configuration's test figures cannot be shown, or None."""
    if not ctx.finished:
        return ("The search is interrupted: no configuration is exported and the test split "
                "is not touched until every trial has finished.")
    if ctx.best_test is None or ctx.best_id is None:
        return ("The test split was not scored (no exported configuration or no "
                f"{BEST_TEST_FILE}).")
    if str(ctx.best_test.get(TRIAL_ID)) != ctx.best_id:
        return (f"{BEST_TEST_FILE} holds trial {ctx.best_test.get('trial_id')}, not the "
                f"exported {ctx.best_id}: its predictions are not shown.")
    return None


def unavailable(draw: Drawer, key: str, title: str, exc: Unavailable) -> Section:
    """The note in place of a figure whose stored input cannot be used."""
    if isinstance(exc, Refused):
        draw.notes.append(f"{INDEX_HTML}: {title}: {exc}")
    return Section(key, title, note=str(exc))


def sections(ctx: FigureContext, draw: Drawer) -> list[Section]:
    reason = unscored(ctx)
    if reason is not None:
        return [Section("predictions", TITLES["predictions"], note=reason)]
    best_test, tid = ctx.best_test or {}, ctx.best_id
    out: list[Section] = []
    try:
        frame = stored_predictions(ctx.layout, best_test)
    except Unavailable as exc:
        out.append(unavailable(draw, "predictions", TITLES["predictions"], exc))
    else:
        name = Path(str(best_test["predictions"])).name
        years = sorted(int(y) for y in frame["year"].unique())
        by_year = (f" Right: residuals per year ({', '.join(map(str, years))})."
                   if len(years) > 1 else f" The test split holds one year ({years[0]}): "
                   "no residuals-by-year panel.")
        out.append(draw(
            "predicted_vs_actual", TITLES["predictions"],
            f"Exported configuration (trial {tid}) on the {len(frame)} test samples, scored "
            f"once when the search finished ({name}).{by_year}",
            lambda: plot_predicted_vs_actual(frame, caption=draw.where,
                                             title=f"Trial {tid} on the test split")))
    return [*out, attention_section(ctx, draw, what="band")]


def attention_section(ctx: FigureContext, draw: Drawer, *, what: str) -> Section:
    """The exported model's mean variate-selection attention (`what`: band or variate)."""
    best_test, tid = ctx.best_test or {}, ctx.best_id
    if best_test.get("use_variate_selection") is False:
        return Section("attention", TITLES["attention"], note=(
            "The exported configuration has no variate selection (use_variate_selection: "
            f"false): there is no {what}-to-{what} attention to show."))
    try:
        matrix = stored_attention(ctx.layout, best_test)
    except Unavailable as exc:
        return unavailable(draw, "attention", TITLES["attention"], exc)
    name = Path(str(best_test["attention"])).name
    return draw(
        "attention", TITLES["attention"],
        f"{what.capitalize()}-to-{what} attention of the exported model's variate selection "
        f"(trial {tid}), averaged over the test split ({name}); row = attending {what}, "
        "each row sums to 1.",
        lambda: plot_attention(matrix, caption=draw.where,
                               title=f"Variate-selection attention, trial {tid}, mean "
                                     "over the test split"))


__all__ = ["TITLES", "Refused", "Unavailable", "attention_section", "sections",
           "stored_attention", "stored_file", "stored_predictions", "unavailable", "unscored"]
