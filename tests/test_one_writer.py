"""One writer per experiment, a journal that never loses a line in silence, and faults that
are said plainly.

Real `python -m tuner.search` processes (local Ray, Optuna, the tiny backbone, the small CSV
data set of conftest) for everything a single driver's own kill cannot show: a second
driver on the same experiment, a damaged or crafted journal, a feature task that fails, a
full disk, a double Ctrl-C. The lock's rules are also tested without Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from search_helpers import (
    _descendants,
    check_consistent,
    cli,
    finish,
    in_process,
    journal_events,
    kill_group,
    ok,
    start,
    wait_for_results,
)

from tuner.lock import STALE_AFTER_S, DriverLock, ExperimentLocked, Holder

SAMPLES, EPOCHS = 4, 3


def _args(storage: Path, name: str, data: list[Path], *extra: str,
          dashboard: bool = False) -> list[str]:
    """The search of this file; without Ray's dashboard (a quicker start) except where a
    test looks at the default instance's processes."""
    return ["tuner.search", "--space", "quick", "--num-samples", str(SAMPLES),
            "--max-epochs", str(EPOCHS), "--storage", str(storage), "--name", name,
            "--num-cpus", "2", "--cpus-per-trial", "1", "--max-concurrent", "1",
            "--seed", "5", *([] if dashboard else ["--no-dashboard"]),
            "--data", *map(str, data), *extra]


def _one_error_line(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _outcomes(exp: Path) -> pd.DataFrame:
    table = pd.read_parquet(exp / "report" / "trials.parquet")
    cols = ["trial_id", "status", "stopped_by", "epochs_run", "best_val_rmse", "best_epoch",
            *sorted(c for c in table.columns if c.startswith("config."))]
    return table[cols].sort_values("trial_id").reset_index(drop=True)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_csvs):
    """A finished small search (copied by the tests that alter it)."""
    storage = tmp_path_factory.mktemp("finished")
    ok(cli(*_args(storage, "base", small_csvs))[0])
    return storage / "base"


def _copy(exp: Path, dest: Path) -> Path:
    shutil.copytree(exp, dest, symlinks=True)
    return dest


# ------------------------------------------------------------------ the lock, without Ray
def test_a_live_lock_blocks_and_names_its_driver(tmp_path):
    path = tmp_path / "driver.lock"
    first = DriverLock(path, print)
    first.acquire()
    try:
        with pytest.raises(ExperimentLocked, match=rf"pid {os.getpid()} on host "
                                                   rf"{socket.gethostname()}, running since"):
            DriverLock.check_free(path)
        with pytest.raises(ExperimentLocked, match="being run by another driver"):
            DriverLock(path, print).acquire()
    finally:
        first.release()
    assert not path.exists()
    DriverLock.check_free(path)  # free again


def _write_lock(path: Path, **fields: object) -> None:
    now = time.time()
    payload = {"host": socket.gethostname(), "pid": os.getpid(), "started": now,
               "heartbeat": now, "token": "other", **fields}
    path.write_text(json.dumps(payload))


def test_stale_locks_are_taken_over_with_one_line(tmp_path):
    """Same host: a pid that is gone, or a pid now held by another process, is stale.
    Another host: a heartbeat older than STALE_AFTER_S is stale, a fresh one is not.
    A torn (unreadable) lock is stale."""
    path = tmp_path / "driver.lock"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    cases = {
        "pid gone": dict(pid=gone.pid),
        "pid reused": dict(process_start="1"),  # our pid, but another start time
        "old heartbeat elsewhere": dict(host="elsewhere.example",
                                        heartbeat=time.time() - STALE_AFTER_S - 5),
    }
    for what, fields in cases.items():
        _write_lock(path, **fields)
        said: list[str] = []
        lock = DriverLock(path, said.append)
        lock.acquire()
        assert len(said) == 1 and said[0].startswith("lock: took over the stale lock"), \
            (what, said)
        assert Holder.read(path).token == lock.token
        lock.release()
    path.write_text('{"host": "x", "pi')  # torn by a crash while being written
    lock = DriverLock(path, print)
    lock.acquire()
    lock.release()
    _write_lock(path, host="elsewhere.example")  # fresh heartbeat on another host
    with pytest.raises(ExperimentLocked, match="on host elsewhere.example"):
        DriverLock(path, print).acquire()


def test_a_lock_of_another_live_process_blocks_until_it_is_gone(tmp_path):
    path = tmp_path / "driver.lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stat = Path(f"/proc/{other.pid}/stat").read_text()
        _write_lock(path, pid=other.pid, process_start=stat.rsplit(")", 1)[1].split()[19])
        with pytest.raises(ExperimentLocked, match=f"pid {other.pid}"):
            DriverLock(path, print).acquire()
    finally:
        other.kill()
        other.wait()
    lock = DriverLock(path, print)
    lock.acquire()  # its driver was killed: the lock is stale on this host at once
    lock.release()


