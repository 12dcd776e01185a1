"""Does the search pay? TPE + ASHA against random search, same space, same budget.

    python benchmarks/search_efficiency.py [--quick] [--seeds 3] [--data illinois|CSV ...]
                                           [--space quick] [--strategies S ...]

Runs the real search (`python -m tuner.search`: real Ray, real Optuna, real training) for
each strategy on the same space, number of trials and epochs, over several seeds:

    random+FIFO       RandomSampler, every trial to its end (what a for-loop over random
                      configurations does): the reference every other strategy is read against
    TPE+FIFO          TPESampler, every trial to its end
    random+ASHA       RandomSampler, ASHA stops weak trials early
    TPE+ASHA          TPESampler + ASHA (the tool's default, constant liar on)
    TPE+ASHA-noliar   TPE+ASHA with Optuna's constant liar off (a copy of the space file
                      with `budget.constant_liar: false`); with trials running at once the
                      liar keeps TPE from proposing the region of the running trials again,
                      this arm measures what it changes
    TPE+FIFO-noliar   the same for TPE+FIFO (not run by default; --strategies adds it)

Within each seed the strategies run in a shuffled order (seeded by the seed, printed), so a
machine that slows down or speeds up during the run (other jobs, heat) does not always
favour the same strategy's trial-seconds.

What is read, all from the experiments' own files (`journal.jsonl` replayed by
`tuner.journal`, `search_meta.json`, `best_test.json`):

- the search metric and its mode from `search_meta.json` (`val_rmse` for the yield spaces,
  `val_mse` for a forecasting space: nothing here is specific to one metric); the test
  metric is the same name without `val_`;
- compute in trial-epochs (epochs reported, summed over trials) and in trial-seconds (Ray's
  `time_this_iter_s` of every reported epoch, summed: training plus each trial's start-up
  and checkpointing, what a worker was busy with);
- the anytime curve: after every reported epoch, in journal order, the best value reported
  so far by a trial that ended normally. Only such trials count (those `select_best` could
  export: a value from a trial that later diverged or failed could never be the result);
- the target: random+FIFO's best, which is the value of the trial `select_best` exports;
- per seed, the trial-epochs and trial-seconds each strategy needed to first reach the
  target (R: as a share of random+FIFO's total), with random+FIFO's own figure (when it
  reached its own best) beside it, and "never" (with the gap) for a seed that did not;
- per seed, the paired difference of the exported configurations' test metric (scored
  once by the search) against random+FIFO's, with its mean and a 95 % interval over seeds
  (Student's t with seeds - 1 degrees of freedom: the seeds are the samples);
- which TPE trials were random start-up (`proposed_by` in the journal; the count the
  search was given is `search_meta.json`'s budget `startup_trials`), and whether TPE's
  trials after the start-up trained configurations different from the random arm's trials
  of the same index and seed (during the start-up TPE draws exactly what RandomSampler
  draws; after it, it must not).

The last lines (the metric's name follows the search's):

    TPE+ASHA reached random+FIFO's best val_rmse with R of its trial-epochs (median over S seeds)
    TPE+ASHA - random+FIFO, exported test rmse (paired by seed): mean D, 95% t-interval [a, b] ...

`--data illinois` runs on the Illinois soybean CSVs (found in $TIMESCLIP_REAL_DATA or
shared/data/ in or beside the checkout; year split, test year 2022, 12 input steps);
`--data A.csv B.csv` on any CSVs; omitted, on the built-in synthetic set. `--space` takes
any space, the forecasting one too (`--space forecast --data .../ETTh1.csv.gz`, on a CPU
with `--search-args "--backbone tiny --train-stride 16"`); `--search-args` passes further
flags to every search (after the benchmark's own, so they win; a single flag is written
`--search-args="--flag"`).

`--quick` (8 trials x 6 epochs x 3 seeds on the synthetic set, five strategies) took 23
minutes on a shared 2-core CPU; the default (24 trials x 12 epochs) is the measurement
worth quoting. Measured numbers, with their commands, live in benchmarks/RESULTS.md.
Experiments are kept under --out (default: a temp dir) for inspection and for
benchmarks/asha_replay.py (the random+FIFO ones).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.data_files import DATA_ENV, DATA_PRESETS, find_data, places_text  # noqa: E402
from timesclip.errors import UserError  # noqa: E402
from timesclip.metrics import better  # noqa: E402
from tuner.journal import load_state, read_events  # noqa: E402
from tuner.layout import BEST_TEST_FILE, JOURNAL_FILE, META_FILE, TRIAL_ID  # noqa: E402
from tuner.outcomes import Proposer, Status, StopReason, best_value, select_best  # noqa: E402
from tuner.spaces import load_space  # noqa: E402


class Strategy(NamedTuple):
    """How one arm searches: the sampler, the scheduler and TPE's constant liar."""

    searcher: str  # "random" | "tpe" (--searcher)
    scheduler: str  # "fifo" | "asha" (--scheduler)
    constant_liar: bool = True  # False: run on a copy of the space with the liar off


