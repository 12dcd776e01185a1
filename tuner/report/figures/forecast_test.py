"""A forecasting experiment's exported configuration on the test split: a few test windows
(history, truth, TimesCLIP, naive), the error per forecast step, the variate attention.

Drawn from the CSVs the search stored when it scored the test split once (named in
`best_test.json`: `examples`, `horizon`, `attention`), through the same checks as the yield
figures (`test_split.stored_file`); nothing here loads a model. `timesclip.forecast_plots`
draws them, as `python -m timesclip evaluate --plots` does.
"""

from __future__ import annotations

from pathlib import Path

from timesclip.forecast_plots import plot_examples, plot_horizon, read_examples, read_horizon
from tuner.layout import BEST_TEST_FILE
from tuner.report.figures.base import Drawer, FigureContext, Section
from tuner.report.figures.test_split import (
    Unavailable,
    attention_section,
    stored_file,
    unavailable,
    unscored,
)

TITLES = {"examples": "Test windows: history, truth, TimesCLIP, naive",
          "horizon": "Error per forecast step (test split)"}
_ABSENT = (f"Not stored with {BEST_TEST_FILE} (an experiment scored by an older version); the "
           "test metrics above still hold.")


def sections(ctx: FigureContext, draw: Drawer) -> list[Section]:
    reason = unscored(ctx)
    if reason is not None:
        return [Section("examples", TITLES["examples"], note=reason)]
    best_test, tid = ctx.best_test or {}, ctx.best_id
    out: list[Section] = []
    try:
        examples = stored_file(ctx.layout, best_test, "examples", read_examples, _ABSENT)
    except Unavailable as exc:
        out.append(unavailable(draw, "examples", TITLES["examples"], exc))
    else:
        name = Path(str(best_test["examples"])).name
        windows = examples["window"].nunique()
        out.append(draw(
            "forecast_examples", TITLES["examples"],
            f"{windows} test windows spread over the test split ({name}): the target "
            "variate's lookback, the truth over the horizon, the exported configuration's "
            f"forecast (trial {tid}) and the naive forecast (repeat the last value), in the "
            "file's units.",
            lambda: plot_examples(examples, caption=draw.where)))
    try:
        horizon = stored_file(ctx.layout, best_test, "horizon", read_horizon, _ABSENT)
    except Unavailable as exc:
        out.append(unavailable(draw, "horizon", TITLES["horizon"], exc))
    else:
        name = Path(str(best_test["horizon"])).name
        out.append(draw(
            "horizon_mse", TITLES["horizon"],
            f"MSE at each step of the horizon, over every test window and variate "
            f"(standardised scale), of trial {tid} and of the naive forecast ({name}): the "
            "error grows with the distance from the lookback.",
            lambda: plot_horizon(horizon, caption=draw.where)))
    return [*out, attention_section(ctx, draw, what="variate")]


__all__ = ["TITLES", "sections"]
