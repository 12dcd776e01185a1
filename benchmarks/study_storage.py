"""The driver's Optuna calls per trial, in the study file of earlier versions (SQLite) and
in the current one (Optuna's journal file), side by side in one run.

    python benchmarks/study_storage.py [--trials 40] [--epochs 3] [--space quick]
                                       [--dir DIR]

Between trial events the search driver asks Optuna for a trial (TPE, with the space's
define-by-run suggests), reports every epoch's value to it and tells it how the trial
ended. The same sequence runs here against each storage, with the same seeded sampler and
values, in a fresh folder on the disk the experiments use (`--dir`, default a temporary
folder), so the only difference is the storage. Printed per storage: the median
milliseconds of an ask with its suggests, of one epoch's report, and of the tell, and the
driver time per trial of `--epochs` epochs; then the ratio SQLite / journal.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def drive(storage: Any, define_by_run: Callable[[Any], Any], trials: int, epochs: int,
          seed: int = 0) -> dict[str, float]:
    """Median milliseconds of ask (with suggests), report (one epoch) and tell, as the
    driver does them for `trials` trials of `epochs` epochs; and per trial in all."""
    import optuna

    study = optuna.create_study(storage=storage, direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    ask: list[float] = []
    report: list[float] = []
    tell: list[float] = []
    for index in range(trials):
        began = time.perf_counter()
        trial = study.ask()
        define_by_run(trial)
        ask.append(time.perf_counter() - began)
        value = 2.0 + math.sin(index)  # any deterministic curve: the values are not timed
        for epoch in range(1, epochs + 1):
            began = time.perf_counter()
            trial.report(value / epoch, epoch)
            report.append(time.perf_counter() - began)
        began = time.perf_counter()
        study.tell(trial, value / epochs)
        tell.append(time.perf_counter() - began)
    ms = {"ask": 1e3 * statistics.median(ask), "report": 1e3 * statistics.median(report),
          "tell": 1e3 * statistics.median(tell)}
    ms["per_trial"] = ms["ask"] + epochs * ms["report"] + ms["tell"]
    return ms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=40, help="trials per storage (default 40)")
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs reported per trial (default 3)")
    p.add_argument("--space", default="quick", help="search space (default quick)")
    p.add_argument("--dir", type=Path,
                   help="folder for the study files (default: a temporary folder in /tmp)")
    args = p.parse_args(argv)
    if args.trials < 1 or args.epochs < 1:
        p.error("--trials and --epochs must be >= 1")

    import optuna

    from tuner.spaces import load_space
    from tuner.study import study_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(args.space)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="study-storage-", dir=args.dir))
    storages = {
        "SQLite (optuna.db, earlier versions)":
            lambda: optuna.storages.RDBStorage(f"sqlite:///{folder / 'optuna.db'}"),
        "journal file (optuna.journal)": lambda: study_storage(folder / "optuna.journal"),
    }
    print(f"{args.trials} trials x {args.epochs} epochs per storage, space {args.space}, "
          f"TPE seeded, files in {folder}")
    print(f"{'storage':38s} {'ask ms':>8} {'report ms':>10} {'tell ms':>8} "
          f"{'per trial ms':>13}")
    rows = {}
    for name, make in storages.items():
        rows[name] = row = drive(make(), space.define_by_run, args.trials, args.epochs)
        print(f"{name:38s} {row['ask']:8.2f} {row['report']:10.2f} {row['tell']:8.2f} "
              f"{row['per_trial']:13.2f}")
    old, new = rows.values()
    print("SQLite / journal: " + ", ".join(f"{key} {old[key] / new[key]:.1f}x"
                                           for key in ("ask", "report", "tell", "per_trial")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
