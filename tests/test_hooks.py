"""State through the environment: none read at import time, one documented fault hook.

- Importing any module of `timesclip` or `tuner` reads no environment variable (settings
  read at import cannot be changed by the code that imports them, and a variable that
  nothing sets is invisible state).
- Fault injection for the crash tests goes through `tuner.faults` only: armed by
  TIMESCLIP_FAULT when the search starts, a no-op otherwise.
- The cluster token check reads the environment and writes nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_IMPORT_ALL = r"""
import importlib, os, pkgutil, sys, collections.abc

ours = (os.path.join(sys.argv[1], "timesclip"), os.path.join(sys.argv[1], "tuner"))
reads = []

class Watched(type(os.environ)):
    def __getitem__(self, key):
        self._note(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._note(key)
        return super().get(key, default)

    def __contains__(self, key):
        self._note(key)
        return super().__contains__(key)

    def _note(self, key):
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename == "<string>":
            frame = frame.f_back  # this watcher itself
        # the code that reads is ours, and runs while one of our modules is imported
        if frame is not None and frame.f_code.co_filename.startswith(ours) and any(
                f.f_code.co_name == "<module>" and f.f_code.co_filename.startswith(ours)
                for f in _stack(frame)):
            reads.append((key, frame.f_code.co_filename, frame.f_lineno))

def _stack(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back

watched = Watched(os.environ._data, os.environ.encodekey, os.environ.decodekey,
                  os.environ.encodevalue, os.environ.decodevalue)
os.environ = watched
os.getenv = lambda key, default=None: watched.get(key, default)
for package in ("timesclip", "tuner"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
for key, path, line in reads:
    print(f"{key} {path}:{line}")
"""


def test_no_module_reads_the_environment_at_import():
    proc = subprocess.run([sys.executable, "-c", _IMPORT_ALL, str(ROOT)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", f"read at import time:\n{proc.stdout}"


def test_the_import_check_sees_a_read_at_import(tmp_path):
    """The check above is not blind: a module of ours that reads a variable in its body is
    reported (run on a copy of the package with one such line added)."""
    import shutil

    copy = tmp_path / "tree"
    for package in ("timesclip", "tuner"):
        shutil.copytree(ROOT / package, copy / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    faults = copy / "tuner" / "faults.py"
    faults.write_text(faults.read_text() + "\n_SNEAKY = os.environ.get('TIMESCLIP_SNEAKY')\n")
    proc = subprocess.run([sys.executable, "-c", _IMPORT_ALL, str(copy)], cwd=copy,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TIMESCLIP_SNEAKY" in proc.stdout and "faults.py" in proc.stdout


_KILL_AT = r"""
import sys
from tuner import faults
faults.arm_from_env({"TIMESCLIP_FAULT": sys.argv[1]})
for i in range(1, 6):
    faults.hit("after_end")
    faults.hit("after_result")
    print(i, flush=True)
"""


def test_an_armed_point_kills_at_its_count_and_nothing_else_does():
    proc = subprocess.run([sys.executable, "-c", _KILL_AT, "after_result:3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split() == ["1", "2"]
    unarmed = subprocess.run([sys.executable, "-c", _KILL_AT, ""], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert unarmed.returncode == 0 and unarmed.stdout.split() == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize("spec", ["after_lunch:1", "after_result", "after_result:0"])
def test_a_bad_fault_spec_is_one_user_error(spec):
    from timesclip.errors import UserError
    from tuner import faults

    with pytest.raises(UserError, match="TIMESCLIP_FAULT"):
        faults.arm_from_env({"TIMESCLIP_FAULT": spec})
    faults.arm_from_env({})  # disarmed again for the rest of the session


def test_the_token_check_writes_nothing(monkeypatch):
    """check_cluster_token asks the cluster once and names the fix; the environment is the
    same afterwards (the token mode is set, deliberately, by cluster_client_env before it).
    The cluster's refusal is simulated: what is tested is our handling of it."""
    import ray._raylet
    from ray.exceptions import AuthenticationError

    from timesclip.errors import UserError
    from tuner import cluster

    class RefusingGcs:
        def __init__(self, address: str, cluster_id: object) -> None:
            pass

        def internal_kv_get(self, *args: object, **kwargs: object) -> None:
            raise AuthenticationError("token required")

    monkeypatch.setattr(ray._raylet, "GcsClient", RefusingGcs)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    before = dict(os.environ)
    with pytest.raises(UserError, match="requires token authentication and this process "
                                        "has no token"):
        cluster.check_cluster_token("10.0.0.5:6379")
    assert dict(os.environ) == before
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 32)
    cluster.cluster_client_env()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    with pytest.raises(UserError, match="the token this process presents is not the"):
        cluster.check_cluster_token("10.0.0.5:6379")


@pytest.mark.parametrize("tty", [False, True])
def test_worker_prefixes_carry_colour_only_on_a_terminal(tty, monkeypatch):
    """Ray's own printer of worker lines, with the driver's environment: no ANSI codes when
    the output is a pipe or a file, Ray's colours on a terminal."""
    import io

    import ray._private.worker as ray_worker

    from tuner import cluster

    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    for name in ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "TUNE_DISABLE_SIGINT_HANDLER",
                 "RAY_AIR_NEW_OUTPUT", "RAY_DEDUP_LOGS",
                 "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    cluster._driver_env()
    out = io.StringIO()
    ray_worker.print_worker_logs({"pid": 4242, "task_name": "vision_features", "ip": "1",
                                  "localhost": "1", "lines": ["encoding"]}, out)
    plain = out.getvalue().replace("\x1b[36m", "").replace("\x1b[0m", "")
    assert "(vision_features pid=4242) encoding" in plain
    assert ("\x1b[" in out.getvalue()) is tty
