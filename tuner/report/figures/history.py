"""Search history: every epoch result in the order the journal recorded it, against the
trial-epochs spent so far, with ASHA's stops and the best value so far.

`search_history` is the figure's data (one row per result), `plot_search_history` draws it,
`sections` puts it on the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from timesclip.metrics import better
from timesclip.plots import stamp
from tuner.journal import ExperimentState, as_float
from tuner.layout import TRIAL_ID
from tuner.outcomes import STOP, StopReason
from tuner.report.figures.base import Drawer, FigureContext, Section
from tuner.report.text import metric_label

COLUMNS = ["step", TRIAL_ID, "epoch", "value", "decision", "asha_stop", "best_so_far"]


def search_history(events: Sequence[dict[str, Any]], state: ExperimentState,
                   metric: str = "val_rmse", mode: str = "min") -> pd.DataFrame:
    """One row per journaled epoch result, in journal order (the order Ray delivered them).

    Columns: step (cumulative trial-epochs: 1, 2, ...), trial_id, epoch, value (the search
    metric), decision (the scheduler's), asha_stop (this result is where ASHA stopped the
    trial), best_so_far (best value over all results up to this step, by
    `timesclip.metrics.better`). An epoch reported again after a retry is a second point:
    that compute was spent twice. Divergence reports carry no metrics and are not points.
    """
    rows: list[dict[str, Any]] = []
    best: float | None = None
    for ev in events:
        if ev.get("ev") != "result" or ev.get("diverged"):
            continue
        trial = state.trials.get(str(ev.get("tid")))
        if trial is None:
            continue
        decision = str(ev.get("decision", "continue"))
        value = as_float((ev.get("metrics") or {}).get(metric))
        if better(value, best, mode):
            best = value
        rows.append({"step": len(rows) + 1, TRIAL_ID: trial.tid, "epoch": int(ev["epoch"]),
                     "value": value, "decision": decision,
                     "asha_stop": decision == STOP and trial.stopped_by == StopReason.ASHA,
                     "best_so_far": np.nan if best is None else best})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"value": float, "best_so_far": float, "asha_stop": bool})


def plot_search_history(frame: pd.DataFrame, *, metric: str, caption: str) -> Figure:
    """Every result against cumulative trial-epochs; ASHA stops as red crosses; best so far."""
    fig = Figure(figsize=(9.5, 5.0), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab20"]
    finite = frame[np.isfinite(frame["value"].astype(float))]
    for i, (tid, group) in enumerate(finite.groupby(TRIAL_ID, sort=False)):
        color = cmap(i % 20)
        ax.plot(group["step"], group["value"], "-", color=color, alpha=0.35, lw=0.9)
        ax.scatter(group["step"], group["value"], s=16, color=color, zorder=2)
        if finite[TRIAL_ID].nunique() <= 20:
            last = group.iloc[-1]
            ax.annotate(str(tid), (last["step"], last["value"]), fontsize=6, color=color,
                        xytext=(3, 3), textcoords="offset points")
    stops = finite[finite["asha_stop"]]
    if len(stops):
        ax.scatter(stops["step"], stops["value"], marker="x", s=70, color="#d62728", zorder=3,
                   label=f"stopped by ASHA ({len(stops)})")
    ax.step(frame["step"], frame["best_so_far"], where="post", color="black", lw=1.6,
            label="best so far")
    values = finite["value"].astype(float)
    if len(values) and values.min() > 0 and values.max() / values.min() > 20:
        ax.set_yscale("log")
    ax.set_xlabel("cumulative trial-epochs (results in the order the journal recorded them)")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"Search history: {len(frame)} epoch results from "
                 f"{frame['trial_id'].nunique()} trials", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    stamp(fig, caption)
    return fig


def sections(ctx: FigureContext, draw: Drawer) -> list[Section]:
    frame = search_history(ctx.events, ctx.state, ctx.metric, ctx.mode)
    if not len(frame):
        return [Section("search_history", "Search history",
                        note="No epoch has been reported yet.")]
    n_stops = int(frame["asha_stop"].sum())
    stops = (f" Red crosses: the {n_stops} results at which ASHA stopped a trial."
             if n_stops else "")
    return [draw(
        "search_history", "Search history",
        f"Each point is one epoch of one trial ({ctx.metric}, validation split), in the "
        f"order the journal recorded it; x counts trial-epochs spent so far.{stops} "
        "Black line: best value reported so far by any trial.",
        lambda: plot_search_history(frame, metric=ctx.metric, caption=draw.where))]


__all__ = ["COLUMNS", "plot_search_history", "search_history", "sections"]
