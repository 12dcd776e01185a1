"""The experiment journal and the driver pieces that write it and rebuild from it.

Fast unit tests on the real classes: `tuner.journal` (writer, replay, selection),
`tuner.tracking` (end classification, JournaledASHA's rung records and their restore, the
Optuna study rebuilt from the journal, the sampler's random state) and
`tuner.trainable.trial_dirname`. No Ray cluster is started.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import TrialState as OptunaState
from ray.tune.schedulers import TrialScheduler

from tuner.journal import (
    ExperimentState,
    Journal,
    JournalDamaged,
    TrialState,
    load_state,
    read_events,
    repair_tail,
    replay,
)
from tuner.layout import ASHA_STATE_FILE, JOURNAL_FILE, trial_dirname
from tuner.outcomes import Status, best_value, classify_end, end_decided, select_best
from tuner.study import rebuild_study, restore_sampler_state, sampler_state
from tuner.tracking import JournaledASHA, Ledger
from tuner.trainable import TrialSetup, journal_checkpoint, publish_checkpoint

TERMINATED, DIVERGED, ERROR = Status.TERMINATED, Status.DIVERGED, Status.ERROR
RUNNING, PENDING = Status.RUNNING, Status.PENDING

optuna.logging.set_verbosity(optuna.logging.WARNING)


def ev(kind: str, seg: int, t: float, **fields: Any) -> dict[str, Any]:
    return {"ev": kind, "seg": seg, "t": t, **fields}


def trial_ev(tid: str, seg: int, t: float, index: int, **fields: Any) -> dict[str, Any]:
    return ev("trial", seg, t, tid=tid, index=index, ray_id=f"ray-{tid}",
              params={"lr": 1e-3 * (index + 1)}, dir=f"{tid}-dir", **fields)


def result_ev(tid: str, seg: int, t: float, epoch: int, value: float, *,
              decision: str = "continue", **fields: Any) -> dict[str, Any]:
    return ev("result", seg, t, tid=tid, epoch=epoch, decision=decision,
              metrics={"epoch": epoch, "val_rmse": value}, ckpt=f"checkpoint_{epoch - 1:06d}",
              **fields)


# ------------------------------------------------------------------------------ replay
def test_replay_folds_every_kind_of_event():
    events = [
        ev("driver_start", 1, 100.0, pid=1, host="h"),
        trial_ev("t0000", 1, 101.0, 0, sampler={"rng": "first"}),
        trial_ev("t0001", 1, 102.0, 1, sampler={"rng": "second"}),
        ev("start", 1, 103.0, tid="t0000", ray_id="ray-t0000"),
        result_ev("t0000", 1, 104.0, 1, 2.0, node="10.0.0.1/aa", rung=[1.0, 2.0]),
        result_ev("t0000", 1, 106.0, 2, 1.5, node="10.0.0.1/aa", decision="stop"),
        ev("end", 1, 107.0, tid="t0000", status=TERMINATED, stopped_by="asha", value=1.5),
        ev("start", 1, 108.0, tid="t0001", ray_id="ray-t0001"),
        result_ev("t0001", 1, 109.0, 1, 1.0, node="10.0.0.1/aa"),
        ev("retry", 1, 110.0, tid="t0001", error="RayActorError: died", node="10.0.0.1"),
        ev("driver_end", 1, 120.0, how="interrupted", signal="SIGTERM"),
        ev("driver_start", 2, 500.0, pid=2, host="h"),
        ev("attach", 2, 501.0, tid="t0001", ray_id="ray-again"),
        ev("start", 2, 502.0, tid="t0001", ray_id="ray-again"),
        result_ev("t0001", 2, 505.0, 2, 0.5, node="10.0.0.2/bb"),
        ev("rung", 2, 506.0, tid="t0001", rung=[2.0, 0.5]),
        ev("end", 2, 507.0, tid="t0001", status=ERROR, stopped_by="error", error="boom"),
        trial_ev("t0002", 2, 508.0, 2),
        ev("driver_end", 2, 510.0, how="finished"),
    ]
    state = replay(events)
    assert list(state.trials) == ["t0000", "t0001", "t0002"]
    t0, t1, t2 = state.trials.values()
    assert (t0.status, t0.stopped_by, t0.ended) == (TERMINATED, "asha", True)
    assert t0.history == {1: {"epoch": 1, "val_rmse": 2.0}, 2: {"epoch": 2, "val_rmse": 1.5}}
    assert t0.decisions == [(1, "continue"), (2, "stop")] and t0.epochs_run == 2
    assert t0.checkpoint == "checkpoint_000001"
    assert t0.node == "10.0.0.1/aa" and t0.params == {"lr": 1e-3}
    assert t0.dirname == "t0000-dir" and t0.ray_ids == ["ray-t0000"]
    assert (t1.status, t1.stopped_by) == (ERROR, "error") and t1.end["error"] == "boom"
    assert t1.ray_ids == ["ray-t0001", "ray-again"] and t1.node == "10.0.0.2/bb"
    assert t1.retries == [{"error": "RayActorError: died", "node": "10.0.0.1", "seg": 1,
                           "t": 110.0}]
    assert (t2.status, t2.stopped_by, t2.ended, t2.node) == (PENDING, "unfinished", False, None)
    assert t2.checkpoint is None and t2.epochs_run == 0
    assert state.rungs == [(1.0, "t0000", 2.0), (2.0, "t0001", 0.5)]
    assert state.rung_table() == {1.0: {"t0000": 2.0}, 2.0: {"t0001": 0.5}}
    assert [t.tid for t in state.ended] == ["t0000", "t0001"]
    assert [t.tid for t in state.unfinished] == ["t0002"]
    assert state.next_index == 3
    assert state.sampler_state == {"rng": "second"}  # after the last journaled suggestion


def test_replay_status_running_after_start_and_result():
    state = replay([trial_ev("t0000", 1, 1.0, 0), ev("start", 1, 2.0, tid="t0000")])
    assert state.trials["t0000"].status == RUNNING
    state = replay([trial_ev("t0000", 1, 1.0, 0), result_ev("t0000", 1, 2.0, 1, 1.0)])
    assert state.trials["t0000"].status == RUNNING
    assert not state.trials["t0000"].ended


def test_re_reported_epoch_replaces_the_abandoned_attempt():
    events = [trial_ev("t0000", 1, 0.0, 0)]
    events += [result_ev("t0000", 1, float(e), e, 1.0 / e) for e in (1, 2, 3, 4)]
    events += [ev("retry", 1, 5.0, tid="t0000", error="lost"),
               result_ev("t0000", 1, 6.0, 2, 0.9)]
    trial = replay(events).trials["t0000"]
    assert trial.epochs == [1, 2] and trial.epochs_run == 2
    assert trial.history[2]["val_rmse"] == 0.9
    assert trial.result_times == {1: 1.0, 2: 6.0}
    assert trial.checkpoint == "checkpoint_000001"
    assert best_value(trial.history, "val_rmse", "min") == (0.9, 2)


@pytest.mark.parametrize("orphan", [
    result_ev("t0009", 1, 2.0, 1, 0.5, rung=[1.0, 0.5]),
    ev("rung", 1, 2.5, tid="t0009", rung=[2.0, 0.5]),
    ev("attach", 1, 3.0, tid="t0009", ray_id="x"),
    ev("retry", 1, 3.5, tid="t0009", error="x"),
    ev("end", 1, 4.0, tid="t0009", status=TERMINATED, stopped_by="completed"),
], ids=lambda e: e["ev"])
def test_an_event_for_a_never_created_trial_is_damage(orphan):
    """A trial's `trial` line is journaled before anything else of it: an event for an
    unknown trial means a lost line (its index would be handed out again), never a case to
    skip."""
    events = [ev("driver_start", 1, 0.0), trial_ev("t0000", 1, 1.0, 0), orphan]
    with pytest.raises(JournalDamaged, match=r"journal line 3: .*t0009, which was never "
                                             r"created.*restore journal.jsonl"):
        replay(events)


@pytest.mark.parametrize(("bad", "message"), [
    (trial_ev("t0000", 1, 2.0, 1), "t0000 is created a second time"),
    (trial_ev("../../x", 1, 2.0, 1), "'../../x' is not a trial id"),
    ({**trial_ev("t0001", 1, 2.0, 1), "dir": "../../elsewhere"}, "is not one folder name"),
    ({**trial_ev("t0001", 1, 2.0, 1), "dir": "/etc"}, "is not one folder name"),
    (ev("result", 1, 2.0, tid="t0000", epoch=1, metrics={}, ckpt="../../../tmp/x"),
     "is not a checkpoint folder name"),
    (ev("end", 1, 2.0, tid="t0000", status="FINE", stopped_by="completed"),
     "missing or invalid field"),
    (ev("trial", 1, 2.0, tid="t0001", params={}), "missing or invalid field"),
], ids=["duplicate", "bad-id", "dir-up", "dir-absolute", "ckpt-up", "status", "no-index"])
def test_a_line_the_driver_cannot_have_written_is_damage(bad, message):
    events = [ev("driver_start", 1, 0.0), trial_ev("t0000", 1, 1.0, 0), bad]
    with pytest.raises(JournalDamaged, match=f"journal line 3: .*{re.escape(message)}"):
        replay(events)


def test_only_a_torn_last_line_is_tolerated(tmp_path):
    """A last line without its newline is what a kill during an append leaves: ignored.
    Any other unreadable line stops the replay, naming the file and the line."""
    path = tmp_path / JOURNAL_FILE
    good = [ev("driver_start", 1, 0.0), trial_ev("t0000", 1, 1.0, 0),
            result_ev("t0000", 1, 2.0, 1, 0.5)]
    lines = [json.dumps(e) for e in good]
    path.write_text("\n".join(lines) + "\n" + '{"ev": "result", "seg": 1, "tid": "t00')
    assert [e["ev"] for e in load_state_events(tmp_path)] == ["driver_start", "trial", "result"]
    path.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(JournalDamaged, match=rf"{re.escape(str(path))} line 2: not a JSON"):
        load_state(tmp_path)
    path.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n")  # an empty line too
    with pytest.raises(JournalDamaged, match="line 2: not a JSON"):
        load_state(tmp_path)
    path.write_text("\n".join([lines[0], '{"ev": "unknown"}', *lines[1:]]) + "\n")
    with pytest.raises(JournalDamaged, match="line 2: not a journal event"):
        load_state(tmp_path)
    path.write_bytes(b"\xff\xfe" + ("\n".join(lines) + "\n").encode())
    with pytest.raises(JournalDamaged, match="line 1: not a JSON"):
        load_state(tmp_path)


def load_state_events(exp: Path) -> list[dict[str, Any]]:
    state = load_state(exp)
    assert list(state.trials) == ["t0000"]
    return read_events(exp / JOURNAL_FILE)


def test_a_failed_append_leaves_no_torn_line(tmp_path, monkeypatch):
    """An append that fails (a full disk) is cut off again, so a later append can never
    bury a torn line mid-file; ENOSPC becomes StorageFull."""
    import errno

    from tuner.layout import StorageFull

    journal = Journal(tmp_path / JOURNAL_FILE, 1)
    journal.append("driver_start")
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageFull, match="no space left on device writing"):
        journal.append("trial", tid="t0000", index=0, params={"x": "y" * 100}, dir="t0000")
    monkeypatch.setattr(os, "fsync", real_fsync)
    journal.append("trial", tid="t0000", index=0, params={}, dir="t0000")
    journal.close()
    assert [e["ev"] for e in read_events(tmp_path / JOURNAL_FILE)] == ["driver_start", "trial"]
    assert list(load_state(tmp_path).trials) == ["t0000"]


def test_wall_seconds_sum_spans_per_driver_run():
    events = [ev("driver_start", 1, 100.0), trial_ev("t0000", 1, 100.0, 0),
              ev("start", 1, 110.0, tid="t0000"),
              result_ev("t0000", 1, 130.0, 1, 1.0),
              ev("driver_end", 1, 150.0, how="interrupted", signal="SIGINT"),
              ev("driver_start", 2, 1000.0),
              ev("attach", 2, 1001.0, tid="t0000", ray_id="r2"),
              ev("start", 2, 1005.0, tid="t0000"),
              result_ev("t0000", 2, 1012.0, 2, 0.5),
              ev("end", 2, 1013.0, tid="t0000", status=TERMINATED, stopped_by="completed"),
              ev("driver_end", 2, 1020.0, how="finished")]
    state = replay(events)
    assert state.trials["t0000"].wall_seconds == pytest.approx(20.0 + 8.0)
    assert state.wall_seconds == pytest.approx(50.0 + 20.0)


def test_segments_how_finished_interrupted_crashed():
    events = [ev("driver_start", 1, 0.0, pid=11, host="a"),
              ev("driver_end", 1, 5.0, how="finished"),
              ev("driver_start", 2, 10.0, pid=12, host="a"),
              ev("driver_end", 2, 12.0, how="interrupted", signal="SIGTERM"),
              ev("driver_start", 3, 20.0, pid=13, host="b"),
              trial_ev("t0000", 3, 27.0, 0)]  # then killed: no driver_end
    state = replay(events)
    segs = state.segments
    assert [(s.seg, s.how, s.signal) for s in segs.values()] == \
        [(1, "finished", None), (2, "interrupted", "SIGTERM"), (3, "crashed", None)]
    assert (segs[3].start, segs[3].end, segs[3].pid, segs[3].host) == (20.0, 27.0, 13, "b")
    assert state.interruptions == 2
    assert state.wall_seconds == pytest.approx(5.0 + 2.0 + 7.0)


def test_live_state_equals_replayed_file(tmp_path):
    """The driver's live state (apply of what append returns) and the file replayed agree,
    also for the non-finite values a diverged trial reports (written as null)."""
    journal = Journal(tmp_path / JOURNAL_FILE, 1)
    live = ExperimentState()
    for event in [ev("driver_start", 1, 1.0), trial_ev("t0000", 1, 2.0, 0),
                  result_ev("t0000", 1, 3.0, 1, 0.7, rung=[1.0, 0.7]),
                  ev("result", 1, 3.5, tid="t0000", epoch=2, decision="stop",
                     diverged={"epoch": 2, "step": 4, "loss": math.nan}),
                  trial_ev("t0001", 1, 4.0, 1),
                  ev("result", 1, 4.5, tid="t0001", epoch=1, decision="continue",
                     metrics={"epoch": 1, "val_rmse": math.inf, "val_loss": math.nan}),
                  ev("end", 1, 5.0, tid="t0000", status=DIVERGED, stopped_by="diverged")]:
        fields = {k: v for k, v in event.items() if k not in ("ev", "seg")}
        live.apply(journal.append(event["ev"], **fields))
    journal.close()
    replayed = replay(read_events(tmp_path / JOURNAL_FILE))
    assert replayed.trials["t0000"].diverged == {"epoch": 2, "step": 4, "loss": None}
    assert replayed == live


# ------------------------------------------------------------------------------ Journal
def test_each_append_is_on_disk_when_it_returns(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / JOURNAL_FILE
    journal = Journal(path, 3)
    for i in range(3):
        record = journal.append("trial", tid=f"t{i:04d}", index=i, params={"x": 0.5})
        with open(path, encoding="utf-8") as other:  # another handle, journal still open
            lines = other.read().splitlines()
        assert len(lines) == i + 1
        assert json.loads(lines[-1]) == record and record["seg"] == 3
        assert len(synced) == i + 1 and synced[-1] == journal._file.fileno()
    journal.close()


def test_append_returns_the_record_as_written(tmp_path):
    """What append returns is what the driver applies to its live state: it must be the
    line on disk (non-finite floats as null, numpy scalars as plain numbers)."""
    import numpy as np

    journal = Journal(tmp_path / JOURNAL_FILE, 1)
    record = journal.append("result", t=1.0, tid="t0000", epoch=np.int64(2),
                            metrics={"val_rmse": math.nan, "val_r2": np.float32(0.5)})
    journal.close()
    (line,) = (tmp_path / JOURNAL_FILE).read_text().splitlines()
    assert json.loads(line) == {"ev": "result", "seg": 1, "t": 1.0, "tid": "t0000",
                                "epoch": 2, "metrics": {"val_rmse": None, "val_r2": 0.5}}
    assert record == json.loads(line)


def test_repair_tail_cuts_a_torn_line_so_the_next_append_parses(tmp_path):
    path = tmp_path / JOURNAL_FILE
    whole = json.dumps(ev("driver_start", 1, 1.0))
    path.write_text(whole + "\n" + '{"ev":"result","seg":1,"t":2.0,"tid":"t00')
    assert [e["ev"] for e in read_events(path)] == ["driver_start"]  # torn line skipped
    journal = Journal(path, 2)  # repairs on open
    journal.append("driver_start", t=3.0)
    journal.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["seg"] for line in lines] == [1, 2]
    repair_tail(path)  # a clean file is left alone
    assert path.read_text().splitlines() == lines


def test_repair_tail_of_a_single_torn_line_and_missing_file(tmp_path):
    path = tmp_path / JOURNAL_FILE
    repair_tail(path)  # no file: nothing to do
    assert not path.exists()
    path.write_text('{"ev":"dri')
    repair_tail(path)
    assert path.read_bytes() == b""


def test_pickled_journal_never_writes(tmp_path):
    path = tmp_path / JOURNAL_FILE
    journal = Journal(path, 1)
    journal.append("driver_start", t=1.0)
    copy = pickle.loads(pickle.dumps(journal))
    assert copy.path == path and copy.segment == 1
    copy.append("trial", tid="t0000", index=0, params={})  # silently goes nowhere
    copy.close()
    assert [e["ev"] for e in read_events(path)] == ["driver_start"]
    journal.append("driver_end", t=2.0, how="finished")  # the original still writes
    journal.close()
    assert [e["ev"] for e in read_events(path)] == ["driver_start", "driver_end"]
    pickle.loads(pickle.dumps(copy))  # a copy can be pickled again


# ------------------------------------------------------------------------------ selection
def _state(*trials: tuple[str, str, list[float | None]]) -> ExperimentState:
    """trials: (tid, status, val_rmse per epoch)."""
    state = ExperimentState()
    for index, (tid, status, values) in enumerate(trials):
        trial = TrialState(tid=tid, index=index, params={}, dirname=tid, status=status)
        trial.history = {e: {"val_rmse": v, "test_rmse": 0.0}
                         for e, v in enumerate(values, 1)}
        state.trials[tid] = trial
    return state


def test_best_value_skips_non_finite_and_breaks_ties_by_earlier_epoch():
    history = {1: {"m": 3.0}, 2: {"m": math.nan}, 3: {"m": 1.0}, 4: {"m": 1.0},
               5: {"m": None}, 6: {}, 7: {"m": math.inf}}
    assert best_value(history, "m", "min") == (1.0, 3)
    assert best_value(history, "m", "max") == (3.0, 1)
    value, epoch = best_value({1: {"m": math.nan}}, "m", "min")
    assert math.isnan(value) and epoch is None
    # epochs are read in epoch order, whatever the dict's order
    assert best_value({4: {"m": 2.0}, 2: {"m": 2.0}}, "m", "min") == (2.0, 2)


def test_select_best_ties_go_to_the_earlier_trial_and_mode_max():
    state = _state(("t0000", TERMINATED, [2.0, 1.0]), ("t0001", TERMINATED, [1.0]),
                   ("t0002", TERMINATED, [0.5, 3.0]))
    assert select_best(state.trials.values(), "val_rmse", "min").tid == "t0002"
    assert select_best(state.trials.values(), "val_rmse", "max").tid == "t0002"  # 3.0, epoch 2
    tie = _state(("t0000", TERMINATED, [5.0, 1.0]), ("t0001", TERMINATED, [1.0]))
    assert select_best(tie.trials.values(), "val_rmse", "min").tid == "t0000"
    assert select_best(tie.trials.values(), "val_rmse", "max").tid == "t0000"


def test_select_best_never_picks_failed_unfinished_or_by_test_metric():
    state = _state(("t0000", ERROR, [0.1]), ("t0001", DIVERGED, [0.2]),
                   ("t0002", RUNNING, [0.3]), ("t0003", PENDING, []),
                   ("t0004", TERMINATED, [2.0]), ("t0005", TERMINATED, [1.0]),
                   ("t0006", TERMINATED, [math.nan]))
    state.trials["t0004"].history[1]["test_rmse"] = -100.0  # far the best test score
    assert select_best(state.trials.values(), "val_rmse", "min").tid == "t0005"
    assert select_best(_state(("t0000", ERROR, [0.1]),
                              ("t0001", TERMINATED, [math.nan])).trials.values(),
                       "val_rmse", "min") is None


# ------------------------------------------------------------------------------ endings
def _trial(epochs: int, decisions: list[str] | None = None, *, diverged: bool = False,
           status: str = RUNNING) -> TrialState:
    trial = TrialState(tid="t0000", index=0, params={}, dirname="t0000", status=status)
    trial.history = {e: {"val_rmse": 1.0 / e} for e in range(1, epochs + 1)}
    decisions = decisions if decisions is not None else ["continue"] * epochs
    trial.decisions = list(enumerate(decisions, 1))
    if diverged:
        trial.diverged = {"epoch": epochs + 1, "step": 2, "loss": None}
    return trial


def test_classify_end_for_each_ending():
    assert classify_end(_trial(8), 8, error=False) == (TERMINATED, "completed")
    assert classify_end(_trial(8, ["continue"] * 7 + ["stop"]), 8, error=False) == \
        (TERMINATED, "completed")  # ASHA stops every trial at max_t: that is completion
    assert classify_end(_trial(2, ["continue", "stop"]), 8, error=False) == (TERMINATED, "asha")
    assert classify_end(_trial(5), 8, error=False) == (TERMINATED, "early_stopping")
    assert classify_end(_trial(0), 8, error=False) == (TERMINATED, "early_stopping")
    assert classify_end(_trial(3, diverged=True), 8, error=False) == (DIVERGED, "diverged")
    assert classify_end(_trial(3), 8, error=True) == (ERROR, "error")
    assert classify_end(_trial(3, diverged=True), 8, error=True) == (ERROR, "error")


def test_end_decided_for_each_ending():
    assert end_decided(_trial(2, ["continue", "stop"]))  # ASHA decided, unjournaled
    assert end_decided(_trial(2, diverged=True))
    assert not end_decided(_trial(2))  # still training: continue it
    assert not end_decided(_trial(0))  # never reported
    assert not end_decided(_trial(2, ["stop", "continue"]))  # only the last counts
    for status in (TERMINATED, ERROR, DIVERGED):  # already ended
        assert not end_decided(_trial(2, ["continue", "stop"], status=status))


def test_end_decided_when_fit_had_ended():
    """The driver died after journaling a trial's last epoch (early stopping or the epoch
    budget) but before Ray's completion reached the journal: closed, not run again."""
    events = [ev("driver_start", 1, 0.0), trial_ev("t0000", 1, 1.0, 0),
              result_ev("t0000", 1, 2.0, 1, 0.9), result_ev("t0000", 1, 3.0, 2, 0.8)]
    events[-1]["fit_ends"] = True
    trial = replay(events).trials["t0000"]
    assert trial.fit_ends and end_decided(trial)
    assert classify_end(trial, 8, error=False) == (TERMINATED, "early_stopping")
    # a retried attempt reporting an earlier epoch again: that report decides
    trial = replay([*events, result_ev("t0000", 1, 4.0, 2, 0.8)]).trials["t0000"]
    assert not trial.fit_ends and not end_decided(trial)


