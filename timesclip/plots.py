"""What a trained model does on a split: per-sample predictions, variate attention, figures.

Two users share this module: `python -m timesclip evaluate --plots DIR` (any saved model)
and the search report (`tuner.report.figures`), which draws the exported configuration's test
predictions from the plain files the search wrote when it scored the test split once.
So the numbers (predictions, the band-to-band attention) and the figures drawn from them are
separate steps: numbers come from a model (`timesclip.inference.predict_with_attention`),
are stored as CSV here, and figures are drawn from the CSV only — a report never needs the
model or the test split again.

Figures are plain matplotlib `Figure` objects (no pyplot state, no display needed), each
stamped with a caption line that names the data and backbone it came from, so a PNG copied
out of its folder still says what it shows.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from timesclip import atomic
from timesclip.metrics import regression_metrics

#: Columns of a predictions CSV (one row per sample; `row` indexes the loaded data table).
PREDICTION_COLUMNS = ("row", "year", "y_true", "y_pred")
#: Header of the first column of an attention CSV: the band that attends (the query).
ATTENTION_INDEX = "band"
#: Largest deviation from 1 accepted for an attention row sum read back from CSV.
ROW_SUM_TOLERANCE = 1e-4
#: The variate attention `python -m timesclip evaluate --plots DIR` writes (both tasks).
ATTENTION_CSV, ATTENTION_PNG = "attention.csv", "attention.png"


# ---------------------------------------------------------------------------- tables
def predictions_frame(y_true: np.ndarray, y_pred: np.ndarray, years: np.ndarray,
                      rows: np.ndarray | None = None) -> pd.DataFrame:
    """One row per sample: row (index into the data table), year, y_true, y_pred."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    years = np.asarray(years).reshape(-1).astype(np.int64)
    if not len(y_true) == len(y_pred) == len(years):
        raise ValueError(f"lengths differ: {len(y_true)} targets, {len(y_pred)} predictions, "
                         f"{len(years)} years")
    rows = np.arange(len(y_true)) if rows is None else np.asarray(rows).astype(np.int64)
    return pd.DataFrame({"row": rows, "year": years, "y_true": y_true, "y_pred": y_pred},
                        columns=list(PREDICTION_COLUMNS))


def attention_frame(attention: np.ndarray, bands: Sequence[str]) -> pd.DataFrame:
    """The [V, V] attention as a table: row = the attending band, column = the attended one."""
    attention = np.asarray(attention, dtype=np.float64)
    names = [str(b) for b in bands]
    if attention.shape != (len(names), len(names)):
        raise ValueError(f"attention of shape {attention.shape} does not match "
                         f"{len(names)} bands")
    return pd.DataFrame(attention, index=pd.Index(names, name=ATTENTION_INDEX), columns=names)


def write_csv(frame: pd.DataFrame, path: str | Path, *, index: bool = False) -> Path:
    """Write a CSV atomically: a reader never sees half a file."""
    path = Path(path)
    with atomic.replacing(path) as tmp:
        frame.to_csv(tmp, index=index, float_format="%.10g")
    return path


