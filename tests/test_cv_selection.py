"""benchmarks/cv_selection.py: does the per-seed summary say what the trials did (a real
small run: tiny backbone, synthetic crop seasons, year split, 2 folds of whole years),
is a diverged configuration left out, and is bad input refused in one line; and the one
data lookup (benchmarks/data_files.py) the benchmarks and the tests share."""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys

import pandas as pd
import pytest
from search_helpers import REPO, benchmark_module, env

ABSURD_LR = 1e12  # AdamW steps of ~1e12: the loss is NaN after the first update
#: Three sane learning rates and one that diverges; the quick space's small model.
SPACE = f"""\
description: cv_selection test space; one learning rate diverges
kind: search
budget:
  num_samples: 4
  max_epochs: 2
  grace_period: 1
  reduction_factor: 2
  metric: val_rmse
  mode: min
  max_concurrent: 1
resources:
  cpus_per_trial: 1
  gpus_per_trial: 0
base:
  d_model: 32
  head_hidden: 32
  patience: 3
parameters:
  lr:
    type: choice
    choices: [3.0e-4, 1.0e-3, 3.0e-3, {ABSURD_LR!r}]
  dropout:
    type: uniform
    low: 0.0
    high: 0.3
"""
TRIALS, EPOCHS = 4, 2
DATA_FLAGS = "--split year --test-year 2019 --input-steps 12"
CV = "2"  # 2 folds of whole years (2016 + 2018 | 2017): fewer runs than leave-one-out


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("cv_selection")


@pytest.fixture(scope="module")
def space_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cv-selection-space") / "diverge.yaml"
    path.write_text(SPACE)
    return path


@pytest.fixture(scope="module")
def seed(bench, space_file):
    """A seed whose RandomSampler draws the absurd learning rate exactly once in 4 trials
    (the benchmark's own draw(): what its run will train)."""
    import optuna

    from tuner.spaces import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(space_file)
    fields = bench.data_fields(DATA_FLAGS.split())
    for s in range(50):
        base = bench.base_config(space, fields, backbone="tiny", epochs=EPOCHS, seed=s,
                                 threads=1)
        lrs = [c.lr for _, c in bench.draw(space, base, TRIALS, s)]
        if lrs.count(ABSURD_LR) == 1 and len(set(lrs)) >= 3:
            return s
    raise AssertionError("no seed in 0..49 draws the absurd lr once")


@pytest.fixture(scope="module")
def csvs(tmp_path_factory):
    """4 years x 20 fields of synthetic seasons: small enough for 13 short runs."""
    from timesclip.data import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("cv-selection-data"),
                           years=range(2016, 2020), n_per_year=20, seed=3)


@pytest.fixture(scope="module")
def result(space_file, seed, csvs, tmp_path_factory):
    """One real run of the benchmark's CLI (its own process: the torch thread count it sets
    stays there): 4 configurations x 2 epochs x 1 seed. (the JSON record, stdout)"""
    out = tmp_path_factory.mktemp("cv-selection") / "result.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/cv_selection.py", "--space", str(space_file),
         "--trials", str(TRIALS), "--epochs", str(EPOCHS), "--seeds", "1", "--first-seed",
         str(seed), "--data", *map(str, csvs), "--data-flags", DATA_FLAGS,
         "--cv", CV, "--out", str(out)],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


# ----------------------------------------------------------------------------- a real run
def test_each_trial_is_a_real_single_and_cross_validated_run(result):
    record, _ = result
    assert record["held_out"] == ["years 2016, 2018", "year 2017"]
    ok = [t for t in record["trial_results"] if t["diverged"] is None]
    assert len(ok) == TRIALS - 1
    for t in ok:
        single = [r["val_rmse"] for r in t["single_history"]]
        mean = [r["val_rmse"] for r in t["cv_history"]]
        assert len(single) == len(mean) == EPOCHS
        assert t["single_value"] == min(single) == single[t["single_epoch"] - 1]
        assert t["cv_value"] == min(mean) == mean[t["cv_epoch"] - 1]
        # the cv value is the mean of the two folds' values at the selected epoch
        assert len(t["cv_fold_values"]) == 2
        assert t["cv_value"] == pytest.approx(statistics.mean(t["cv_fold_values"]))
        assert 0 < t["single_test"] < 1e3 and 0 < t["retrained_test"] < 1e3
        assert set(t["seconds"]) == {"single", "cv", "retrain"}
    # the configurations differ (RandomSampler drew them), so their scores do
    assert len({round(t["single_value"], 9) for t in ok}) == len(ok)


