"""Atomic file writes: a reader (a resumed search, the report, a second trial on another
node) sees either the previous complete file or the new complete file, never half of one.

Every single file the trainer and the search write for others to read goes through here
(whole folders, the report and a training run's --out, are built aside and renamed): the
content goes to a uniquely named temporary file in the same directory (so concurrent
writers never share one, and `os.replace` stays on one filesystem), is fsync'd, then
replaces the final name. A writer killed half-way leaves a `.NAME.*.tmp` file behind,
which no reader takes for the real one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Temporary files end with this (publishing a checkpoint folder skips them).
TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def replacing(path: str | Path, *, mode: int = 0o644) -> Iterator[Path]:
    """Yields a temporary path to write `path`'s new content to (e.g. `torch.save(obj,
    tmp)`); on a clean exit it is fsync'd and renamed onto `path`, on an error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, mode)  # mkstemp's 0600 would hide a file others must read
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, payload: bytes) -> Path:
    """Write `payload` to `path` atomically; returns the path."""
    with replacing(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


__all__ = ["TMP_SUFFIX", "replacing", "write_bytes", "write_text"]
