"""Choose ASHA's grace period and reduction factor from searches already run, without
training again.

    python benchmarks/asha_replay.py EXPERIMENT [EXPERIMENT ...] [--grace 1 2 3]
                                     [--factor 2 3 4] [--brackets 1] [--concurrent 2]

Each EXPERIMENT is a finished search run with `--searcher random --scheduler fifo` (e.g.
the random+FIFO searches `search_efficiency.py` keeps): every trial trained to its end,
its validation curve in the journal. Any other search is refused (exit 2): its
`search_meta.json` must say searcher random and scheduler fifo, and every trial must have
ended. Training is deterministic given the seed, so a trial that ASHA lets run produces
exactly the prefix of that curve. Replaying Ray's own `AsyncHyperBandScheduler` over the
curves (trials in the order the search created them, `--concurrent` at a time, each epoch
taking the seconds it took) therefore gives what random+ASHA would have done with the same
configurations, for any grace period and reduction factor, and with several Hyperband
brackets (`--brackets`: Ray puts each new trial in a bracket at random, so those settings
are replayed `--draws` times with seeded draws). Exact for a random sampler, whose
proposals do not depend on results; the only approximation is the interleaving of
concurrent trials.

What is read, and from where: ASHA's `max_t` is the searches' budget `max_epochs`
(`search_meta.json`; all searches must share it), the metric and its mode are the
searches' own (`--metric` may name another reported metric), and each trial's curve is the
journal replayed by `tuner.journal.load_state` (an epoch reported again after a retry
replaces the earlier report). Only trials that ended normally are replayed (a diverged or
failed trial's curve is cut short; how many were left out is printed), and a curve stops
at its first non-finite value.

For each setting: the trial-epochs ASHA spends and whether, and after how many
trial-epochs, it reports a value at least as good as the FIFO search's best, as a share of
the FIFO search's trial-epochs (R, as in search_efficiency.py). Also printed: how well the
value after k epochs ranks the trials by their final best (Spearman), i.e. how much an
early rung can be trusted on this space and data.

`--pool N [N ...]` asks the question at equal compute instead of equal trial counts (ASHA's
purpose is to try more configurations for the same trial-epochs): the curves of all the
given searches are pooled (comparable when they share the space, data and epochs). Each of
`--bootstrap` draws takes from the pool a FIFO search as large as one given search and,
independently, an ASHA search of N trials. Printed per setting and N: the median share of
FIFO's trial-epochs ASHA spends, and how often ASHA reaches FIFO's best within a third of
FIFO's trial-epochs and within all of them.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timesclip.errors import UserError  # noqa: E402
from tuner.journal import load_state  # noqa: E402
from tuner.layout import META_FILE  # noqa: E402
from tuner.outcomes import Status, metric_mode  # noqa: E402

Curve = list[tuple[float, float]]  # per epoch: (metric value, epoch seconds)


class RefusedInput(UserError):
    """An experiment the replay cannot be honest about (one line, exit 2)."""


class FifoSearch(NamedTuple):
    """A finished random+FIFO search as the replay reads it."""

    path: Path
    metric: str
    mode: str
    max_t: int  # the search's budget max_epochs: ASHA's max_t
    seed: Any  # the search's --seed (for the record)
    curves: list[Curve]  # trials that ended normally, in creation order
    left_out: int  # trials that diverged or failed (curves cut short)


def read_search(exp: Path, metric: str | None = None) -> FifoSearch:
    """A finished random+FIFO search: its budget, metric and curves (see the module
    docstring); RefusedInput for anything else."""
    meta_path = exp / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise RefusedInput(f"{exp}: no {META_FILE}; pass the folder of a search made by "
                           "python -m tuner.search") from None
    except ValueError as exc:
        raise RefusedInput(f"{meta_path}: not JSON ({exc})") from None
    searcher, scheduler = meta.get("searcher"), meta.get("scheduler")
    if (searcher, scheduler) != ("random", "fifo"):
        raise RefusedInput(
            f"{exp}: a {searcher}+{scheduler} search ({META_FILE}); the replay needs one "
            "run with --searcher random --scheduler fifo (other samplers' proposals depend "
            "on results, and ASHA's stops cut the curves short)")
    metric = metric or meta["metric"]
    mode = metric_mode(metric, "--metric")
    max_t = int((meta.get("budget") or {})["max_epochs"])
    state = load_state(exp)
    unfinished = [t.tid for t in state.unfinished]
    if unfinished:
        raise RefusedInput(f"{exp}: trial(s) {', '.join(unfinished[:3])} have not ended; "
                           "finish the search with --resume first")
    curves: list[Curve] = []
    left_out = 0
    for trial in sorted(state.trials.values(), key=lambda t: t.index):
        if trial.status != Status.TERMINATED:
            left_out += 1
            continue
        curve: Curve = []
        for epoch in trial.epochs:
            value = trial.history[epoch].get(metric)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                break
            curve.append((float(value),
                          float(trial.history[epoch].get("epoch_seconds") or 0.0)))
        if curve:
            curves.append(curve)
    return FifoSearch(exp, metric, mode, max_t, meta.get("seed"), curves, left_out)


def read_curves(exp: Path, metric: str | None = None) -> list[Curve]:
    """Every normally ended trial's curve, in the order the search created the trials."""
    return read_search(exp, metric).curves


