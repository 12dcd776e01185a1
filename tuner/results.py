"""`python -m tuner.results STORAGE/NAME`: rebuild the report of a stored search experiment.

The report itself is `tuner.report` (`build_report`); this module is its command line:
a user error (not an experiment folder, an altered file) is one line on stderr and exit
code 2; otherwise the report's files, its notes and the top trials are printed, exit 0.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from timesclip.cli_args import OneLineErrorParser
from timesclip.errors import UserError
from tuner.layout import META_FILE, TRIAL_ID
from tuner.report.read import experiment_root, load_meta

#: Columns of the top-trials table printed at the end.
TOP_COLUMNS = (TRIAL_ID, "status", "stopped_by", "epochs_run", "best_val_rmse")


def _top_text(path: Path, n: int = 3) -> str:
    from tuner.report import fmt, markdown_table

    trials = pd.read_csv(path, keep_default_na=False, na_values=[""])
    cols = [c for c in TOP_COLUMNS if c in trials]
    rows = [[fmt(v) for v in row] for row in trials[cols].head(n).itertuples(index=False)]
    return markdown_table(cols, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineErrorParser(
        prog="python -m tuner.results",
        description=(
            "Rebuild the report of a stored search experiment: STORAGE/NAME/report/ with "
            "trials.csv, trials.parquet, summary.md and best_config.yaml (ablation "
            "experiments: ablation.csv and ablation.md instead of best_config.yaml), and "
            "index.html with its figures. Works on finished and interrupted experiments; "
            "needs no running Ray cluster."),
        epilog="example: python -m tuner.results ~/ray_results/timesclip-full")
    parser.add_argument("experiment", metavar="STORAGE/NAME",
                        help="the experiment directory (--storage DIR plus --name NAME of "
                             f"`python -m tuner.search`); it holds {META_FILE}")
    args = parser.parse_args(argv)
    try:
        # a wrong path is said before the report's heavy imports (matplotlib, torch)
        load_meta(experiment_root(args.experiment))
        from tuner.report import build_report

        paths = build_report(args.experiment, echo=lambda _line: None,
                             progress_echo=lambda line: print(line, flush=True))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report written to {paths.directory}:")
    for file in paths.files():
        print(f"  {file}")
    for note in paths.notes:
        print(f"note: {note}")
    print("top trials (validation):")
    print(_top_text(paths.trials_csv))
    return 0


def __getattr__(name: str) -> object:
    """`build_report` stays importable from here for callers of the earlier module, and
    is imported only when asked for (it pulls the figures' heavy imports)."""
    if name == "build_report":
        from tuner.report import build_report

        return build_report
    raise AttributeError(f"module 'tuner.results' has no attribute {name!r}")


__all__ = ["main"]  # and build_report, through __getattr__


if __name__ == "__main__":
    sys.exit(main())
