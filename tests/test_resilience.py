"""A search survives what clusters do to it: Ctrl-C, SIGTERM, a killed driver, `--resume`.

Real `python -m tuner.search` processes (local Ray, Optuna, the tiny backbone, the small
CSV data set of conftest). The determinism test runs one trial at a time, so an
uninterrupted search and a killed-and-resumed one must agree exactly: same configurations,
same ASHA stop decisions, same values.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from search_helpers import (
    check_consistent,
    cli,
    dashboard_frontends,
    finish,
    journal_events,
    kill_group,
    listening_addresses,
    ok,
    start,
    wait_for_results,
)

pytestmark = pytest.mark.e2e

SAMPLES, EPOCHS = 6, 6


def _args(storage: Path, name: str, data: list[Path], *extra: str,
          dashboard: bool = False) -> list[str]:
    """The search of this file; without Ray's dashboard (a quicker start) except where a
    test looks at the default instance's processes."""
    return ["tuner.search", "--space", "quick", "--num-samples", str(SAMPLES),
            "--max-epochs", str(EPOCHS), "--storage", str(storage), "--name", name,
            "--num-cpus", "2", "--cpus-per-trial", "1", "--seed", "3",
            *([] if dashboard else ["--no-dashboard"]), "--data", *map(str, data), *extra]


def _rungs(path: Path) -> dict[float, dict[str, float]]:
    payload = json.loads(path.read_text())
    return {r["milestone"]: r["records"] for r in payload["rungs"]}


def _outcomes(exp: Path) -> pd.DataFrame:
    table = pd.read_parquet(exp / "report" / "trials.parquet")
    cols = ["trial_id", "status", "stopped_by", "epochs_run", "best_val_rmse", "best_epoch",
            *sorted(c for c in table.columns if c.startswith("config."))]
    return table[cols].sort_values("trial_id").reset_index(drop=True)


