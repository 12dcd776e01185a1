"""The search on a real two-node Ray cluster started on this machine.

A head node and a worker node (real GCS, raylets and object stores, token authentication
on, private temp dir) run in a helper process (tests/ray_cluster_helper.py); the search
joins them with `--address`, exactly as on a real cluster. Every process the fixture
starts is ended by its PID at the end; nothing here runs `ray stop`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import ray_cluster_helper
from search_helpers import (
    check_consistent,
    cli,
    finish,
    journal_events,
    kill_group,
    start,
    wait_for_results,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    token = secrets.token_hex(16)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_TMPDIR=str(root),
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    helper, info = ray_cluster_helper.start(root / "ray", env)
    info.update(helper=helper, token=token, root=root)
    try:
        yield info
    finally:
        ray_cluster_helper.stop(helper, info)


def _search_args(cluster: dict, storage: Path, name: str, data: list[Path], *extra: str):
    return ["tuner.search", "--space", "quick", "--address", cluster["address"],
            "--storage", str(storage), "--name", name, "--cpus-per-trial", "1",
            "--max-concurrent", "2", "--data", *map(str, data), *extra]


#: Trials long enough to be killed in the middle: no early stopping, every trial to the end.
#: On the small test data an epoch takes ~0.1 s and the worker node dies 1-2 s after the
#: kill is asked for: at 10 epochs a trial could finish before it (seen once in CI), so 40.
LONG_EPOCHS = 40
LONG_SPACE = f"""\
description: trials that run to their last epoch, for the lost-node test
kind: search
budget: {{num_samples: 4, max_epochs: {LONG_EPOCHS}, grace_period: 1, reduction_factor: 2,
         metric: val_rmse, mode: min, max_concurrent: 2}}
resources: {{cpus_per_trial: 1, gpus_per_trial: 0}}
base: {{backbone: tiny, d_model: 32, head_hidden: 32, patience: 100}}
parameters:
  lr: {{type: loguniform, low: 1.0e-4, high: 3.0e-3}}
