"""Scaling: trials per minute with 1 vs 2 concurrent trials, and on 1 vs 2 Ray nodes.

    python benchmarks/search_scaling.py [--num-trials 8] [--epochs 3]

All runs are the same real search (`python -m tuner.search --space quick --scheduler fifo`,
every trial trains the same number of epochs, features cached beforehand so the vision
pass does not count), and the rate is measured from the journal: trials that ended per
minute between the first trial's start and the last trial's end.

1. Local instance, `--cpus-per-trial 1`: `--max-concurrent 1` vs `--max-concurrent 2` on
   this machine (2 cores: the ideal ratio is 2.0).
2. A test cluster of real raylets started on this machine (tests/ray_cluster_helper.py:
   head + worker, 1 CPU each, token authentication): the search with `--address` on the
   head alone (worker not started) vs head + worker.

The ratios are printed side by side; the machine's load average too (other processes skew
every number).
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import ray_cluster_helper  # noqa: E402  (the test cluster, from tests/)


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def rate(exp: Path) -> tuple[float, int]:
    """(trials ended per minute between the first start and the last end, trials)."""
    from tuner.journal import read_events

    events = read_events(exp / "journal.jsonl")
    starts = [e["t"] for e in events if e["ev"] == "start"]
    ends = [e["t"] for e in events if e["ev"] == "end"]
    if not starts or not ends:
        raise SystemExit(f"{exp}: no trials ended")
    return len(ends) / ((max(ends) - min(starts)) / 60.0), len(ends)


def search(storage: Path, name: str, args: argparse.Namespace, extra: list[str],
           env: dict[str, str]) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "tuner.search", "--space", "quick", "--scheduler", "fifo",
           "--num-samples", str(args.num_trials), "--max-epochs", str(args.epochs),
           "--cpus-per-trial", "1", "--storage", str(storage), "--name", name, *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-2000:]}")
    return rate(storage / name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="search-scaling-"))
    env = {**os.environ, "XDG_CACHE_HOME": str(root / "cache"),
           "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    print(f"{os.cpu_count()} CPUs, load {_load()}; {args.num_trials} trials x {args.epochs} "
          f"epochs (FIFO), work dir {root}", flush=True)
    search(root, "warm-cache", argparse.Namespace(num_trials=1, epochs=1), [], env)

    results = {}
    for k in (1, 2):
        results[f"local, {k} concurrent"] = search(root, f"local-{k}", args,
                                                   ["--max-concurrent", str(k)], env)
        print(f"  local, {k} concurrent: {results[f'local, {k} concurrent'][0]:.1f} "
              "trials/min", flush=True)
    token = secrets.token_hex(16)
    cluster_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                   "RAY_TMPDIR": str(root)}
    for nodes in (1, 2):
        helper, info = ray_cluster_helper.start(root / f"ray-{nodes}-node" / "ray",
                                                cluster_env, nodes)
        try:
            results[f"cluster, {nodes} node(s)"] = search(
                root, f"cluster-{nodes}", args,
                ["--address", info["address"], "--max-concurrent", "2"], cluster_env)
        finally:
            ray_cluster_helper.stop(helper, info)
        print(f"  cluster, {nodes} node(s) x 1 CPU: "
              f"{results[f'cluster, {nodes} node(s)'][0]:.1f} trials/min", flush=True)

    print("\ntrials per minute (first trial start -> last trial end, from the journal)")
    for label, (value, n) in results.items():
        print(f"  {label:<24}{value:7.1f}   ({n} trials)")
    print(f"ratio 2 / 1 concurrent (local, 2 cores):   "
          f"{results['local, 2 concurrent'][0] / results['local, 1 concurrent'][0]:.2f}")
    print(f"ratio 2 / 1 nodes (test cluster, 1 CPU each): "
          f"{results['cluster, 2 node(s)'][0] / results['cluster, 1 node(s)'][0]:.2f}")
    print(f"load average after {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