# ------------------------------------------------------------------ SIGINT / SIGTERM
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_graceful_stop_exit_code_message_and_resume(how, tmp_path, small_csvs):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) exits 130;
    SIGTERM to the driver (what SLURM/Kubernetes send on preemption) exits 143. Both stop
    every trial, export nothing, never touch the test split, and print the command that
    continues. Running that command finishes the search consistently: checked after Ctrl-C
    only, since what --resume does does not depend on the signal that stopped the run (and
    each resume to the end costs the suite a whole search)."""
    name = f"stop-{how}"
    exp = tmp_path / name
    # RAY_ADDRESS names a cluster: without --address the search must ignore it and start
    # its own private instance
    proc = start(*_args(tmp_path, name, small_csvs, "--max-concurrent", "2",
                        dashboard=how == "ctrl-c"),
                 log=tmp_path / f"{name}.log", RAY_ADDRESS="192.0.2.1:6379")
    wait_for_results(exp, 4, proc)
    # the default instance serves Ray's dashboard; --no-dashboard (the sigterm run) does not
    assert bool(dashboard_frontends(proc.pid)) == (how == "ctrl-c")
    if how == "ctrl-c":
        # the private local instance listens on the loopback interface only
        listening = listening_addresses(proc.pid)
        print(f"\n[info] the search's processes listen on {sorted(listening)}")
        assert len(listening) >= 3, listening  # GCS, raylet, dashboard at least
        assert all(a.startswith("127.0.0.1:") for a in listening), listening
    sent = time.perf_counter()
    if how == "ctrl-c":
        kill_group(proc, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    code, output = finish(proc)
    took = time.perf_counter() - sent
    sig = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    print(f"\n[time] {how}: exit {code} {took:.1f}s after the signal")
    assert code == (130 if how == "ctrl-c" else 143), output[-3000:]
    assert f"{sig} received: stopping the trials" in output
    assert f"interrupted by {sig}: " in output and "Traceback" not in output
    assert "Tuner.restore" not in output  # our command, not Ray's hint
    match = re.search(r"^continue with: (python -m tuner\.search .*)$", output, re.M)
    assert match, output[-2000:]
    command = shlex.split(match.group(1))
    assert command[-1] == "--resume" and "--name" in command

    report = exp / "report"
    summary = (report / "summary.md").read_text()
    ended = sum(1 for e in journal_events(exp) if e["ev"] == "end")
    assert ended < SAMPLES
    assert f"interrupted: {ended} of {SAMPLES} trials finished" in summary
    assert not (report / "best_config.yaml").exists()
    assert not (exp / "best_test.json").exists()  # the test split was not touched
    assert "test (evaluated once)" not in output
    drivers = [e for e in journal_events(exp) if e["ev"] == "driver_end"]
    assert drivers[-1]["how"] == "interrupted" and drivers[-1]["signal"] == sig

    if how == "sigterm":
        return
    # as an earlier version left it: the study in SQLite
    import optuna

    from tuner.study import study_storage

    optuna.copy_study(from_study_name=name, to_study_name=name,
                      from_storage=study_storage(exp / "optuna.journal", read_only=True),
                      to_storage=f"sqlite:///{exp / 'optuna.db'}")
    (exp / "optuna.journal").unlink()
    resumed, wall = cli(*command[2:], timeout=600)
    out = ok(resumed)
    print(f"[wall] resume after {how}: {wall:.1f}s")
    assert f"resuming: {ended} trial(s) ended and kept" in out
    # replaced by the study rebuilt from the journal
    assert "the study moved from optuna.db" in out and not (exp / "optuna.db").exists()
    assert out.count("test (evaluated once)") == 1
    counts = check_consistent(exp, SAMPLES)
    assert counts["drivers"] == 2 and counts["interruptions"] == 1
    summary = (report / "summary.md").read_text()
    assert f"1 interrupted ({sig}) and resumed" in summary
    assert (report / "best_config.yaml").is_file()


# ------------------------------------------------------------------ SIGKILL + determinism
@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_csvs):
    """An uninterrupted search, one trial at a time (report order is deterministic)."""
    storage = tmp_path_factory.mktemp("reference")
    proc, wall = cli(*_args(storage, "reference", small_csvs, "--max-concurrent", "1"))
    ok(proc)
    print(f"\n[wall] uninterrupted reference search: {wall:.1f}s")
    return storage / "reference"


def test_killed_between_a_decision_and_its_record(reference, tmp_path, small_csvs):
    """The windows one random kill rarely hits: after Optuna was asked for a trial but
    before its `trial` line (the study holds a trial the journal does not), after a trial's
    `end` line but before Optuna was told, and right after the very last result (the resume
    has nothing left to run: it closes the last trial from the journal and must still
    settle the Optuna study). SIGKILLed at each in turn and resumed: the search equals the
    uninterrupted one."""
    one = ("--max-concurrent", "1")
    exp = tmp_path / "killed"
    killed, _ = cli(*_args(tmp_path, "killed", small_csvs, *one),
                    TIMESCLIP_FAULT="after_ask:3")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    events = journal_events(exp)  # two trials journaled, the third asked but not recorded
    assert [e["ev"] for e in events].count("trial") == 2
    ends_before = [e["ev"] for e in events].count("end")
    killed, _ = cli(*_args(tmp_path, "killed", small_csvs, *one, "--resume"),
                    TIMESCLIP_FAULT="after_end:2")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert "lock: took over the stale lock of pid" in killed.stdout  # the killed driver's
    # the first driver cached the vision features (or found them): no vision pass again
    assert "vision features: loaded from cache" in killed.stdout
    assert "vision features: encoding" not in killed.stdout
    events = journal_events(exp)  # an end journaled, then killed before Optuna heard of it
    assert events[-1]["ev"] == "end"
    assert [e["ev"] for e in events].count("end") == ends_before + 2
    results = sum(1 for e in journal_events(reference) if e["ev"] == "result")
    left = results - sum(1 for e in events if e["ev"] == "result")
    killed, _ = cli(*_args(tmp_path, "killed", small_csvs, *one, "--resume"),
                    TIMESCLIP_FAULT=f"after_result:{left}")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert sum(1 for e in journal_events(exp) if e["ev"] == "result") == results
    ok(cli(*_args(tmp_path, "killed", small_csvs, *one, "--resume"))[0])
    check_consistent(exp, SAMPLES)
    pd.testing.assert_frame_equal(_outcomes(exp), _outcomes(reference), check_exact=True)
    assert json.loads((exp / "best_test.json").read_text())["test"] == \
        json.loads((reference / "best_test.json").read_text())["test"]


def test_killed_twice_and_resumed_matches_an_uninterrupted_search(reference, tmp_path,
                                                                   small_csvs):
    """The driver is SIGKILLed twice — once at a chosen point (right after its 5th epoch
    result is journaled), once from outside at an arbitrary moment — and resumed each time.
    The finished experiment equals an uninterrupted one with the same seed: the same
    trials, the same ASHA stops, the same values; ASHA's rung records after each restore
    equal those the killed driver held."""
    one = ("--max-concurrent", "1")  # one trial at a time: report order is deterministic
    ref = reference

    name = "killed"
    exp = tmp_path / name
    # 1. killed by itself right after journaling its 5th result (deterministic point)
    first, _ = cli(*_args(tmp_path, name, small_csvs, *one),
                   TIMESCLIP_FAULT="after_result:5")
    assert first.returncode == -signal.SIGKILL, first.stdout[-3000:] + first.stderr[-3000:]
    held_before_kill = _rungs(exp / "asha_state.json")
    assert sum(1 for e in journal_events(exp) if e["ev"] == "result") == 5

    # 2. resumed, then SIGKILLed from outside after a few more results
    second = start(*_args(tmp_path, name, small_csvs, *one, "--resume"),
                   log=tmp_path / "second.log")
    wait_for_results(exp, 9, second)
    second.send_signal(signal.SIGKILL)
    code, output = finish(second)
    assert code == -signal.SIGKILL
    assert "resuming: " in output and "asha: " in output
    assert "lock: took over the stale lock of pid" in output  # the first killed driver's
    assert _rungs(exp / "asha_restored-seg2.json") == held_before_kill
    snapshot = _rungs(exp / "asha_state.json")
    shutil.copy(exp / "journal.jsonl", tmp_path / "journal-at-second-kill.jsonl")

    # 3. resumed again: runs to the end
    third, wall = cli(*_args(tmp_path, name, small_csvs, *one, "--resume"))
    ok(third)
    print(f"[wall] second resume: {wall:.1f}s")
    from tuner.journal import load_state, read_events, replay

    at_kill = replay(read_events(tmp_path / "journal-at-second-kill.jsonl"))
    restored = _rungs(exp / "asha_restored-seg3.json")
    assert restored == at_kill.rung_table()
    # the killed driver's last snapshot can lag its journal by at most the record in flight
    missing = [(m, t) for m, rec in restored.items() for t in rec
               if t not in snapshot.get(m, {})]
    assert all(snapshot[m] == {t: v for t, v in restored[m].items() if (m, t) not in missing}
               for m in snapshot) and len(missing) <= 1

    counts = check_consistent(exp, SAMPLES)
    assert counts["drivers"] == 3 and counts["interruptions"] == 2
    state = load_state(exp)
    assert [s.how for s in state.segments.values()] == ["crashed", "crashed", "finished"]

    # the resumed search made exactly the uninterrupted search's decisions
    pd.testing.assert_frame_equal(_outcomes(exp), _outcomes(ref), check_exact=True)
    assert _rungs(exp / "asha_state.json") == _rungs(ref / "asha_state.json")
    assert json.loads((exp / "best_test.json").read_text())["test"] == \
        json.loads((ref / "best_test.json").read_text())["test"]
    print(f"[info] ASHA stopped {counts['asha_stopped']} of {SAMPLES} trials in both runs; "
          f"outcomes:\n{_outcomes(exp)[['trial_id', 'stopped_by', 'epochs_run']]}")
