"""report/index.html: the human view of the same report, with the plots researchers read.

Written by `tuner.report.build` into the same temporary folder as the CONTRACT files (so it
appears together with them, or not at all), from the same plain files. The page is one
jinja2 template (`templates/index.html.j2`, its CSS inline from `templates/report.css`)
rendered with autoescape on: every value from the experiment is escaped by jinja2, nothing
here builds HTML by hand. No script, no remote URL: it opens from disk, offline, in any
browser. The figures are PNG files in report/figures/ (`tuner.report.figures`).

This module prepares what the template shows (formatted cells, which headline applies);
the template only lays it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from timesclip.config import ABLATIONS
from timesclip.metrics import TASK_METRICS
from tuner.journal import TrialState, as_float, read_events
from tuner.layout import (
    ABLATION_CSV,
    ABLATION_MD,
    BEST_CONFIG,
    BEST_TEST_FILE,
    INDEX_HTML,
    OPTUNA_JOURNAL,
    SUMMARY_MD,
    TRAIN_CONFIG_FILE,
    TRIAL_ID,
    TRIALS_CSV,
    TRIALS_DIR,
    TRIALS_PARQUET,
)
from tuner.outcomes import Status
from tuner.report.baselines import REFERENCE_LABELS, REFERENCE_ROWS, BaselineResult
from tuner.report.export import BestTrial
from tuner.report.figures import Drawer, FigureContext, figure_sections
from tuner.report.read import Experiment
from tuner.report.text import (
    METRIC_NAMES,
    fmt,
    pm,
    proposers_line,
    provenance,
    retrain_note,
    selection_line,
)

TEMPLATE = "index.html.j2"
#: Columns of the page's trials table (those present; test_* only once a trial has them).
TRIAL_COLUMNS = {
    task: (TRIAL_ID, "status", "stopped_by", "proposed_by", "epochs_run", "best_epoch",
           *(f"best_val_{m}" for m in shown), *(f"test_{m}" for m in shown), "wall_seconds")
    for task, shown in (("yield", ("rmse", "r2")), ("forecast", ("mse", "mae")))}

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("tuner.report", "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    keep_trailing_newline=True)


#: The headline's metric columns per task: (split, metric, significant digits).
HEADLINE_COLUMNS: dict[str, tuple[tuple[str, str, int], ...]] = {
    "yield": (("val", "rmse", 4), ("val", "r2", 3), ("test", "rmse", 4), ("test", "mae", 4),
              ("test", "r2", 3), ("test", "mape", 3)),
    "forecast": (("val", "mse", 4), ("val", "mae", 4), ("test", "mse", 4), ("test", "mae", 4)),
}
#: What the headline's test numbers are, per task (under the table).
TEST_NOTES = {
    "yield": ("Test metrics: the exported configuration scored once on the test split when "
              "the search finished; the references are fitted on the same train split, "
              "tuned on validation and scored on the same test split. R² < 0 is worse than "
              "predicting the test mean."),
    "forecast": ("Test metrics: MSE / MAE on the standardised scale over every test window "
                 "(Time-Series-Library's protocol), the exported configuration scored once "
                 "when the search finished; naive repeats the last value, DLinear is trained "
                 "with TSLib's recipe on the same training windows, both scored on the same "
                 "windows."),
}


@dataclass
class MetricsLine:
    """One row of the headline's metrics table (cells as HEADLINE_COLUMNS of the task)."""

    label: str
    cells: list[str]
    ours: bool


def _headers(task: str) -> list[str]:
    return [f"{split} {METRIC_NAMES[m]}" for split, m, _ in HEADLINE_COLUMNS[task]]


def _metrics_line(task: str, label: str, val: dict[str, Any], test: dict[str, Any] | None,
                  ours: bool) -> MetricsLine:
    values = {"val": val, "test": test or {}}
    cells = [fmt(as_float(values[split].get(m)), digits)
             for split, m, digits in HEADLINE_COLUMNS[task]]
    return MetricsLine(label, cells, ours)


def _val_metrics(trials: pd.DataFrame, tid: str, metrics: Sequence[str]) -> dict[str, float]:
    """A trial's validation metrics at its best epoch (the trials table's best_val_*)."""
    rows = trials[trials[TRIAL_ID].astype(str) == tid]
    if not len(rows):
        return {}
    row = rows.iloc[0]
    return {m: as_float(row.get(f"best_val_{m}")) for m in metrics}


def _params(params: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(k), fmt(v)) for k, v in params.items() if k != TRIAL_ID]


