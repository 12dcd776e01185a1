"""benchmarks/search_efficiency.py: which searches it runs, and how it reads them.

The benchmark's own searches are real `python -m tuner.search` runs (minutes each). Here:

- `summarize` (the journal bookkeeping) on one tiny real search (e2e: quick space, the
  small CSVs, 4 trials x 2 epochs, TPE + ASHA), its figures checked against counts made
  independently from the raw journal lines, trials.csv and best_test.json;
- `summarize` on an experiment written event by event through the tuner's own Journal
  (tests/journal_fixtures.py), for what a small real search does not produce on demand: a
  trial that reports the best value and then diverges;
- the bookkeeping around the searches with `run_search` replaced by a recorder: the
  order of the strategies per seed, trial counts, reached / never, R in trial-epochs and
  trial-seconds, the paired test difference and its t-interval, the start-up check.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pandas as pd
import pytest
from journal_fixtures import ExperimentWriter, rmse_metrics
from real_data import illinois_csvs
from search_helpers import benchmark_module

from tuner.spaces import load_space


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("search_efficiency")


# ----------------------------------------------------------------------------- recorder
def fake_result(strategy: Any, seed: int, num_samples: int) -> dict[str, Any]:
    """What summarize() would return, built so every figure can be worked out by hand.

    random+FIFO: 24 trial-epochs of 1 s (2 s from seed 1 on), its best 1.0 first reported
    at the 20th. ASHA arms reach 1.0 after 6 trial-epochs of 8, each epoch 1.25 times as
    long (more trials start: more set-up per epoch); TPE+FIFO never gets below 1.2. Test
    metric: random+FIFO 2.0; TPE+ASHA 2.0 - 0.1 * (seed + 1)."""
    sec = (1.0 if seed == 0 else 2.0) * (1.25 if strategy.scheduler == "asha" else 1.0)
    if strategy.scheduler == "fifo" and strategy.searcher == "random":
        values = [2.0 - n / 20 if n < 20 else 1.0 for n in range(1, 25)]
        test = 2.0
    elif strategy.scheduler == "fifo":
        values = [max(1.2, 2.0 - n / 10) for n in range(1, 25)]
        test = 2.5
    else:
        values = [max(1.0, 1.6 - 0.1 * n) for n in range(1, 9)]
        test = 2.0 - 0.1 * (seed + 1) if strategy.constant_liar else 2.2
    curve, best = [], math.inf
    for n, value in enumerate(values, start=1):
        best = min(best, value)
        curve.append((n, n * sec, best))
    tids = [f"t{i:04d}" for i in range(num_samples)]
    tpe = strategy.searcher == "tpe"
    proposed = {tid: ("startup" if i < 2 else "model") if tpe else "random"
                for i, tid in enumerate(tids)}
    # TPE's start-up draws equal the random arm's; after it, one identical draw in seed 1
    params = {tid: {"lr": 0.001 * (i + 1) + (0.5 if tpe and i >= 2 and not (seed == 1 and
                                                                             i == 2) else 0)}
              for i, tid in enumerate(tids)}
    return {"metric": "val_rmse", "mode": "min", "test_key": "rmse",
            "searcher": strategy.searcher, "scheduler": strategy.scheduler,
            "constant_liar": strategy.constant_liar if tpe else True,
            "startup_trials": 2 if tpe else None, "num_samples": num_samples,
            "trial_epochs": curve[-1][0], "trial_seconds": curve[-1][1], "wall": 1.0,
            "curve": curve, "best_val": best, "exported": "t0000", "test": test,
            "stopped": 0, "statuses": {"TERMINATED": num_samples}, "proposed": proposed,
            "startup": [t for t, p in proposed.items() if p == "startup"], "params": params}


@pytest.fixture
def efficiency(bench, monkeypatch):
    calls: list[tuple[str, int, str, bool]] = []

    def fake_run(out, name, args, strategy, seed):
        calls.append((name, args.num_samples, strategy.scheduler, strategy.constant_liar))
        assert isinstance(args.max_epochs, int)  # the defaults are filled in for every run
        if name == "warm-feature-cache":
            return {}
        return fake_result(strategy, seed, args.num_samples)

    monkeypatch.setattr(bench, "run_search", fake_run)
    bench.calls = calls
    yield bench
    del bench.calls


def test_asha_samples_go_to_the_asha_searches_only(efficiency, tmp_path, capsys):
    """--asha-samples 72: the ASHA search gets 72 trials, random+FIFO keeps 24, and R is
    still a share of random+FIFO's trial-epochs (6 of 24)."""
    assert efficiency.main(["--strategies", "random+FIFO", "TPE+ASHA", "--seeds", "1",
                            "--asha-samples", "72", "--out", str(tmp_path)]) == 0
    runs = {name: (n, scheduler) for name, n, scheduler, _ in efficiency.calls}
    assert runs["random-fifo-s0"] == (24, "fifo")
    assert runs["tpe-asha-s0"] == (72, "asha")
    out = capsys.readouterr().out
    assert "24 trials (72 with ASHA)" in out
    assert out.strip().splitlines()[-2] == (
        "TPE+ASHA reached random+FIFO's best val_rmse with 0.25 of its trial-epochs "
        "(median over 1 seeds)")


