"""`build_report`: read an experiment, write every report file, swap them in together.

Output (CONTRACT), written all-or-nothing into STORAGE/NAME/report/: trials.csv,
trials.parquet, summary.md, best_config.yaml (a finished search only); the ablation kind
adds ablation.csv and ablation.md (and writes no best_config.yaml: its arms are not a
search); index.html with figures/ is the human view of the same report.

Everything is written into a temporary folder inside the experiment and then renamed into
place, so a reader sees the old complete report or the new complete one, never a mix, and
an error leaves the old report as it was.

Selection uses validation metrics only (`tuner.outcomes.select_best`, the one notion of
"best" that the search also exports and scores); the test split appears solely where it was
evaluated once for the exported configuration (`best_test.json`) or for the fixed ablation
arms.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from timesclip.data import DataBundle
from timesclip.errors import ConfigError
from tuner.layout import (
    ABLATION_CSV,
    ABLATION_MD,
    BEST_CONFIG,
    INDEX_HTML,
    SUMMARY_MD,
    TRAIN_CONFIG_FILE,
    TRIALS_CSV,
    TRIALS_PARQUET,
)
from tuner.outcomes import select_best
from tuner.report.baselines import BaselineResult, reference_results, stored_references
from tuner.report.export import BestTrial, export_best_config, exportable
from tuner.report.html import write_html_report
from tuner.report.markdown import write_ablation_md, write_summary
from tuner.report.read import Experiment, read_experiment
from tuner.report.tables import ablation_table, trials_table

Echo = Callable[[str], Any]


@dataclass
class ReportPaths:
    """Where the report went; `None` for a file that was deliberately not written."""

    directory: Path
    trials_csv: Path
    trials_parquet: Path
    summary_md: Path
    best_config: Path | None = None
    ablation_csv: Path | None = None
    ablation_md: Path | None = None
    best_trial_id: str | None = None
    notes: list[str] = field(default_factory=list)  # one line each: what was skipped and why
    index_html: Path | None = None  # the human view (figures in figures/ beside it)

    def files(self) -> list[Path]:
        """The files actually written, in a stable order."""
        candidates = [self.trials_csv, self.trials_parquet, self.summary_md, self.best_config,
                      self.ablation_csv, self.ablation_md, self.index_html]
        return [p for p in candidates if p is not None]


def _references(exp: Experiment, data_bundle: DataBundle | None, notes: list[str],
                echo: Echo) -> tuple[list[BaselineResult] | None, str]:
    references, reason = reference_results(exp.meta, data_bundle, echo=echo)
    if references is None:
        notes.append(f"reference baselines unavailable: {reason}")
    return references, reason


def build_report(experiment_dir: str | Path, *, data_bundle: DataBundle | None = None,
                 echo: Echo = print, progress_echo: Echo | None = None) -> ReportPaths:
    """Rebuild STORAGE/NAME/report/ from what is stored; all files appear together or none.

    `data_bundle` (the experiment's data bundle, either task) is used for the reference rows; when
    omitted it is rebuilt from search_meta.json and must match the stored data fingerprint.
    `echo` receives one line naming the report and its files, then one line per note (files
    skipped and why); `progress_echo` (default: `echo`) the progress of the slower steps.
    A UserError (one line) when the folder is not an experiment or its files were altered.
    """
    progress_echo = echo if progress_echo is None else progress_echo
    exp = read_experiment(experiment_dir)
    trials = trials_table(exp.records, exp.meta)
    progress = exp.progress
    notes: list[str] = []
    leader = select_best(exp.state.trials.values(), exp.metric, exp.mode)
    best: BestTrial | None = None
    ablation: pd.DataFrame | None = None
    references: list[BaselineResult] | None = None
    if exp.kind == "ablation":
        references, reason = _references(exp, data_bundle, notes, progress_echo)
        ablation = ablation_table(trials, references, reason, exp.meta)
        notes.append(f"{BEST_CONFIG} not written: an ablation compares fixed arms, it is "
                     "not a search")
    else:
        if exp.best_test is not None:  # the exported config's test score next to baselines
            references = stored_references(exp.best_test)  # a forecasting search's, if any
            if references is None:
                references, _ = _references(exp, data_bundle, notes, progress_echo)
        if not progress.finished:
            notes.append(f"{BEST_CONFIG} not written: the search is interrupted "
                         f"({progress.ended} of {progress.total} trials finished); continue "
                         "it with --resume")
        else:
            best = exportable(leader, {r.trial_id: r for r in exp.records}, exp.metric,
                              exp.mode)
            if best is None:
                notes.append(f"{BEST_CONFIG} not written: no trial ended normally with "
                             f"both a finite {exp.metric} and a stored {TRAIN_CONFIG_FILE}")

    final_dir = exp.layout.report
    tmp_dir = Path(tempfile.mkdtemp(prefix=".report-tmp-", dir=exp.layout.root))
    try:
        trials.to_csv(tmp_dir / TRIALS_CSV, index=False)
        trials.to_parquet(tmp_dir / TRIALS_PARQUET, engine="pyarrow", index=False)
        if best is not None:
            try:
                export_best_config(tmp_dir / BEST_CONFIG, best, exp.meta, exp.best_test)
            except ConfigError as exc:
                notes.append(f"{BEST_CONFIG} not written: {exc}")
                best = None
        if ablation is not None:
            ablation.to_csv(tmp_dir / ABLATION_CSV, index=False)
            write_ablation_md(tmp_dir / ABLATION_MD, exp.meta, ablation)
        progress_echo(f"report: drawing {INDEX_HTML} and its figures ...")
        write_html_report(tmp_dir, exp, trials=trials, leader=leader, best=best,
                          references=references, ablation=ablation, notes=notes)
        write_summary(tmp_dir / SUMMARY_MD, exp.meta, trials, best, exp.best_test, notes,
                      ablation, references if exp.kind != "ablation" else None,
                      progress=progress)
        _swap_in(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise

    paths = ReportPaths(
        directory=final_dir, trials_csv=final_dir / TRIALS_CSV,
        trials_parquet=final_dir / TRIALS_PARQUET, summary_md=final_dir / SUMMARY_MD,
        best_config=final_dir / BEST_CONFIG if best is not None else None,
        ablation_csv=final_dir / ABLATION_CSV if ablation is not None else None,
        ablation_md=final_dir / ABLATION_MD if ablation is not None else None,
        best_trial_id=best.trial_id if best is not None else None, notes=notes,
        index_html=final_dir / INDEX_HTML)
    echo(f"report: {final_dir} ({', '.join(p.name for p in paths.files())})")
    for note in notes:
        echo(f"note: {note}")
    return paths


def _swap_in(new_dir: Path, final_dir: Path) -> None:
    """Replace `final_dir` by the finished `new_dir` with renames only.

    At every instant either the old complete report or the new complete one is in place
    (between the two renames the old one sits next to it under a hidden name).
    """
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".report-old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        final_dir.rename(old)
    new_dir.rename(final_dir)
    os.chmod(final_dir, 0o755)  # mkdtemp creates 0700
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["ReportPaths", "build_report"]
