"""The experiment journal: the one durable record of what a search did.

`STORAGE/NAME/journal.jsonl` is an append-only file of JSON lines written by the search
driver only. Every event that matters for resuming and reporting is appended (and fsync'd)
*before* the search acts on it:

- ``trial``: a trial was created (its id, sampled parameters, Optuna number and
  distributions, the sampler's random state after sampling it);
- ``result``: an epoch was reported, with its metrics, the checkpoint that holds the state
  after that epoch, the node it ran on, the scheduler's decision and any ASHA rung record
  that decision added;
- ``end``: a trial finished (completed, stopped by ASHA, diverged, or failed for good);
- ``retry`` (an infrastructure failure Ray retried), ``attach`` (an unfinished trial
  continued by a later driver), ``rung`` (an ASHA record made when a trial completed),
  ``driver_start`` / ``driver_end`` (each run of `python -m tuner.search`).

Why this is crash-consistent: a SIGKILL can only lose the line being written, and an event
whose line is missing had no lasting effect. A result without its line is trained again from
the previous checkpoint (same seed and RNG state, so the same value), an unrecorded ASHA
decision is made again from the same records, and an Optuna trial asked for but never
journaled is dropped when the study is rebuilt from this file on `--resume`. Nothing here is
a pickle: the report and the resume read JSON only.

This module is pure Python (no Ray, no Optuna); `tuner.tracking` writes the events, and
the experiment's file names are `tuner.layout`'s.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timesclip.errors import UserError
from tuner.layout import (
    JOURNAL_FILE,
    StorageFull,
    check_checkpoint_name,
    check_dirname,
    check_trial_id,
)
from tuner.outcomes import ENDED, Status, StopReason

VERSION = 1
#: Event kinds a journal holds (see the module docstring).
EVENTS = ("trial", "result", "end", "retry", "attach", "start", "rung", "driver_start",
          "driver_end")
_DAMAGE_FIX = ("the journal was altered or damaged (only a torn last line is repaired); "
               "restore journal.jsonl from a copy, or start the search again under a new "
               "--name: --resume and tuner.results refuse to guess what the line held")


class JournalDamaged(UserError):
    """A journal line that the driver cannot have written (anything but a torn last line)."""


class Journal:
    """Appends events to journal.jsonl; each line reaches the disk before `append` returns."""

    def __init__(self, path: str | Path, segment: int) -> None:
        self.path = Path(path)
        self.segment = segment
        repair_tail(self.path)
        self._file: Any = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event; returns it exactly as written (so the live state that applies
        it equals what a replay of the file gives)."""
        record = _plain({"ev": event, "seg": self.segment, "t": round(time.time(), 3),
                         **fields})
        if self._file is None:  # a pickled copy (see __getstate__): never writes
            return record
        line = json.dumps(record, allow_nan=False, separators=(",", ":"))
        start = self._file.tell()
        try:
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            # A line that did not reach the disk whole is cut off again: a failed append
            # must not leave a torn line that later appends would bury mid-file.
            self._truncate(start)
            if exc.errno == errno.ENOSPC:
                raise StorageFull(exc.errno, f"no space left on device writing {self.path}"
                                  ) from None
            raise
        return record

    def _truncate(self, size: int) -> None:
        try:
            self._file.close()
        except OSError:  # its buffer could not be flushed either: drop it
            pass
        with open(self.path, "r+b") as fh:
            fh.truncate(size)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles the Tuner's parts into its own tuner.pkl (for its Tuner.restore, which
        # this search never uses): a copy never writes, only the driver's journal does.
        return {"path": self.path, "segment": self.segment}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.segment = state["path"], state["segment"]
        self._file = None


def repair_tail(path: Path) -> None:
    """Cut a last line that a kill left half-written, so the next append starts clean."""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with open(path, "r+b") as fh:
        fh.truncate(cut)


