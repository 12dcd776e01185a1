"""benchmarks/search_efficiency.py: which searches it runs and how R is read from them.

The searches themselves are real `python -m tuner.search` runs (minutes each); here
`run_search` is replaced by a recorder so that the bookkeeping around it is checked:
which strategy gets how many trials, and the last line's R."""

from __future__ import annotations

import pytest
from search_helpers import benchmark_module


@pytest.fixture
def efficiency(monkeypatch):
    module = benchmark_module("search_efficiency")
    calls: list[tuple[str, int, str]] = []

    def fake_run(out, name, args, searcher, scheduler, seed):
        calls.append((name, args.num_samples, scheduler))
        assert isinstance(args.max_epochs, int)  # the defaults are filled in for every run
        if name == "warm-feature-cache":
            return {}
        if scheduler == "fifo":  # 24 trial-epochs... best 1.0 reached at the end
            curve = [(n, 2.0 - n / 24) for n in range(1, 25)]
        else:  # reaches 1.0 after 6 trial-epochs
            curve = [(n, max(1.0, 1.6 - 0.1 * n)) for n in range(1, 9)]
        return {"trial_epochs": curve[-1][0], "wall": 1.0, "best_val": curve[-1][1],
                "curve": curve, "exported": "t0000", "test_rmse": 1.1, "stopped": 0}

    monkeypatch.setattr(module, "run_search", fake_run)
    module.calls = calls
    return module


def test_asha_samples_go_to_the_asha_searches_only(efficiency, tmp_path, capsys):
    """--asha-samples 72: the ASHA search gets 72 trials, random+FIFO keeps 24, and R is
    still a share of random+FIFO's trial-epochs (6 of 24)."""
    assert efficiency.main(["--strategies", "random+FIFO", "TPE+ASHA", "--seeds", "1",
                            "--asha-samples", "72", "--out", str(tmp_path)]) == 0
    runs = {name: (n, scheduler) for name, n, scheduler in efficiency.calls}
    assert runs["random-fifo-s0"] == (24, "fifo")
    assert runs["tpe-asha-s0"] == (72, "asha")
    out = capsys.readouterr().out
    assert "24 trials (72 with ASHA)" in out
    assert out.strip().splitlines()[-1] == (
        "TPE+ASHA reached random+FIFO's best val_rmse with 0.25 of its trial-epochs "
        "(median over 1 seeds)")


def test_without_asha_samples_every_search_gets_the_same_trials(efficiency, tmp_path):
    efficiency.main(["--strategies", "random+FIFO", "TPE+ASHA", "--seeds", "1",
                     "--num-samples", "10", "--out", str(tmp_path)])
    assert {n for name, n, _ in efficiency.calls if name != "warm-feature-cache"} == {10}


def test_asha_samples_must_be_a_count(efficiency, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        efficiency.main(["--asha-samples", "0", "--out", str(tmp_path)])
    assert info.value.code == 2 and "--asha-samples" in capsys.readouterr().err
