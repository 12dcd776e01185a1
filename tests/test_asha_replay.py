"""benchmarks/asha_replay.py: Ray's ASHA replayed over recorded FIFO curves.

The replay is what the quick space's reduction factor was chosen from, so its bookkeeping
(which trial runs when, what ASHA stops, what is spent, when the FIFO best is reached) is
checked on hand-made curves whose outcome can be worked out by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from search_helpers import benchmark_module


@pytest.fixture(scope="module")
def replay_mod():
    return benchmark_module("asha_replay")


def curve(*values: float) -> list[tuple[float, float]]:
    return [(v, 1.0) for v in values]


def test_a_slow_starter_is_stopped_at_the_first_rung(replay_mod):
    """Two trials at a time, grace 1, factor 2, max_t 4 (rungs 1 and 2). Trial 2 looks worst
    after one epoch though it would end best: ASHA stops it there, and the FIFO best (0.5)
    is never reached; trials 0 and 1 run on."""
    curves = [curve(2.0, 1.5, 1.2, 1.0),   # first at each rung: always continues
              curve(1.8, 1.4, 1.1, 0.9),   # better than trial 0 at both rungs
              curve(3.0, 1.0, 0.7, 0.5),   # the eventual best, worst after epoch 1
              curve(1.9, 1.6, 1.5, 1.4)]
    trace = replay_mod.replay(curves, grace=1, factor=2, max_t=4, concurrent=2, mode="min",
                              metric="val_rmse")
    spent, best = trace[-1]
    assert best == pytest.approx(0.9) and best > 0.5
    # 0 and 1 run to the end (8 epochs); 2 stopped after 1; 3 passes rung 1 (1.9 beats the
    # median of 2.0, 1.8, 3.0) and is stopped at rung 2 (1.6 is the worst of 1.5, 1.4, 1.6)
    assert spent == 4 + 4 + 1 + 2
    # with the first rung after 2 epochs the slow starter survives and wins
    late = replay_mod.replay(curves, grace=2, factor=2, max_t=4, concurrent=2, mode="min",
                             metric="val_rmse")
    assert late[-1][1] == pytest.approx(0.5)


def test_rank_agreement_is_one_when_early_ranks_hold(replay_mod):
    curves = [curve(3.0, 2.0), curve(2.0, 1.0), curve(1.0, 0.5)]
    assert replay_mod.rank_agreement(curves, 2, "min") == pytest.approx([1.0, 1.0])
    flipped = [curve(1.0, 1.0), curve(2.0, 0.1), curve(3.0, 0.05)]
    assert replay_mod.rank_agreement(flipped, 1, "min")[0] == pytest.approx(-1.0)


def test_only_searches_that_ran_every_trial_to_its_end_are_replayed(replay_mod, tmp_path):
    """A search ASHA already pruned has truncated curves: replaying it would be wrong."""
    def journal(folder: Path, stopped_by: str) -> Path:
        folder.mkdir()
        lines = [{"ev": "trial", "tid": "t0000"},
                 {"ev": "result", "tid": "t0000", "epoch": 1,
                  "metrics": {"val_rmse": 1.5, "epoch_seconds": 0.5}},
                 {"ev": "result", "tid": "t0000", "epoch": 2, "diverged": True,
                  "metrics": {"val_rmse": math.nan}},
                 {"ev": "end", "tid": "t0000", "stopped_by": stopped_by}]
        (folder / "journal.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        return folder

    assert replay_mod.read_curves(journal(tmp_path / "fifo", "completed"), "val_rmse") == \
        [[(1.5, 0.5)]]
    with pytest.raises(SystemExit, match="--scheduler fifo"):
        replay_mod.read_curves(journal(tmp_path / "asha", "asha"), "val_rmse")


def test_brackets_are_replayed_with_seeded_draws(replay_mod):
    """With two brackets a trial's first rung is at 1 or 2 epochs, as Ray draws it: the
    slow starter survives in some draws, and one draw always replays the same way."""
    curves = [curve(2.0, 1.5, 1.2, 1.0), curve(1.8, 1.4, 1.1, 0.9),
              curve(3.0, 1.0, 0.7, 0.5), curve(1.9, 1.6, 1.5, 1.4)]
    finals = set()
    for draw in range(20):
        trace = replay_mod.replay(curves, grace=1, factor=2, max_t=4, concurrent=2,
                                  mode="min", metric="val_rmse", brackets=2, draw=draw)
        assert trace == replay_mod.replay(curves, grace=1, factor=2, max_t=4, concurrent=2,
                                          mode="min", metric="val_rmse", brackets=2,
                                          draw=draw)
        finals.add(round(trace[-1][1], 6))
    assert finals == {0.5, 0.9}


def test_pooled_comparison_at_equal_compute(replay_mod):
    """Identical curves: FIFO's best (1.0) is first reported at ASHA's 7th trial-epoch (two
    trials interleaved, the first reaches epoch 4 on the 7th report), i.e. 7 of FIFO's 16;
    eight ASHA trials with no early rung run every epoch: 32 of 16. In mode max the same."""
    pool = [curve(2.0, 1.5, 1.2, 1.0) for _ in range(30)]
    row = replay_mod.pooled_comparison(pool, fifo_trials=4, asha_trials=8, grace=4, factor=2,
                                       max_t=4, concurrent=2, mode="min", metric="val_rmse",
                                       draws=5)
    assert row == {"spent": 2.0, "within_third": 0.0, "within_equal": 1.0,
                   "median_r": pytest.approx(7 / 16)}
    negated = [[(-v, s) for v, s in c] for c in pool]
    assert replay_mod.pooled_comparison(negated, 4, 8, 4, 2, 4, 2, "max", "val_r2", 5) == row


def test_pooled_comparison_sees_slow_starters_kept_by_a_later_rung(replay_mod):
    """Half the pool starts well and stalls at 0.9; half starts worst and ends at 0.5 (it
    is ahead from epoch 2). With the first rung after epoch 1 ASHA stops the slow starters
    and rarely reaches FIFO's best; after epoch 2 it keeps them."""
    pool = [curve(1.0, 0.9, 0.9, 0.9) for _ in range(20)] + \
        [curve(3.0, 0.8, 0.7, 0.5) for _ in range(20)]
    early = replay_mod.pooled_comparison(pool, 4, 8, 1, 2, 4, 2, "min", "val_rmse", 40)
    late = replay_mod.pooled_comparison(pool, 4, 8, 2, 2, 4, 2, "min", "val_rmse", 40)
    assert late["within_equal"] > early["within_equal"] + 0.2
    assert late["within_equal"] > 0.9