def test_the_heartbeat_is_renewed_and_a_lost_lock_is_noticed(tmp_path, monkeypatch):
    import tuner.lock as lock_module

    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.05)
    path = tmp_path / "driver.lock"
    said: list[str] = []
    lock = DriverLock(path, said.append)
    lock.acquire()
    first = Holder.read(path).heartbeat
    time.sleep(0.3)
    assert Holder.read(path).heartbeat > first
    _write_lock(path)  # another driver took it over
    time.sleep(0.3)
    lock.release()
    assert any("no longer this driver's" in s for s in said)
    assert path.exists()  # release never removes a lock that is not its own


# ------------------------------------------------------------------ two drivers
@pytest.mark.e2e
def test_a_second_driver_is_refused_and_the_first_finishes_untouched(tmp_path, small_csvs):
    """While a driver runs, a second one on the same experiment (with or without --resume)
    exits 2 in one line naming the first, before it writes anything (the journal is byte for
    byte the first's while it is held); the first then finishes as one consistent run."""
    # every trial to its end: the first driver runs while the others start and are refused
    longer = ("--num-samples", "6", "--max-epochs", "10", "--searcher", "random",
              "--scheduler", "fifo")
    exp = tmp_path / "shared"
    first = start(*_args(tmp_path, "shared", small_csvs, *longer), log=tmp_path / "first.log")
    wait_for_results(exp, 1, first)
    # The first driver is held (SIGSTOP: alive, its lock valid) while the others start, so
    # that it cannot finish before they reach the lock, however slowly they start (an
    # interpreter and the torch / Ray imports take seconds; a fast search is over sooner).
    os.kill(first.pid, signal.SIGSTOP)
    try:
        journal_before = (exp / "journal.jsonl").read_bytes()
        assert first.poll() is None
        others = [subprocess.Popen([sys.executable, "-m",
                                    *_args(tmp_path, "shared", small_csvs, *longer, *extra)],
                                   cwd=Path(__file__).resolve().parents[1], text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                  for extra in (("--resume",), ())]
        for other in others:
            out, err = other.communicate(timeout=300)
            line = _one_error_line(subprocess.CompletedProcess(other.args, other.returncode,
                                                               out, err), 2)
            assert f"is being run by another driver (pid {first.pid} on host " in line, line
            assert "ray: " not in out  # refused before Ray started
        # the second drivers wrote nothing: the journal is the first's, as it was held
        assert (exp / "journal.jsonl").read_bytes() == journal_before
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.poll() is None, "the first driver ended before the others were refused"
    assert (exp / "journal.jsonl").read_bytes().startswith(journal_before)
    code, output = finish(first)
    assert code == 0, output[-3000:]
    assert not (exp / "driver.lock").exists()
    check_consistent(exp, 6)
    assert [e["ev"] for e in journal_events(exp)].count("driver_start") == 1
    # FIFO: no trial cut short by a scheduler
    assert set(_outcomes(exp)["stopped_by"]) <= {"completed", "early_stopping"}


# ------------------------------------------------------------------ a damaged journal
@pytest.mark.e2e
def test_a_garbage_line_stops_resume_and_report_naming_the_line(finished, tmp_path,
                                                                small_csvs):
    exp = _copy(finished, tmp_path / "damaged")
    lines = (exp / "journal.jsonl").read_text().splitlines(keepends=True)
    lines.insert(5, "this is not an event\n")
    (exp / "journal.jsonl").write_text("".join(lines))
    before = _tree(exp)
    resumed = in_process("tuner.search", _args(tmp_path, "damaged", small_csvs,
                                               "--resume")[1:])
    line = _one_error_line(resumed, 2)
    assert f"{exp / 'journal.jsonl'} line 6: not a JSON event" in line, line
    assert _tree(exp) == before  # nothing written, no lock left behind
    results = in_process("tuner.results", [str(exp)])
    line = _one_error_line(results, 2)
    assert "journal.jsonl line 6: not a JSON event" in line, line
    assert _tree(exp) == before


@pytest.mark.e2e
def test_a_torn_last_line_is_repaired_and_resume_finishes(finished, tmp_path, small_csvs):
    exp = _copy(finished, tmp_path / "torn")
    with open(exp / "journal.jsonl", "a") as fh:
        fh.write('{"ev":"result","seg":1,"tid":"t00')
    resumed, _ = cli(*_args(tmp_path, "torn", small_csvs, "--resume"))
    ok(resumed)
    assert (exp / "journal.jsonl").read_bytes().endswith(b"\n")
    check_consistent(exp, SAMPLES)


@pytest.mark.e2e
@pytest.mark.parametrize("craft", ["dir", "ckpt", "tid"])
def test_a_crafted_journal_pointing_outside_touches_nothing(craft, finished, tmp_path,
                                                            small_csvs):
    """Journal fields are data, never trusted paths: a journal whose trial folder,
    checkpoint or trial id leads out of the experiment stops --resume and the report in
    one line (exit 2), and nothing outside changes (a resume deletes old checkpoint_*
    and .fit-* folders of the trials it closes)."""
    root = tmp_path / craft
    exp = _copy(finished, root / "storage" / "crafted")
    outside = root / "outside"
    for name in ("checkpoint_000001", "checkpoint_000002", ".fit-x"):
        (outside / name).mkdir(parents=True)
        (outside / name / "keep.txt").write_text("must survive")
    events = journal_events(exp)
    # the last trial becomes unfinished (its end line dropped, its last decision a stop):
    # a resume would close it and prune its folder
    last = max(e["tid"] for e in events if e["ev"] == "trial")
    kept = [e for e in events if not (e["ev"] == "end" and e["tid"] == last)]
    for e in kept:
        if e.get("tid") != last:
            continue
        if craft == "dir" and e["ev"] == "trial":
            e["dir"] = "../../outside"
        if craft == "ckpt" and e["ev"] == "result":
            e["ckpt"] = "../../../../outside/checkpoint_000002"
        if craft == "tid":
            e["tid"] = "../../../outside"
    (exp / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in kept))
    outside_before, exp_before = _tree(outside), _tree(exp)
    args = _args(root / "storage", "crafted", small_csvs, "--resume")[1:]
    line = _one_error_line(in_process("tuner.search", args), 2)
    assert "journal.jsonl line" in line and ("outside the experiment" in line or
                                             "is not one folder name" in line or
                                             "is not a checkpoint folder name" in line or
                                             "is not a trial id" in line), line
    line = _one_error_line(in_process("tuner.results", [str(exp)]), 2)
    assert "journal.jsonl line" in line
    assert _tree(outside) == outside_before and _tree(exp) == exp_before