def test_seed_summary_ranks_selects_and_pairs_what_the_trials_scored(result):
    record, _ = result
    trials = [t for t in record["trial_results"] if t["diverged"] is None]
    summary = record["per_seed"][0]
    frame = pd.DataFrame(trials)

    def rank_corr(a: str, b: str) -> float:
        return frame[a].corr(frame[b], method="spearman")

    assert summary["spearman_single"] == pytest.approx(rank_corr("single_value", "single_test"))
    assert summary["spearman_cv"] == pytest.approx(rank_corr("cv_value", "retrained_test"))

    single = min(trials, key=lambda t: t["single_value"])
    cv = min(trials, key=lambda t: t["cv_value"])
    assert (summary["single_pick"], summary["single_pick_epoch"]) == (
        single["index"], single["single_epoch"])
    assert summary["single_pick_test"] == single["single_test"]
    assert (summary["cv_pick"], summary["cv_pick_epoch"]) == (cv["index"], cv["cv_epoch"])
    assert summary["cv_pick_test"] == cv["retrained_test"]
    retrained = summary["single_pick_retrained_test"]
    assert 0 < retrained < 1e3
    if (cv["index"], cv["cv_epoch"]) == (single["index"], single["single_epoch"]):
        assert retrained == cv["retrained_test"]  # the same retrain, not run twice

    assert summary["diff_cv_minus_single"] == pytest.approx(
        cv["retrained_test"] - single["single_test"])
    assert summary["diff_cv_minus_single_retrained"] == pytest.approx(
        cv["retrained_test"] - retrained)
    assert summary["best_test_single"] == min(frame["single_test"])
    assert summary["median_test_single"] == statistics.median(frame["single_test"])
    assert summary["best_test_retrained"] == min(frame["retrained_test"])
    assert summary["median_test_retrained"] == statistics.median(frame["retrained_test"])
    # over one seed: the mean is that seed's difference; no interval from one sample
    diff = record["overall"]["diff_cv_minus_single"]
    assert diff["mean"] == pytest.approx(summary["diff_cv_minus_single"])
    assert diff["n"] == 1 and diff["low"] is None


def test_a_diverged_configuration_is_left_out_and_counted(result):
    record, text = result
    bad = [t for t in record["trial_results"] if t["params"]["lr"] == ABSURD_LR]
    assert len(bad) == 1 and bad[0]["diverged"] == "single"
    assert bad[0]["single_value"] is None and bad[0]["retrained_test"] is None
    summary = record["per_seed"][0]
    assert (summary["trials"], summary["ok"], summary["diverged"]) == (
        TRIALS, TRIALS - 1, {"single": 1})
    assert bad[0]["index"] not in (summary["single_pick"], summary["cv_pick"])
    assert math.isfinite(summary["spearman_single"]) and math.isfinite(summary["spearman_cv"])
    assert "DIVERGED in the single run" in text
    assert f"over {TRIALS - 1} of {TRIALS} trials (1 diverged: 1 in the single run)" in text


def test_the_last_line_has_its_fixed_form(result):
    record, text = result
    last = text.strip().splitlines()[-1]
    match = re.fullmatch(r"cv selection \(--cv 2\) vs single split on test rmse: mean diff "
                         r"([+-]\d+\.\d{3}) \[-, -\] over 1 seeds \(negative: cv better\)", last)
    assert match, last
    assert float(match.group(1)) == pytest.approx(
        record["per_seed"][0]["diff_cv_minus_single"], abs=5e-4)
    assert re.search(r"^elapsed \d+m\d\ds \(\d+ s\)$", text, re.M)


