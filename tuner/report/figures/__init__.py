"""The report's figures, one module each: its data as a DataFrame or dict, apart from its
drawing, and the page section(s) it contributes.

- `history`: search history (every epoch result, ASHA's stops, the best so far);
- `curves`: learning curves of the best trials;
- `importance`: parameter importance and parallel coordinates / slice (Optuna's plots);
- `test_split`: the exported configuration's test predictions and attention (yield);
- `forecast_test`: its test windows, error per horizon step and attention (forecasting);
- `ablation`: E1–E5 against the reference predictors.

Figures are PNG files in report/figures/ drawn by matplotlib (Optuna's matplotlib plots and
`timesclip.plots` included); each carries a caption naming the data and backbone it came
from. A figure that cannot be drawn gets a note in its place.
"""

from __future__ import annotations

from tuner.report.figures import (
    ablation,
    curves,
    forecast_test,
    history,
    importance,
    test_split,
)
from tuner.report.figures.ablation import ablation_bars, plot_ablation
from tuner.report.figures.base import Drawer, FigureContext, Section
from tuner.report.figures.curves import learning_curves, plot_learning_curves
from tuner.report.figures.history import plot_search_history, search_history
from tuner.report.figures.importance import (
    StudyView,
    importance_reason,
    open_study,
    param_importances,
)
from tuner.report.figures.test_split import stored_attention, stored_predictions


def figure_sections(ctx: FigureContext, draw: Drawer) -> list[Section]:
    """The page's figure sections, in page order for the experiment's kind."""
    out: list[Section] = []
    if ctx.kind == "ablation":  # the arms' comparison first, right under the table
        out += ablation.sections(ctx, draw)
    out += history.sections(ctx, draw)
    out += curves.sections(ctx, draw)
    if ctx.kind != "ablation":
        out += importance.sections(ctx, draw)
        out += (forecast_test if ctx.task == "forecast" else test_split).sections(ctx, draw)
    return out


__all__ = ["Drawer", "FigureContext", "Section", "StudyView", "ablation_bars",
           "figure_sections", "importance_reason", "learning_curves", "open_study",
           "param_importances", "plot_ablation", "plot_learning_curves", "plot_search_history",
           "search_history", "stored_attention", "stored_predictions"]
