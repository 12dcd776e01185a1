"""A two-node Ray test cluster on this machine: real GCS, raylets and object stores.

Run as a subprocess by the cluster tests (so its Ray settings never leak into the pytest
process): it starts a head node and one worker node with `ray.cluster_utils.Cluster`, in a
private temp dir, prints one JSON line {"address", "head", "worker", "pids"}, then obeys
lines on stdin:

- `kill-worker`: kills every process of the worker node at once (a lost node);
- `shutdown`: ends every process it started, by PID, and exits.

Token authentication is whatever RAY_AUTH_MODE / RAY_AUTH_TOKEN in its environment say.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def start(temp_dir: Path, env: dict[str, str], nodes: int = 2
          ) -> tuple[subprocess.Popen, dict]:
    """Run this file as a subprocess; returns (process, {"address", "head", "worker",
    "pids"}). Its stdin takes the commands; end it with `stop`."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    if env.get("RAY_TMPDIR"):  # Ray writes its address file into RAY_TMPDIR/ray
        (Path(env["RAY_TMPDIR"]) / "ray").mkdir(parents=True, exist_ok=True)
    log = temp_dir / "helper.log"
    with log.open("w") as err:
        helper = subprocess.Popen([sys.executable, str(Path(__file__).resolve()),
                                   str(temp_dir), "--nodes", str(nodes)], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                  text=True, start_new_session=True)
    line = helper.stdout.readline()
    if not line:
        helper.wait(timeout=30)
        raise RuntimeError(f"the test cluster did not start (exit {helper.returncode}); "
                           f"its log {log} ends:\n{log.read_text()[-2000:]}")
    return helper, json.loads(line)


def stop(helper: subprocess.Popen, info: dict) -> None:
    """Shut the cluster down; then end whatever is left, by PID (never `ray stop`).

    A PID is killed only if it still names the process the cluster started (same start
    time as before the shutdown): once ours has exited, the number may already belong to
    someone else's process on this shared machine."""
    started = {pid: start_time(pid) for pid in info.get("pids", [])}
    try:
        helper.stdin.write("shutdown\n")
        helper.stdin.flush()
        helper.wait(timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pass
    if helper.poll() is None:
        helper.kill()
        helper.wait()
    for pid, when in started.items():
        if when is not None and start_time(pid) == when:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_time(pid: int) -> str | None:
    """When the process with this PID started (field 22 of /proc/PID/stat, clock ticks
    since boot), or None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "(comm)" start at field 3


def _pids(node) -> list[int]:
    pids = []
    for infos in node.all_processes.values():
        for info in infos:
            if info.process is not None:
                pids.append(int(info.process.pid))
    return pids


def main() -> int:
    temp_dir = sys.argv[1]
    nodes = int(sys.argv[sys.argv.index("--nodes") + 1]) if "--nodes" in sys.argv else 2
    from ray.cluster_utils import Cluster

    # Fast failure detection: a killed node is declared dead within a few seconds.
    system_config = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                     "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "temp_dir": temp_dir, "include_dashboard": False,
        "_system_config": system_config})
    worker = cluster.add_node(num_cpus=1, temp_dir=temp_dir) if nodes > 1 else None
    cluster.wait_for_nodes()
    head = cluster.head_node
    print(json.dumps({"address": cluster.address, "head": head.node_id,
                      "worker": worker.node_id if worker else None,
                      "pids": _pids(head) + (_pids(worker) if worker else [])}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "kill-worker" and worker is not None:
            cluster.remove_node(worker, allow_graceful=False)
            print(json.dumps({"killed": worker.node_id}), flush=True)
        elif command == "shutdown":
            break
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
