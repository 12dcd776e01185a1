"""Does the search pay? TPE + ASHA against random search, same space, same budget.

    python benchmarks/search_efficiency.py [--quick] [--seeds 3] [--data CSV ...]

Runs the real search (`python -m tuner.search`: real Ray, real Optuna, real training) for
four strategies on the same space, number of trials and epochs, over several seeds:

    random+FIFO   RandomSampler, every trial to its end (what a for-loop over random
                  configurations does)
    TPE+FIFO      TPESampler, every trial to its end
    random+ASHA   RandomSampler, ASHA stops weak trials early
    TPE+ASHA      TPESampler + ASHA (the tool's default)

For each strategy: trial-epochs spent (epochs actually trained, summed over trials), wall
time, best validation RMSE (mean ± std over seeds), the test RMSE of the configuration the
search exported (scored once), and the anytime curve (best validation RMSE reported so far
against cumulative trial-epochs, in the order the journal recorded them) as CSV.

The last line compares TPE+ASHA with random+FIFO, per seed: the trial-epochs TPE+ASHA
needed to first report a validation RMSE at least as good as random+FIFO's best, as a
fraction of random+FIFO's total trial-epochs; the median over seeds is printed:

    TPE+ASHA reached random+FIFO's best val_rmse with R of its trial-epochs (median over S seeds)

or "did not reach" with the gap. All numbers come from the experiments' journals
(`STORAGE/NAME/journal.jsonl`), i.e. from what the searches recorded.

`--quick` (8 trials x 6 epochs x 3 seeds on the small synthetic set) fits in ~10 minutes
on a 2-core CPU; the default (24 trials x 12 epochs) is the measurement worth quoting.
Experiments are kept under --out (default: a temp dir) for inspection.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRATEGIES = {  # name -> (searcher, scheduler)
    "random+FIFO": ("random", "fifo"),
    "TPE+FIFO": ("tpe", "fifo"),
    "random+ASHA": ("random", "asha"),
    "TPE+ASHA": ("tpe", "asha"),
}


def run_search(out: Path, name: str, args: argparse.Namespace, searcher: str,
               scheduler: str, seed: int) -> dict:
    cmd = [sys.executable, "-m", "tuner.search", "--space", args.space,
           "--searcher", searcher, "--scheduler", scheduler, "--seed", str(seed),
           "--num-samples", str(args.num_samples), "--max-epochs", str(args.max_epochs),
           "--storage", str(out), "--name", name, "--num-cpus", str(args.num_cpus),
           "--cpus-per-trial", "1", "--max-concurrent", str(args.max_concurrent)]
    if args.grace_period:
        cmd += ["--grace-period", str(args.grace_period)]
    if args.reduction_factor:
        cmd += ["--reduction-factor", str(args.reduction_factor)]
    if args.data:
        cmd += ["--data", *args.data]
    # a private feature cache, filled before the first strategy (see main): no strategy pays
    # the vision pass in its wall time, and the user's own cache is left alone
    cmd += ["--feature-cache", str(out / "feature-cache")]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"search {name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                 f"{proc.stderr[-3000:]}")
    return summarize(out / name, wall)


def summarize(exp: Path, wall: float) -> dict:
    """Trial-epochs, best value, exported test RMSE and the anytime curve, from the journal."""
    from tuner.journal import read_events, replay
    from tuner.layout import BEST_TEST_FILE
    from tuner.outcomes import select_best

    events = read_events(exp / "journal.jsonl")
    state = replay(events)
    curve, spent, best = [], 0, math.inf
    for ev in events:
        if ev["ev"] != "result" or ev.get("diverged"):
            continue
        spent += 1
        value = (ev.get("metrics") or {}).get("val_rmse")
        if isinstance(value, (int, float)) and math.isfinite(value):
            best = min(best, value)
        curve.append((spent, best))
    chosen = select_best(state.trials.values(), "val_rmse", "min")
    test = json.loads((exp / BEST_TEST_FILE).read_text())["test"] \
        if (exp / BEST_TEST_FILE).exists() else {}
    return {"trial_epochs": spent, "wall": wall, "best_val": best, "curve": curve,
            "exported": chosen.tid if chosen else None, "test_rmse": test.get("rmse"),
            "stopped": sum(1 for t in state.trials.values() if t.stopped_by == "asha")}


def epochs_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    for spent, best in curve:
        if best <= target:
            return spent
    return None


def _pm(values: list[float], digits: int = 4) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}g}"
    return f"{statistics.mean(values):.{digits}g} ± {statistics.stdev(values):.2g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="8 trials x 6 epochs on the small synthetic set (~10 min, 2 cores)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per strategy (default 3)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds run are first-seed .. first-seed+seeds-1 (default 0); tune "
                        "defaults on one range and report on another")
    p.add_argument("--strategies", nargs="+", choices=list(STRATEGIES),
                   default=list(STRATEGIES), metavar="S",
                   help="which strategies to run (default all four: "
                        + ", ".join(STRATEGIES) + "); the last line needs random+FIFO "
                        "and TPE+ASHA")
    p.add_argument("--space", default="quick", help="search space (default quick)")
    p.add_argument("--num-samples", type=int, help="trials per search (default 24; "
                   "--quick 8)")
    p.add_argument("--asha-samples", type=int, help="trials per ASHA search (default: "
                   "--num-samples); more trials compare the strategies at equal compute, "
                   "R stays a share of random+FIFO's trial-epochs")
    p.add_argument("--max-epochs", type=int, help="epochs of a trial that is never "
                   "stopped (default 12; --quick 6)")
    p.add_argument("--grace-period", type=int, help="ASHA grace period (default: the "
                   "space's)")
    p.add_argument("--reduction-factor", type=float, help="ASHA reduction factor "
                   "(default: the space's)")
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--data", nargs="+", metavar="CSV", help="CSV files (default: the "
                   "built-in synthetic data set)")
    p.add_argument("--out", type=Path, help="where the experiments are kept (default: a "
                   "new temp dir)")
    args = p.parse_args(argv)
    if args.seeds < 1 or (args.asha_samples is not None and args.asha_samples < 1):
        p.error("--seeds and --asha-samples must be >= 1")
    args.num_samples = args.num_samples or (8 if args.quick else 24)
    args.max_epochs = args.max_epochs or (6 if args.quick else 12)
    asha_args = argparse.Namespace(**{**vars(args), "num_samples": args.asha_samples
                                      or args.num_samples})
    out = args.out or Path(tempfile.mkdtemp(prefix="search-efficiency-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(args.strategies)} strategies x {args.seeds} seeds, space {args.space}, "
          f"{args.num_samples} trials"
          + (f" ({asha_args.num_samples} with ASHA)" if args.asha_samples else "")
          + f" x <= {args.max_epochs} epochs, "
          f"{args.max_concurrent} concurrent; experiments in {out}", flush=True)

    warm = argparse.Namespace(**{**vars(args), "num_samples": 1, "max_epochs": 1,
                                 "grace_period": None,
                                 "reduction_factor": None})
    run_search(out, "warm-feature-cache", warm, "random", "fifo", 0)
    results: dict[str, list[dict]] = {s: [] for s in args.strategies}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for strategy in args.strategies:
            searcher, scheduler = STRATEGIES[strategy]
            name = f"{strategy.replace('+', '-').lower()}-s{seed}"
            res = run_search(out, name, asha_args if scheduler == "asha" else args,
                             searcher, scheduler, seed)
            results[strategy].append(res)
            print(f"  seed {seed} {strategy:12s} trial-epochs {res['trial_epochs']:4d}  "
                  f"best val_rmse {res['best_val']:.4f}  test_rmse "
                  f"{res['test_rmse'] if res['test_rmse'] is None else round(res['test_rmse'], 4)}"
                  f"  wall {res['wall']:.0f}s  stopped by ASHA {res['stopped']}", flush=True)

    with open(out / "anytime.csv", "w") as fh:
        fh.write("strategy,seed,trial_epochs,best_val_rmse\n")
        for strategy, runs in results.items():
            for seed, res in enumerate(runs, start=args.first_seed):
                for spent, best in res["curve"]:
                    fh.write(f"{strategy},{seed},{spent},{best!r}\n")
    rows = []
    print(f"\n{'strategy':12s} {'trial-epochs':>14s} {'wall s':>12s} {'best val RMSE':>18s} "
          f"{'test RMSE (exported)':>22s}")
    for strategy, runs in results.items():
        row = {"strategy": strategy,
               "trial_epochs": _pm([r["trial_epochs"] for r in runs], 4),
               "wall": _pm([r["wall"] for r in runs], 3),
               "best_val": _pm([r["best_val"] for r in runs]),
               "test": _pm([r["test_rmse"] for r in runs])}
        rows.append(row)
        print(f"{strategy:12s} {row['trial_epochs']:>14s} {row['wall']:>12s} "
              f"{row['best_val']:>18s} {row['test']:>22s}")
    with open(out / "summary.csv", "w") as fh:
        fh.write("strategy,trial_epochs,wall_seconds,best_val_rmse,test_rmse\n")
        for row in rows:
            fh.write(",".join(f'"{row[k]}"' for k in ("strategy", "trial_epochs", "wall",
                                                      "best_val", "test")) + "\n")
    print(f"\nanytime curves: {out / 'anytime.csv'}; table: {out / 'summary.csv'}")

    if not {"random+FIFO", "TPE+ASHA"} <= set(results):
        return 0
    ratios, gaps = [], []
    for base, tuned in zip(results["random+FIFO"], results["TPE+ASHA"]):
        needed = epochs_to_reach(tuned["curve"], base["best_val"])
        if needed is None:
            ratios.append(math.inf)
            gaps.append(tuned["best_val"] - base["best_val"])
        else:
            ratios.append(needed / base["trial_epochs"])
    median = statistics.median(ratios)
    per_seed = ", ".join("never" if math.isinf(r) else f"{r:.2f}" for r in ratios)
    print(f"per seed: {per_seed}")
    if math.isfinite(median):
        print(f"TPE+ASHA reached random+FIFO's best val_rmse with {median:.2f} of its "
              f"trial-epochs (median over {len(ratios)} seeds)")
    else:
        gap = statistics.median(gaps) if gaps else math.nan
        print(f"TPE+ASHA did not reach random+FIFO's best val_rmse (median over "
              f"{len(ratios)} seeds; median gap {gap:+.4f} val_rmse)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