STRATEGIES: dict[str, Strategy] = {
    "random+FIFO": Strategy("random", "fifo"),
    "TPE+FIFO": Strategy("tpe", "fifo"),
    "random+ASHA": Strategy("random", "asha"),
    "TPE+ASHA": Strategy("tpe", "asha"),
    "TPE+ASHA-noliar": Strategy("tpe", "asha", constant_liar=False),
    "TPE+FIFO-noliar": Strategy("tpe", "fifo", constant_liar=False),
}
DEFAULT_STRATEGIES = ["random+FIFO", "TPE+FIFO", "random+ASHA", "TPE+ASHA", "TPE+ASHA-noliar"]
#: The reference every strategy is read against, and the strategy of the headline.
BASELINE, HEADLINE = "random+FIFO", "TPE+ASHA"

#: (trial-epochs spent, trial-seconds spent, best value so far) after each reported epoch.
Point = tuple[int, float, float]


# ----------------------------------------------------------------------------- inputs
def experiment_name(strategy: str, seed: int) -> str:
    """random+FIFO, seed 0 -> random-fifo-s0."""
    return f"{strategy.replace('+', '-').lower()}-s{seed}"


def preset_files(name: str) -> list[Path]:
    """The CSVs of a preset data set, looked up where the test suite looks for them
    (`benchmarks.data_files.find_data`: $TIMESCLIP_REAL_DATA, then shared/data/ in or
    beside the checkout); UserError naming the places when they are not there."""
    folder, pattern, _ = DATA_PRESETS[name]
    files, places = find_data(folder, pattern)
    if files:
        return files
    raise UserError(f"--data {name}: no {folder}/{pattern} in {places_text(places)}; set "
                    f"{DATA_ENV} to the folder that holds it")


def data_flags(data: Sequence[str] | None) -> tuple[list[str], str]:
    """The search flags for --data (a preset name or files) and a label to print."""
    if not data or list(data) == ["synthetic"]:
        return [], "the built-in synthetic set"
    if len(data) == 1 and data[0] in DATA_PRESETS:
        files = preset_files(data[0])
        extra = DATA_PRESETS[data[0]][2]
        return ["--data", *map(str, files), *extra], \
            f"{data[0]} ({len(files)} files in {files[0].parent}; {' '.join(extra)})"
    missing = [p for p in data if not Path(p).is_file()]
    if missing:
        raise UserError(f"--data: {missing[0]} is not a file (give CSV files, "
                        f"'synthetic' or one of: {', '.join(DATA_PRESETS)})")
    return ["--data", *data], f"{len(data)} file(s): {', '.join(map(str, data))}"


def liar_off_space(space: str, out: Path) -> Path:
    """A copy of the space file with `budget.constant_liar: false` (written under out/)."""
    source = load_space(space).path
    body = yaml.safe_load(Path(source).read_text())
    body.setdefault("budget", {})["constant_liar"] = False
    target = out / "spaces" / f"{Path(source).stem}-noliar.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(body, sort_keys=False))
    return target


