"""The report of a search experiment, rebuilt from what is stored.

`build_report(STORAGE/NAME)` (or `python -m tuner.results STORAGE/NAME`) writes
STORAGE/NAME/report/: trials.csv and trials.parquet (`trials_table`, CONTRACT columns
first), summary.md, best_config.yaml for a finished search, ablation.csv / ablation.md for
the ablation kind, and index.html with its figures. Plain files in, plain files out: no
pickle is read, no Ray is needed, an interrupted experiment reports too.

Modules, each with one job and importing only the ones above it in this list:
`text` (how numbers read), `read` (the experiment's files), `baselines` (reference
predictors), `tables`, `export` (best_config.yaml), `markdown` (summary.md, ablation.md),
`figures` (one module per figure), `html` (index.html from templates), `build` (all of it,
swapped in together).
"""

from __future__ import annotations

import importlib
from typing import Any

#: name -> the module of this package that defines it. Imported when first used (PEP 562):
#: `tuner.report.read` alone is light, while `build` pulls the figures (matplotlib, torch
#: for the forecast figures), so a command that only checks a path stays fast.
_EXPORTS: dict[str, str] = {
    "BaselineResult": "baselines", "reference_baselines": "baselines",
    "reference_results": "baselines",
    "ReportPaths": "build", "build_report": "build",
    "BestTrial": "export", "export_best_config": "export",
    "asha_rungs": "markdown", "markdown_table": "markdown", "write_ablation_md": "markdown",
    "write_summary": "markdown",
    "Experiment": "read", "Progress": "read", "TrialRecord": "read", "load_meta": "read",
    "load_trials": "read", "read_experiment": "read",
    "CONTRACT_COLUMNS": "tables", "EXTRA_COLUMNS": "tables", "ablation_table": "tables",
    "trials_table": "tables",
    "fmt": "text",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tuner.report' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tuner.report.{_EXPORTS[name]}"), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


__all__ = sorted(_EXPORTS)
