"""benchmarks/asha_replay.py: Ray's ASHA replayed over recorded FIFO curves.

The replay is what the quick space's reduction factor was chosen from, so its bookkeeping
(which trial runs when, what ASHA stops, what is spent, when the FIFO best is reached) is
checked on hand-made curves whose outcome can be worked out by hand. What it reads is
checked on experiments written through the tuner's own Journal (tests/journal_fixtures.py):
only random+FIFO searches (search_meta.json), max_t from their budget, and each curve as
the journal's replay has it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from journal_fixtures import ExperimentWriter, rmse_metrics
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


def fifo_meta(searcher: str = "random", scheduler: str = "fifo", *, max_epochs: int = 4,
              seed: int = 0) -> dict:
    """search_meta.json as tuner.plan writes it, the keys the replay reads."""
    return {"kind": "search", "metric": "val_rmse", "mode": "min", "searcher": searcher,
            "scheduler": scheduler, "seed": seed,
            "budget": {"num_samples": 2, "max_epochs": max_epochs, "grace_period": 1,
                       "reduction_factor": 3.0, "max_concurrent": 2,
                       "startup_trials": 2 if searcher == "tpe" else None,
                       "constant_liar": True}}


def metrics(value: float, epoch: int, seconds: float = 0.5) -> dict:
    return {**rmse_metrics(value, epoch), "epoch_seconds": seconds}


def short_search(folder: Path, meta: dict) -> Path:
    """Two trials that stopped early on their own (2 and 3 epochs of a 4-epoch budget)."""
    w = ExperimentWriter(folder, meta)
    w.driver_start(1, 100.0)
    a, b = w.trial(100.0, {"lr": 1e-3}), w.trial(100.0, {"lr": 2e-3})
    for epoch, value in enumerate([1.5, 1.4], start=1):
        w.result(a, 100.0 + epoch, epoch, metrics(value, epoch))
    w.end(a, 103.0, "TERMINATED", "early_stopping", value=1.4, best_epoch=2, epochs_run=2)
    for epoch, value in enumerate([1.6, 1.3, 1.2], start=1):
        w.result(b, 100.0 + epoch, epoch, metrics(value, epoch))
    w.end(b, 104.0, "TERMINATED", "early_stopping", value=1.2, best_epoch=3, epochs_run=3)
    w.driver_end(105.0)
    w.close()
    return folder


@pytest.mark.parametrize("searcher,scheduler", [("tpe", "asha"), ("random", "asha"),
                                                ("tpe", "fifo"), ("grid", "fifo")])
def test_searches_that_were_not_random_fifo_are_refused(replay_mod, tmp_path, capsys,
                                                        searcher, scheduler):
    """TPE's proposals depend on results and ASHA's stops cut curves short: search_meta.json
    decides, one line, exit 2, before anything is replayed."""
    good = short_search(tmp_path / "good", fifo_meta())
    bad = short_search(tmp_path / "bad", fifo_meta(searcher, scheduler))
    with pytest.raises(SystemExit) as info:
        replay_mod.main([str(good), str(bad)])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("asha_replay: ")
    assert f"a {searcher}+{scheduler} search" in err and "--searcher random --scheduler fifo" \
        in err


def test_a_folder_without_search_meta_is_refused(replay_mod, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    with pytest.raises(SystemExit) as info:
        replay_mod.main([str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "no search_meta.json" in err


def test_max_t_comes_from_the_budget(replay_mod, tmp_path, capsys):
    """Both trials stopped early on their own (2 and 3 epochs): ASHA's max_t is still the
    budget's 4 epochs, not the longest curve. Searches of different budgets are not
    replayed together."""
    exp = short_search(tmp_path / "s4", fifo_meta(max_epochs=4, seed=7))
    assert replay_mod.main([str(exp), "--grace", "1", "--factor", "2"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == ("1 random+FIFO searches (seeds 7), 2 trials, val_rmse (min), max_t 4 "
                     "(the searches' max_epochs), 2 at a time")
    other = short_search(tmp_path / "s6", fifo_meta(max_epochs=6))
    with pytest.raises(SystemExit) as info:
        replay_mod.main([str(exp), str(other)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "differ in max_epochs (4, 6)" in err


def test_curves_come_from_the_journal_replay(replay_mod, tmp_path, capsys):
    """A retried trial reported epoch 2 again (1.2 after 1.4): the later report stands, as
    tuner.journal's replay has it, and the curve has three epochs, not four. A trial that
    diverged after a good first epoch is left out (its curve is cut short), and said so."""
    w = ExperimentWriter(tmp_path / "exp", fifo_meta(max_epochs=3))
    w.driver_start(1, 100.0)
    a, b = w.trial(100.0, {"lr": 1e-3}), w.trial(100.0, {"lr": 1e-2})
    w.result(a, 101.0, 1, metrics(1.5, 1, 0.25))
    w.result(a, 102.0, 2, metrics(1.4, 2, 0.25))
    w.retry(a, 102.5, "worker died")
    w.result(a, 103.0, 2, metrics(1.2, 2, 0.75))
    w.result(a, 104.0, 3, metrics(1.1, 3, 0.5))
    w.end(a, 104.0, "TERMINATED", "completed", value=1.1, best_epoch=3, epochs_run=3)
    w.result(b, 101.0, 1, metrics(0.9, 1))
    w.diverged(b, 102.0, 2)
    w.end(b, 102.0, "DIVERGED", "diverged", value=0.9, best_epoch=1, epochs_run=1)
    w.driver_end(105.0)
    w.close()
    search = replay_mod.read_search(tmp_path / "exp")
    assert search.curves == [[(1.5, 0.25), (1.2, 0.75), (1.1, 0.5)]]
    assert (search.left_out, search.max_t, search.metric, search.mode) == \
        (1, 3, "val_rmse", "min")
    assert replay_mod.main([str(tmp_path / "exp"), "--grace", "1", "--factor", "2"]) == 0
    assert "1 diverged/failed trial(s) left out" in capsys.readouterr().out


def test_an_unfinished_search_is_refused(replay_mod, tmp_path, capsys):
    w = ExperimentWriter(tmp_path / "exp", fifo_meta())
    w.driver_start(1, 100.0)
    a = w.trial(100.0, {"lr": 1e-3})
    w.result(a, 101.0, 1, metrics(1.5, 1))
    w.driver_end(102.0, how="interrupted", signal="SIGINT")
    w.close()
    with pytest.raises(SystemExit) as info:
        replay_mod.main([str(tmp_path / "exp")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "have not ended" in err and "--resume" in err


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