# ----------------------------------------------------------------------------- searches
def run_search(out: Path, name: str, args: argparse.Namespace, strategy: Strategy,
               seed: int) -> dict[str, Any]:
    """One real `python -m tuner.search` run; its summary (see `summarize`)."""
    space = str(args.liar_off_space) if not strategy.constant_liar else args.space
    cmd = [sys.executable, "-m", "tuner.search", "--space", space,
           "--searcher", strategy.searcher, "--scheduler", strategy.scheduler,
           "--seed", str(seed),
           "--num-samples", str(args.num_samples), "--max-epochs", str(args.max_epochs),
           "--storage", str(out), "--name", name, "--num-cpus", str(args.num_cpus),
           "--cpus-per-trial", "1", "--max-concurrent", str(args.max_concurrent)]
    if args.grace_period:
        cmd += ["--grace-period", str(args.grace_period)]
    if args.reduction_factor:
        cmd += ["--reduction-factor", str(args.reduction_factor)]
    cmd += args.data_flags + args.extra_flags
    # a private feature cache, filled before the first strategy (see main): no strategy pays
    # the vision pass in its wall time, and the user's own cache is left alone
    cmd += ["--feature-cache", str(out / "feature-cache")]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)  # a private local instance, never somebody's cluster
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"search {name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                 f"{proc.stderr[-3000:]}")
    return summarize(out / name, wall)


def _seconds(metrics: dict[str, Any]) -> float:
    """A reported epoch's trial-seconds: Ray's time since the trial's previous report (for
    the first epoch, since the trial started), else the trainer's own epoch time."""
    for key in ("time_this_iter_s", "epoch_seconds"):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return 0.0


def summarize(exp: Path, wall: float) -> dict[str, Any]:
    """What one search spent and found, from its own files.

    trial_epochs / trial_seconds: epochs reported (a diverged epoch reports no value and
    is not counted) and their seconds, summed over trials; curve: (trial-epochs,
    trial-seconds, best so far) after each reported epoch in journal order, the best taken
    over trials that ended normally (TERMINATED, what `select_best` may export);
    best_val / exported: the value and id of the trial select_best exports; test: the
    exported configuration's test metric from best_test.json; startup / proposed: which
    trials TPE drew at random before its model (journal `proposed_by`); params: each
    trial's sampled parameters by trial id."""
    meta = json.loads((exp / META_FILE).read_text())
    metric, mode = meta["metric"], meta["mode"]
    state = load_state(exp)
    exportable = {t.tid for t in state.trials.values() if t.status == Status.TERMINATED}
    curve: list[Point] = []
    epochs, seconds, best = 0, 0.0, None
    for ev in read_events(exp / JOURNAL_FILE):
        if ev["ev"] != "result" or ev.get("diverged"):
            continue
        metrics = ev.get("metrics") or {}
        epochs += 1
        seconds += _seconds(metrics)
        if ev["tid"] in exportable and better(metrics.get(metric), best, mode):
            best = float(metrics[metric])
        curve.append((epochs, seconds, math.nan if best is None else best))
    chosen = select_best(state.trials.values(), metric, mode)
    best_val = best_value(chosen.history, metric, mode)[0] if chosen else math.nan
    test_key = metric.removeprefix("val_")
    test = None
    if (exp / BEST_TEST_FILE).exists():
        payload = json.loads((exp / BEST_TEST_FILE).read_text())
        if chosen is None or payload.get(TRIAL_ID) != chosen.tid:
            sys.exit(f"{exp / BEST_TEST_FILE} scores trial {payload.get(TRIAL_ID)}, but "
                     f"select_best picks {chosen.tid if chosen else 'none'}")
        value = (payload.get("test") or {}).get(test_key)
        test = float(value) if isinstance(value, (int, float)) else None
    budget = meta.get("budget") or {}
    proposed = {t.tid: str(t.proposed_by or "") for t in state.trials.values()}
    return {"metric": metric, "mode": mode, "test_key": test_key,
            "searcher": meta.get("searcher"), "scheduler": meta.get("scheduler"),
            "constant_liar": budget.get("constant_liar"),
            "startup_trials": budget.get("startup_trials"),
            "num_samples": budget.get("num_samples"),
            "trial_epochs": epochs, "trial_seconds": seconds, "wall": wall,
            "curve": curve, "best_val": best_val,
            "exported": chosen.tid if chosen else None, "test": test,
            "stopped": sum(1 for t in state.trials.values() if t.stopped_by == StopReason.ASHA),
            "statuses": dict(Counter(str(t.status) for t in state.trials.values())),
            "proposed": proposed,
            "startup": [tid for tid, who in proposed.items() if who == Proposer.STARTUP],
            "params": {t.tid: t.params for t in state.trials.values()}}


