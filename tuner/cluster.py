"""The Ray side of a search: which Ray instance, how it is joined, and how signals stop it.

- Without `--address` every search starts its own PRIVATE local Ray instance: every Ray
  process binds 127.0.0.1, token authentication stays on, `RAY_ADDRESS` and the address file
  of another cluster on this machine are ignored (`private_local_instance_env`, then
  `init_ray`).
- With `--address` the driver presents its token when it has one (`cluster_client_env`)
  and the cluster is probed before Ray is initialised (`check_address`): an unreachable
  head or a missing token is one line and exit code 2, not Ray's ~20 s of retries and a
  traceback.
- `GracefulStop`: SIGINT / SIGTERM stop the trials cleanly (each keeps its last finished
  epoch); a second signal exits at once.

The environment variables this module sets are Ray's own switches, set explicitly by
`private_local_instance_env` and `init_ray` (never as a side effect of a check).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from timesclip.errors import UserError

EXIT_SIGINT, EXIT_SIGTERM = 130, 143

Echo = Callable[[str], None]


# ----------------------------------------------------------------------------- address
def check_address(address: str | None) -> None:
    """An unreachable cluster, or one that refuses this driver's token, is a user error,
    found before Ray is touched. Reads the environment, writes nothing."""
    if address is None or address == "auto":
        if address == "auto" and not (os.environ.get("RAY_ADDRESS") or _local_cluster_file()):
            raise UserError("--address auto: no running Ray cluster found on this machine; "
                            "start one with `ray start --head` or omit --address for a local "
                            "instance")
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379) or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise UserError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); "
                        "check the head node address and port, or omit --address for a "
                        "local instance") from None
    if not address.startswith("ray://"):
        check_cluster_token(target)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C/C++ logging, which Python's sys.stderr cannot catch)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def token_available() -> bool:
    """Whether this process has a Ray token to present (env or ~/.ray/auth_token)."""
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def check_cluster_token(address: str) -> None:
    """A cluster with token authentication (Ray's default since 2.5x) refuses a client
    without its token; Ray itself then retries for ~20 s and says only "Failed to connect".
    Ask the GCS once, up front, and name the real cause and the fix. (Whether this driver
    presents a token was decided before, by `cluster_client_env`.)"""
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # a Ray without these: ray.init reports what it can
        return
    try:
        with quiet_stderr():  # Ray's C++ client logs each refused attempt on fd 2
            GcsClient(address=address, cluster_id=None).internal_kv_get(
                b"timesclip-probe", None, timeout=5)
    except AuthenticationError:
        have = "the token this process presents is not the cluster's" if \
            os.environ.get("RAY_AUTH_MODE") == "token" else "this process has no token"
        raise UserError(
            f"the Ray cluster at {address} requires token authentication and {have}: copy "
            "the cluster's token (`ray get-auth-token` on the head node) into "
            "~/.ray/auth_token or set RAY_AUTH_TOKEN, then run again") from None
    except Exception:  # anything else (timeouts, versions): let ray.init report it
        return


def _local_cluster_file() -> bool:
    """Whether `ray start` left its address file here (Ray's own path: honours RAY_TMPDIR)."""
    try:
        from ray._common.utils import get_ray_address_file

        return Path(get_ray_address_file(None)).exists()
    except ImportError:  # a Ray without that helper: let ray.init(address="auto") decide
        return True


# ----------------------------------------------------------------------------- init
def private_local_instance_env() -> None:
    """Settings of the private local Ray instance, made before Ray is imported.

    - Every Ray process binds 127.0.0.1 instead of all interfaces (Ray's single-machine
      mode; read when Ray is imported): nothing of the instance is reachable from the
      network, not even the metrics endpoints that answer without a token.
    - Token authentication stays on (Ray's default for a new local instance), said
      explicitly so Ray does not warn on every run. The token is ~/.ray/auth_token.
    - RAY_ADDRESS is dropped: it must not make the search join somebody's cluster.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.pop("RAY_ADDRESS", None)


def cluster_client_env() -> None:
    """Settings of a driver that joins a cluster (`--address`), made before Ray is imported:
    present a token when this process has one (a cluster with token authentication refuses
    a client without it; one without authentication ignores it)."""
    if "RAY_AUTH_MODE" not in os.environ and token_available():
        os.environ["RAY_AUTH_MODE"] = "token"


def _driver_env() -> None:
    """Ray and Tune switches of the driver process (read by Ray at run time)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if not sys.stdout.isatty():
        # Ray colours each worker's "(name pid=...)" prefix with ANSI codes even when the
        # output goes to a file or a pipe: a log would be full of "\x1b[36m"
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    # Our journal replaces Ray's result.json/progress.csv/TensorBoard loggers, and our own
    # SIGINT/SIGTERM handling replaces Tune's (whose hint points at Tuner.restore).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # no Ray status tables: our progress lines
    # Checkpointing every epoch is intended (resume + ASHA); silence the "snapshotting too
    # often" advice it triggers on short CPU epochs.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def init_ray(address: str | None, num_cpus: int | None, echo: Echo, *,
             dashboard: bool = True) -> None:
    """Join the cluster at `address`, or start this search's private local instance (with
    Ray's dashboard on 127.0.0.1 unless `dashboard` is False)."""
    import ray

    _driver_env()
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError) as exc:
            raise UserError(f"cannot join the Ray cluster at {address}: "
                            f"{str(exc).splitlines()[0]}") from None
        echo(f"ray: joined cluster {address}; resources {ray.cluster_resources()}")
        return
    # No --address: always a new private instance, whatever RAY_ADDRESS or an address file
    # of another cluster on this machine says (see private_local_instance_env).
    os.environ.pop("RAY_ADDRESS", None)
    context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                       dashboard_host="127.0.0.1", log_to_driver=True,
                       configure_logging=True, logging_level="warning",
                       _system_config={"enable_metrics_collection": False})
    if not dashboard:
        echo("ray: private local instance on 127.0.0.1, without the dashboard "
             "(--no-dashboard)")
        return
    url = getattr(context, "dashboard_url", None)
    token = ("$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
             os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
    echo(f"ray: private local instance on 127.0.0.1, dashboard at http://{url} (it asks "
         f"for the token in {token})" if url else
         "ray: private local instance on 127.0.0.1 (dashboard not available: install "
         "ray[default])")


def fit_local_resources(resources: dict[str, float], available: dict[str, float],
                        echo: Echo) -> dict[str, float]:
    """On a local instance, never ask for more than the machine has: a trial that asks for a
    GPU on a machine without one would wait forever. (A cluster may still grow, so requests
    to a cluster are left as given.) Every change is said in one line."""
    out = dict(resources)
    gpus, cpus = available.get("GPU", 0.0), available.get("CPU", 1.0)
    if out["gpus_per_trial"] > 0 and gpus == 0:
        echo(f"no GPU on this machine: trials run on the CPU (gpus_per_trial "
             f"{out['gpus_per_trial']:g} -> 0)")
        out["gpus_per_trial"] = 0.0
    elif out["gpus_per_trial"] > gpus:
        echo(f"gpus_per_trial {out['gpus_per_trial']:g} > {gpus:g} GPUs here: using {gpus:g}")
        out["gpus_per_trial"] = gpus
    if out["cpus_per_trial"] > cpus:
        echo(f"cpus_per_trial {out['cpus_per_trial']:g} > {cpus:g} CPUs here: using {cpus:g}")
        out["cpus_per_trial"] = cpus
    return out


def trials_that_fit(resources: dict[str, float], available: dict[str, float]) -> int:
    """How many trials of `resources` the instance can run at once (at least 1)."""
    fits = [available.get("CPU", 1.0) / max(resources["cpus_per_trial"], 1e-9)]
    if resources["gpus_per_trial"] > 0:
        fits.append(available.get("GPU", 0.0) / resources["gpus_per_trial"])
    return max(1, int(min(fits) + 1e-9))


def end_own_processes(timeout: float = 5.0) -> int:
    """SIGKILL every process this driver started, and theirs: the private Ray instance (GCS,
    raylet, dashboard, its agents, the workers). ray.shutdown() stops them when it gets to
    run; a second Ctrl-C does not wait for it, and Ray's agents have been seen to outlive
    their raylet by 15 s and more. Returns how many processes were ended."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=timeout)
    return len(children)


# ----------------------------------------------------------------------------- signals
class SearchInterrupted(Exception):
    """SIGINT/SIGTERM arrived outside the trial loop (pre-flight, features, report)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(signum: int) -> int:
    return EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT


class GracefulStop:
    """SIGINT (Ctrl-C) and SIGTERM (what SLURM and Kubernetes send on preemption) stop the
    search cleanly: inside the trial loop the first signal asks Tune to stop every trial
    (each keeps the checkpoint of its last finished epoch) and the driver then saves its
    bookkeeping; outside it, the signal unwinds the driver at once. A second signal exits
    immediately (after `on_exit`, which ends this search's private Ray processes), which is
    safe too: the journal is always consistent."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.in_loop = False
        self.on_signal: Callable[[int], None] | None = None  # inside the trial loop
        self.on_exit: Callable[[], None] | None = None  # before a second signal's exit
        self.received_at: float | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            print(f"\n{name} again: exiting now (the journal is consistent; --resume "
                  "continues)", file=sys.stderr, flush=True)
            if self.on_exit is not None:
                with contextlib.suppress(Exception):
                    self.on_exit()
            os._exit(exit_code(signum))
        self.signum, self.received_at = signum, time.perf_counter()
        if self.in_loop and self.on_signal is not None:
            self.on_signal(signum)
            print(f"\n{name} received: stopping the trials (each keeps its last finished "
                  "epoch) and saving the experiment; send it again to exit at once",
                  file=sys.stderr, flush=True)
            return
        raise SearchInterrupted(signum)


__all__ = ["EXIT_SIGINT", "EXIT_SIGTERM", "GracefulStop", "SearchInterrupted",
           "check_address", "check_cluster_token", "cluster_client_env", "end_own_processes",
           "exit_code", "fit_local_resources", "init_ray", "private_local_instance_env",
           "quiet_stderr", "token_available", "trials_that_fit"]
