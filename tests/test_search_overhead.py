"""benchmarks/search_overhead.py: per-trial overhead read back from a search journal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from search_helpers import benchmark_module


def _journal(path: Path, events: list[dict]) -> None:
    path.write_text("".join(json.dumps({"seg": 0, **e}) + "\n" for e in events))


def test_overhead_is_trial_wall_minus_epoch_seconds(tmp_path):
    """Wall time runs from the driver's start event to its end event; training is the sum
    of the reported epoch_seconds; diverged results and unfinished trials do not count."""
    bench = benchmark_module("search_overhead")
    exp = tmp_path / "exp"
    exp.mkdir()
    _journal(exp / "journal.jsonl", [
        {"ev": "start", "tid": "t0000", "t": 100.0},
        {"ev": "result", "tid": "t0000", "t": 100.5, "metrics": {"epoch_seconds": 0.45}},
        {"ev": "end", "tid": "t0000", "t": 100.52},
        {"ev": "start", "tid": "t0001", "t": 101.0},
        {"ev": "result", "tid": "t0001", "t": 102.0, "metrics": {"epoch_seconds": 0.9}},
        {"ev": "result", "tid": "t0001", "t": 103.0, "metrics": {"epoch_seconds": 0.95}},
        {"ev": "result", "tid": "t0001", "t": 103.1, "diverged": True,
         "metrics": {"epoch_seconds": 5.0}},
        {"ev": "end", "tid": "t0001", "t": 103.2},
        {"ev": "start", "tid": "t0002", "t": 104.0},  # never ended: not a row
    ])
    rows = {r["trial"]: r for r in bench.per_trial_overhead(exp)}
    assert sorted(rows) == ["t0000", "t0001"]
    assert rows["t0000"]["epochs"] == 1 and rows["t0001"]["epochs"] == 2
    assert rows["t0000"]["overhead"] == pytest.approx(0.07)
    assert rows["t0001"]["train"] == pytest.approx(1.85)
    assert rows["t0001"]["overhead"] == pytest.approx(2.2 - 1.85)


def test_an_experiment_without_a_journal_has_no_rows(tmp_path):
    assert benchmark_module("search_overhead").per_trial_overhead(tmp_path) == []