def test_select_passes_over_diverged_trials_and_ties_go_to_the_earlier(bench):
    """select() on records (our own logic): a diverged trial is never picked even with the
    best value recorded before it diverged; a tie keeps the earlier trial."""
    def rec(index: int, single: float, cv: float, diverged: str | None = None):
        return bench.TrialResult(
            seed=0, index=index, params={}, diverged=diverged,
            single_history=[{"epoch": 1, "val_rmse": single}],
            cv_history=[{"epoch": 1, "val_rmse": cv}])

    trials = [rec(1, 5.0, 4.0), rec(2, 1.0, 1.0, diverged="cv"), rec(3, 5.0, 3.0)]
    single, cv = bench.select(trials, "val_rmse", "min")
    assert (single.index, cv.index) == (1, 3)
    assert bench.select(trials[1:2], "val_rmse", "min") == (None, None)
    assert bench.spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert math.isnan(bench.spearman([1.0, 1.0, 1.0], [3.0, 2.0, 1.0]))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args, says", [
    (["--space", "no-such-space"], "no-such-space"),
    (["--trials", "0"], "--trials must be >= 2"),
    (["--trials", "1"], "--trials must be >= 2"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--cv", "1"], "--cv 1: cross-validation needs at least 2 folds"),
    (["--cv", "many"], "--cv must be a number of folds"),
    (["--cv", "9"], "--cv 9: folds are whole years"),
    (["--space", "ablation"], "is an ablation grid"),
    (["--data", "missing.csv"], "missing.csv is not a file"),
    (["--data-flags", "--test-year 1999"], "test_year (1999) only applies to the year split"),
    (["--data-flags", "--bogus 3"], "--data-flags: unrecognized arguments: --bogus 3"),
    (["--trials", "x"], "invalid int value: 'x'"),
])
def test_bad_input_is_refused_in_one_line(bench, tmp_path, capsys, args, says):
    out = tmp_path / "r.json"
    try:
        code = bench.main([*args, "--out", str(out)])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert says in lines[0] and captured.out == ""
    assert not out.exists()


def test_missing_preset_data_is_refused_naming_the_places(bench, tmp_path, capsys,
                                                          monkeypatch):
    files = benchmark_module("data_files")
    monkeypatch.setitem(bench.DATA_PRESETS, "nowhere",
                        files.Preset("no-such-folder", "*.csv", []))
    monkeypatch.setenv(files.DATA_ENV, str(tmp_path))
    assert bench.main(["--data", "nowhere", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data nowhere: no no-such-folder/*.csv in " in err[0]
    assert str(tmp_path) in err[0] and f"set {files.DATA_ENV}" in err[0]


def test_a_bad_flag_exits_2_without_a_traceback_from_the_shell():
    proc = subprocess.run([sys.executable, "benchmarks/cv_selection.py", "--cv", "1"],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: --cv 1: cross-validation needs at least 2 folds; use --cv 2 or more, "
        "--cv years, or leave --cv out for the single validation split"]


# ----------------------------------------------------------------------------- data lookup
def test_find_data_looks_in_the_environment_folder_first(tmp_path, monkeypatch):
    files = benchmark_module("data_files")
    (tmp_path / "crops").mkdir()
    names = [f"crop_{year}.csv" for year in range(2010, 2022)]
    for name in [*names[::2], "notes.txt", *names[1::2]]:
        (tmp_path / "crops" / name).write_text("x\n")
    monkeypatch.setenv(files.DATA_ENV, str(tmp_path))
    found, places = files.find_data("crops", "*.csv")
    assert found == [tmp_path / "crops" / name for name in names]  # sorted, CSVs only
    assert places[0] == tmp_path
    assert places[1:] == [REPO / "shared" / "data", REPO.parent / "shared" / "data"]
    assert files.find_data("no-such-folder", "*.csv") == ([], places)
    monkeypatch.delenv(files.DATA_ENV)
    assert files.data_places() == places[1:]