"""


def _token_env(cluster: dict) -> dict[str, str]:
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster["token"]}


def test_without_the_token_one_line_naming_token_auth(cluster, tmp_path, small_csvs):
    proc, wall = cli(*_search_args(cluster, tmp_path, "no-token", small_csvs),
                     timeout=120, RAY_AUTH_MODE="disabled", RAY_AUTH_TOKEN="")
    print(f"\n[wall] --address without the token: {wall:.1f}s")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "requires token authentication" in lines[0], proc.stderr
    assert "RAY_AUTH_TOKEN" in lines[0] and "ray get-auth-token" in lines[0]
    assert not (tmp_path / "no-token").exists()
    assert wall < 60


def test_trials_on_both_nodes_and_a_lost_worker_node(cluster, tmp_path, small_csvs):
    """Trials run on both nodes; the worker node is killed while a trial trains there.
    That trial is retried on the head from its last checkpoint (losing at most the epoch
    in progress), every trial finishes, the retry and its reason are in the report."""
    name = "two-nodes"
    exp = tmp_path / name
    worker = cluster["worker"][:8]
    space = tmp_path / "long.yaml"
    space.write_text(LONG_SPACE)
    args = _search_args(cluster, tmp_path, name, small_csvs, "--scheduler", "fifo")
    args[args.index("quick")] = str(space)
    proc = start(*args, log=tmp_path / "search.log", **_token_env(cluster))
    deadline = time.monotonic() + 300
    victim = None
    while victim is None and time.monotonic() < deadline:
        for e in journal_events(exp):
            if e["ev"] == "result" and str(e.get("node", "")).endswith(worker) \
                    and e["epoch"] >= 2:
                victim = e["tid"]
        if proc.poll() is not None:
            pytest.fail(f"search ended early:\n{Path(proc.log).read_text()[-4000:]}")
        time.sleep(0.1)
    assert victim, "no trial reached epoch 2 on the worker node"
    last_before = max(e["epoch"] for e in journal_events(exp)
                      if e["ev"] == "result" and e["tid"] == victim)
    cluster["helper"].stdin.write("kill-worker\n")
    cluster["helper"].stdin.flush()
    assert "killed" in json.loads(cluster["helper"].stdout.readline())
    killed_at = time.perf_counter()
    code, output = finish(proc)
    print(f"\n[time] search finished {time.perf_counter() - killed_at:.1f}s after the "
          f"worker node was killed (trial {victim} was there at epoch {last_before})")
    assert code == 0, output[-4000:]

    events = journal_events(exp)
    nodes = {str(e["node"]).rsplit("/", 1)[-1] for e in events
             if e["ev"] == "result" and e.get("node")}
    assert nodes == {cluster["head"][:8], worker}, nodes  # placed on both nodes
    retries = [e for e in events if e["ev"] == "retry"]
    assert [e["tid"] for e in retries] == [victim], retries
    epochs = [e["epoch"] for e in events if e["ev"] == "result" and e["tid"] == victim]
    # the retry continues from the last journaled checkpoint: no finished epoch runs again
    # (only the one in progress when the node died is lost)
    assert epochs == list(range(1, LONG_EPOCHS + 1)), epochs
    after = [e for e in events if e["ev"] == "result" and e["tid"] == victim
             and e["t"] > retries[0]["t"]]
    assert after and min(e["epoch"] for e in after) >= last_before
    assert all(str(e["node"]).endswith(cluster["head"][:8]) for e in after)

    table = pd.read_parquet(exp / "report" / "trials.parquet")
    assert (table["status"] == "TERMINATED").all(), table[["trial_id", "status", "error"]]
    row = table[table["trial_id"] == victim].iloc[0]
    assert row["num_failures"] == 1 and row["retry_errors"], row
    assert row["node"].endswith(cluster["head"][:8])
    summary = (exp / "report" / "summary.md").read_text()
    assert "## Retried trials (1)" in summary and f"`{victim}` retried 1x" in summary
    folder = exp / "trials" / row["trial_dir"]
    assert (folder / "final.json").is_file() and (folder / "train_config.yaml").is_file()
    assert list(folder.glob("events.out.tfevents.*"))  # TensorBoard events reached storage
    print(f"[info] {victim}: epochs journaled {epochs}; retry reason: "
          f"{row['retry_errors'][:160]}")
    assert "search finished: 4 trials" in output
    assert f"retry    {victim}" in output


def test_driver_killed_then_preempted_on_the_cluster(cluster, tmp_path, small_csvs):
    """The driver of a search on the cluster is SIGKILLed, resumed, then sent SIGTERM
    (preemption), and resumed again: exit codes 143 then 0, and the finished experiment is
    consistent (every trial once, none trained again, study and table agree)."""
    name = "driver-kills"
    exp = tmp_path / name
    base = _search_args(cluster, tmp_path, name, small_csvs, "--num-samples", "6",
                        "--max-epochs", "6")
    first = start(*base, log=tmp_path / "first.log", **_token_env(cluster))
    wait_for_results(exp, 4, first)
    kill_group(first, signal.SIGKILL)
    code, _ = finish(first)
    assert code == -signal.SIGKILL

    second = start(*base, "--resume", log=tmp_path / "second.log", **_token_env(cluster))
    wait_for_results(exp, 9, second)
    sent = time.perf_counter()
    second.send_signal(signal.SIGTERM)
    code, output = finish(second)
    print(f"\n[time] SIGTERM on the cluster: exit {code} {time.perf_counter() - sent:.1f}s "
          "after the signal")
    assert code == 143, output[-3000:]
    assert "interrupted by SIGTERM" in output and "continue with: " in output

    proc, wall = cli(*base, "--resume", timeout=600, **_token_env(cluster))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    counts = check_consistent(exp, 6)
    assert counts["drivers"] == 3 and counts["interruptions"] == 2
    print(f"[wall] final resume on the cluster: {wall:.1f}s; {counts}")


def test_the_helper_ends_only_processes_it_started(monkeypatch):
    """After the shutdown, a PID left over is killed only while it still names the process
    the cluster started (same start time): a reused PID belongs to someone else."""
    import subprocess
    import sys

    def helper_stub() -> subprocess.Popen:  # exits on the "shutdown" line, as the helper
        return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"],
                                stdin=subprocess.PIPE, text=True)

    def sleeper() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])

    ours = sleeper()
    try:
        assert ray_cluster_helper.start_time(ours.pid) == \
            ray_cluster_helper.start_time(ours.pid)
        ray_cluster_helper.stop(helper_stub(), {"pids": [ours.pid]})
        assert ours.wait(timeout=30) == -signal.SIGKILL
        assert ray_cluster_helper.start_time(ours.pid) is None  # gone (and reaped)
    finally:
        if ours.poll() is None:
            ours.kill()
            ours.wait()

    other = sleeper()
    times = iter(["100", "200"])  # the PID names another process after the shutdown
    monkeypatch.setattr(ray_cluster_helper, "start_time", lambda pid: next(times))
    try:
        ray_cluster_helper.stop(helper_stub(), {"pids": [other.pid]})
        with pytest.raises(subprocess.TimeoutExpired):  # still running, left alone
            other.wait(timeout=2)
    finally:
        other.kill()
        other.wait()