def test_record_end_journals_the_value_selection_uses(tmp_path):
    journal = Journal(tmp_path / JOURNAL_FILE, 1)
    ledger = Ledger(journal, ExperimentState(), metric="val_rmse", mode="min", max_epochs=8)
    ledger.record("trial", tid="t0000", index=0, params={}, dir="t0000")
    for epoch, value in ((1, 1.0), (2, 0.4), (3, 0.6)):
        ledger.record("result", tid="t0000", epoch=epoch, decision="continue",
                      metrics={"val_rmse": value})
    end = ledger.record_end(ledger.state.trials["t0000"], error=False)
    journal.close()
    assert (end["status"], end["stopped_by"], end["value"], end["best_epoch"],
            end["epochs_run"]) == (TERMINATED, "early_stopping", 0.4, 2, 3)
    assert read_events(tmp_path / JOURNAL_FILE)[-1] == end


# ------------------------------------------------------------------------------ ASHA
class FakeTrial:
    """What ASHA reads of a Ray Trial: its (per-driver) id."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


MAX_T = 8
# (tid, epoch, val_rmse) or (tid, "done"): the trial ended on its own (trainer) after its
# last report. Part 1 runs in driver 1; PART2 after a restart (t0000 continues).
PART1 = [("t0000", 1, 1.0), ("t0001", 1, 2.0), ("t0000", 2, 0.8), ("t0002", 1, 0.9),
         ("t0002", 2, 0.85), ("t0000", 3, 0.7), ("t0000", 4, 0.6), ("t0005", 1, 0.97),
         ("t0005", 2, 0.7), ("t0005", "done")]
PART2 = [("t0003", 1, 1.5), ("t0004", 1, 0.95), ("t0004", 2, 0.9), ("t0000", 5, 0.55),
         ("t0000", 6, 0.5), ("t0000", 7, 0.45), ("t0000", 8, 0.4)]
TRIALS = ["t0000", "t0001", "t0002", "t0003", "t0004", "t0005"]


class AshaDriver:
    """One driver run: a real Journal + Ledger + JournaledASHA; feeds results the way Tune
    calls the scheduler (on_trial_result; on_trial_complete after a STOP or an end)."""

    def __init__(self, exp_dir: Path, seg: int, *, restore: bool = False) -> None:
        self.exp_dir = exp_dir
        state = replay(read_events(exp_dir / JOURNAL_FILE))
        self.journal = Journal(exp_dir / JOURNAL_FILE, seg)
        self.ledger = Ledger(self.journal, state, metric="val_rmse", mode="min",
                             max_epochs=MAX_T)
        self.asha = JournaledASHA(self.ledger, time_attr="epoch", metric="val_rmse",
                                  mode="min", max_t=MAX_T, grace_period=1, reduction_factor=2,
                                  state_file=exp_dir / ASHA_STATE_FILE)
        self.restored = self.asha.restore(state.rungs) if restore else 0
        self.seg = seg
        self.fakes: dict[str, FakeTrial] = {}
        self.last: dict[str, dict[str, Any]] = {}

    def fake(self, tid: str) -> FakeTrial:
        if tid not in self.fakes:
            if tid not in self.ledger.state.trials:
                self.ledger.record("trial", tid=tid, index=int(tid[1:]), params={}, dir=tid)
            ray_id = f"ray{self.seg}-{tid}"
            self.ledger.tid_by_ray[ray_id] = tid
            self.fakes[tid] = FakeTrial(ray_id)
            self.asha.on_trial_add(None, self.fakes[tid])
        return self.fakes[tid]

    def feed(self, steps: list[tuple]) -> list[str]:
        decisions = []
        for step in steps:
            tid = step[0]
            trial = self.fake(tid)
            if step[1] == "done":
                self.asha.on_trial_complete(None, trial, self.last[tid])
                continue
            result = {"epoch": step[1], "val_rmse": step[2]}
            self.last[tid] = result
            action = self.asha.on_trial_result(None, trial, result)
            decisions.append(action)
            if action == TrialScheduler.STOP:
                self.asha.on_trial_complete(None, trial, result)
        return decisions

    def close(self) -> None:
        self.journal.close()


def _expected_rungs_after_part1() -> dict[float, dict[str, float]]:
    return {8.0: {}, 4.0: {"t0000": 0.6},
            2.0: {"t0000": 0.8, "t0002": 0.85, "t0005": 0.7},
            1.0: {"t0000": 1.0, "t0001": 2.0, "t0002": 0.9, "t0005": 0.97}}


def test_asha_rung_records_journal_and_snapshot_agree(tmp_path):
    driver = AshaDriver(tmp_path, 1)
    decisions = driver.feed(PART1)
    driver.close()
    S, C = TrialScheduler.STOP, TrialScheduler.CONTINUE
    assert decisions == [C, S, C, C, S, C, C, C, C]
    records = driver.asha.rung_records()
    assert records == _expected_rungs_after_part1()
    # The journal: one result line per report, with the decision and the rung it added.
    events = read_events(tmp_path / JOURNAL_FILE)
    results = [e for e in events if e["ev"] == "result"]
    assert [(e["tid"], e["epoch"], e["decision"]) for e in results] == \
        [(s[0], s[1], "stop" if d == S else "continue")
         for s, d in zip([s for s in PART1 if s[1] != "done"], decisions)]
    rung_of = {(e["tid"], e["epoch"]): tuple(e["rung"]) for e in results if "rung" in e}
    assert rung_of == {("t0000", 1): (1.0, 1.0), ("t0001", 1): (1.0, 2.0),
                       ("t0000", 2): (2.0, 0.8), ("t0002", 1): (1.0, 0.9),
                       ("t0002", 2): (2.0, 0.85), ("t0000", 4): (4.0, 0.6),
                       ("t0005", 1): (1.0, 0.97), ("t0005", 2): (2.0, 0.7)}
    assert replay(events).rung_table() == {m: r for m, r in records.items() if r}
    snapshot = json.loads((tmp_path / ASHA_STATE_FILE).read_text())
    assert {s["milestone"]: s["records"] for s in snapshot["rungs"]} == records
    assert (snapshot["metric"], snapshot["mode"], snapshot["max_t"]) == ("val_rmse", "min", 8)


def test_asha_completion_at_max_t_journals_a_rung_event(tmp_path):
    driver = AshaDriver(tmp_path, 1)
    decisions = driver.feed(PART1 + PART2)
    driver.close()
    assert decisions[-1] == TrialScheduler.STOP  # epoch 8 = max_t
    rungs = [e for e in read_events(tmp_path / JOURNAL_FILE) if e["ev"] == "rung"]
    assert [(e["tid"], e["rung"]) for e in rungs] == [("t0000", [8.0, 0.4])]
    assert driver.asha.rung_records()[8.0] == {"t0000": 0.4}
    snapshot = json.loads((tmp_path / ASHA_STATE_FILE).read_text())
    assert {s["milestone"]: s["records"] for s in snapshot["rungs"]}[8.0] == {"t0000": 0.4}


def test_restored_asha_decides_like_an_uninterrupted_one(tmp_path):
    # The reference: one driver, never interrupted.
    (tmp_path / "whole").mkdir()
    whole = AshaDriver(tmp_path / "whole", 1)
    expected = whole.feed(PART1 + PART2)[sum(1 for s in PART1 if s[1] != "done"):]
    whole.close()

    exp = tmp_path / "resumed"
    exp.mkdir()
    first = AshaDriver(exp, 1)
    first.feed(PART1)
    first.close()  # the driver stops here; a new one replays the journal
    second = AshaDriver(exp, 2, restore=True)
    assert second.restored == 8
    assert second.asha.rung_records() == first.asha.rung_records()
    decisions = second.feed(PART2)
    second.close()
    assert decisions == expected
    # t0003's first report is cut only because of the restored records at epoch 1.
    assert decisions[0] == TrialScheduler.STOP
    assert second.asha.rung_records() == whole.asha.rung_records()
    assert replay(read_events(exp / JOURNAL_FILE)).rung_table() == \
        {m: r for m, r in whole.asha.rung_records().items() if r}


def test_asha_restore_ignores_duplicates_and_unknown_milestones(tmp_path):
    driver = AshaDriver(tmp_path, 1)
    count = driver.asha.restore([(1.0, "t0000", 1.0), (1.0, "t0000", 5.0), (3.0, "t0001", 1.0),
                                 (2.0, "t0001", 0.5)])
    driver.close()
    assert count == 2
    assert driver.asha.rung_records() == {8.0: {}, 4.0: {}, 2.0: {"t0001": 0.5},
                                          1.0: {"t0000": 1.0}}


# ------------------------------------------------------------------------------ Optuna study
def _suggest(trial: optuna.Trial, index: int) -> dict[str, Any]:
    params: dict[str, Any] = {"use_contrastive": trial.suggest_categorical(
        "use_contrastive", [True, False])}
    if params["use_contrastive"]:
        params["temperature"] = trial.suggest_float("temperature", 0.01, 0.5, log=True)
    params["lr"] = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    return params


def test_rebuild_study_holds_exactly_the_journaled_trials(tmp_path):
    from tuner.study import study_storage

    db = tmp_path / "optuna.journal"
    study = optuna.create_study(storage=study_storage(db), study_name="exp",
                                direction="minimize",
                                sampler=optuna.samplers.RandomSampler(seed=1))
    journal = Journal(tmp_path / JOURNAL_FILE, 1)
    ledger = Ledger(journal, ExperimentState(), metric="val_rmse", mode="min", max_epochs=4)
    ledger.record("driver_start")
    # (how it ends, val_rmse per epoch, last decision)
    plan = [("completed", [1.0, 0.6, 0.7, 0.8]), ("asha", [2.0, 1.9]), ("diverged", [1.5]),
            ("error", [1.2, 1.1]), ("running", [0.9]), ("pending", [])]
    journaled: list[dict[str, Any]] = []
    for index, (how, values) in enumerate(plan):
        ot = study.ask()
        params = _suggest(ot, index)
        tid = f"t{index:04d}"
        dists = {k: distribution_to_json(d) for k, d in ot.distributions.items()}
        ledger.record("trial", tid=tid, index=index, ray_id=f"ray-{tid}", params=params,
                      dir=tid, optuna={"number": ot.number, "distributions": dists})
        journaled.append({"params": params, "distributions": dists})
        for epoch, value in enumerate(values, 1):
            last = epoch == len(values)
            ledger.record("result", tid=tid, epoch=epoch, metrics={"val_rmse": value},
                          decision="stop" if last and how == "asha" else "continue",
                          ckpt=f"checkpoint_{epoch - 1:06d}")
        if how == "diverged":
            ledger.record("result", tid=tid, epoch=2, decision="stop",
                          diverged={"epoch": 2, "step": 1, "loss": None})
        if how in ("completed", "asha", "diverged", "error"):
            ledger.record_end(ledger.state.trials[tid], error=how == "error",
                              error_text="RuntimeError: x")
    study.ask()  # asked, then the driver died before journaling it
    journal.close()
    assert len(study.trials) == 7

    state = replay(read_events(tmp_path / JOURNAL_FILE))
    lock = tmp_path / "optuna.journal.lock"
    os.symlink(db, lock)  # Optuna's lock, left by a driver killed while appending
    ids = rebuild_study(db, study_name="exp", mode="min", state=state,
                        replays=state.unfinished, metric="val_rmse")
    assert not os.path.lexists(lock)  # stale: the next append would wait 30 s for it
    rebuilt = optuna.load_study(study_name="exp", storage=study_storage(db))
    assert rebuilt.metric_names == ["val_rmse"]  # optuna-dashboard names the objective
    trials = rebuilt.trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4, 5]
    assert [t.user_attrs["trial_id"] for t in trials] == [f"t{i:04d}" for i in range(6)]
    assert [t.user_attrs["ray_trial_id"] for t in trials] == [f"ray-t{i:04d}" for i in range(6)]
    assert [t.state for t in trials] == [OptunaState.COMPLETE, OptunaState.PRUNED,
                                         OptunaState.PRUNED, OptunaState.FAIL,
                                         OptunaState.RUNNING, OptunaState.RUNNING]
    for trial, original in zip(trials, journaled):
        assert trial.params == original["params"]
        assert trial.distributions == {k: json_to_distribution(v)
                                       for k, v in original["distributions"].items()}
    complete, asha, diverged, failed, running, pending = trials
    assert complete.value == pytest.approx(0.6)  # the best epoch, not the last
    assert complete.intermediate_values == {1: 1.0, 2: 0.6, 3: 0.7, 4: 0.8}
    assert complete.user_attrs["stopped_by"] == "completed"
    assert asha.intermediate_values == {1: 2.0, 2: 1.9} and asha.value == pytest.approx(1.9)
    assert asha.user_attrs["stopped_by"] == "asha"
    assert diverged.intermediate_values == {1: 1.5}
    assert diverged.user_attrs["status"] == DIVERGED
    assert failed.value is None and failed.user_attrs["status"] == ERROR
    assert running.intermediate_values == {1: 0.9} and pending.intermediate_values == {}
    assert ids == {"t0004": running._trial_id, "t0005": pending._trial_id}
    assert not list(tmp_path.glob(".optuna.journal.rebuild-*"))
    # The resumed trials can be reported to and told, as the searcher does.
    resumed = optuna.trial.Trial(rebuilt, ids["t0004"])
    resumed.report(0.85, 2)
    rebuilt.tell(resumed, 0.85)
    assert optuna.load_study(study_name="exp", storage=study_storage(db)).trials[4].state \
        == OptunaState.COMPLETE


# ------------------------------------------------------------------------------ sampler RNG
def _objective(trial: optuna.Trial) -> float:
    params = _suggest(trial, trial.number)
    return math.log10(params["lr"]) ** 2 + params.get("temperature", 0.3)


@pytest.mark.parametrize(("make", "before", "after"), [
    (lambda: optuna.samplers.RandomSampler(seed=7), 4, 4),
    (lambda: optuna.samplers.TPESampler(seed=7), 3, 3),  # TPE's random start-up trials
    (lambda: optuna.samplers.TPESampler(seed=7, n_startup_trials=4), 6, 3),  # TPE proper
], ids=["random", "tpe-startup", "tpe"])
def test_restored_sampler_continues_the_same_random_stream(make, before, after):
    uninterrupted = optuna.create_study(sampler=make())
    uninterrupted.optimize(_objective, n_trials=before)
    saved = json.loads(json.dumps(sampler_state(uninterrupted.sampler)))  # as journaled
    uninterrupted.optimize(_objective, n_trials=after)
    expected = [t.params for t in uninterrupted.trials[before:]]

    def resumed(restore: bool) -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=make())
        for trial in uninterrupted.trials[:before]:
            study.add_trial(trial)
        if restore:
            assert restore_sampler_state(study.sampler, saved)
        study.optimize(_objective, n_trials=after)
        return [t.params for t in study.trials[before:]]

    assert resumed(restore=True) == expected
    assert resumed(restore=False) != expected  # a fresh seed would repeat other values


def test_sampler_state_of_an_unknown_sampler():
    assert sampler_state(object()) is None
    assert restore_sampler_state(optuna.samplers.RandomSampler(seed=1), None) is False
    assert restore_sampler_state(object(), {"rng": {}}) is False


# ------------------------------------------------------------------------------ trial folders
def test_trial_dirname_is_one_short_component_with_key_parameters():
    params = {"lr": 0.00123, "contrastive_weight": 0.125, "temperature": 0.0512,
              "hybrid_alpha": 0.5, "weight_decay": 1e-5, "trial_id": "t0003"}
    name = trial_dirname("t0003", params)
    assert name == "t0003-cw0.12-temp0.051-alpha0.5-lr0.0012"
    assert trial_dirname("t0007", {"ablation": "E3", "seed": 2}) == "t0007-E3-seed2"
    assert trial_dirname("t0001", {"use_contrastive": False, "lr": 1e-3, "trial_id": "t0001"}) \
        == "t0001-lr0.001-con0"  # the trial id is not repeated as a parameter
    odd = trial_dirname("t0002", {"language_backbone": "../../etc/passwd x",
                                  "backbone": "org/model:v1", "lr": 0.5, "patch": "6 / 3"})
    long = trial_dirname("t0004", {f"a_very_long_parameter_name_{i}": "value" * 20
                                   for i in range(6)}, limit=64)
    for name in (odd, long, trial_dirname("t0005", {})):
        assert "/" not in name and os.sep not in name and "\\" not in name
        assert name not in ("", ".", "..") and not name.startswith(".")
        assert " " not in name and len(name) <= 64
        assert name[0] == "t"
    assert odd.startswith("t0002-lr0.5-")
    assert len(long) == 64 and long.startswith("t0004-") and not long.endswith("-")
    assert trial_dirname("t0005", {}) == "t0005"
    assert len(trial_dirname("t0006", params, limit=12)) <= 12


def test_published_checkpoints_are_frozen_links_and_the_newest_three_stay(tmp_path):
    """An epoch's checkpoint folder is published by hard links to fit()'s files; fit()
    replacing its files afterwards (a new inode per atomic save) never changes it."""
    trial_dir, work = tmp_path / "t0000", tmp_path / "t0000" / ".fit-x" / "ckpt"
    work.mkdir(parents=True)

    def save(name: str, text: str) -> None:  # fit()'s atomic save: write aside, replace
        (work / (name + ".tmp")).write_text(text)
        (work / (name + ".tmp")).replace(work / name)

    save("best.pt", "best-1")
    for epoch in range(1, 6):
        save("last.pt", f"last-{epoch}")
        if epoch == 3:
            save("best.pt", "best-3")
        assert publish_checkpoint(work, trial_dir, epoch) == f"checkpoint_{epoch:06d}"
    folders = sorted(p.name for p in trial_dir.glob("checkpoint_*"))
    assert folders == ["checkpoint_000003", "checkpoint_000004", "checkpoint_000005"]
    assert (trial_dir / "checkpoint_000004" / "last.pt").read_text() == "last-4"
    assert (trial_dir / "checkpoint_000005" / "best.pt").read_text() == "best-3"
    # linked, not copied: the unchanged best.pt is one file shared by the epochs
    assert os.path.samefile(trial_dir / "checkpoint_000004" / "best.pt", work / "best.pt")
    assert not list(trial_dir.glob(".checkpoint_*"))  # no half-published folder left
    # an epoch trained again after its result was lost replaces its folder
    save("last.pt", "last-5-again")
    publish_checkpoint(work, trial_dir, 5)
    assert (trial_dir / "checkpoint_000005" / "last.pt").read_text() == "last-5-again"


def test_an_ended_trial_keeps_its_newest_checkpoints_and_the_journals(tmp_path):
    """When a trial ends the driver keeps its newest folders plus the one the journal names
    (a trial ended at an older checkpoint than a lost run's later ones), and removes what a
    killed run left: fit()'s working folder and a half-published checkpoint."""
    from tuner.trainable import prune_trial_folder as prune_checkpoints

    trial_dir = tmp_path / "t0000"
    for epoch in range(1, 7):
        (trial_dir / f"checkpoint_{epoch:06d}").mkdir(parents=True)
    leftovers = [trial_dir / ".fit-abc", trial_dir / ".checkpoint_000007-x"]
    for path in leftovers:
        path.mkdir()
    prune_checkpoints(trial_dir, "checkpoint_000002")
    assert sorted(p.name for p in trial_dir.iterdir()) == [
        "checkpoint_000002", "checkpoint_000004", "checkpoint_000005", "checkpoint_000006"]
    prune_checkpoints(trial_dir, None)
    assert sorted(p.name for p in trial_dir.iterdir()) == [
        "checkpoint_000004", "checkpoint_000005", "checkpoint_000006"]


def test_a_repeated_epoch_is_neither_journaled_nor_ranked(tmp_path):
    """A retry with nothing left to train sends its last journaled epoch again (marked
    `repeat`) so Ray can close it: ASHA continues it, the journal and the rungs stay put."""
    driver = AshaDriver(tmp_path, 1)
    driver.feed([("t0000", 1, 1.0), ("t0001", 1, 2.0)])
    before = (len(read_events(tmp_path / JOURNAL_FILE)), driver.asha.rung_records())
    action = driver.asha.on_trial_result(None, driver.fake("t0001"),
                                         {"epoch": 1, "val_rmse": 0.1, "repeat": True})
    driver.close()
    assert action == TrialScheduler.CONTINUE
    assert (len(read_events(tmp_path / JOURNAL_FILE)), driver.asha.rung_records()) == before


def test_a_trial_resumes_from_the_checkpoint_its_journal_names(tmp_path):
    """journal_checkpoint: a fresh trial folder needs no journal at all; a trial with
    published checkpoints resumes from the one its last journaled epoch names (not the
    newest on disk, which may be an epoch the driver never recorded); checkpoints without
    a visible journal (storage not shared with this node) fail loudly instead of training
    again from epoch 0."""
    journal_path, root = tmp_path / JOURNAL_FILE, tmp_path / "trials"
    setup = TrialSetup(kind="search", space=None, base_config={}, metric="val_rmse",  # type: ignore[arg-type]
                       cpus_per_trial=1, feature_key="", experiment=str(tmp_path))
    trial_dir = root / "t0000-lr0.001"
    # the common case of a retry on a node that does not share --storage: its trial folder
    # there is empty, and without the journal it would train again from epoch 0 unseen
    with pytest.raises(RuntimeError, match="cannot see the search journal.*--storage must be "
                                           "a filesystem every node mounts"):
        journal_checkpoint(setup, "t0000", trial_dir)

    journal = Journal(journal_path, 1)
    journal.append("trial", tid="t0000", index=0, dir=trial_dir.name, params={})
    journal.append("result", tid="t0000", epoch=1, ckpt="checkpoint_000001", metrics={})
    journal.append("trial", tid="t0001", index=1, dir="t0001", params={})
    journal.append("result", tid="t0001", epoch=1, ckpt="checkpoint_000009", metrics={})
    journal.close()
    for epoch in (1, 2):  # epoch 2 was published, but its result never reached the journal
        (trial_dir / f"checkpoint_{epoch:06d}").mkdir(parents=True)
    assert journal_checkpoint(setup, "t0002", root / "t0002") is None  # fresh: nothing to do
    assert journal_checkpoint(setup, "t0000", trial_dir) == str(trial_dir / "checkpoint_000001")

    journal_path.unlink()
    with pytest.raises(RuntimeError, match="cannot see the search journal.*every node mounts"):
        journal_checkpoint(setup, "t0000", trial_dir)


def test_worker_fetches_the_shared_features_once_per_search(monkeypatch):
    """A worker process runs many trials (reused actors): it copies the features out of the
    object store for the first and keeps them for the rest; another search's features
    (a new ref) replace them, so a process never holds two sets."""
    import ray

    import tuner.trainable as trainable

    class Ref:
        def __init__(self, name: str) -> None:
            self.name = name

        def hex(self) -> str:
            return self.name

    fetched: list[str] = []

    def fake_get(ref: Ref) -> dict[str, Any]:
        fetched.append(ref.name)
        return {"train": ref.name}

    monkeypatch.setattr(ray, "get", fake_get)
    monkeypatch.setattr(trainable, "_FEATURES_CACHE", {})
    first, second = Ref("aa"), Ref("bb")
    assert trainable._shared_features(first) == {"train": "aa"}
    assert trainable._shared_features(first) is trainable._shared_features(first)
    assert fetched == ["aa"]
    assert trainable._shared_features(second) == {"train": "bb"}
    assert fetched == ["aa", "bb"] and list(trainable._FEATURES_CACHE) == ["bb"]


_SIGTERM_IN_FINALIZER = r"""
import os, signal, sys, time, weakref

def sigterm_handler(signum, frame):  # as Ray's worker handler: raise SystemExit anywhere
    raise SystemExit(1)

signal.signal(signal.SIGTERM, sigterm_handler)
if sys.argv[1] == "hook":
    from tuner.trainable import quiet_sigterm_exit
    quiet_sigterm_exit()

class Broken:
    def __del__(self):
        raise ValueError("an ordinary unraisable error")

Broken()

class Thing:
    pass

def finalizer(_ref):
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs inside this callback
    sum(range(1000))

thing = Thing()
ref = weakref.ref(thing, finalizer)
del thing
for _ in range(100):  # 5 s for a SIGTERM delivered again to end the process
    time.sleep(0.05)
print("survived the SIGTERM", flush=True)
"""


@pytest.mark.parametrize("hooked", [True, False])
def test_sigterm_in_a_finalizer_exits_quietly(hooked, tmp_path):
    """Ray's worker SIGTERM handler raises SystemExit; arriving inside a finalizer it cannot
    propagate, so Python prints an "Exception ignored ... SystemExit" traceback (forwarded
    to the search's output) and the worker lives on. With the trainable's hook: nothing
    printed, SIGTERM delivered again, and the process exits through the handler. Other
    unraisable errors are still printed."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _SIGTERM_IN_FINALIZER,
                           "hook" if hooked else "plain"], capture_output=True, text=True,
                          timeout=120, cwd=root)
    assert "an ordinary unraisable error" in proc.stderr
    if hooked:
        assert proc.returncode == 1, proc.stderr
        assert "SystemExit" not in proc.stderr and "survived" not in proc.stdout
    else:  # what the hook is for: the traceback, and a process that does not exit
        assert "SystemExit" in proc.stderr and "survived" in proc.stdout


def test_the_driver_waits_for_the_feature_task_and_says_why(monkeypatch):
    """Before the trials the driver polls the feature task (so a signal is handled between
    polls), says once what the task needs if it takes long, then holds the features."""
    import ray

    import tuner.features as shared

    polls = iter([False, False, False, True])
    monkeypatch.setattr(ray, "wait", lambda refs, timeout, fetch_local: (
        (refs, []) if next(polls) else ([], refs)))
    monkeypatch.setattr(ray, "get", lambda ref: {"train": "features"})
    monkeypatch.setattr(shared, "FEATURE_WAIT_NOTE_S", 0.0)
    said: list[str] = []
    features = shared.SharedFeatures(None, None, None, said.append)  # type: ignore[arg-type]
    features._await("ref", "1 CPU and 1 GPU")
    assert features.features == {"train": "features"}
    assert len(said) == 1 and "still running" in said[0] and "1 CPU and 1 GPU" in said[0]
    assert next(polls, None) is None  # polled until ready
