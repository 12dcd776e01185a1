"""Learning curves: the search metric per epoch of the best trials (the trials table's
order), those stopped by ASHA, diverged, failed or unfinished drawn faded and dashed.

`learning_curves` is the figure's data, `plot_learning_curves` draws it, `sections` puts it
on the page.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from timesclip.plots import stamp
from tuner.journal import ExperimentState, as_float
from tuner.layout import TRIAL_ID
from tuner.outcomes import StopReason
from tuner.report.figures.base import Drawer, FigureContext, Section
from tuner.report.text import metric_label

#: How many of the best trials the figure draws.
TOP_CURVES = 8
#: Ends drawn faded and dashed: the trial did not run its course.
FADED = (StopReason.ASHA, StopReason.DIVERGED, StopReason.ERROR, StopReason.UNFINISHED)


def learning_curves(state: ExperimentState, trials: pd.DataFrame, metric: str = "val_rmse",
                    top: int = TOP_CURVES) -> list[tuple[str, str, pd.DataFrame]]:
    """(trial id, how it ended, per-epoch values) of the first `top` trials of the trials
    table (best first) that reported at least one epoch."""
    out = []
    for tid in trials[TRIAL_ID].astype(str):
        trial = state.trials.get(tid)
        if trial is None or not trial.history:
            continue
        epochs = sorted(trial.history)
        curve = pd.DataFrame({"epoch": epochs,
                              "value": [as_float(trial.history[e].get(metric)) for e in epochs]})
        out.append((tid, str(trial.stopped_by), curve))
        if len(out) >= top:
            break
    return out


def plot_learning_curves(curves: list[tuple[str, str, pd.DataFrame]], *, metric: str,
                         best_id: str | None, caption: str) -> Figure:
    """Validation metric per epoch of the top trials; stopped or failed ones faded."""
    fig = Figure(figsize=(9.5, 5.0), layout="constrained")
    ax = fig.subplots()
    for tid, ended, curve in curves:
        faded = ended in FADED
        label = f"{tid} ({ended.replace('_', ' ')})" + (", exported" if tid == best_id else "")
        ax.plot(curve["epoch"], curve["value"], marker="o", ms=3,
                lw=2.6 if tid == best_id else 1.3, ls="--" if faded else "-",
                alpha=0.35 if faded else 0.95, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"Learning curves of the {len(curves)} best trials (faded, dashed: stopped "
                 "by ASHA, diverged, failed or unfinished)", fontsize=10)
    epochs = sorted({int(e) for _, _, c in curves for e in c["epoch"]})
    if epochs and len(epochs) <= 30:
        ax.set_xticks(epochs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", ncol=2 if len(curves) > 4 else 1)
    stamp(fig, caption)
    return fig


def sections(ctx: FigureContext, draw: Drawer) -> list[Section]:
    curves = learning_curves(ctx.state, ctx.trials, ctx.metric)
    if not curves:
        return []  # the search history says that no epoch was reported
    thick = "; thick: the exported configuration" if ctx.best_id else ""
    return [draw(
        "learning_curves", "Learning curves",
        f"{ctx.metric} per epoch of the {len(curves)} best trials by validation value "
        "(the trials table's order); dashed and faded: stopped by ASHA, diverged, "
        f"failed or unfinished{thick}.",
        lambda: plot_learning_curves(curves, metric=ctx.metric, best_id=ctx.best_id,
                                     caption=draw.where))]


__all__ = ["FADED", "TOP_CURVES", "learning_curves", "plot_learning_curves", "sections"]