# ----------------------------------------------------------------------------- reading
def reach(curve: Sequence[Point], target: float, mode: str) -> tuple[int, float] | None:
    """(trial-epochs, trial-seconds) at which the curve first holds a value at least as
    good as target; None if it never does."""
    for epochs, seconds, best in curve:
        if math.isfinite(best) and not better(target, best, mode):
            return epochs, seconds
    return None


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of the mean, len(values) - 1 degrees of
    freedom; low/high are nan with fewer than two values."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) \
        / math.sqrt(len(values))
    return mean, mean - half, mean + half


def median_or_never(values: Sequence[float]) -> str:
    """The median of shares where inf means "never"; 'never' when the median is."""
    median = statistics.median(values)
    return "never" if math.isinf(median) else f"{median:.2f}"


def _share(part: float, whole: float) -> float:
    """part / whole; nan when whole is not positive (nothing was spent to compare with)."""
    return part / whole if whole > 0 else math.nan


def _pm(values: Sequence[float | None], digits: int = 4) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "-"
    if len(finite) == 1:
        return f"{finite[0]:.{digits}g}"
    return f"{statistics.mean(finite):.{digits}g} ± {statistics.stdev(finite):.2g}"


def _span(tids: Sequence[str]) -> str:
    if not tids:
        return "none"
    return tids[0] if len(tids) == 1 else f"{tids[0]}..{tids[-1]} ({len(tids)})"


def reference_for(strategy: str, available: Sequence[str]) -> str | None:
    """The random arm a TPE arm's configurations are compared with: the one with the
    same scheduler when it ran, else random+FIFO."""
    same = "random+" + strategy.split("+")[1].split("-")[0]
    for name in (same, BASELINE):
        if name in available:
            return name
    return None


def compare_configs(tpe: dict[str, Any], rand: dict[str, Any]) -> dict[str, int]:
    """Trial by trial (same id, so same index and seed): how many of TPE's start-up and
    model trials trained the random arm's exact configuration."""
    out = {"startup": 0, "startup_same": 0, "model": 0, "model_same": 0}
    for tid, params in tpe["params"].items():
        if tid not in rand["params"]:
            continue
        kind = "startup" if tpe["proposed"].get(tid) == Proposer.STARTUP else "model"
        out[kind] += 1
        out[f"{kind}_same"] += params == rand["params"][tid]
    return out


