"""Parameter importance and the parameters against the result, from the Optuna study.

The study is the experiment's `optuna.journal` (or an earlier version's `optuna.db`), opened
read-only: a copied or write-protected experiment folder works and the report can never
alter it. `open_study` and `param_importances` are the figures' data (fANOVA fitted once,
seeded); Optuna's own matplotlib plots draw them (`plot_param_importances`, and
`plot_parallel_coordinate` or `plot_slice` depending on how many parameters vary).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.importance import BaseImportanceEvaluator, FanovaImportanceEvaluator
from optuna.search_space import intersection_search_space
from optuna.trial import TrialState as OptunaState

from timesclip.plots import stamp
from tuner.layout import OPTUNA_JOURNAL
from tuner.report.figures.base import Drawer, FigureContext, Section, pyplot
from tuner.report.text import short
from tuner.study import find_study, open_stored_study

#: fANOVA is a random forest: a fixed seed keeps the page the same on every rebuild.
IMPORTANCE_SEED = 0


@dataclass
class StudyView:
    """What the Optuna figures need from a stored study."""

    study: optuna.Study  # opened read-only
    complete: int  # COMPLETE trials (the ones Optuna's importance and plots use)
    pruned: int
    varying: list[str]  # parameters in every COMPLETE trial whose value differs between them


def open_study(path: Path, study_name: str) -> StudyView:
    """The experiment's Optuna study from its file, opened read-only."""
    study = open_stored_study(path, study_name)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == OptunaState.COMPLETE]
    common = intersection_search_space(complete) if complete else {}
    varying = [name for name in sorted(common)
               if len({json.dumps(t.params[name]) for t in complete}) > 1]
    return StudyView(study=study, complete=len(complete),
                     pruned=sum(1 for t in trials if t.state == OptunaState.PRUNED),
                     varying=varying)


def importance_reason(view: StudyView) -> str | None:
    """Why importances cannot be computed, or None when they can."""
    if view.complete < 2:
        return (f"parameter importance needs at least 2 COMPLETE trials in the Optuna study; "
                f"it holds {view.complete} (and {view.pruned} PRUNED: stopped by ASHA or "
                "diverged)")
    if not view.varying:
        return ("parameter importance needs at least one parameter that every COMPLETE "
                "trial sampled and whose value differs between them; there is none")
    return None


def param_importances(view: StudyView) -> dict[str, float]:
    """Optuna's fANOVA importances (seeded) of the varying parameters; they sum to 1."""
    return optuna.importance.get_param_importances(
        view.study, evaluator=FanovaImportanceEvaluator(seed=IMPORTANCE_SEED),
        params=view.varying)


class Computed(BaseImportanceEvaluator):
    """An importance evaluator that hands back importances already computed (by
    `param_importances`), so the figure shows the table's numbers without a second fANOVA
    fit. Optuna's plot calls `evaluate` with the same study and parameters."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values = dict(values)

    def evaluate(self, study: Any, params: Any = None, *, target: Any = None
                 ) -> dict[str, float]:
        return dict(self.values)


def optuna_figure(draw: Callable[[], Any], caption: str, size: tuple[float, float]) -> Any:
    """Run one of Optuna's matplotlib plots (experimental: its warning is silenced) and
    return its figure, sized and stamped."""
    pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = draw()
    first = np.ravel(np.asarray(axes, dtype=object))[0]
    fig = first.figure
    fig.set_size_inches(*size)
    stamp(fig, caption)
    return fig


def sections(ctx: FigureContext, draw: Drawer) -> list[Section]:
    titles = ("Parameter importance", "Parameters against the result")
    path = find_study(ctx.layout.root)
    if path is None:
        note = f"No {OPTUNA_JOURNAL} in the experiment folder: no Optuna study to read."
        return [Section("importance", titles[0], note=note)]
    try:
        view = open_study(path, str(ctx.meta.get("name")))
    except Exception as exc:
        note = f"The Optuna study could not be read ({type(exc).__name__}: {short(exc)})."
        return [Section("importance", titles[0], note=note)]
    reason = importance_reason(view)
    if reason is not None:
        return [Section("importance", titles[0], note=reason + ".")]
    pyplot()  # before Optuna's matplotlib module imports pyplot
    import optuna.visualization.matplotlib as ovm

    target = f"best {ctx.metric}"
    base = (f"From the Optuna study ({view.complete} COMPLETE trials; the {view.pruned} "
            "PRUNED ones, stopped by ASHA or diverged, are left out as Optuna leaves them "
            f"out), value = each trial's {target} on the validation split.")
    evaluator: BaseImportanceEvaluator = FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)
    rows: list[tuple[str, str]] = []
    note = ""
    try:
        values = param_importances(view)
        rows = [(name, f"{value:.3f}") for name, value in values.items()]
        evaluator = Computed(values)  # the figure draws these: fANOVA is fitted once
    except Exception as exc:
        note = f"importances not computed: {short(exc)}"
    out = [draw(
        "param_importance", titles[0],
        f"fANOVA importance (Optuna's FanovaImportanceEvaluator, seed {IMPORTANCE_SEED}) of "
        f"the parameters that vary across trials. {base}",
        lambda: optuna_figure(lambda: ovm.plot_param_importances(
            view.study, evaluator=evaluator, params=view.varying, target_name=target),
            draw.where, (8.0, 4.2)),
        headers=("parameter", "importance") if rows else (), rows=rows, note=note)]
    if len(view.varying) >= 2:
        out.append(draw(
            "parallel_coordinates", titles[1],
            f"Parallel coordinates (Optuna's plot_parallel_coordinate): one line per trial "
            f"across the varying parameters, coloured by {target}. {base}",
            lambda: optuna_figure(lambda: ovm.plot_parallel_coordinate(
                view.study, params=view.varying, target_name=target), draw.where,
                (10.0, 5.0))))
    else:
        out.append(draw(
            "slice", titles[1],
            f"Slice plot (Optuna's plot_slice): {target} against the one varying parameter. "
            f"{base}",
            lambda: optuna_figure(lambda: ovm.plot_slice(
                view.study, params=view.varying, target_name=target), draw.where,
                (7.0, 4.5))))
    return out


__all__ = ["IMPORTANCE_SEED", "Computed", "StudyView", "importance_reason", "open_study",
           "optuna_figure", "param_importances", "sections"]