def read_table(path: str | Path, columns: Sequence[str]) -> pd.DataFrame:
    """A CSV this module (or `timesclip.forecast_plots`) wrote, checked: `columns` are
    there and it has at least one row."""
    frame = pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing or frame.empty:
        raise ValueError(f"{path}: expected columns {', '.join(columns)} and at "
                         f"least one row (missing: {', '.join(missing) or 'none'})")
    return frame


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions CSV, checked: the columns of PREDICTION_COLUMNS and at least one row."""
    return read_table(path, PREDICTION_COLUMNS)


def read_attention(path: str | Path) -> pd.DataFrame:
    """An attention CSV, checked: square, the same band names on both axes, rows sum to 1."""
    frame = pd.read_csv(path, index_col=0)
    frame.index = frame.index.astype(str)
    frame.index.name = ATTENTION_INDEX
    if list(frame.index) != [str(c) for c in frame.columns]:
        raise ValueError(f"{path}: rows and columns must name the same bands in the same "
                         "order")
    sums = frame.to_numpy(dtype=np.float64).sum(axis=1)
    if not np.all(np.abs(sums - 1.0) <= ROW_SUM_TOLERANCE):
        raise ValueError(f"{path}: attention rows must sum to 1 (got {np.round(sums, 4)})")
    return frame


# ---------------------------------------------------------------------------- figures
def stamp(fig: Figure, caption: str) -> None:
    """Put the caption (data, backbone) at the bottom of the figure itself.

    With constrained layout it is the figure's supxlabel, for which the layout makes room;
    other figures (Optuna draws through pyplot without a layout engine) are tightened
    first, leaving a strip at the bottom for it."""
    if not caption:
        return
    # wrapped by hand: an unwrapped line would widen the saved figure (bbox_inches="tight")
    caption = textwrap.fill(caption, width=max(40, int(fig.get_figwidth() * 17)))
    style = {"fontsize": 7, "color": "#555555", "ha": "left", "x": 0.01}
    if isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine):
        fig.supxlabel(caption, **style)
        return
    fig.tight_layout(rect=(0.0, 0.05, 1.0, 1.0))
    fig.text(style.pop("x"), 0.01, caption, va="bottom", **style)


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """PNG at `path`, written atomically."""
    path = Path(path)
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return path


def plot_predicted_vs_actual(frame: pd.DataFrame, *, caption: str = "",
                             title: str = "Predicted vs actual") -> Figure:
    """Scatter of y_pred against y_true with the identity line; a second panel with the
    residuals (prediction - truth) per year when the samples span several years."""
    y_true = frame["y_true"].to_numpy(dtype=np.float64)
    y_pred = frame["y_pred"].to_numpy(dtype=np.float64)
    years = sorted(int(y) for y in frame["year"].unique())
    by_year = len(years) > 1
    fig = Figure(figsize=(10.5 if by_year else 5.8, 5.0), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=[1, 1.2]) if by_year else [fig.subplots()]
    ax = axes[0]
    m = regression_metrics(y_true, y_pred)
    ax.scatter(y_true, y_pred, s=14, alpha=0.6, color="#1f77b4", edgecolors="none",
               label=f"{len(y_true)} samples")
    low = float(min(y_true.min(), y_pred.min()))
    high = float(max(y_true.max(), y_pred.max()))
    pad = 0.03 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="#444444", lw=1,
            ls="--", label="prediction = actual")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("actual yield")
    ax.set_ylabel("predicted yield")
    ax.set_title(f"{title}\nRMSE {m['rmse']:.3g}, MAE {m['mae']:.3g}, R² {m['r2']:.3f}",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    if by_year:
        residual = y_pred - y_true
        groups = [residual[frame["year"].to_numpy() == year] for year in years]
        box = axes[1]
        box.boxplot(groups, tick_labels=[str(y) for y in years], showmeans=True)
        box.axhline(0.0, color="#444444", lw=1, ls="--")
        box.set_xlabel("year")
        box.set_ylabel("residual (predicted - actual)")
        box.set_title("Residuals by year (box: quartiles, triangle: mean)", fontsize=10)
    stamp(fig, caption)
    return fig


def plot_attention(frame: pd.DataFrame, *, caption: str = "",
                   title: str = "Variate-selection attention") -> Figure:
    """Heat map of the [V, V] attention: row band attends to column band.

    The colour scale spans the matrix's own range (uniform attention, 1/V everywhere, would
    be one flat colour), and every cell is printed, so small differences stay readable
    without being mistaken for large ones."""
    values = frame.to_numpy(dtype=np.float64)
    n = len(frame)
    size = max(4.5, 0.45 * n + 2.5)
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")
    ax = fig.subplots()
    low, high = float(values.min()), float(values.max())
    image = ax.imshow(values, cmap="viridis", vmin=low, vmax=high if high > low else low + 1e-9)
    ax.grid(False)
    ax.set_xticks(range(n), labels=list(frame.columns), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=list(frame.index), fontsize=8)
    ax.set_xlabel("attended band (key)")
    ax.set_ylabel("attending band (query); each row sums to 1")
    ax.set_title(f"{title}\n(uniform attention would be 1/{n} = {1 / n:.3f} everywhere)",
                 fontsize=10)
    if n <= 16:
        threshold = low + 0.6 * (high - low)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if values[i, j] > threshold else "white")
    fig.colorbar(image, ax=ax, shrink=0.8, label="mean attention weight")
    stamp(fig, caption)
    return fig


def write_evaluation_plots(out_dir: str | Path, predictions: pd.DataFrame,
                           attention: pd.DataFrame | None, *, caption: str,
                           subset: str) -> list[Path]:
    """What `python -m timesclip evaluate --plots DIR` writes: predictions.csv and
    predicted_vs_actual.png, plus attention.csv and attention.png when the model has
    variate selection. Returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_csv(predictions, out / "predictions.csv")]
    fig = plot_predicted_vs_actual(predictions, caption=caption,
                                   title=f"Predicted vs actual ({subset})")
    written.append(save_figure(fig, out / "predicted_vs_actual.png"))
    if attention is not None:
        written.append(write_csv(attention, out / ATTENTION_CSV, index=True))
        fig = plot_attention(attention, caption=caption,
                             title=f"Variate-selection attention, mean over {subset} "
                                   f"({len(predictions)} samples)")
        written.append(save_figure(fig, out / ATTENTION_PNG))
    return written


__all__ = ["ATTENTION_CSV", "ATTENTION_INDEX", "ATTENTION_PNG", "PREDICTION_COLUMNS",
           "attention_frame", "plot_attention", "plot_predicted_vs_actual", "predictions_frame",
           "read_attention", "read_predictions", "read_table", "save_figure", "stamp", "write_csv",
           "write_evaluation_plots"]
