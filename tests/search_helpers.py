"""Helpers shared by the end-to-end search tests: run the real CLI, watch its journal, and
check that an experiment is consistent (the invariants a killed and resumed search keeps);
and loading a benchmark script as a module, for the tests of its own logic."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def benchmark_module(name: str) -> Any:
    """benchmarks/<name>.py imported as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass looks its module up by name while it is built
    spec.loader.exec_module(module)
    return module


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    out.pop("RAY_ADDRESS", None)  # a local instance, never somebody else's cluster
    out.update(extra)
    return out


def cli(*args: str | Path, timeout: float = 600, **env_extra: str
        ) -> tuple[subprocess.CompletedProcess, float]:
    """Run `python -m ...` from the repository root; returns (process, wall seconds)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO,
                          env=env(**env_extra), capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.perf_counter() - started


def start(*args: str | Path, log: Path, **env_extra: str) -> subprocess.Popen:
    """Start `python -m ...` in its own process group (as a shell runs a foreground job),
    output to `log`."""
    handle = open(log, "w")  # noqa: SIM115 (closed by finish())
    proc = subprocess.Popen([sys.executable, "-m", *map(str, args)], cwd=REPO,
                            env=env(**env_extra), stdout=handle, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    proc.handle = handle  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    proc.handle.close()  # type: ignore[attr-defined]
    return code, Path(proc.log).read_text()  # type: ignore[attr-defined]


def killed_then_resumed(args: list[str], label: str, after: int = 3
                        ) -> tuple[subprocess.CompletedProcess, str]:
    """Run the search `args` (`tuner.search ...`), SIGKILLed by its own fault point right
    after its `after`-th journaled result, then the same command with --resume to the end.
    Returns (the killed run, the resumed run's stdout; it must exit 0)."""
    killed, wall = cli(*args, TIMESCLIP_FAULT=f"after_result:{after}")
    print(f"\n[wall] {label} until the kill: {wall:.1f}s")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    resumed, wall = cli(*args, "--resume")
    print(f"[wall] resumed to the end: {wall:.1f}s")
    return killed, ok(resumed)


def in_process(module: str, argv: list[str]) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGV` (tuner.search or tuner.results) run inside this process: its
    main() as the module runs it, stdout / stderr captured, the environment it sets for Ray
    put back after. For runs refused before Ray starts (one line, exit 2): it saves an
    interpreter start and the torch / Ray imports per run."""
    import contextlib
    import importlib
    import io

    main = importlib.import_module(module).main
    out, err, saved = io.StringIO(), io.StringIO(), dict(os.environ)
    os.environ.pop("RAY_ADDRESS", None)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def ok(proc: subprocess.CompletedProcess) -> str:
    """stdout of a run that must have exited 0 (its output is shown when it did not)."""
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n"
        f"--- stderr\n{proc.stderr[-6000:]}")
    return proc.stdout


def journal_events(exp: Path) -> list[dict[str, Any]]:
    from tuner.journal import read_events

    return read_events(exp / "journal.jsonl")


def wait_for_results(exp: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> int:
    """Block until the journal holds at least n epoch results (or the process ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = sum(1 for e in journal_events(exp) if e["ev"] == "result")
        if count >= n:
            return count
        if proc.poll() is not None:
            raise AssertionError(f"the search ended (exit {proc.returncode}) before {n} "
                                 f"results:\n{Path(proc.log).read_text()[-4000:]}")
        time.sleep(0.1)
    raise AssertionError(f"no {n} results within {timeout}s")


def kill_group(proc: subprocess.Popen, sig: int) -> None:
    os.killpg(proc.pid, sig)


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def check_consistent(exp: Path, num_samples: int) -> dict[str, Any]:
    """The invariants of a finished experiment, whatever interrupted it on the way.

    - exactly num_samples trials, each ended once; no trial folder without a journaled trial;
    - no epoch of a trial journaled twice (none trained again after it was recorded) and no
      event for a trial after its end (a finished trial is never run again);
    - trials.csv has one row per trial and no ERROR rows;
    - the Optuna study holds exactly these trials, all finished, each matching its row
      (same trial id, parameters, value, per-epoch values).
    Returns a few counts for the caller to print.
    """
    import optuna

    from tuner.journal import load_state
    from tuner.layout import OPTUNA_JOURNAL, TRIALS_DIR
    from tuner.study import open_stored_study

    events = journal_events(exp)
    state = load_state(exp)
    assert len(state.trials) == num_samples, sorted(state.trials)
    assert not state.unfinished, [t.tid for t in state.unfinished]
    ends = Counter(e["tid"] for e in events if e["ev"] == "end")
    assert all(v == 1 for v in ends.values()) and len(ends) == num_samples, ends
    folders = {p.name for p in (exp / TRIALS_DIR).iterdir() if p.is_dir()}
    assert folders == {t.dirname for t in state.trials.values()}, folders
    epochs = Counter((e["tid"], e["epoch"]) for e in events
                     if e["ev"] == "result" and not e.get("diverged"))
    assert all(v == 1 for v in epochs.values()), [k for k, v in epochs.items() if v > 1]
    ended_at = {}
    for i, e in enumerate(events):
        if e["ev"] == "end":
            ended_at[e["tid"]] = i
    late = [e for i, e in enumerate(events)
            if e.get("tid") in ended_at and i > ended_at[e["tid"]]]
    assert not late, late

    table = pd.read_parquet(exp / "report" / "trials.parquet")  # exact floats
    assert sorted(table["trial_id"]) == sorted(state.trials)
    assert (table["status"] != "ERROR").all(), table[["trial_id", "status", "error"]]

    meta = json.loads((exp / "search_meta.json").read_text())
    metric = meta.get("metric", "val_rmse")
    study = open_stored_study(exp / OPTUNA_JOURNAL, meta["name"])
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == num_samples
    by_id = {row["trial_id"]: row for _, row in table.iterrows()}
    for trial in trials:
        assert trial.state.is_finished(), trial
        row = by_id[trial.user_attrs["trial_id"]]
        journaled = state.trials[row["trial_id"]]
        assert trial.number == journaled.index
        for name, value in trial.params.items():
            assert journaled.params[name] == value, (name, value)
        intermediate = {e: h[metric] for e, h in journaled.history.items()}
        assert dict(trial.intermediate_values) == intermediate, row["trial_id"]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == row[f"best_{metric}"], row["trial_id"]
    return {"trials": len(state.trials), "drivers": len(state.segments),
            "interruptions": state.interruptions,
            "asha_stopped": int((table["stopped_by"] == "asha").sum())}


def tb_scalars(directory: Path, tag: str) -> dict[int, float]:
    """{step: value} of one TensorBoard tag in the event files under `directory`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    acc.Reload()
    return {int(e.step): float(e.value) for e in acc.Scalars(tag)}


def signal_name(code: int) -> str:
    return signal.Signals(-code).name if code < 0 else str(code)


# ------------------------------------------------------------------ listening sockets
def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, []))
    return out


def dashboard_frontends(root_pid: int) -> list[int]:
    """Ray dashboard servers with their web frontend among `root_pid`'s descendants (Ray
    without the dashboard still runs ray/dashboard/dashboard.py, with --disable-frontend
    and only its usage-stats module; the per-node agent is another program)."""
    found = []
    for pid in _descendants(root_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"dashboard/dashboard.py" in cmdline and b"--disable-frontend" not in cmdline:
                found.append(pid)
        except OSError:  # ended meanwhile
            continue
    return found


def _decode(hex_addr: str) -> str:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]  # little-endian words
    data = b"".join(words)
    if len(data) == 4:
        address = ".".join(str(b) for b in data)
    elif data[:12] == b"\0" * 10 + b"\xff\xff":
        address = ".".join(str(b) for b in data[12:])  # IPv4-mapped IPv6
    else:
        address = ":".join(data[i:i + 2].hex() for i in range(0, 16, 2))
    return f"{address}:{int(port, 16)}"


def listening_addresses(root_pid: int) -> dict[str, str]:
    """{"ip:port": command} of every TCP socket that `root_pid` or any process below it
    listens on (read from /proc: no tools needed)."""
    owner: dict[str, str] = {}
    for pid in _descendants(root_pid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owner[link[8:-1]] = name
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in owner:  # 0A = LISTEN
                out[_decode(cols[1])] = owner[cols[9]]
    return out
