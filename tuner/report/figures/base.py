"""What every figure module shares: the page block it produces (`Section`), what it may read
(`FigureContext`) and the one place a figure is drawn, saved and captioned (`Drawer`).

A figure that fails to draw becomes a note in its place plus a line in the report's notes:
a plot bug never costs the CONTRACT files.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from timesclip.plots import save_figure
from tuner.journal import ExperimentState
from tuner.layout import FIGURES_DIR, INDEX_HTML, ExperimentLayout
from tuner.report.read import MetaFields
from tuner.report.text import short


@dataclass
class Section:
    """One block of the page: a figure (its path relative to report/) or a note, a caption,
    and optionally a small table under the figure."""

    key: str
    title: str
    figure: str | None = None
    caption: str = ""
    note: str = ""
    headers: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()


@dataclass
class FigureContext(MetaFields):
    """Everything a figure may draw from: the experiment's plain files, already read."""

    layout: ExperimentLayout
    meta: dict[str, Any]
    state: ExperimentState
    events: list[dict[str, Any]]  # the journal's events, in order
    trials: pd.DataFrame  # the trials table, best first
    best_id: str | None  # the exported trial (None: nothing exported)
    best_test: dict[str, Any] | None
    ablation: pd.DataFrame | None
    finished: bool


@dataclass
class Drawer:
    """Draws figures into `directory`/figures/, each stamped with `where` (data + backbone);
    failures are appended to `notes`."""

    directory: Path
    where: str
    notes: list[str] = field(default_factory=list)

    def __call__(self, key: str, title: str, caption: str, draw: Callable[[], Figure], *,
                 headers: Sequence[str] = (), rows: Sequence[Sequence[str]] = (),
                 note: str = "") -> Section:
        """Draw, save and describe one figure; a failure becomes a note, never a crash."""
        figures = self.directory / FIGURES_DIR
        figures.mkdir(parents=True, exist_ok=True)
        try:
            # Optuna's plots switch pyplot's global style: keep that inside this figure
            with matplotlib.rc_context():
                fig = draw()
                try:
                    path = save_figure(fig, figures / f"{key}.png")
                finally:  # Optuna draws through pyplot, which keeps its figures until closed
                    if "matplotlib.pyplot" in sys.modules:
                        sys.modules["matplotlib.pyplot"].close(fig)
            return Section(key, title, figure=f"{FIGURES_DIR}/{path.name}",
                           caption=f"{caption} {self.where}.", headers=headers, rows=rows,
                           note=note)
        except Exception as exc:  # a plot bug must not cost the tables
            line = f"{title}: figure not drawn ({type(exc).__name__}: {short(exc)})"
            self.notes.append(f"{INDEX_HTML}: {line}")
            return Section(key, title, note=line)


def pyplot() -> Any:
    """pyplot for Optuna's matplotlib plots, on the non-interactive Agg backend unless the
    process already chose one (a report is written by a search driver or a CLI, never
    shown on screen). Called before anything imports pyplot, hence a function."""
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


__all__ = ["Drawer", "FigureContext", "Section", "pyplot"]