def headline(trials: pd.DataFrame, *, finished: bool, metric: str,
             leader: TrialState | None, best: BestTrial | None,
             best_test: dict[str, Any] | None,
             references: Sequence[BaselineResult] | None,
             task: str = "yield") -> dict[str, Any]:
    """What the headline of a search says: the exported configuration next to the
    references, the leading trial of an interrupted search, or why there is neither."""
    metrics = TASK_METRICS[task]
    if not finished:
        if leader is None:
            return {"note": "No trial has ended normally with a finite value yet."}
        line = _metrics_line(task, f"trial {leader.tid} (validation)",
                             _val_metrics(trials, leader.tid, metrics), None, True)
        return {"note": "", "leader": True, "trial_id": leader.tid,
                "params": _params(leader.params), "lines": [line], "details": [],
                "headers": _headers(task)}
    if best is None:
        return {"note": "No configuration was exported: no trial ended normally with a "
                        f"finite {metric} and a stored {TRAIN_CONFIG_FILE}."}
    tid = best.trial_id
    test = None
    if best_test is not None and str(best_test.get("trial_id")) == tid:
        test = best_test.get("test") or {}
    lines = [_metrics_line(task, f"TimesCLIP, trial {tid} (exported)",
                           _val_metrics(trials, tid, metrics), test, True)]
    lines += [_metrics_line(task, REFERENCE_LABELS.get(ref.name, ref.name), ref.val,
                            ref.test, False) for ref in references or []]
    return {"note": "", "leader": False, "trial_id": tid, "metric": metric,
            "value": fmt(best.value), "epoch": fmt(best.epoch),
            "params": _params(best.record.params), "lines": lines,
            "details": [f"{r.name}: {r.detail}" for r in references or []],
            "test_scored": test is not None, "references": bool(references),
            "headers": _headers(task), "test_note": TEST_NOTES[task]}


def ablation_rows(table: pd.DataFrame | None, task: str = "yield") -> dict[str, Any]:
    """The headline of an ablation: its table, formatted, in the task's metrics."""
    metrics = TASK_METRICS[task]
    if table is None:
        return {"rows": []}
    rows = [{"ours": r["kind"] == "arm", "row": r["row"], "meaning": r["meaning"],
             "cells": [fmt(r["n"]), *(pm(r[f"test_{m}_mean"], r[f"test_{m}_std"])
                                      for m in metrics),
                       fmt(r["params_total"]), fmt(r["params_trainable"])],
             "note": r["note"]}
            for _, r in table.iterrows()]
    names = [str(r) for r in table["row"]]
    return {"rows": rows, "arms": [a for a in ABLATIONS if a in names],
            "references": [r for r in REFERENCE_ROWS[task] if r in names],
            "headers": [f"test {METRIC_NAMES[m]}" for m in metrics],
            "yield": task == "yield"}


def trials_rows(trials: pd.DataFrame, task: str = "yield") -> dict[str, Any]:
    """The page's trials table: the main columns, then every config.<field>."""
    cols = [c for c in TRIAL_COLUMNS[task]
            if c in trials and (not c.startswith("test_") or trials[c].notna().any())]
    cols += [c for c in trials.columns if c.startswith("config.")]
    return {"columns": [c.removeprefix("config.") for c in cols],
            "rows": [[fmt(v) for v in row] for row in trials[cols].itertuples(index=False)],
            "status": Status.TERMINATED.value}


def write_html_report(directory: Path, experiment: Experiment, *, trials: pd.DataFrame,
                      leader: TrialState | None, best: BestTrial | None,
                      references: Sequence[BaselineResult] | None,
                      ablation: pd.DataFrame | None, notes: list[str]) -> Path:
    """Write index.html and figures/*.png into `directory` (the report's temporary folder).

    `notes` is the report's notes list: a figure that failed to draw adds a line to it
    (before the page lists the notes). Returns the path of index.html.
    """
    meta, kind = experiment.meta, experiment.kind
    progress = experiment.progress
    ctx = FigureContext(layout=experiment.layout, meta=meta, state=experiment.state,
                        events=read_events(experiment.layout.journal), trials=trials,
                        best_id=best.trial_id if best else None,
                        best_test=experiment.best_test, ablation=ablation,
                        finished=progress.finished)
    sections = figure_sections(ctx, Drawer(directory, provenance(meta), notes))
    data = meta.get("data") or {}
    tables = [TRIALS_CSV, TRIALS_PARQUET, SUMMARY_MD]
    if kind == "ablation":
        tables += [ABLATION_CSV, ABLATION_MD]
    elif best is not None:
        tables.append(BEST_CONFIG)
    page = _ENV.get_template(TEMPLATE).render(
        heading="Ablation" if kind == "ablation" else "Search",
        name=str(meta.get("name", "?")), kind=kind, space=meta.get("space", "?"),
        searcher=meta.get("searcher", "?"), scheduler=meta.get("scheduler", "?"),
        proposers=proposers_line(meta, trials), selection=selection_line(meta),
        retrained=retrain_note(experiment.best_test), cv=meta.get("cv"),
        seed=meta.get("seed", "?"), started=meta.get("started", "?"),
        synthetic=bool(data.get("synthetic")), description=data.get("description", "?"),
        fingerprint=data.get("fingerprint", "?"), backbone=str(meta.get("backbone", "?")),
        progress=progress,
        ablation=ablation_rows(ablation, experiment.task) if kind == "ablation" else None,
        headline=None if kind == "ablation" else headline(
            trials, finished=progress.finished, metric=experiment.metric, leader=leader,
            best=best, best_test=experiment.best_test, references=references,
            task=experiment.task),
        sections=sections, trials=trials_rows(trials, experiment.task), notes=notes,
        files={"tables": tables, "best_config": BEST_CONFIG, "best_test": BEST_TEST_FILE,
               "trials_csv": TRIALS_CSV, "optuna": OPTUNA_JOURNAL,
               "trials_dir": str(Path("..") / TRIALS_DIR)},
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    index = directory / INDEX_HTML
    index.write_text(page, encoding="utf-8")
    return index


__all__ = ["HEADLINE_COLUMNS", "TEMPLATE", "TEST_NOTES", "TRIAL_COLUMNS", "MetricsLine",
           "ablation_rows", "headline", "trials_rows", "write_html_report"]
