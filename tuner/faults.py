"""Kill points for the crash tests: the one documented fault-injection hook.

A search must survive its driver being SIGKILLed anywhere (a lost head node, an OOM kill).
The tests and `benchmarks/kill_points.py` prove it by killing a real driver at chosen
points and resuming it. They arm a point through the environment of the driver they start:

    TIMESCLIP_FAULT=after_result:5      SIGKILL the driver at its 5th journaled result

`arm_from_env` reads the variable once, when `python -m tuner.search` starts (never at
import). The driver calls `hit(point)` at each named point; nothing happens unless that
point is armed, so the hook costs a dictionary lookup in a real search.

Points (the windows between a decision and its record, where a kill is most harmful):
- `after_result`: a result was journaled and acted on (ASHA's snapshot written), the N-th
  of this driver run;
- `after_ask`: Optuna was asked for a trial, before its `trial` line is journaled;
- `after_end`: a trial's `end` line was journaled, before Optuna is told.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Mapping

from timesclip.errors import UserError

FAULT_ENV = "TIMESCLIP_FAULT"
POINTS = ("after_result", "after_ask", "after_end")

_armed: dict[str, int] = {}
_hits: Counter[str] = Counter()


def arm(point: str, count: int) -> None:
    """SIGKILL this process at the `count`-th `hit(point)` from now."""
    if point not in POINTS or count < 1:
        raise UserError(f"{FAULT_ENV}: unknown kill point {point!r} or count {count} < 1; "
                        f"points: {', '.join(POINTS)} (e.g. after_result:5)")
    _armed[point] = count
    _hits[point] = 0


def arm_from_env(environ: Mapping[str, str] = os.environ) -> None:
    """Arm the points `TIMESCLIP_FAULT` names (`point:N[,point:N]`), if it is set."""
    _armed.clear()
    _hits.clear()
    spec = environ.get(FAULT_ENV, "").strip()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, count = part.partition(":")
        if not count.isdigit():
            raise UserError(f"{FAULT_ENV}={spec!r}: expected point:N, e.g. after_result:5")
        arm(point, int(count))


def hit(point: str) -> None:
    """A named point was passed: die like a killed node if it is armed and due."""
    if point not in _armed:
        return
    _hits[point] += 1
    if _hits[point] >= _armed[point]:
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["FAULT_ENV", "POINTS", "arm", "arm_from_env", "hit"]
