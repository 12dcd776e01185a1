"""A forecasting model's test split as plain tables and figures: examples, error per step.

As `timesclip.plots` does for the yield task, numbers and figures are separate steps: a
model gives a `timesclip.inference.ForecastEvaluation`, it is stored as CSV here, and
figures are drawn from the CSV only, so a report (the search's `index.html`) never needs
the model or the test split again. The attention table and figure are the yield task's
(`timesclip.plots.attention_frame`, `plot_attention`), over variates instead of bands.

Tables:
- examples: one row per (example window, step): step -L+1..0 is the history (the last
  lookback value at step 0), 1..H the forecast; `actual` is the file's OT, `timesclip`
  and `naive` the two forecasts (empty over the history), all in the file's own units;
- horizon errors: one row per forecast step, the MSE of TimesCLIP and of the naive
  forecast over every window and variate (standardised scale, as the metrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from timesclip.inference import ForecastEvaluation
from timesclip.plots import (
    ATTENTION_CSV,
    ATTENTION_PNG,
    attention_frame,
    plot_attention,
    read_table,
    save_figure,
    stamp,
    write_csv,
)

#: Columns of an examples CSV.
EXAMPLE_COLUMNS = ("window", "step", "actual", "timesclip", "naive")
#: Columns of a horizon-error CSV.
HORIZON_COLUMNS = ("step", "timesclip_mse", "naive_mse")
#: What `python -m timesclip evaluate --plots DIR` writes for a forecasting model.
EXAMPLES_CSV, HORIZON_CSV = "forecast_examples.csv", "horizon_mse.csv"
EXAMPLES_PNG, HORIZON_PNG = "forecast_examples.png", "horizon_mse.png"


# ---------------------------------------------------------------------------- tables
def examples_frame(evaluation: ForecastEvaluation) -> pd.DataFrame:
    """The example windows as a long table (see the module docstring)."""
    rows = []
    lookback, horizon = evaluation.history.shape[1], evaluation.truth.shape[1]
    history_steps = np.arange(-lookback + 1, 1)  # [L]
    future_steps = np.arange(1, horizon + 1)  # [H]
    for k, window in enumerate(evaluation.example_windows):
        rows.append(pd.DataFrame({"window": int(window), "step": history_steps,
                                  "actual": evaluation.history[k], "timesclip": np.nan,
                                  "naive": np.nan}))
        rows.append(pd.DataFrame({"window": int(window), "step": future_steps,
                                  "actual": evaluation.truth[k],
                                  "timesclip": evaluation.prediction[k],
                                  "naive": evaluation.naive_prediction[k]}))
    return pd.concat(rows, ignore_index=True)[list(EXAMPLE_COLUMNS)]


def horizon_frame(evaluation: ForecastEvaluation) -> pd.DataFrame:
    """MSE per forecast step [H] of TimesCLIP and of the naive forecast."""
    steps = np.arange(1, len(evaluation.mse_per_step) + 1)
    return pd.DataFrame({"step": steps, "timesclip_mse": evaluation.mse_per_step,
                         "naive_mse": evaluation.naive_mse_per_step},
                        columns=list(HORIZON_COLUMNS))


def read_examples(path: str | Path) -> pd.DataFrame:
    """An examples CSV, checked: its columns, and every window with a history (step <= 0)
    and a forecast (step >= 1) whose TimesCLIP and naive values are all there."""
    frame = read_table(path, EXAMPLE_COLUMNS)
    for window, rows in frame.groupby("window"):
        future = rows[rows["step"] >= 1]
        if (rows["step"] <= 0).sum() == 0 or future.empty or \
                future[["actual", "timesclip", "naive"]].isna().any().any():
            raise ValueError(f"{path}: window {window} lacks its history or a complete "
                             "forecast")
    return frame


def read_horizon(path: str | Path) -> pd.DataFrame:
    """A horizon-error CSV, checked: its columns, steps 1..H in order, errors >= 0."""
    frame = read_table(path, HORIZON_COLUMNS)
    if list(frame["step"]) != list(range(1, len(frame) + 1)) or \
            (frame[["timesclip_mse", "naive_mse"]] < 0).any().any():
        raise ValueError(f"{path}: steps must run 1..H in order and errors be >= 0")
    return frame


# ---------------------------------------------------------------------------- figures
def plot_examples(frame: pd.DataFrame, *, caption: str = "", target: str = "OT",
                  title: str = "Test windows") -> Figure:
    """One panel per example window: the history and truth of `target`, the TimesCLIP and
    naive forecasts after the dashed line where the forecast starts."""
    windows = list(dict.fromkeys(frame["window"]))
    cols = min(2, len(windows))
    nrows = -(-len(windows) // cols)
    fig = Figure(figsize=(5.2 * cols, 2.9 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    for ax, window in zip(axes, windows):
        rows = frame[frame["window"] == window]
        future = rows[rows["step"] >= 1]
        ax.plot(rows["step"], rows["actual"], color="#333333", lw=1.1, label="actual")
        ax.plot(future["step"], future["timesclip"], color="#1f77b4", lw=1.4,
                label="TimesCLIP")
        ax.plot(future["step"], future["naive"], color="#ff7f0e", lw=1.1, ls="--",
                label="naive (last value)")
        ax.axvline(0.5, color="#888888", lw=0.8, ls=":")
        ax.set_title(f"window {int(window)}", fontsize=9)
        ax.set_xlabel("step (history <= 0 < forecast)", fontsize=8)
        ax.set_ylabel(f"{target} (file units)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(windows):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    stamp(fig, caption)
    return fig


def plot_horizon(frame: pd.DataFrame, *, caption: str = "",
                 title: str = "Error per forecast step") -> Figure:
    """MSE against the forecast step, TimesCLIP and naive, with each one's mean in the
    legend (the mean over steps is the split's MSE)."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    for column, label, style in (("timesclip_mse", "TimesCLIP", {"color": "#1f77b4"}),
                                 ("naive_mse", "naive (last value)",
                                  {"color": "#ff7f0e", "ls": "--"})):
        ax.plot(frame["step"], frame[column], lw=1.4,
                label=f"{label} (mean {frame[column].mean():.3f})", **style)
    ax.set_xlabel("forecast step")
    ax.set_ylabel("MSE (standardised scale)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    stamp(fig, caption)
    return fig


def write_forecast_plots(out_dir: str | Path, evaluation: ForecastEvaluation,
                         variates: Sequence[str], *, caption: str, subset: str) -> list[Path]:
    """What `python -m timesclip evaluate --plots DIR` writes for a forecasting model: the
    examples and horizon-error tables and figures, plus the attention table and figure when
    the model has variate selection. Returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples, horizon = examples_frame(evaluation), horizon_frame(evaluation)
    written = [write_csv(examples, out / EXAMPLES_CSV), write_csv(horizon, out / HORIZON_CSV)]
    written.append(save_figure(plot_examples(examples, caption=caption,
                                             title=f"{subset} windows"), out / EXAMPLES_PNG))
    written.append(save_figure(plot_horizon(horizon, caption=caption,
                                            title=f"Error per forecast step ({subset}, "
                                                  f"{evaluation.n_windows} windows)"),
                               out / HORIZON_PNG))
    if evaluation.attention is not None:
        matrix = attention_frame(evaluation.attention, variates)
        written.append(write_csv(matrix, out / ATTENTION_CSV, index=True))
        written.append(save_figure(plot_attention(
            matrix, caption=caption, title=f"Variate-selection attention, mean over {subset} "
                                           f"({evaluation.n_windows} windows)"),
            out / ATTENTION_PNG))
    return written


__all__ = ["EXAMPLES_CSV", "EXAMPLES_PNG",
           "EXAMPLE_COLUMNS", "HORIZON_COLUMNS", "HORIZON_CSV", "HORIZON_PNG",
           "examples_frame", "horizon_frame", "plot_examples", "plot_horizon",
           "read_examples", "read_horizon", "write_forecast_plots"]