def numbered_events(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, event) of every complete line of a journal, in order.

    A last line without its newline is what a kill during an append leaves: it is ignored
    (and cut off by the next driver). Any other line that is not a JSON event raises
    JournalDamaged naming the file and line."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for number, raw in enumerate(data.split(b"\n")[:-1], 1):  # [-1]: b"" or a torn line
        try:
            event = json.loads(raw)
        except ValueError as exc:  # UnicodeDecodeError is a ValueError too
            raise JournalDamaged(f"{path} line {number}: not a JSON event "
                                 f"({clip_line(str(exc), 80)}); {_DAMAGE_FIX}") from None
        if not isinstance(event, dict) or event.get("ev") not in EVENTS:
            kind = event.get("ev") if isinstance(event, dict) else type(event).__name__
            raise JournalDamaged(f"{path} line {number}: not a journal event ({kind!r}; a "
                                 f"journal of a newer version?); {_DAMAGE_FIX}")
        out.append((number, event))
    return out


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Every complete event of a journal, in order (see `numbered_events`)."""
    return [event for _, event in numbered_events(path)]


def as_float(value: Any) -> float:
    """A float or NaN (None, strings and non-finite values all become NaN)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def _plain(value: Any) -> Any:
    """JSON-safe values: non-finite floats become None, numpy scalars plain Python."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# ------------------------------------------------------------------------------- replay
@dataclass
class TrialState:
    """What the journal says about one trial (a logical trial: it keeps its id across
    drivers, whatever Ray ids ran it)."""

    tid: str
    index: int
    params: dict[str, Any]
    dirname: str
    optuna: dict[str, Any] | None = None  # {"number", "distributions"}
    ray_ids: list[str] = field(default_factory=list)
    history: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch -> metrics
    result_times: dict[int, float] = field(default_factory=dict)
    checkpoint: str | None = None  # checkpoint dir name after the last journaled epoch
    node: str | None = None
    status: Status = Status.PENDING
    stopped_by: StopReason = StopReason.UNFINISHED
    end: dict[str, Any] | None = None
    diverged: dict[str, Any] | None = None
    retries: list[dict[str, Any]] = field(default_factory=list)
    # seconds the trial ran, summed over drivers (first event to last event per driver)
    spans: dict[int, list[float]] = field(default_factory=dict)
    decisions: list[tuple[int, str]] = field(default_factory=list)  # (epoch, decision)
    fit_ends: bool = False  # its last journaled epoch was the last its fit() trains
    proposed_by: str | None = None  # tuner.outcomes.Proposer (None: an earlier version)

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def epochs(self) -> list[int]:
        return sorted(self.history)

    @property
    def epochs_run(self) -> int:
        return max(self.history) if self.history else 0

    @property
    def wall_seconds(self) -> float:
        return float(sum(max(0.0, b - a) for a, b in self.spans.values()))

    def _touch(self, seg: int, t: float) -> None:
        span = self.spans.setdefault(seg, [t, t])
        span[0], span[1] = min(span[0], t), max(span[1], t)


@dataclass
class Segment:
    """One run of the search driver."""

    seg: int
    start: float
    end: float
    how: str  # finished | interrupted | crashed (no driver_end: killed or died)
    signal: str | None = None
    pid: int | None = None
    host: str | None = None


@dataclass
class ExperimentState:
    """The journal replayed: trials in creation order, ASHA's rung records, driver runs.

    `apply` folds one event in; the driver keeps a live state with it as it appends, and
    `replay` rebuilds the same state from the file, so both views always agree.
    """

    trials: dict[str, TrialState] = field(default_factory=dict)
    rungs: list[tuple[float, str, float]] = field(default_factory=list)  # (milestone, tid, v)
    segments: dict[int, Segment] = field(default_factory=dict)
    sampler_state: dict[str, Any] | None = None  # after the last journaled suggestion

    @property
    def ended(self) -> list[TrialState]:
        return [t for t in self.trials.values() if t.ended]

    @property
    def unfinished(self) -> list[TrialState]:
        return [t for t in self.trials.values() if not t.ended]

    @property
    def next_index(self) -> int:
        return 1 + max((t.index for t in self.trials.values()), default=-1)

    @property
    def wall_seconds(self) -> float:
        return float(sum(max(0.0, s.end - s.start) for s in self.segments.values()))

    @property
    def interruptions(self) -> int:
        return sum(1 for s in self.segments.values() if s.how != "finished")

    def rung_table(self) -> dict[float, dict[str, float]]:
        """{milestone: {trial id: value}} as ASHA holds it (a later record of the same trial
        at the same milestone is ignored, as ASHA ignores it)."""
        out: dict[float, dict[str, float]] = {}
        for milestone, tid, value in self.rungs:
            out.setdefault(milestone, {}).setdefault(tid, value)
        return out

    def apply(self, ev: dict[str, Any]) -> None:
        kind, seg, t = ev.get("ev"), int(ev.get("seg", 0)), float(ev.get("t", 0.0))
        segment = self.segments.get(seg)
        if kind == "driver_start":
            self.segments[seg] = Segment(seg, t, t, "crashed", pid=ev.get("pid"),
                                         host=ev.get("host"))
            return
        if segment is not None:
            segment.end = max(segment.end, t)
        if kind == "driver_end":
            if segment is not None:
                segment.how = str(ev.get("how", "finished"))
                segment.signal = ev.get("signal")
            return
        tid = check_trial_id(ev.get("tid"), f"a {kind!r} event")
        if kind == "trial":
            if tid in self.trials:
                raise JournalDamaged(f"trial {tid} is created a second time")
            self.trials[tid] = TrialState(
                tid=tid, index=int(ev["index"]), params=dict(ev["params"]),
                dirname=check_dirname(ev.get("dir") or tid, f"trial {tid}"),
                optuna=ev.get("optuna"), proposed_by=ev.get("proposed_by"),
                ray_ids=[ev["ray_id"]] if ev.get("ray_id") else [])
            if ev.get("sampler") is not None:
                self.sampler_state = ev["sampler"]
            return
        trial = self.trials.get(tid)
        if trial is None:  # the `trial` line is written before anything else of a trial
            raise JournalDamaged(f"a {kind!r} event for trial {tid}, which was never created")
        if kind == "attach":
            trial.ray_ids.append(ev["ray_id"])
        elif kind == "start":
            trial._touch(seg, t)
            trial.status = Status.RUNNING if trial.status == Status.PENDING else trial.status
            trial.node = ev.get("node") or trial.node
        elif kind == "result":
            trial._touch(seg, t)
            trial.status = Status.RUNNING if trial.status == Status.PENDING else trial.status
            trial.node = ev.get("node") or trial.node
            if ev.get("diverged"):
                trial.diverged = ev["diverged"]
            else:
                epoch = int(ev["epoch"])
                # a retried attempt may report an epoch again: the later report stands, and
                # epochs after it belonged to the abandoned attempt
                for later in [e for e in trial.history if e > epoch]:
                    trial.history.pop(later)
                    trial.result_times.pop(later, None)
                trial.history[epoch] = dict(ev.get("metrics") or {})
                trial.result_times[epoch] = t
                if ev.get("ckpt"):
                    trial.checkpoint = check_checkpoint_name(ev["ckpt"], f"trial {tid}")
                trial.decisions.append((epoch, str(ev.get("decision", "continue"))))
                trial.fit_ends = bool(ev.get("fit_ends"))
            if ev.get("rung"):
                milestone, value = ev["rung"]
                self.rungs.append((float(milestone), tid, float(value)))
        elif kind == "rung":
            milestone, value = ev["rung"]
            self.rungs.append((float(milestone), tid, float(value)))
        elif kind == "retry":
            trial._touch(seg, t)
            trial.retries.append({"error": ev.get("error", ""), "node": ev.get("node"),
                                  "seg": seg, "t": t})
        elif kind == "end":
            trial._touch(seg, t)
            trial.status = Status(ev["status"])
            trial.stopped_by = StopReason(ev.get("stopped_by") or StopReason.UNFINISHED)
            trial.end = ev


def replay(events: list[dict[str, Any]], *, where: str = "journal",
           lines: list[int] | None = None) -> ExperimentState:
    """Fold the journal's events into the experiment's current state; an event that the
    driver cannot have written (an unknown or duplicated trial, a missing field, a name
    that is not a trial id or a folder name) raises JournalDamaged naming its line."""
    state = ExperimentState()
    for i, ev in enumerate(events):
        number = lines[i] if lines is not None else i + 1
        try:
            state.apply(ev)
        except UserError as exc:
            raise JournalDamaged(f"{where} line {number}: {exc}; {_DAMAGE_FIX}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise JournalDamaged(f"{where} line {number}: a {ev.get('ev')!r} event with a "
                                 f"missing or invalid field ({clip_line(repr(exc), 80)}); "
                                 f"{_DAMAGE_FIX}") from None
    return state


def load_state(experiment_dir: str | Path) -> ExperimentState:
    """The experiment's state, replayed from its journal (JournalDamaged on damage)."""
    path = Path(experiment_dir) / JOURNAL_FILE
    numbered = numbered_events(path)
    return replay([ev for _, ev in numbered], where=str(path),
                  lines=[n for n, _ in numbered])


