"""Fixed costs of a search: time to the first epoch, and what each trial pays besides training.

    python benchmarks/search_overhead.py [--num-trials 8] [--epochs 6] [--space quick]
                                         [--max-concurrent K] [--baseline-checkout DIR]
                                         [--keep DIR]

One run measures, on the same machine and in the same minutes:

1. **Time to the first epoch** of `python -m tuner.search --space SPACE`: every output line
   is time-stamped as it arrives; the first epoch progress line ends the interval. Its
   parts come from the driver's own lines: before Ray (imports, data, pre-flight), Ray
   start-up (`ray: ready in`), the vision features and the first trial's wait for its
   worker process.
   It runs twice: with an empty feature cache (features encoded in a Ray task before the
   trials start) and with the cache the first run filled (no ViT time at all).
2. **Per-trial overhead** from the experiment's journal: a trial's wall time (its start
   event to its end event, as the driver saw them) minus the time fit() spent training and
   validating (`epoch_seconds` of every epoch it reported), as a share of the trial's wall
   time. Goal: <= 5 % at the quick scale.
3. With `--baseline-checkout DIR` (e.g. a `git worktree` of an earlier commit), the same
   command in that checkout, right before, so "before" and "after" are measured side by
   side under the same load (per-trial overhead needs the journal, so only time to the
   first epoch and the wall time are compared; the per-trial overhead too when that
   checkout writes a journal).

Numbers depend on the load from other processes: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_EPOCH = re.compile(r"^\[\s*[\d.]+s\]\s+epoch\s")
_START = re.compile(r"^\[\s*[\d.]+s\]\s+start\s")
_RAY = re.compile(r"^ray: ready in ([\d.]+)s")


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def timed_search(checkout: Path, args: argparse.Namespace, storage: Path, name: str,
                 cache: Path) -> dict:
    """Run the search in `checkout`; stamp each output line on arrival."""
    cmd = [sys.executable, "-m", "tuner.search", "--space", args.space,
           "--num-samples", str(args.num_trials), "--max-epochs", str(args.epochs),
           "--storage", str(storage), "--name", name, "--seed", "0"]
    if args.max_concurrent:
        cmd += ["--max-concurrent", str(args.max_concurrent)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(checkout),
           "XDG_CACHE_HOME": str(cache), "RAY_USAGE_STATS_ENABLED": "0"}
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))
    wall = time.perf_counter() - t0
    (storage / f"{name}.log").write_text(
        "\n".join(f"[{t:7.2f}s] {s}" for t, s in lines) + "\n")
    if proc.returncode != 0:
        raise SystemExit(f"search in {checkout} exited {proc.returncode}:\n"
                         + "\n".join(s for _, s in lines[-20:]))

    def first(pattern: re.Pattern) -> tuple[float, re.Match | None]:
        for t, s in lines:
            m = pattern.search(s)
            if m:
                return t, m
        return float("nan"), None

    ray_at, ray_match = first(_RAY)
    ray_s = float(ray_match.group(1)) if ray_match else float("nan")
    start_at, _ = first(_START)
    epoch_at, _ = first(_EPOCH)
    features = [s for _, s in lines if s.startswith("vision features:")]
    return {"wall": wall, "first_epoch": epoch_at, "before_ray": ray_at - ray_s,
            "ray": ray_s, "after_ray_to_first_start": start_at - ray_at,
            "first_start_to_first_epoch": epoch_at - start_at,
            "features": features[0] if features else "", "exp": storage / name}


def per_trial_overhead(exp: Path) -> list[dict]:
    """Trial wall (start -> end event) and training seconds (sum of epoch_seconds)."""
    sys.path.insert(0, str(ROOT))
    from tuner.journal import read_events

    if not (exp / "journal.jsonl").exists():  # a baseline from before the journal
        return []
    events = read_events(exp / "journal.jsonl")
    start: dict[str, float] = {}
    end: dict[str, float] = {}
    train: dict[str, float] = {}
    epochs: dict[str, int] = {}
    for ev in events:
        tid = ev.get("tid")
        if ev["ev"] == "start":
            start.setdefault(tid, ev["t"])
        elif ev["ev"] == "end":
            end[tid] = ev["t"]
        elif ev["ev"] == "result" and not ev.get("diverged"):
            train[tid] = train.get(tid, 0.0) + float(
                (ev.get("metrics") or {}).get("epoch_seconds") or 0.0)
            epochs[tid] = epochs.get(tid, 0) + 1
    rows = []
    for tid in sorted(start):
        if tid in end:
            wall = end[tid] - start[tid]
            rows.append({"trial": tid, "wall": wall, "train": train.get(tid, 0.0),
                         "overhead": wall - train.get(tid, 0.0),
                         "epochs": epochs.get(tid, 0)})
    return rows


def _fmt(value: float) -> str:
    return "   n/a" if value != value else f"{value:6.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--space", default="quick")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: the "
                   "space's; 1 leaves the driver a core of its own on a 2-core machine)")
    p.add_argument("--baseline-checkout", type=Path,
                   help="an earlier checkout to time the same command in, side by side")
    p.add_argument("--keep", type=Path, help="keep experiments and logs here")
    args = p.parse_args()
    storage = (args.keep or Path(tempfile.mkdtemp(prefix="search-overhead-"))).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs, load {_load()}; {args.num_trials} trials x {args.epochs} "
          f"epochs, space {args.space}; experiments in {storage}", flush=True)
    runs: dict[str, dict] = {}
    if args.baseline_checkout:
        cache = Path(tempfile.mkdtemp(prefix="cache-before-"))
        runs["before (baseline checkout)"] = timed_search(
            args.baseline_checkout.resolve(), args, storage, "before", cache)
    cache = Path(tempfile.mkdtemp(prefix="cache-after-"))
    runs["after, empty feature cache"] = timed_search(ROOT, args, storage, "cold", cache)
    runs["after, features cached"] = timed_search(ROOT, args, storage, "warm", cache)

    print(f"\n{'seconds':<30}" + "".join(f"{k:>30}" for k in runs))
    for label, key in (("command -> first epoch", "first_epoch"),
                       ("  before Ray", "before_ray"), ("  Ray start-up", "ray"),
                       ("  Ray ready -> first trial start", "after_ray_to_first_start"),
                       ("  first start -> first epoch", "first_start_to_first_epoch"),
                       ("whole command (wall)", "wall")):
        print(f"{label:<30}" + "".join(f"{_fmt(r[key]):>30}" for r in runs.values()))
    for name, run in runs.items():
        print(f"features, {name}: {run['features'] or '(none reported)'}")

    for name in runs:
        rows = per_trial_overhead(runs[name]["exp"])
        if not rows:
            continue
        share = [r["overhead"] / r["wall"] for r in rows if r["wall"] > 0]
        print(f"\nper-trial overhead ({name}): trial wall - training, {len(rows)} trials")
        for r in rows:
            print(f"  {r['trial']}  {r['epochs']:2d} epoch(s)  wall {r['wall']:6.2f}s  "
                  f"train {r['train']:6.2f}s  overhead {r['overhead']:5.2f}s "
                  f"({r['overhead'] / r['wall']:5.1%})")
        print(f"  median share {statistics.median(share):.1%}, mean "
              f"{statistics.mean(share):.1%}, total "
              f"{sum(r['overhead'] for r in rows) / sum(r['wall'] for r in rows):.1%} "
              "(goal <= 5%)")
        # ASHA stops most trials after their first epoch: their fixed cost decides the median
        one = [r for r in rows if r["epochs"] == 1]
        more = [r["overhead"] / r["wall"] for r in rows if r["epochs"] > 1 and r["wall"] > 0]
        if one:
            print(f"  one-epoch trials ({len(one)}): median overhead "
                  f"{1000 * statistics.median(r['overhead'] for r in one):.1f} ms, median "
                  f"share {statistics.median(r['overhead'] / r['wall'] for r in one):.1%}")
        if more:
            print(f"  trials of >= 2 epochs ({len(more)}): median share "
                  f"{statistics.median(more):.1%}")
    ratio = runs["after, features cached"]["first_epoch"] / runs[
        "after, empty feature cache"]["first_epoch"]
    print(f"\ntime to first epoch, cached / empty cache: {ratio:.2f}")
    if args.baseline_checkout:
        before = runs["before (baseline checkout)"]["first_epoch"]
        for name in ("after, empty feature cache", "after, features cached"):
            print(f"time to first epoch, {name} / before: {runs[name]['first_epoch'] / before:.2f}")
    print(f"load average after: {_load()}")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "exp"}
                      for k, v in runs.items()}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
