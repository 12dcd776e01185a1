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

from tuner.report.baselines import BaselineResult, reference_baselines, reference_results
from tuner.report.build import ReportPaths, build_report
from tuner.report.export import BestTrial, export_best_config
from tuner.report.markdown import asha_rungs, markdown_table, write_ablation_md, write_summary
from tuner.report.read import (
    Experiment,
    Progress,
    TrialRecord,
    load_meta,
    load_trials,
    read_experiment,
)
from tuner.report.tables import CONTRACT_COLUMNS, EXTRA_COLUMNS, ablation_table, trials_table
from tuner.report.text import fmt

__all__ = ["CONTRACT_COLUMNS", "EXTRA_COLUMNS", "BaselineResult", "BestTrial", "Experiment",
           "Progress", "ReportPaths", "TrialRecord", "ablation_table", "asha_rungs",
           "build_report", "export_best_config", "fmt", "load_meta", "load_trials",
           "markdown_table", "read_experiment", "reference_baselines", "reference_results",
           "trials_table", "write_ablation_md", "write_summary"]