# ----------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="8 trials x 6 epochs on the synthetic set (~25 min on 2 cores)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per strategy (default 3)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds run are first-seed .. first-seed+seeds-1 (default 0); tune "
                        "defaults on one range and report on another")
    p.add_argument("--strategies", nargs="+", choices=list(STRATEGIES),
                   default=list(DEFAULT_STRATEGIES), metavar="S",
                   help="which strategies to run (default: " + ", ".join(DEFAULT_STRATEGIES)
                        + "; also TPE+FIFO-noliar); the last lines need random+FIFO and "
                        "TPE+ASHA")
    p.add_argument("--space", default="quick", help="search space (default quick); any "
                   "bundled name or YAML path, e.g. a forecasting space")
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
    p.add_argument("--max-concurrent", type=int, default=2,
                   help="trials at once (default 2; the -noliar arms need >= 2)")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--data", nargs="+", metavar="CSV|PRESET",
                   help="CSV files, 'illinois' (the Illinois soybean CSVs, year split, "
                        "test year 2022, 12 input steps) or 'synthetic' (the default: the "
                        "built-in synthetic set)")
    p.add_argument("--search-args", default="", metavar="FLAGS",
                   help="further flags for every search, as one string (e.g. "
                        "\"--train-stride 4\")")
    p.add_argument("--out", type=Path, help="where the experiments are kept (default: a "
                   "new temp dir)")
    args = p.parse_args(argv)
    for flag in ("seeds", "asha_samples", "num_samples", "max_epochs", "max_concurrent"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    liar_off = [s for s in args.strategies if not STRATEGIES[s].constant_liar]
    if liar_off and args.max_concurrent < 2:
        p.error(f"{', '.join(liar_off)}: the constant liar only acts with trials running "
                "at once; use --max-concurrent 2 or more, or drop these strategies")
    args.num_samples = args.num_samples or (8 if args.quick else 24)
    args.max_epochs = args.max_epochs or (6 if args.quick else 12)
    try:
        load_space(args.space)
        args.data_flags, args.data_label = data_flags(args.data)
    except UserError as exc:
        p.error(str(exc))
    args.extra_flags = shlex.split(args.search_args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    asha_args = argparse.Namespace(**{**vars(args), "num_samples": args.asha_samples
                                      or args.num_samples})
    out = args.out or Path(tempfile.mkdtemp(prefix="search-efficiency-"))
    out.mkdir(parents=True, exist_ok=True)
    args.liar_off_space = asha_args.liar_off_space = (
        liar_off_space(args.space, out)
        if any(not STRATEGIES[s].constant_liar for s in args.strategies) else None)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    print(f"{len(args.strategies)} strategies x {args.seeds} seeds, space {args.space}, "
          f"data {args.data_label}, {args.num_samples} trials"
          + (f" ({asha_args.num_samples} with ASHA)" if args.asha_samples else "")
          + f" x <= {args.max_epochs} epochs, {args.max_concurrent} concurrent; "
          f"experiments in {out}", flush=True)

    warm = argparse.Namespace(**{**vars(args), "num_samples": 1, "max_epochs": 1,
                                 "grace_period": None, "reduction_factor": None})
    run_search(out, "warm-feature-cache", warm, STRATEGIES[BASELINE], 0)
    results: dict[str, dict[int, dict[str, Any]]] = {s: {} for s in args.strategies}
    for seed in seeds:
        order = list(args.strategies)
        random.Random(seed).shuffle(order)
        print(f"seed {seed}: order {', '.join(order)}", flush=True)
        for strategy in order:
            plan = STRATEGIES[strategy]
            res = run_search(out, experiment_name(strategy, seed),
                             asha_args if plan.scheduler == "asha" else args, plan, seed)
            ran = (res["searcher"], res["scheduler"], res["constant_liar"])
            if ran[:2] != (plan.searcher, plan.scheduler) or \
                    (plan.searcher == "tpe" and ran[2] != plan.constant_liar):
                sys.exit(f"{experiment_name(strategy, seed)}: search_meta.json says "
                         f"searcher {ran[0]}, scheduler {ran[1]}, constant_liar {ran[2]}, "
                         f"not what {strategy} means (does the space set constant_liar?)")
            results[strategy][seed] = res
            startup = (f"  start-up {_span(res['startup'])} of {res['num_samples']} "
                       f"(budget startup_trials {res['startup_trials']})"
                       if plan.searcher == "tpe" else "")
            test = "-" if res["test"] is None else f"{res['test']:.4f}"
            print(f"  seed {seed} {strategy:16s} trial-epochs {res['trial_epochs']:4d}  "
                  f"trial-s {res['trial_seconds']:7.1f}  best {res['metric']} "
                  f"{res['best_val']:.4f}  test {res['test_key']} {test}  "
                  f"wall {res['wall']:.0f}s  stopped by ASHA {res['stopped']}{startup}",
                  flush=True)
    report(results, seeds, out)
    return 0


def report(results: dict[str, dict[int, dict[str, Any]]], seeds: list[int],
           out: Path) -> None:
    """The tables, the CSVs and the last lines (see the module docstring)."""
    any_run = next(iter(next(iter(results.values())).values()))
    metric, mode, test_key = any_run["metric"], any_run["mode"], any_run["test_key"]
    mixed = {r["metric"] for runs in results.values() for r in runs.values()} - {metric}
    if mixed:
        sys.exit(f"the searches optimised different metrics ({metric}, {', '.join(mixed)})")
    with open(out / "anytime.csv", "w") as fh:
        fh.write(f"strategy,seed,trial_epochs,trial_seconds,best_{metric}\n")
        for strategy, runs in results.items():
            for seed, res in runs.items():
                for epochs, seconds, best in res["curve"]:
                    fh.write(f"{strategy},{seed},{epochs},{seconds!r},{best!r}\n")

    print(f"\n{'strategy':16s} {'trial-epochs':>14s} {'trial-s':>14s} {'wall s':>12s} "
          f"{'best ' + metric:>18s} {'test ' + test_key + ' (exported)':>22s}")
    for strategy, runs in results.items():
        r = list(runs.values())
        print(f"{strategy:16s} {_pm([x['trial_epochs'] for x in r]):>14s} "
              f"{_pm([x['trial_seconds'] for x in r], 3):>14s} "
              f"{_pm([x['wall'] for x in r], 3):>12s} "
              f"{_pm([x['best_val'] for x in r]):>18s} {_pm([x['test'] for x in r]):>22s}")
    if BASELINE not in results:
        print(f"\n(no {BASELINE}: nothing to read the others against)")
        return

    base = results[BASELINE]
    rows = []
    print(f"\nreaching {BASELINE}'s best {metric} (its exported trial's value), per seed: "
          f"trial-epochs / trial-seconds needed, as a share of {BASELINE}'s total "
          f"(R epochs, R seconds); {BASELINE}'s own row: when it reached its best")
    for seed in seeds:
        target = base[seed]["best_val"]
        print(f"seed {seed}: target {metric} {target:.4f}; {BASELINE} spent "
              f"{base[seed]['trial_epochs']} trial-epochs, "
              f"{base[seed]['trial_seconds']:.1f} trial-s")
        for strategy, runs in results.items():
            res = runs[seed]
            hit = reach(res["curve"], target, mode)
            r_ep = _share(hit[0], base[seed]["trial_epochs"]) if hit else math.inf
            r_s = _share(hit[1], base[seed]["trial_seconds"]) if hit else math.inf
            diff = (res["test"] - base[seed]["test"]) if res["test"] is not None and \
                base[seed]["test"] is not None else None
            rows.append({"strategy": strategy, "seed": seed, "target": target,
                         "best": res["best_val"], "reached_epochs": hit[0] if hit else None,
                         "reached_seconds": hit[1] if hit else None, "r_epochs": r_ep,
                         "r_seconds": r_s, "spent_epochs": res["trial_epochs"],
                         "spent_seconds": res["trial_seconds"], "test": res["test"],
                         "test_diff": diff})
            own = " (own)" if strategy == BASELINE else ""
            what = (f"{hit[0]:4d} ep / {hit[1]:7.1f} s  R {r_ep:.2f} / {r_s:.2f}{own}" if hit
                    else f"never (best {res['best_val']:.4f}, gap "
                         f"{res['best_val'] - target:+.4f})")
            shown_diff = "" if diff is None or strategy == BASELINE else \
                f"  test {test_key} {diff:+.4f} vs {BASELINE}"
            print(f"  {strategy:16s} {what}{shown_diff}")
    with open(out / "seeds.csv", "w") as fh:
        keys = list(rows[0])
        fh.write(",".join(keys) + "\n")
        for row in rows:
            fh.write(",".join("" if row[k] is None else str(row[k]) for k in keys) + "\n")

    print(f"\n{'strategy':16s} {'reached':>8s} {'median R ep':>12s} {'median R s':>11s} "
          f"{'spent ep':>9s} {'spent s':>8s}  test {test_key} - {BASELINE}: mean [95% t]")
    for strategy in results:
        mine = [r for r in rows if r["strategy"] == strategy]
        reached = sum(r["reached_epochs"] is not None for r in mine)
        spent_ep = statistics.median(_share(r["spent_epochs"], base[r["seed"]]["trial_epochs"])
                                     for r in mine)
        spent_s = statistics.median(_share(r["spent_seconds"],
                                           base[r["seed"]]["trial_seconds"]) for r in mine)
        print(f"{strategy:16s} {reached:>3d} of {len(mine):<2d} "
              f"{median_or_never([r['r_epochs'] for r in mine]):>12s} "
              f"{median_or_never([r['r_seconds'] for r in mine]):>11s} {spent_ep:>9.2f} "
              f"{spent_s:>8.2f}  {_diff_text(mine) if strategy != BASELINE else '-'}")
    print(f"\nanytime curves: {out / 'anytime.csv'}; per seed: {out / 'seeds.csv'}")

    tpe_lines = startup_lines(results, seeds)
    for line in tpe_lines:
        print(line)
    if HEADLINE not in results:
        return
    mine = [r for r in rows if r["strategy"] == HEADLINE]
    ratios = [r["r_epochs"] for r in mine]
    reached = sum(math.isfinite(r) for r in ratios)
    print(f"{HEADLINE}: reached {BASELINE}'s best {metric} in {reached} of {len(ratios)} "
          f"seeds (never in {len(ratios) - reached}); per seed R "
          + ", ".join("never" if math.isinf(r) else f"{r:.2f}" for r in ratios))
    median = statistics.median(ratios)
    if math.isfinite(median):
        print(f"{HEADLINE} reached {BASELINE}'s best {metric} with {median:.2f} of its "
              f"trial-epochs (median over {len(ratios)} seeds)")
    else:
        gaps = [r["best"] - r["target"] for r in mine if r["reached_epochs"] is None]
        print(f"{HEADLINE} did not reach {BASELINE}'s best {metric} (median over "
              f"{len(ratios)} seeds; median gap {statistics.median(gaps):+.4f} {metric})")
    print(f"{HEADLINE} - {BASELINE}, exported test {test_key} (paired by seed): "
          + _diff_text(mine))


def _diff_text(rows: Sequence[dict[str, Any]]) -> str:
    diffs = [r["test_diff"] for r in rows if r["test_diff"] is not None]
    if not diffs:
        return "no test scores"
    mean, low, high = t_interval(diffs)
    if math.isnan(low):
        return f"{mean:+.4f} (one seed: no interval)"
    return (f"mean {mean:+.4f}, 95% t-interval [{low:+.4f}, {high:+.4f}] over "
            f"{len(diffs)} seeds")


def startup_lines(results: dict[str, dict[int, dict[str, Any]]], seeds: list[int]
                  ) -> list[str]:
    """Which TPE trials were start-up, and whether TPE's trials after the start-up trained
    configurations other than the random arm's (same seed, same trial id)."""
    lines: list[str] = []
    model, model_same, startup, startup_same = 0, 0, 0, 0
    counts = set()
    for strategy, runs in results.items():
        if STRATEGIES[strategy].searcher != "tpe":
            continue
        ref = reference_for(strategy, list(results))
        for seed in seeds:
            res = runs[seed]
            counts.add((res["startup_trials"], res["num_samples"]))
            line = (f"  seed {seed} {strategy:16s} start-up {_span(res['startup'])}, "
                    f"model {sum(v == Proposer.MODEL for v in res['proposed'].values())}")
            if ref is not None:
                c = compare_configs(res, results[ref][seed])
                model += c["model"]
                model_same += c["model_same"]
                startup += c["startup"]
                startup_same += c["startup_same"]
                line += (f"; vs {ref}: after the start-up {c['model'] - c['model_same']} of "
                         f"{c['model']} configurations differ, in the start-up "
                         f"{c['startup_same']} of {c['startup']} identical")
            lines.append(line)
    if not lines:
        return []
    shown = ", ".join(f"{s} of {n}" for s, n in sorted(counts, key=str))
    head = [f"\nTPE's random start-up: {shown} trials per search (search_meta.json budget "
            "startup_trials); trials proposed before that many had finished are start-up "
            "too (journal proposed_by):"]
    verdict = (f"after the start-up, TPE trained configurations other than the random arm's "
               f"in {model - model_same} of {model} trials"
               + (f"; {model_same} identical to the random arm's" if model_same else "")
               + f" (in the start-up, where TPE draws what RandomSampler draws: "
                 f"{startup_same} of {startup} identical)")
    return head + lines + [verdict]


if __name__ == "__main__":
    sys.exit(main())