def driver_fields() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname()}


# ------------------------------------------------------------------------------- errors
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# An exception line as Python prints it: starts in column 0, dotted name, then ": msg" or EOL.
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s(.*))?$")
_EXC_NAME_HINT = re.compile(r"(Error|Exception|Interrupt|Exit|Failure|Warning)$")
_MAX_ERROR = 300


def summarize_error(text: str) -> str:
    """One short line from Ray's error.txt: the exception(s) with their messages.

    error.txt holds "Failure # N (occurred at ...)" blocks, each a Ray-wrapped traceback.
    The user's exception is the first exception line of the last block; if Ray itself then
    failed while handling it, the last exception line differs and is appended after " -> ".
    """
    text = _ANSI.sub("", text)
    blocks = re.split(r"^Failure # \d+.*$", text, flags=re.MULTILINE)
    block = next((b for b in reversed(blocks) if b.strip()), "")
    lines = block.splitlines()
    found: list[str] = []
    i = 0
    while i < len(lines):
        match = _EXC_LINE.match(lines[i])
        name = match.group(1) if match else ""
        if match and _EXC_NAME_HINT.search(name) and not name.endswith("StartTraceback"):
            message = [match.group(2) or ""]
            j = i + 1  # a multi-line message continues in column 0 until a blank line
            while j < len(lines) and lines[j].strip() and not lines[j].startswith(" "):
                if lines[j].startswith(("The above exception", "During handling", "ray::")):
                    break
                message.append(lines[j].strip())
                j += 1
            short = name.rsplit(".", 1)[-1]
            joined = " ".join(m for m in message if m).strip()
            found.append(f"{short}: {joined}" if joined else short)
            i = j
            continue
        i += 1
    if not found:
        first = next((ln.strip() for ln in lines if ln.strip() and not ln.startswith(" ")), "")
        return clip_line(first or "failed (error.txt has no exception line)")
    return clip_line(found[0] if found[0] == found[-1] else f"{found[0]} -> {found[-1]}")


def clip_line(text: str, limit: int = _MAX_ERROR) -> str:
    """One line of at most `limit` characters (whitespace runs folded)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["EVENTS", "ExperimentState", "Journal", "JournalDamaged", "Segment", "TrialState",
           "as_float", "clip_line", "driver_fields", "load_state", "numbered_events",
           "read_events", "repair_tail", "replay", "summarize_error"]