def refuse(message: str) -> NoReturn:
    """One line on stderr, exit 2 (bad input, nothing written)."""
    print(f"asha_replay: {message}", file=sys.stderr)
    raise SystemExit(2)


class _Trial:
    """What the scheduler reads of a trial: its id."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def replay(curves: list[Curve], grace: int, factor: float, max_t: int, concurrent: int,
           mode: str, metric: str, brackets: int = 1, draw: int = 0
           ) -> list[tuple[int, float]]:
    """(trial-epochs spent so far, best value so far) after every reported epoch.

    draw seeds numpy's global generator, from which Ray picks each trial's bracket."""
    import numpy as np
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    np.random.seed(draw)
    asha = AsyncHyperBandScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=max_t,
                                   grace_period=grace, reduction_factor=factor,
                                   brackets=brackets)
    sign = 1.0 if mode == "min" else -1.0
    running: list[tuple[float, int, int]] = []  # (time the epoch ends, trial index, epoch)
    upcoming = iter(range(len(curves)))

    def start(now: float) -> None:
        index = next(upcoming, None)
        if index is not None:
            asha.on_trial_add(None, _Trial(str(index)))
            heapq.heappush(running, (now + curves[index][0][1], index, 1))

    for _ in range(concurrent):
        start(0.0)
    spent, best, out = 0, math.inf, []
    while running:
        now, index, epoch = heapq.heappop(running)
        value = curves[index][epoch - 1][0]
        spent += 1
        best = min(best, sign * value)
        out.append((spent, sign * best))
        action = asha.on_trial_result(None, _Trial(str(index)),
                                      {"epoch": epoch, metric: value})
        if action == TrialScheduler.STOP or epoch >= min(len(curves[index]), max_t):
            start(now)
        else:
            heapq.heappush(running, (now + curves[index][epoch][1], index, epoch + 1))
    return out


def rank_agreement(curves: list[Curve], epochs: int, mode: str) -> list[float]:
    """Spearman correlation of the best value within the first k epochs with the final best,
    for k = 1..epochs (trials shorter than k keep their last value, as FIFO early stopping
    left them)."""
    import pandas as pd

    pick = min if mode == "min" else max
    final = pd.Series([pick(v for v, _ in c) for c in curves])
    return [float(pd.Series([pick(v for v, _ in c[:k]) for c in curves]).corr(
        final, method="spearman")) for k in range(1, epochs + 1)]


def pooled_comparison(pool: list[Curve], fifo_trials: int, asha_trials: int, grace: int,
                      factor: float, max_t: int, concurrent: int, mode: str, metric: str,
                      draws: int, seed: int = 0) -> dict[str, float]:
    """Equal-compute comparison by resampling `pool` (see the module docstring): for each
    draw, a FIFO search of `fifo_trials` curves and an independent ASHA search of
    `asha_trials`; returns the median spend (ASHA's trial-epochs / FIFO's), the share of
    draws where ASHA reached FIFO's best within a third and within all of FIFO's
    trial-epochs, and the median R (inf: not reached)."""
    import random

    rng = random.Random(seed)
    sign = 1.0 if mode == "min" else -1.0
    spent, ratios = [], []
    for _ in range(draws):
        fifo = rng.sample(pool, fifo_trials)
        target = sign * min(sign * v for c in fifo for v, _ in c)
        budget = sum(len(c) for c in fifo)
        trace = replay(rng.sample(pool, asha_trials), grace, factor, max_t, concurrent,
                       mode, metric)
        needed = next((n for n, b in trace if sign * b <= sign * target), None)
        ratios.append(needed / budget if needed else math.inf)
        spent.append(trace[-1][0] / budget)
    return {"spent": statistics.median(spent),
            "within_third": sum(r <= 1 / 3 for r in ratios) / draws,
            "within_equal": sum(r <= 1 for r in ratios) / draws,
            "median_r": statistics.median(ratios)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="+", type=Path, metavar="EXPERIMENT",
                   help="folders of finished random+FIFO searches")
    p.add_argument("--grace", type=int, nargs="+", default=[1, 2, 3],
                   help="grace periods to replay (default 1 2 3)")
    p.add_argument("--factor", type=float, nargs="+", default=[2, 3, 4],
                   help="reduction factors to replay (default 2 3 4)")
    p.add_argument("--brackets", type=int, nargs="+", default=[1],
                   help="Hyperband brackets to replay (default 1: plain ASHA)")
    p.add_argument("--draws", type=int, default=20,
                   help="seeded bracket draws per search when brackets > 1 (default 20)")
    p.add_argument("--concurrent", type=int, default=2,
                   help="trials at a time, as in the searches (default 2)")
    p.add_argument("--metric", help="reported metric to replay on (default: the searches' "
                   "own; its mode is the metric's)")
    p.add_argument("--pool", type=int, nargs="+", metavar="N",
                   help="also compare at equal compute: ASHA searches of N trials drawn "
                        "from the pooled curves against FIFO searches of one search's size")
    p.add_argument("--bootstrap", type=int, default=200,
                   help="draws per setting for --pool (default 200)")
    args = p.parse_args(argv)
    if args.concurrent < 1 or min(args.grace) < 1 or min(args.factor) <= 1 or \
            min(args.brackets) < 1 or args.draws < 1 or args.bootstrap < 1 or \
            (args.pool and min(args.pool) < 1):
        p.error("--concurrent, --grace, --brackets, --draws, --bootstrap and --pool must be "
                ">= 1 and --factor > 1")

    try:
        searches = [read_search(exp, args.metric) for exp in args.experiments]
    except UserError as exc:
        refuse(str(exc))
    for field in ("max_t", "metric"):
        values = {getattr(s, field) for s in searches}
        if len(values) > 1:
            refuse(f"the searches differ in {'max_epochs' if field == 'max_t' else field} "
                   f"({', '.join(map(str, sorted(values)))}); replay searches of one budget "
                   "and metric together")
    metric, mode, max_t = searches[0].metric, searches[0].mode, searches[0].max_t
    runs = [(s.path, s.curves) for s in searches if s.curves]
    if not runs:
        refuse(f"no trial of these searches reported a finite {metric}")
    left_out = sum(s.left_out for s in searches)
    print(f"{len(runs)} random+FIFO searches (seeds "
          f"{', '.join(str(s.seed) for s in searches)}), "
          f"{sum(len(c) for _, c in runs)} trials, {metric} ({mode}), max_t {max_t} (the "
          f"searches' max_epochs), {args.concurrent} at a time"
          + (f"; {left_out} diverged/failed trial(s) left out" if left_out else ""))

    pooled = [c for _, curves in runs for c in curves]
    agreement = rank_agreement(pooled, min(max_t, 8), mode)
    print("rank agreement of the value after k epochs with the final best (Spearman): "
          + "  ".join(f"k={k} {r:.2f}" for k, r in enumerate(agreement, start=1)))

    pick = min if mode == "min" else max
    print(f"\n{'grace':>5} {'factor':>6} {'brackets':>8}  {'reached':>9}  {'median R':>8}  "
          f"{'spent (share of FIFO)':>22}  per search R")
    for grace in args.grace:
        for factor in args.factor:
            for brackets in args.brackets:
                draws = args.draws if brackets > 1 else 1
                ratios, spent = [], []
                for _, curves in runs:
                    total = sum(len(c) for c in curves)
                    target = pick(v for c in curves for v, _ in c)
                    sign = 1.0 if mode == "min" else -1.0
                    for draw in range(draws):
                        trace = replay(curves, grace, factor, max_t, args.concurrent,
                                       mode, metric, brackets, draw)
                        needed = next((n for n, b in trace if sign * b <= sign * target), None)
                        ratios.append(needed / total if needed else math.inf)
                        spent.append(trace[-1][0] / total)
                reached = sum(math.isfinite(r) for r in ratios)
                median = statistics.median(ratios)
                shown = " ".join("never" if math.isinf(r) else f"{r:.2f}" for r in ratios) \
                    if draws == 1 else f"({draws} draws per search)"
                print(f"{grace:>5} {factor:>6g} {brackets:>8}  {reached:>4}/{len(ratios):<4}  "
                      f"{'never' if math.isinf(median) else f'{median:.2f}':>8}  "
                      f"{statistics.median(spent):>22.2f}  {shown}")
    if args.pool:
        fifo_trials = min(len(curves) for _, curves in runs)
        too_many = [n for n in [fifo_trials, *args.pool] if n > len(pooled)]
        if too_many:
            refuse(f"--pool: {max(too_many)} trials drawn from a pool of {len(pooled)}; "
                   "pass more searches or a smaller N")
        print(f"\nequal compute: ASHA searches of N trials vs FIFO searches of {fifo_trials}, "
              f"both drawn from the {len(pooled)} pooled curves, {args.bootstrap} draws each")
        print(f"{'grace':>5} {'factor':>6} {'N':>4}  {'spent':>6}  {'within 1/3':>10}  "
              f"{'within 1':>8}  {'median R':>8}")
        for grace in args.grace:
            for factor in args.factor:
                for n in args.pool:
                    row = pooled_comparison(pooled, fifo_trials, n, grace, factor, max_t,
                                            args.concurrent, mode, metric,
                                            args.bootstrap)
                    median = row["median_r"]
                    print(f"{grace:>5} {factor:>6g} {n:>4}  {row['spent']:>6.2f}  "
                          f"{row['within_third']:>10.0%}  {row['within_equal']:>8.0%}  "
                          f"{'never' if math.isinf(median) else f'{median:.2f}':>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
