"""What a SIGKILLed driver costs, kill point by kill point.

    python benchmarks/kill_points.py [--num-samples 6] [--epochs 6] [--points 5]
                                     [--data CSV ...]

One uninterrupted reference search runs first (one trial at a time, so its report order
and therefore its ASHA decisions are deterministic). Then, for each of `--points` kill
points spread over the reference's epoch results (the first result, then evenly up to
the last), the same search is started with `TIMESCLIP_FAULT=after_result:k` (tuner.faults) — the
driver SIGKILLs itself right after journaling its k-th result — and finished with
`--resume`. Per kill point it prints:

- **trials re-run**: trials that got an event after their end event, or ended twice
  (must be 0);
- **epochs trained twice**: (trial, epoch) pairs with more than one TensorBoard record in
  the trial's folder, i.e. epochs that were trained, lost with the driver, and trained
  again (the epoch in progress at the kill, at most one per running trial);
- **study = table**: every Optuna study trial finished and matching its `trials.csv` row
  (parameters, per-epoch values, value), and as many study trials as rows;
- **same decisions**: the resumed search's trials, ASHA stops, epochs run and best values
  equal the reference's, exactly.

Numbers are counted from the experiment's own files (journal, TensorBoard event files,
`trials.parquet`, `optuna.journal`), not from the driver's output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_search(storage: Path, name: str, args: argparse.Namespace, *extra: str,
               crash_after: int | None = None) -> tuple[int, float]:
    """One driver run; returns (exit code, seconds)."""
    cmd = [sys.executable, "-m", "tuner.search", "--space", "quick",
           "--num-samples", str(args.num_samples), "--max-epochs", str(args.epochs),
           "--storage", str(storage), "--name", name, "--seed", str(args.seed),
           "--max-concurrent", "1", "--num-cpus", "2", "--cpus-per-trial", "1", *extra]
    if args.data:
        cmd += ["--data", *args.data]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    env.pop("TIMESCLIP_FAULT", None)
    if crash_after is not None:
        env["TIMESCLIP_FAULT"] = f"after_result:{crash_after}"
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    (storage / f"{name}-{'crash' if crash_after else 'run'}.log").write_text(
        done.stdout + done.stderr)
    return done.returncode, seconds


def events(exp: Path) -> list[dict]:
    from tuner.journal import read_events  # tolerates a torn last line
    from tuner.layout import JOURNAL_FILE

    return read_events(exp / JOURNAL_FILE)


def epochs_trained_twice(exp: Path) -> int:
    """(trial, epoch) pairs recorded by more than one TensorBoard writer in a trial folder."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from tuner.layout import TRIALS_DIR

    twice = 0
    for folder in (exp / TRIALS_DIR).iterdir():
        steps: Counter[int] = Counter()
        for path in folder.rglob("events.out.tfevents.*"):
            for event in EventFileLoader(str(path)).Load():
                for value in event.summary.value:
                    if value.tag == "Metrics/RMSE":
                        steps[event.step] += 1
        twice += sum(1 for n in steps.values() if n > 1)
    return twice


def outcomes(exp: Path):
    import pandas as pd

    table = pd.read_parquet(exp / "report" / "trials.parquet")
    cols = ["trial_id", "status", "stopped_by", "epochs_run", "best_val_rmse",
            *sorted(c for c in table.columns if c.startswith("config."))]
    return table[cols].sort_values("trial_id").reset_index(drop=True)


def study_matches_table(exp: Path) -> bool:
    import optuna

    from tuner.journal import load_state
    from tuner.layout import OPTUNA_JOURNAL
    from tuner.study import open_stored_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    state = load_state(exp)
    table = outcomes(exp)
    meta = json.loads((exp / "search_meta.json").read_text())
    study = open_stored_study(exp / OPTUNA_JOURNAL, meta["name"])
    trials = study.get_trials(deepcopy=False)
    if len(trials) != len(table):
        return False
    rows = {r["trial_id"]: r for _, r in table.iterrows()}
    for trial in trials:
        row = rows.get(trial.user_attrs.get("trial_id"))
        if row is None or not trial.state.is_finished():
            return False
        journaled = state.trials[row["trial_id"]]
        if any(journaled.params.get(k) != v for k, v in trial.params.items()):
            return False
        if dict(trial.intermediate_values) != {e: h["val_rmse"]
                                               for e, h in journaled.history.items()}:
            return False
        if trial.state == optuna.trial.TrialState.COMPLETE and \
                trial.value != row["best_val_rmse"]:
            return False
    return True


def trials_rerun(exp: Path) -> int:
    evs = events(exp)
    ends = Counter(e["tid"] for e in evs if e["ev"] == "end")
    ended_at = {e["tid"]: i for i, e in enumerate(evs) if e["ev"] == "end"}
    late = {e["tid"] for i, e in enumerate(evs)
            if e.get("tid") in ended_at and i > ended_at[e["tid"]]}
    return len(late | {t for t, n in ends.items() if n > 1})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-samples", type=int, default=6)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--points", type=int, default=5, help="kill points (default 5)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--data", nargs="+", metavar="CSV",
                   help="CSV files (default: the built-in synthetic data set)")
    p.add_argument("--out", type=Path, help="where the experiments go (default: a temp dir)")
    args = p.parse_args()
    if min(args.num_samples, args.epochs, args.points) < 1:
        p.error("--num-samples, --epochs and --points must be at least 1")
    storage = args.out or Path(tempfile.mkdtemp(prefix="kill-points-"))
    storage.mkdir(parents=True, exist_ok=True)

    code, wall = run_search(storage, "reference", args)
    if code != 0:
        sys.exit(f"reference search failed ({code}); see {storage / 'reference-run.log'}")
    ref = storage / "reference"
    n_results = sum(1 for e in events(ref) if e["ev"] == "result")
    reference = outcomes(ref)
    points = sorted({max(1, round(1 + i * (n_results - 1) / max(1, args.points - 1)))
                     for i in range(args.points)})
    print(f"{args.num_samples} trials x <= {args.epochs} epochs, one at a time; reference "
          f"{wall:.0f}s, {n_results} epoch results, ASHA stopped "
          f"{int((reference['stopped_by'] == 'asha').sum())}; experiments in {storage}",
          flush=True)
    print(f"{'killed after result':>20} {'trials re-run':>14} {'epochs trained twice':>21} "
          f"{'study = table':>14} {'same decisions':>15} {'resume wall':>12}", flush=True)
    failures = 0
    for k in points:
        name = f"kill-{k:03d}"
        code, _ = run_search(storage, name, args, crash_after=k)
        if code != -9:
            print(f"{k:>20}  driver was not killed (exit {code}); see {name}-crash.log")
            failures += 1
            continue
        code, resume_s = run_search(storage, name, args, "--resume")
        exp = storage / name
        if code != 0:
            print(f"{k:>20}  resume failed (exit {code}); see {name}-run.log")
            failures += 1
            continue
        same = outcomes(exp).equals(reference)
        rerun, twice, agree = trials_rerun(exp), epochs_trained_twice(exp), \
            study_matches_table(exp)
        failures += bool(rerun) or not agree or not same
        print(f"{k:>20} {rerun:>14} {twice:>21} {'yes' if agree else 'NO':>14} "
              f"{'yes' if same else 'NO':>15} {resume_s:>11.0f}s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
