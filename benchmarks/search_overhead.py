"""Where the wall time of a small real search goes: Ray, features, trials, training.

    python benchmarks/search_overhead.py [--num-trials 4] [--epochs 3] [--space quick]

One run measures, side by side on the same machine:

1. Ray start-up and shutdown in this process (``ray.init`` of a local instance with the
   dashboard, as `tuner.search` starts it, until ready; the first task round trip, which
   starts a worker process; ``ray.shutdown``), and the import of ``tuner.trainable``
   (torch, transformers, Ray Tune) in a fresh interpreter: what a new worker process pays
   before its first trial starts (workers are then reused for later trials).
2. A real search in a subprocess, ``python -m tuner.search --space SPACE --num-samples N
   --max-epochs E --grace-period E`` (grace = max_t: ASHA prunes nothing, so every trial
   trains the same number of epochs as its sequential twin below). Its output lines are
   time-stamped as they arrive, which splits the process wall time into: before Ray
   (imports, data, pre-flight checks), Ray start-up, the one-time vision features,
   ``tuner.fit`` (the trials) and what follows it (test evaluation of the best trial, the
   report, Ray shutdown). Per trial, ``train_seconds`` from its final.json (time inside
   ``fit``'s epoch loop) is set against ``wall_seconds`` of trials.csv (Ray's time_total_s)
   and against the start->end interval the driver's progress callback saw. Neither
   includes the start of the trial's worker process (a new Python process that imports
   torch, transformers and Ray Tune): that shows up as the wait before a trial's "start"
   line, reported as the start latency and as the amortised per-trial overhead
   (tuner.fit wall x concurrency - sum of training seconds) / N.
3. The very same N configurations (read back from each trial's train_config.yaml), trained
   one after another in this process with ``timesclip.train.fit``, no Ray, sharing one
   feature computation, with the same checkpoint and TensorBoard writes a trial does, and
   by default the same torch thread count as a trial (cpus_per_trial). Each configuration
   then does identical work in both, and the ratio search wall / sequential wall shows
   what Ray's parallel trials gain minus what its process and scheduling overhead costs.
   (--threads changes it; on a loaded 2-core machine 2 threads per fit ran 10-25x slower
   than 1: OpenMP threads wait on each other when the cores are busy.)

Numbers depend on the load from other processes: the load average is printed before and
after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
NAME = "overhead"
_PROGRESS = re.compile(r"^\[\s*([\d.]+)s\]\s+(start|finished|stopped|ERROR)\s+(\S+)")
_SECONDS = re.compile(r"in ([\d.]+)s")


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------- 1. Ray alone
def ray_startup(num_cpus: int | None) -> dict[str, float]:
    """Seconds of `ray.init` (local, dashboard on 127.0.0.1), first task, `ray.shutdown`."""
    t0 = time.perf_counter()
    import ray

    out = {"import ray": time.perf_counter() - t0}
    t0 = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             log_to_driver=False, logging_level="warning")
    out["ray.init until ready"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray.get(ray.remote(lambda: 1).remote())
    out["first task (worker start)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray.shutdown()
    out["ray.shutdown"] = time.perf_counter() - t0
    return out


def trial_import_seconds() -> float:
    """Wall time of `import tuner.trainable` (torch, transformers, Ray Tune) in a fresh
    interpreter: what every new trial worker process pays before its trial starts."""
    code = ("import time; t = time.perf_counter(); import tuner.trainable; "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- 2. the search
def run_search(args: argparse.Namespace, storage: Path) -> dict:
    """Run `python -m tuner.search` and time-stamp each output line on arrival."""
    cmd = [sys.executable, "-m", "tuner.search", "--space", args.space,
           "--num-samples", str(args.num_trials), "--max-epochs", str(args.epochs),
           "--grace-period", str(args.epochs), "--storage", str(storage), "--name", NAME,
           "--seed", str(args.seed)]
    if args.max_concurrent:
        cmd += ["--max-concurrent", str(args.max_concurrent)]
    print("$ " + " ".join(cmd[1:]), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))
    wall = time.perf_counter() - t0
    (storage / "search.log").write_text("\n".join(f"[{t:7.1f}s] {s}" for t, s in lines) + "\n")
    if proc.returncode != 0:
        tail = "\n".join(s for _, s in lines[-20:])
        raise SystemExit(f"tuner.search exited with {proc.returncode}:\n{tail}")

    def stamp(prefix: str) -> tuple[float, float]:
        """(arrival time of the first line starting with prefix, seconds it reports)."""
        for t, s in lines:
            if s.startswith(prefix):
                m = _SECONDS.search(s)
                return t, float(m.group(1)) if m else math.nan
        return math.nan, math.nan

    ray_at, ray_s = stamp("ray: ready")
    feat_at, feat_s = stamp("vision features:")
    done_at, fit_s = stamp("search finished")
    # The trial timeline as the driver's progress callback printed it.
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    for _, s in lines:
        m = _PROGRESS.match(s)
        if m:
            (started if m.group(2) == "start" else ended)[m.group(3)] = float(m.group(1))
    return {"wall": wall, "before_ray": ray_at - ray_s, "ray_start": ray_s,
            "features": feat_s, "tuner_fit": fit_s, "after_fit": wall - done_at,
            "driver_seen": {k: ended[k] - started[k] for k in started if k in ended},
            "starts": sorted(started.values()), "ends": sorted(ended.values())}


def start_latency(starts: list[float], ends: list[float], slots: int) -> tuple[float, float]:
    """(first trial's start after tuner.fit began, mean wait of a later trial for its start
    after the trial whose slot it takes ended); times from the progress callback's clock."""
    first = starts[0] if starts else math.nan
    waits = [starts[i] - ends[i - slots] for i in range(slots, len(starts))
             if i - slots < len(ends)]
    return first, (sum(waits) / len(waits) if waits else math.nan)


