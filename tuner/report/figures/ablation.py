"""Ablation: E1–E5 as bars (mean ± std over seeds) of test RMSE and R², the reference
predictors as horizontal lines.

`ablation_bars` is the figure's data (taken from the ablation table), `plot_ablation`
draws it, `sections` puts it on the page.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from timesclip.plots import stamp
from tuner.report.figures.base import Drawer, FigureContext, Section
from tuner.report.text import fmt

TITLE = "Ablation: test metrics per arm"
#: The two panels per task: (metric, axis label).
TASK_PANELS = {
    "yield": (("rmse", "test RMSE (lower is better)"), ("r2", "test R² (higher is better)")),
    "forecast": (("mse", "test MSE (lower is better)"), ("mae", "test MAE (lower is better)")),
}
PANELS = TASK_PANELS["yield"]
_STYLES = {"mean": ":", "ridge": "--", "hgb": "-.", "naive": ":", "dlinear": "--"}


def ablation_bars(table: pd.DataFrame, panels: Any = PANELS) -> dict[str, Any]:
    """Per panel metric: the arms' labels, means and stds (NaN std drawn as 0) and the
    references' finite values, from the ablation table."""
    arms = table[table["kind"] == "arm"]
    refs = table[table["kind"] == "reference"]
    out: dict[str, Any] = {"labels": [f"{r}\n(n={n})" for r, n in zip(arms["row"], arms["n"])]}
    for metric, _ in panels:
        refs_values = [(str(row), float(value)) for row, value
                       in zip(refs["row"], refs[f"test_{metric}_mean"].astype(float))]
        out[metric] = {
            "means": np.nan_to_num(arms[f"test_{metric}_mean"].astype(float).to_numpy()),
            "stds": np.nan_to_num(arms[f"test_{metric}_std"].astype(float).to_numpy()),
            # the colour index follows the reference's row, drawn or not
            "references": [(i, name, value) for i, (name, value) in enumerate(refs_values)
                           if math.isfinite(value)],
        }
    return out


def plot_ablation(table: pd.DataFrame, *, caption: str, task: str = "yield") -> Figure:
    """E1–E5 as bars (mean ± std over seeds) for the task's two headline test metrics
    (yield: RMSE and R²; forecast: MSE and MAE), references as lines."""
    panels = TASK_PANELS[task]
    data = ablation_bars(table, panels)
    fig = Figure(figsize=(11.0, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = matplotlib.colormaps["tab10"]
    for ax, (metric, label) in zip(axes, panels):
        panel = data[metric]
        x = np.arange(len(data["labels"]))
        ax.bar(x, panel["means"], yerr=panel["stds"], capsize=4, color="#4c72b0", alpha=0.85,
               label="arm: mean ± std over seeds")
        ax.set_xticks(x, labels=data["labels"])
        for i, name, value in panel["references"]:
            ax.axhline(value, color=colors(i + 1), ls=_STYLES.get(name, "-"), lw=1.4,
                       label=f"{name} ({fmt(value)})")
        if metric == "r2":
            ax.axhline(0.0, color="#888888", lw=0.8)
        ax.set_ylabel(label)
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7, loc="best")
        ax.grid(axis="y", alpha=0.3)
    stamp(fig, caption)
    return fig


def sections(ctx: FigureContext, draw: Drawer) -> list[Section]:
    table = ctx.ablation
    if table is None or not len(table):
        return [Section("ablation", TITLE, note="No ablation table.")]
    arms = table[table["kind"] == "arm"]
    primary = TASK_PANELS[ctx.task][0][0]
    if not np.isfinite(arms[f"test_{primary}_mean"].astype(float)).any():
        return [Section("ablation", TITLE, note="No arm has test metrics yet.")]
    return [draw(
        "ablation", TITLE,
        "E1–E5 (see the table above): bars are the mean over finished seeds, error bars the "
        "sample standard deviation (none when n = 1), on the test split; horizontal lines: "
        "the reference predictors fitted on the same train split and scored on the same "
        "test split.",
        lambda: plot_ablation(table, caption=draw.where, task=ctx.task))]


__all__ = ["PANELS", "TASK_PANELS", "TITLE", "ablation_bars", "plot_ablation", "sections"]
