"""One writer per experiment: the driver lock.

Two drivers writing one experiment hand out the same trial ids, publish into the same
checkpoint folders, delete each other's, and rebuild the Optuna study under each other.
`cluster/slurm-ray.sbatch` resumes by itself when the experiment exists, so submitting a
job twice is enough to get there. So a driver holds `STORAGE/NAME/driver.lock` for its
whole life, and a second driver, with or without --resume, stops in one line naming the
first, before it writes anything.

The lock must hold on storage that several nodes mount (NFS), where `fcntl` locks are not
reliable. It is a file created exclusively (O_CREAT | O_EXCL, atomic on NFSv3+ and local
filesystems) holding host, pid, process start time and a heartbeat the driver renews every
`HEARTBEAT_S` seconds. A lock is stale, and is taken over with a one-line note, when:
- its host is this host and its process is gone (or the pid now belongs to another
  process: the start time differs), or
- its host is another host and its heartbeat is older than `STALE_AFTER_S` (a driver that
  was SIGKILLed, or whose node died, stops renewing it).
A driver that was SIGKILLed therefore never blocks `--resume`: on the same host at once, from
another host after `STALE_AFTER_S`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from timesclip.errors import UserError

#: How often the holder renews its heartbeat.
HEARTBEAT_S = 15.0
#: A lock from another host whose heartbeat is older than this is stale (8 missed beats).
STALE_AFTER_S = 120.0


class ExperimentLocked(UserError):
    """Another driver holds the experiment."""


def _process_start(pid: int) -> str | None:
    """The start time of a process (its /proc stat field 22), or None if it is gone. With
    the pid it identifies a process: a reused pid has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user holds the pid
        return True
    return True


@dataclass(frozen=True)
class Holder:
    """What a lock file says about the driver that holds it."""

    host: str
    pid: int
    started: float  # when the lock was taken (epoch seconds)
    heartbeat: float  # last renewal (epoch seconds)
    process_start: str | None = None
    token: str = ""  # unique per acquisition: a holder recognises its own lock

    @classmethod
    def read(cls, path: Path) -> Holder | None:
        """The holder in `path`, None when there is no lock; an unreadable lock (torn by a
        crash while being written) reads as a holder that is stale at once."""
        try:
            raw = json.loads(path.read_text())
            return cls(host=str(raw["host"]), pid=int(raw["pid"]),
                       started=float(raw["started"]), heartbeat=float(raw["heartbeat"]),
                       process_start=raw.get("process_start"), token=str(raw.get("token", "")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return cls(host="?", pid=0, started=0.0, heartbeat=0.0, token="unreadable")

    def stale(self, now: float | None = None) -> str | None:
        """Why this lock is stale, or None while its driver may still run."""
        now = time.time() if now is None else now
        if self.token == "unreadable":
            return "the lock file is unreadable"
        if self.host == socket.gethostname():
            if not _alive(self.pid):
                return f"process {self.pid} on this host is gone"
            if self.process_start is not None and \
                    _process_start(self.pid) not in (None, self.process_start):
                return f"pid {self.pid} on this host now belongs to another process"
            return None
        if now - self.heartbeat > STALE_AFTER_S:
            return (f"its heartbeat is {now - self.heartbeat:.0f}s old (> {STALE_AFTER_S:.0f}s; "
                    "the driver on that host is gone)")
        return None

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds")
        return f"pid {self.pid} on host {self.host}, running since {since}"


class DriverLock:
    """The lock of one experiment folder, held from `acquire` to `release`."""

    def __init__(self, path: Path, echo: Callable[[str], None]) -> None:
        self.path, self.echo = path, echo
        self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    # -- checks -----------------------------------------------------------------------
    @staticmethod
    def check_free(path: Path) -> None:
        """Pre-flight, writes nothing: ExperimentLocked when a live driver holds `path`."""
        holder = Holder.read(path)
        if holder is not None and holder.stale() is None:
            raise _locked(path, holder)

    # -- holding ------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lock (taking over a stale one, said in one line), or ExperimentLocked."""
        for _ in range(3):  # a stale lock taken over by a racer: look again
            if self._create():
                self._start_heartbeat()
                return
            holder = Holder.read(self.path)
            if holder is None:
                continue  # released between our attempt and the read
            reason = holder.stale()
            if reason is None:
                raise _locked(self.path, holder)
            if self._take_over(holder):
                self.echo(f"lock: took over the stale lock of {holder.describe()} ({reason})")
                self._start_heartbeat()
                return
        raise ExperimentLocked(f"{self.path}: another driver keeps taking this experiment's "
                               "lock; check that only one job runs this experiment")

    def _payload(self) -> str:
        now = time.time()
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "process_start": _process_start(os.getpid()),
                           "started": self._started or now, "heartbeat": now,
                           "token": self.token}) + "\n"

    def _create(self) -> bool:
        self._started = time.time()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(self._payload())
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _take_over(self, stale: Holder) -> bool:
        """Move the stale lock aside and create ours. If, between judging it stale and the
        move, another driver took over and wrote a fresh lock, the moved file is that fresh
        lock: it is put back (a hard link fails if yet another lock appeared meanwhile)."""
        aside = self.path.with_name(f".{self.path.name}.stale-{os.getpid()}-{time.time_ns()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return self._create()
        moved = Holder.read(aside)
        if moved is not None and moved.token != stale.token:
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return self._create()

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="driver-lock-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            holder = Holder.read(self.path)
            if holder is None or holder.token != self.token:
                self.echo(f"lock: {self.path} is no longer this driver's (another driver took "
                          "it over); stop this search, it can no longer write safely")
                return
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(self._payload())
                os.replace(tmp, self.path)
            except OSError:  # a full disk: the next beat tries again
                tmp.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = Holder.read(self.path)
        if holder is not None and holder.token == self.token:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> DriverLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _locked(path: Path, holder: Holder) -> ExperimentLocked:
    return ExperimentLocked(
        f"experiment {path.parent} is being run by another driver ({holder.describe()}); "
        "wait for it to finish, or stop it (Ctrl-C / SIGTERM, then --resume); a driver that "
        f"was killed releases the lock at once on its host, elsewhere after "
        f"{STALE_AFTER_S:.0f}s without heartbeat")


__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "DriverLock", "ExperimentLocked", "Holder"]
