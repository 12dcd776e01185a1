"""Progress of long steps (the vision pass, a long evaluation): tqdm, in two shapes.

On a terminal it is tqdm's usual bar (done / total, rate, time left). Anywhere else -- a log
file, a CI job, a Ray task whose stdout Ray forwards line by line to the driver -- a
redrawn bar is a mess of carriage returns, so the same tqdm object prints whole, flushed
lines instead: one each time another ~10 % is done, and one at 100 %. Steps that finish
within `delay` seconds print nothing at all, so small runs stay quiet.

    with progress_bar(total_images, "vision features", unit="img") as bar:
        for chunk in chunks:
            ...
            bar.update(len(chunk))

`TIMESCLIP_PROGRESS=bar|lines|off` overrides the automatic choice (e.g. `off` in a job that
must not print, `lines` to force log-friendly output on a terminal).
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any, TextIO

from tqdm import tqdm

#: Environment variable that overrides the mode picked from the output stream.
PROGRESS_ENV = "TIMESCLIP_PROGRESS"
MODES = ("auto", "bar", "lines", "off")
#: Seconds a long step (e.g. the vision pass) runs before it shows any progress: steps that
#: finish sooner stay silent, so small runs and tests print no progress at all.
QUIET_SECONDS = 2.0
#: One line-mode line: label, percentage, counts, elapsed < remaining, rate.
LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, " \
              "{rate_fmt}]"


class _Discard(io.TextIOBase):
    """tqdm's own stream in line mode: its carriage-return redraws go nowhere."""

    def write(self, s: str) -> int:
        return len(s)


class LineProgress(tqdm):
    """A tqdm whose display is a whole, flushed line per ~`every` of the total (and at 100 %).

    Counting, timing, rate and the `delay` gate are tqdm's; only the display differs.
    """

    def __init__(self, *args: Any, out: TextIO, every: float = 0.1, **kwargs: Any) -> None:
        # set before tqdm.__init__, which already calls display() once
        self._out = out
        self._steps = max(1, int(round(1.0 / every)))  # lines per full run
        self._next_step = 1  # the next multiple of total / steps that earns a line
        self._final_done = False
        kwargs.update(file=_Discard(), mininterval=0, miniters=1, smoothing=0,
                      bar_format=LINE_FORMAT)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        total = self.total
        if not total or total <= 0 or self._final_done:
            return True
        reached = min(self._steps, int(self.n * self._steps // total))  # whole steps done
        if reached < self._next_step:
            return True
        self._next_step = reached + 1
        self._final_done = self.n >= total
        print(self.format_meter(**self.format_dict), file=self._out, flush=True)
        return True


def progress_mode(file: TextIO, mode: str = "auto") -> str:
    """'bar', 'lines' or 'off' for output to `file`: the env override, else a terminal test."""
    chosen = os.environ.get(PROGRESS_ENV, "").strip().lower() or mode
    if chosen not in MODES:
        raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {chosen!r} "
                         f"(from {PROGRESS_ENV} or the caller)")
    if chosen != "auto":
        return chosen
    try:
        return "bar" if file.isatty() else "lines"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "lines"


def progress_bar(total: int, label: str | None, *, unit: str = "it",
                 file: TextIO | None = None, mode: str = "auto", every: float = 0.1,
                 delay: float = 0.0) -> tqdm:
    """A progress bar over `total` units of work, labelled `label`; use as a context manager.

    file: where it writes (default: stdout, where the run's log goes; pass sys.stderr when
    stdout carries data, e.g. JSON). mode: 'auto' (a bar on a terminal, lines elsewhere),
    'bar', 'lines' or 'off'. every: fraction of the total between two lines in line mode.
    delay: print nothing unless the step is still running after this many seconds.
    The label is free text, so a caller (e.g. a search task) can say whose work it is;
    label None means no output (mode 'off'). Returns a tqdm: advance it with `.update(n)`.
    """
    out = sys.stdout if file is None else file
    chosen = "off" if label is None else progress_mode(out, mode)
    if chosen == "off":
        return tqdm(total=total, disable=True)
    if chosen == "bar":
        return tqdm(total=total, desc=label, unit=unit, file=out, delay=delay,
                    dynamic_ncols=True)
    return LineProgress(total=total, desc=label, unit=unit, out=out, every=every, delay=delay)


__all__ = ["LINE_FORMAT", "MODES", "PROGRESS_ENV", "QUIET_SECONDS", "LineProgress", "progress_bar",
           "progress_mode"]