# ------------------------------------------------------------------ a failed feature task
@pytest.mark.e2e
def test_a_failed_feature_task_stops_the_search_before_any_trial(tmp_path, small_csvs):
    """A backbone whose config loads (the pre-flight passes) but whose weights do not: the
    one vision pass fails, the search stops in one line with the cause, exit 1, and no
    trial is started (none failed --max-failures times)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from timesclip.model.backbones import tiny_configs

    backbone = tmp_path / "clip"
    text, vision = tiny_configs()
    torch.manual_seed(7)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                         projection_dim=16)).save_pretrained(str(backbone))
    (backbone / "model.safetensors").write_bytes(b"\x00" * 1024)  # damaged weights
    proc, _ = cli(*_args(tmp_path, "features", small_csvs, "--backbone", str(backbone),
                         "--no-feature-cache"))
    line = _one_error_line(proc, 1)
    print(f"\n[info] {line}")
    assert "the vision feature task failed before any trial started (" in line, line
    assert "BackboneError" in line or "cannot load" in line, line  # the cause, not a class
    assert "--resume" in line
    events = journal_events(tmp_path / "features")
    assert not [e for e in events if e["ev"] in ("trial", "start", "retry")], events
    assert events[-1]["ev"] == "driver_end" and events[-1]["how"] == "failed"


# ------------------------------------------------------------------ a full disk
def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:  # CI runs as root, where this works
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()})")


@pytest.mark.e2e
def test_a_full_disk_is_one_line_and_resume_finishes_without_error_trials(tmp_path,
                                                                          small_csvs):
    storage = tmp_path / "small-disk"
    _mount_tmpfs(storage, "3m")
    try:
        proc, _ = cli(*_args(storage, "full", small_csvs))
        line = _one_error_line(proc, 1)
        print(f"\n[info] {line}")
        assert f"--storage {storage} is full" in line and "free at least" in line, line
        assert "--resume" in line
        events = journal_events(storage / "full")
        assert not [e for e in events if e["ev"] == "end" and e["status"] == "ERROR"]
        subprocess.run(["mount", "-o", "remount,size=200m", str(storage)], check=True)
        resumed, _ = cli(*_args(storage, "full", small_csvs, "--resume"))
        ok(resumed)
        counts = check_consistent(storage / "full", SAMPLES)
        assert counts["interruptions"] >= 1
    finally:
        subprocess.run(["umount", "-l", str(storage)], capture_output=True)


# ------------------------------------------------------------------ a double Ctrl-C
@pytest.mark.e2e
def test_a_double_ctrl_c_leaves_no_process_of_the_private_instance(tmp_path, small_csvs):
    exp = tmp_path / "twice"
    proc = start(*_args(tmp_path, "twice", small_csvs, dashboard=True),
                 log=tmp_path / "twice.log")
    wait_for_results(exp, 1, proc)
    ours = _descendants(proc.pid) - {proc.pid}
    assert len(ours) >= 3  # GCS, raylet, dashboard, workers ...
    kill_group(proc, signal.SIGINT)
    time.sleep(0.3)
    kill_group(proc, signal.SIGINT)
    code, output = finish(proc, timeout=60)
    assert code == 130, output[-3000:]
    assert "again: exiting now" in output
    time.sleep(1.0)
    alive = []
    for pid in ours:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append((pid, Path(f"/proc/{pid}/cmdline").read_bytes()[:80]))
    assert not alive, alive
    resumed, _ = cli(*_args(tmp_path, "twice", small_csvs, "--resume"))
    ok(resumed)
    check_consistent(exp, SAMPLES)