def read_trials(storage: Path) -> pd.DataFrame:
    """trials.csv of the search plus each trial's train_seconds (final.json) and config."""
    exp = storage / NAME
    trials = pd.read_csv(exp / "report" / "trials.csv", dtype={"trial_id": str})
    seconds, configs = [], []
    for rel in trials["trial_dir"]:
        final = json.loads((exp / rel / "final.json").read_text())
        seconds.append(float(final["train_seconds"]))
        configs.append(exp / rel / "train_config.yaml")
    trials["train_seconds"] = seconds
    trials["config_path"] = configs
    return trials.sort_values("trial_id").reset_index(drop=True)


# --------------------------------------------------------------------------- 3. no Ray
def run_sequential(config_paths: list[Path], work: Path, threads: int) -> dict:
    """The same configurations, one after another in this process, features shared."""
    t0 = time.perf_counter()
    import torch

    from timesclip.config import TrainConfig
    from timesclip.data import load_bundle
    from timesclip.train import compute_features, feature_key, fit

    import_s = time.perf_counter() - t0
    torch.set_num_threads(threads)

    configs = [TrainConfig.from_yaml(p) for p in config_paths]
    t0 = time.perf_counter()
    data = load_bundle(configs[0], None)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    features = compute_features(configs[0], data)
    feat_s = time.perf_counter() - t0
    key = feature_key(configs[0], data)
    fits, epochs = [], []
    for i, config in enumerate(configs):
        shared = features if feature_key(config, data) == key else None
        t0 = time.perf_counter()
        result = fit(config, data, vision_features=shared, checkpoint_dir=work / f"seq{i}",
                     tb_dir=work / f"seq{i}" / "tb", evaluate_test=False)
        fits.append(time.perf_counter() - t0)
        epochs.append(result.epochs_run)
    return {"imports": import_s, "data": load_s, "features": feat_s, "fits": fits,
            "epochs": epochs,
            "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- report
def _row(label: str, seconds: float, note: str = "") -> str:
    value = "n/a" if seconds is None or math.isnan(seconds) else f"{seconds:8.1f}"
    return f"  {label:<52}{value:>8}  {note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-trials", type=int, default=4, help="trials (= sequential fits)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per trial; also the ASHA grace period, so no pruning")
    parser.add_argument("--space", default="quick",
                        help="search space (must set backbone tiny for a CPU run; quick does)")
    parser.add_argument("--max-concurrent", type=int,
                        help="trials at once (default: the space's, quick = 2)")
    parser.add_argument("--threads", type=int,
                        help="torch threads of the sequential fits (default: the search's "
                             "cpus_per_trial, as each trial uses)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", metavar="DIR",
                        help="keep the experiment and search.log in DIR (default: a temporary "
                             "directory, removed)")
    args = parser.parse_args()
    if args.num_trials < 1 or args.epochs < 1:
        parser.error("--num-trials and --epochs must be >= 1")

    storage = Path(args.keep or tempfile.mkdtemp(prefix="search-overhead-")).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    if (storage / NAME).exists():
        parser.error(f"{storage / NAME} exists; pass another --keep directory")
    load_before = _load()
    print(f"{os.cpu_count()} CPUs, load average {load_before}; storage {storage}", flush=True)
    try:
        print("1/3 Ray start-up and shutdown (this process) ...", flush=True)
        ray_alone = ray_startup(num_cpus=None)
        ray_alone["import tuner.trainable, fresh process"] = trial_import_seconds()
        print(f"2/3 search: {args.num_trials} trials x {args.epochs} epochs ...", flush=True)
        search = run_search(args, storage)
        trials = read_trials(storage)
        meta = json.loads((storage / NAME / "search_meta.json").read_text())
        per_trial_cpus = max(1, int(meta["resources"]["cpus_per_trial"]))
        slots = int(meta["budget"]["max_concurrent"])
        threads = args.threads or per_trial_cpus
        print(f"3/3 the same {len(trials)} configurations with timesclip.train.fit, "
              "no Ray ...", flush=True)
        seq = run_sequential(list(trials["config_path"]), storage / "sequential", threads)
    finally:
        if not args.keep:
            shutil.rmtree(storage, ignore_errors=True)

    train_sum = float(trials["train_seconds"].sum())
    ray_wall = trials["wall_seconds"].astype(float)
    seen = trials["trial_id"].map(search["driver_seen"]).astype(float)
    seq_fits = sum(seq["fits"])
    seq_total = seq["imports"] + seq["data"] + seq["features"] + seq_fits

    print()
    print(f"per trial (seconds){'':<14}epochs  train  Ray wall  driver-seen  overhead  "
          "sequential fit")
    for i, row in trials.iterrows():
        print(f"  {row['trial_id']:<30}{int(row['epochs_run']):>6}{row['train_seconds']:>7.1f}"
              f"{ray_wall[i]:>10.1f}{seen[i]:>13.1f}{seen[i] - row['train_seconds']:>10.1f}"
              f"{seq['fits'][i]:>16.1f}  (epochs {seq['epochs'][i]})")
    print("  (overhead = driver-seen - train: final evaluation, reporting, checkpoint "
          "upload)")
    print()
    print(f"search: {len(trials)} trials x {args.epochs} epochs, space {args.space}, no "
          f"pruning, {slots} at a time, {per_trial_cpus} CPU + torch thread(s) each")
    print(_row("total wall of `python -m tuner.search`", search["wall"]))
    print(_row("  before Ray (imports, data, pre-flight)", search["before_ray"]))
    print(_row("  Ray start-up (ray.init until ready)", search["ray_start"]))
    print(_row("  vision features, once (Ray task)", search["features"]))
    print(_row("  tuner.fit (all trials)", search["tuner_fit"]))
    print(_row("  after tuner.fit (best test eval, report, shutdown)", search["after_fit"]))
    print(_row("sum of training seconds (final.json train_seconds)", train_sum))
    print(_row("sum of trial wall (Ray time_total_s)", float(ray_wall.sum())))
    print(_row("per-trial overhead, mean (Ray wall - train)",
               float((ray_wall - trials["train_seconds"]).mean())))
    print(_row("per-trial overhead, mean (driver-seen - train)",
               float((seen - trials["train_seconds"]).mean())))
    first, wait = start_latency(search["starts"], search["ends"], slots)
    print(_row("first trial start after tuner.fit began", first, "(worker start-up)"))
    print(_row("next trial's start after one ends, mean wait", wait, "(worker reused)"))
    print(_row(f"per-trial overhead, amortised (fit x {slots} - train) / {len(trials)}",
               (search["tuner_fit"] * slots - train_sum) / len(trials)))
    print("Ray alone, in this process (and one fresh interpreter):")
    for label, value in ray_alone.items():
        print(_row(label, value))
    print(f"sequential, no Ray (same configs, fit() in-process, torch threads: "
          f"{seq['threads']}):")
    print(_row("imports (torch, transformers, timesclip)", seq["imports"]))
    print(_row("data load", seq["data"]))
    print(_row("vision features, once", seq["features"]))
    print(_row(f"{len(seq['fits'])} fits", seq_fits))
    print(_row("total", seq_total))
    print("ratios:")
    print(f"  search wall / sequential wall (whole process vs imports+data+features+fits): "
          f"{search['wall'] / seq_total:.2f}")
    print(f"  tuner.fit / sequential fits (trials only): {search['tuner_fit'] / seq_fits:.2f}")
    print(f"load average before {load_before}, after {_load()} "
          "(other processes on this machine skew every number)")


if __name__ == "__main__":
    main()