def test_without_asha_samples_every_search_gets_the_same_trials(efficiency, tmp_path):
    efficiency.main(["--strategies", "random+FIFO", "TPE+ASHA", "--seeds", "1",
                     "--num-samples", "10", "--out", str(tmp_path)])
    assert {n for name, n, _, _ in efficiency.calls if name != "warm-feature-cache"} == {10}


def test_counts_must_be_positive(efficiency, tmp_path, capsys):
    for flag in ("--asha-samples", "--seeds", "--num-samples"):
        with pytest.raises(SystemExit) as info:
            efficiency.main([flag, "0", "--out", str(tmp_path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and flag in err[-1]


def test_strategies_run_in_a_shuffled_order_per_seed(efficiency, tmp_path, capsys):
    """Each seed runs the five default strategies in its own order, seeded by the seed (the
    same order every time) and printed; the warm-up search comes first."""
    efficiency.main(["--seeds", "3", "--num-samples", "8", "--out", str(tmp_path)])
    names = [name for name, *_ in efficiency.calls]
    assert names[0] == "warm-feature-cache"
    orders = [names[1 + 5 * i: 6 + 5 * i] for i in range(3)]
    assert all(name.endswith(f"-s{i}") for i, order in enumerate(orders) for name in order)
    assert len({tuple(n.rsplit("-s", 1)[0] for n in order) for order in orders}) > 1
    out = capsys.readouterr().out
    for seed, order in enumerate(orders):
        line = next(x for x in out.splitlines() if x.startswith(f"seed {seed}: order "))
        printed = line.split(": order ", 1)[1].split(", ")
        assert [efficiency.experiment_name(s, seed) for s in printed] == order
    first = list(efficiency.calls)
    efficiency.calls.clear()
    efficiency.main(["--seeds", "3", "--num-samples", "8", "--out", str(tmp_path / "again")])
    assert efficiency.calls == first


def test_liar_off_arms_run_on_a_copy_of_the_space_without_the_liar(efficiency, bench,
                                                                   tmp_path, capsys):
    """TPE+ASHA-noliar is a default strategy; its space is the quick space with
    `budget.constant_liar: false` and nothing else changed. It needs trials at once."""
    efficiency.main(["--seeds", "1", "--out", str(tmp_path)])
    assert ("tpe-asha-noliar-s0", 24, "asha", False) in efficiency.calls
    copy = load_space(tmp_path / "spaces" / "quick-noliar.yaml")
    original = load_space("quick")
    assert copy.budget.constant_liar is False and original.budget.constant_liar is True
    assert copy.budget == dataclasses.replace(original.budget, constant_liar=False)
    assert (copy.parameters, copy.base) == (original.parameters, original.base)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        bench.main(["--max-concurrent", "1", "--out", str(tmp_path / "one")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and "TPE+ASHA-noliar" in err[-1] and "--max-concurrent" in err[-1]


def test_reading_the_searches(efficiency, tmp_path, capsys):
    """Per seed: R in trial-epochs and trial-seconds (random+FIFO's own beside it),
    reached / never, and the paired test difference with its t-interval; the last two
    lines; the start-up trials and the configurations TPE trained after them."""
    efficiency.main(["--strategies", "random+FIFO", "TPE+FIFO", "TPE+ASHA",
                     "TPE+ASHA-noliar", "--seeds", "3", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    # random+FIFO reached its own best at its 20th of 24 trial-epochs, in epochs and seconds
    assert lines.count("  random+FIFO        20 ep /    20.0 s  R 0.83 / 0.83 (own)") == 1
    assert "  random+FIFO        20 ep /    40.0 s  R 0.83 / 0.83 (own)" in lines
    # TPE+ASHA: 6 trial-epochs of random+FIFO's 24, 7.5 s of 24 s (15 s of 48 s)
    assert "  TPE+ASHA            6 ep /     7.5 s  R 0.25 / 0.31  test rmse -0.1000 vs " \
           "random+FIFO" in lines
    assert "  TPE+ASHA            6 ep /    15.0 s  R 0.25 / 0.31  test rmse -0.3000 vs " \
           "random+FIFO" in lines
    assert "  TPE+FIFO         never (best 1.2000, gap +0.2000)  test rmse +0.5000 vs " \
           "random+FIFO" in lines
    table = {parts[0]: parts for parts in map(str.split, lines)
             if len(parts) > 2 and parts[0] in efficiency.STRATEGIES and parts[2] == "of"}
    assert table["TPE+FIFO"][1:6] == ["0", "of", "3", "never", "never"]
    assert table["TPE+ASHA"][1:8] == ["3", "of", "3", "0.25", "0.31", "0.33", "0.42"]
    # test differences -0.1, -0.2, -0.3: mean -0.2, sd 0.1, t(0.975, 2 df) = 4.302653
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert lines[-1] == ("TPE+ASHA - random+FIFO, exported test rmse (paired by seed): mean "
                         f"-0.2000, 95% t-interval [{-0.2 - half:+.4f}, {-0.2 + half:+.4f}] "
                         "over 3 seeds")
    assert lines[-2] == ("TPE+ASHA reached random+FIFO's best val_rmse with 0.25 of its "
                         "trial-epochs (median over 3 seeds)")
    assert lines[-3] == ("TPE+ASHA: reached random+FIFO's best val_rmse in 3 of 3 seeds "
                         "(never in 0); per seed R 0.25, 0.25, 0.25")
    # start-up named, and the one model draw equal to random's (seed 1, t0002) found in
    # each of the three TPE arms
    assert "TPE's random start-up: 2 of 24 trials per search" in out
    assert "  seed 1 TPE+ASHA         start-up t0000..t0001 (2), model 22; vs random+FIFO: " \
           "after the start-up 21 of 22 configurations differ, in the start-up 2 of 2 " \
           "identical" in lines
    assert lines[-4].startswith("after the start-up, TPE trained configurations other than "
                                "the random arm's in 195 of 198 trials; 3 identical")
    seeds = pd.read_csv(tmp_path / "seeds.csv")
    assert len(seeds) == 12 and set(seeds["strategy"]) == {"random+FIFO", "TPE+FIFO",
                                                          "TPE+ASHA", "TPE+ASHA-noliar"}
    curves = pd.read_csv(tmp_path / "anytime.csv")
    assert list(curves.columns) == ["strategy", "seed", "trial_epochs", "trial_seconds",
                                    "best_val_rmse"]


def test_a_headline_that_never_reached_says_so(bench, efficiency, tmp_path, capsys,
                                               monkeypatch):
    """When TPE+ASHA never reached the target in most seeds, the line says so with the gap,
    never a finite median."""
    def never(out, name, args, strategy, seed):
        res = fake_result(strategy, seed, args.num_samples)
        if strategy.scheduler == "asha":
            res["curve"] = [(n, float(n), 1.5) for n, _, _ in res["curve"]]
            res["best_val"] = 1.5
        return res

    monkeypatch.setattr(bench, "run_search", never)
    bench.main(["--strategies", "random+FIFO", "TPE+ASHA", "--seeds", "2",
                "--out", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3].startswith("TPE+ASHA: reached random+FIFO's best val_rmse in 0 of 2 "
                                "seeds (never in 2)")
    assert lines[-2] == ("TPE+ASHA did not reach random+FIFO's best val_rmse (median over 2 "
                         "seeds; median gap +0.5000 val_rmse)")


def test_t_interval_matches_scipy(bench):
    from scipy import stats

    values = [0.3, -0.1, 0.05, 0.2]
    mean, low, high = bench.t_interval(values)
    expected = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 4,
                                scale=stats.sem(values))
    assert (low, high) == pytest.approx(expected) and mean == pytest.approx(0.1125)
    assert math.isnan(bench.t_interval([0.2])[1])


def test_illinois_preset_finds_the_real_csvs_and_adds_the_year_split(bench):
    flags, label = bench.data_flags(["illinois"])
    files = [str(p) for p in illinois_csvs()]
    assert flags == ["--data", *files, "--split", "year", "--test-year", "2022",
                     "--input-steps", "12"]
    assert label.startswith(f"illinois ({len(files)} files")
    assert bench.data_flags(None)[0] == [] == bench.data_flags(["synthetic"])[0]


def test_missing_data_files_are_refused_in_one_line(bench, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        bench.main(["--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and "nope.csv is not a file" in err[-1]
    with pytest.raises(SystemExit) as info:
        bench.main(["--space", "no-such-space", "--out", str(tmp_path)])
    assert info.value.code == 2 and "no-such-space" in capsys.readouterr().err


# ----------------------------------------------------------------------------- summarize
def test_target_counts_only_trials_that_could_be_exported(bench, tmp_path):
    """t0000 reports 0.8 and then diverges: select_best could never export it, so neither
    the best value nor the anytime curve may credit 0.8; t0001's 1.2 is the best. A trial
    that failed (ERROR) after reporting 0.5 does not count either."""
    exp = tmp_path / "exp"
    meta = {"metric": "val_rmse", "mode": "min", "searcher": "random", "scheduler": "fifo",
            "budget": {"num_samples": 3, "max_epochs": 2, "startup_trials": None}}
    w = ExperimentWriter(exp, meta)
    w.driver_start(1, 100.0)
    a, b, c = (w.trial(100.0 + i, {"lr": 0.001 * (i + 1)}) for i in range(3))
    w.result(a, 101.0, 1, rmse_metrics(0.8, 1, seconds=2.0))
    w.diverged(a, 102.0, 2)
    w.end(a, 102.0, "DIVERGED", "diverged", value=0.8, best_epoch=1, epochs_run=1)
    w.result(b, 103.0, 1, rmse_metrics(1.5, 1, seconds=3.0))
    w.result(c, 103.5, 1, rmse_metrics(0.5, 1, seconds=1.0))
    w.end(c, 103.6, "ERROR", "error", value=0.5, best_epoch=1, epochs_run=1, error="lost")
    w.result(b, 104.0, 2, rmse_metrics(1.2, 2, seconds=4.0))
    w.end(b, 104.0, "TERMINATED", "completed", value=1.2, best_epoch=2, epochs_run=2)
    w.driver_end(105.0)
    w.close()
    res = bench.summarize(exp, 0.0)
    assert res["best_val"] == pytest.approx(1.2) and res["exported"] == b
    assert res["trial_epochs"] == 4 and res["trial_seconds"] == pytest.approx(10.0)
    assert math.isnan(res["curve"][0][2])  # nothing exportable reported yet
    assert [p[2] for p in res["curve"][1:]] == pytest.approx([1.5, 1.5, 1.2])
    assert bench.reach(res["curve"], 1.2, "min") == (4, 10.0)
    assert bench.reach(res["curve"], 0.8, "min") is None
    assert res["test"] is None  # no best_test.json: nothing scored


@pytest.mark.e2e
def test_summarize_on_a_real_search(bench, small_csvs, tmp_path):
    """One tiny real search started by the benchmark's own run_search (quick space, the
    small CSVs, 4 trials x 2 epochs, TPE + ASHA, 2 at a time): every figure summarize()
    derives agrees with a count made without it."""
    import argparse

    args = argparse.Namespace(space="quick", num_samples=4, max_epochs=2, num_cpus=2,
                              max_concurrent=2, grace_period=None, reduction_factor=None,
                              data_flags=["--data", *map(str, small_csvs)],
                              extra_flags=["--no-dashboard"],
                              liar_off_space=None)
    res = bench.run_search(tmp_path, "tpe-asha-s0", args, bench.STRATEGIES["TPE+ASHA"], 0)
    exp = tmp_path / "tpe-asha-s0"
    raw = [json.loads(line) for line in (exp / "journal.jsonl").read_text().splitlines()]
    results = [e for e in raw if e["ev"] == "result"]
    trials = pd.read_csv(exp / "report" / "trials.csv")
    best_test = json.loads((exp / "best_test.json").read_text())
    meta = json.loads((exp / "search_meta.json").read_text())

    assert set(trials["status"]) == {"TERMINATED"} and not any("diverged" in e
                                                               for e in results)
    assert res["trial_epochs"] == len(results) == trials["epochs_run"].sum()
    assert res["trial_seconds"] == pytest.approx(
        sum(e["metrics"]["time_this_iter_s"] for e in results))
    assert res["best_val"] == pytest.approx(trials["best_val_rmse"].min())
    assert res["exported"] == best_test["trial_id"]
    assert res["test"] == pytest.approx(best_test["test"]["rmse"])
    assert res["stopped"] == (trials["stopped_by"] == "asha").sum()
    assert (res["metric"], res["test_key"], res["searcher"], res["scheduler"]) == \
        ("val_rmse", "rmse", "tpe", "asha")
    assert res["startup_trials"] == meta["budget"]["startup_trials"] == 2  # startup_rule(4)
    assert res["startup"] == sorted(trials.loc[trials["proposed_by"] == "startup",
                                               "trial_id"])
    assert len(res["startup"]) >= 2 and "model" in res["proposed"].values()
    # the curve: one point per result line; it first holds the best value at the line
    # where the exported trial reported it
    assert [p[0] for p in res["curve"]] == list(range(1, len(results) + 1))
    assert res["curve"][-1][2] == pytest.approx(res["best_val"])
    at = next(i for i, e in enumerate(results, start=1) if e["tid"] == res["exported"]
              and e["metrics"]["val_rmse"] == pytest.approx(res["best_val"]))
    assert bench.reach(res["curve"], res["best_val"], "min")[0] == at


def test_the_search_metric_comes_from_search_meta(bench, tmp_path, monkeypatch, capsys):
    """A forecasting search optimises val_mse and best_test.json holds test mse / mae: the
    figures and the last lines follow search_meta.json's metric, nothing assumes val_rmse."""
    exp = tmp_path / "forecast"
    meta = {"metric": "val_mse", "mode": "min", "searcher": "tpe", "scheduler": "asha",
            "budget": {"num_samples": 2, "max_epochs": 1, "startup_trials": 1,
                       "constant_liar": True}}
    w = ExperimentWriter(exp, meta)
    w.driver_start(1, 100.0)
    a, b = w.trial(100.0, {"lr": 1e-3}), w.trial(100.0, {"lr": 2e-3})
    for tid, mse in ((a, 0.45), (b, 0.41)):
        w.result(tid, 101.0, 1, {"epoch": 1, "val_loss": 0.9, "val_mse": mse, "val_mae": 0.5,
                                 "val_rmse": 0.1 if tid == a else 9.0,
                                 "time_this_iter_s": 1.0})
        w.end(tid, 101.0, "TERMINATED", "completed", value=mse, best_epoch=1, epochs_run=1)
    w.driver_end(102.0)
    w.close()
    (exp / "best_test.json").write_text(json.dumps(
        {"trial_id": b, "val_mse": 0.41, "test": {"mse": 0.43, "mae": 0.47}}))
    res = bench.summarize(exp, 0.0)
    assert (res["metric"], res["test_key"], res["exported"]) == ("val_mse", "mse", b)
    assert res["best_val"] == pytest.approx(0.41) and res["test"] == pytest.approx(0.43)

    def forecast(out, name, args, strategy, seed):
        return {**fake_result(strategy, seed, args.num_samples), "metric": "val_mse",
                "test_key": "mse"}

    monkeypatch.setattr(bench, "run_search", forecast)
    bench.main(["--space", "forecast", "--strategies", "random+FIFO", "TPE+ASHA", "--seeds",
                "2", "--out", str(tmp_path / "bench")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("TPE+ASHA reached random+FIFO's best val_mse with 0.25 ")
    assert lines[-1].startswith("TPE+ASHA - random+FIFO, exported test mse (paired by seed)")
