"""Choose ASHA's grace period and reduction factor from searches already run, without
training again.

    python benchmarks/asha_replay.py EXPERIMENT [EXPERIMENT ...] [--grace 1 2 3]
                                     [--factor 2 3 4] [--brackets 1] [--concurrent 2]

Each EXPERIMENT is a finished search run with `--searcher random --scheduler fifo` (e.g.
the random+FIFO searches `search_efficiency.py` keeps): every trial trained to its end,
its validation curve in the journal. Training is deterministic given the seed, so a trial
that ASHA lets run produces exactly the prefix of that curve. Replaying Ray's own
`AsyncHyperBandScheduler` over the curves (trials in the order the search created them,
`--concurrent` at a time, each epoch taking the seconds it took) therefore gives what
random+ASHA would have done with the same configurations, for any grace period and
reduction factor, and with several Hyperband brackets (`--brackets`: Ray puts each new
trial in a bracket at random, so those settings are replayed `--draws` times with seeded
draws). Exact for a random sampler, whose proposals do not depend on results; the only
approximation is the interleaving of concurrent trials.

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
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

Curve = list[tuple[float, float]]  # per epoch: (metric value, epoch seconds)


def read_curves(exp: Path, metric: str) -> list[Curve]:
    """Every trial's curve, in the order the search created the trials."""
    from tuner.journal import read_events
    from tuner.layout import JOURNAL_FILE

    events = read_events(exp / JOURNAL_FILE)
    if not events:
        sys.exit(f"{exp}: no journal ({JOURNAL_FILE}); pass the folder of a search")
    order: list[str] = []
    curves: dict[str, Curve] = {}
    for ev in events:
        if ev["ev"] == "trial":
            order.append(ev["tid"])
        elif ev["ev"] == "result" and not ev.get("diverged") and not ev.get("repeat"):
            metrics = ev.get("metrics") or {}
            value = metrics.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                curves.setdefault(ev["tid"], []).append(
                    (float(value), float(metrics.get("epoch_seconds") or 0.0)))
    if any(ev["ev"] == "end" and ev.get("stopped_by") == "asha" for ev in events):
        sys.exit(f"{exp}: ASHA stopped trials in this search; replay needs every trial run "
                 "to its end (--scheduler fifo)")
    return [curves[tid] for tid in order if tid in curves]


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
    p.add_argument("--max-t", type=int, help="ASHA max_t (default: the longest curve)")
    p.add_argument("--concurrent", type=int, default=2,
                   help="trials at a time, as in the searches (default 2)")
    p.add_argument("--metric", default="val_rmse")
    p.add_argument("--mode", choices=("min", "max"), default="min")
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

    runs = [(exp, read_curves(exp, args.metric)) for exp in args.experiments]
    runs = [(exp, c) for exp, c in runs if c]
    if not runs:
        sys.exit("no trial results in these experiments")
    max_t = args.max_t or max(len(c) for _, curves in runs for c in curves)
    print(f"{len(runs)} searches, {sum(len(c) for _, c in runs)} trials, max_t {max_t}, "
          f"{args.concurrent} at a time")

    pooled = [c for _, curves in runs for c in curves]
    agreement = rank_agreement(pooled, min(max_t, 8), args.mode)
    print("rank agreement of the value after k epochs with the final best (Spearman): "
          + "  ".join(f"k={k} {r:.2f}" for k, r in enumerate(agreement, start=1)))

    pick = min if args.mode == "min" else max
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
                    sign = 1.0 if args.mode == "min" else -1.0
                    for draw in range(draws):
                        trace = replay(curves, grace, factor, max_t, args.concurrent,
                                       args.mode, args.metric, brackets, draw)
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
            sys.exit(f"--pool: {max(too_many)} trials drawn from a pool of {len(pooled)}; "
                     "pass more searches or a smaller N")
        print(f"\nequal compute: ASHA searches of N trials vs FIFO searches of {fifo_trials}, "
              f"both drawn from the {len(pooled)} pooled curves, {args.bootstrap} draws each")
        print(f"{'grace':>5} {'factor':>6} {'N':>4}  {'spent':>6}  {'within 1/3':>10}  "
              f"{'within 1':>8}  {'median R':>8}")
        for grace in args.grace:
            for factor in args.factor:
                for n in args.pool:
                    row = pooled_comparison(pooled, fifo_trials, n, grace, factor, max_t,
                                            args.concurrent, args.mode, args.metric,
                                            args.bootstrap)
                    median = row["median_r"]
                    print(f"{grace:>5} {factor:>6g} {n:>4}  {row['spent']:>6.2f}  "
                          f"{row['within_third']:>10.0%}  {row['within_equal']:>8.0%}  "
                          f"{'never' if math.isinf(median) else f'{median:.2f}':>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
