"""`python -m timesclip train|evaluate --task forecast`: the outputs of a forecasting run,
its baselines, `evaluate` on its checkpoint, a re-run of its config.yaml, and one-line
errors (exit code 2, nothing written) for every bad input the issue names.

The runs are real subprocesses on the real ETTh1 file; the many bad-input cases, which all
fail before any work, run in-process through the same `main` (a subprocess each would cost
seconds of imports apiece).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from real_data import forecast_csv
from test_cli import assert_one_line_error, listing, run_cli, run_many

from timesclip.__main__ import main
from timesclip.config import TrainConfig

SMALL = ["--backbone", "tiny", "--device", "cpu", "--d-model", "32", "--threads", "1"]


@pytest.fixture(scope="module")
def etth1():
    return forecast_csv("ETTh1")


@pytest.fixture(scope="module")
def trained(etth1, tmp_path_factory):
    """The language-only arm (E4) on ETTh1, L = H = 96, every 32nd training window, 2
    epochs; then `evaluate` of its checkpoint (with --plots) beside two refused evaluations."""
    cwd = tmp_path_factory.mktemp("forecast-cli")
    train = run_cli(["train", "--task", "forecast", "--data", etth1, "--lookback", "96",
                     "--horizon", "96", "--train-stride", "32", "--ablation", "E4",
                     "--epochs", "2", "--lr", "1e-3", *SMALL, "--out", "OUT"], cwd, threads=1)
    assert train.returncode == 0, train
    out = cwd / "OUT"
    other = cwd.parent / f"{cwd.name}-inputs" / "ETTh1_swapped.csv"
    other.parent.mkdir()
    frame = pd.read_csv(etth1)
    frame[["date", "HULL", "HUFL", *frame.columns[3:]]].to_csv(other, index=False)
    runs = run_many({
        "evaluate": (["evaluate", "--checkpoint", out, "--data", etth1, "--device", "cpu",
                      "--plots", cwd / "plots", "--json", cwd / "test.json"], cwd),
        "subset-all": (["evaluate", "--checkpoint", out, "--data", etth1, "--subset", "all"],
                       cwd),
        "other-columns": (["evaluate", "--checkpoint", out, "--data", other], cwd),
    })
    return {"train": train, "out": out, "cwd": cwd, **runs}


def test_a_forecast_run_writes_the_files_of_a_yield_run(trained):
    out = trained["out"]
    assert listing(out) == ["best.pt", "config.yaml", "metrics.json", "tb"]
    config = TrainConfig.from_yaml(out / "config.yaml")
    assert (config.task, config.lookback, config.horizon, config.train_stride) == (
        "forecast", 96, 96, 32)
    assert config.ablation_id == "E4" and config.monitor_metric == "val_mse"
    assert set(yaml.safe_load((out / "config.yaml").read_text())) == set(
        TrainConfig.field_names())
    stdout = trained["train"].stdout
    assert "MSE" in stdout and "RMSE" not in stdout
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert {"Metrics/MSE", "Metrics/MAE", "Loss/val", "LR"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("Metrics/MSE")] == [1, 2]


def test_metrics_json_has_the_scores_and_both_baselines_on_the_same_windows(trained):
    m = json.loads((trained["out"] / "metrics.json").read_text())
    assert m["task"] == "forecast" and m["monitor"] == "val_mse" and m["synthetic"] is False
    assert m["best_value"] == m["val"]["mse"]
    assert "windows train 265 / val 2785 / test 2785" in m["data"]  # every val/test window
    for part in ("val", "test"):
        assert set(m[part]) == {"mse", "mae"}
        for name in ("naive", "dlinear"):
            assert set(m["baselines"][name][part]) == {"mse", "mae"}
    # TSLib's repeat-last-value on ETTh1 (L = H = 96), as test_forecast_baselines pins it
    assert m["baselines"]["naive"]["test"]["mse"] == pytest.approx(1.2944, abs=5e-4)
    # the short strided run already beats the naive forecast on the test split
    assert m["test"]["mse"] < 0.6 * m["baselines"]["naive"]["test"]["mse"]
    assert m["test"]["mae"] < m["baselines"]["naive"]["test"]["mae"]


def test_evaluate_scores_the_checkpoint_like_the_run_and_draws(trained):
    run = trained["evaluate"]
    assert run.returncode == 0, run
    result = json.loads(run.stdout.split("\nplots:")[0])
    saved = json.loads((trained["out"] / "metrics.json").read_text())
    assert result["subset"] == "test" and result["n"] == 2785 and result["backbone"] == "tiny"
    assert result["mse"] == pytest.approx(saved["test"]["mse"], rel=1e-9)
    assert result["mae"] == pytest.approx(saved["test"]["mae"], rel=1e-9)
    assert result["naive"] == pytest.approx(saved["baselines"]["naive"]["test"], rel=1e-9)
    assert json.loads((trained["cwd"] / "test.json").read_text()) == result
    from timesclip.forecast_plots import read_examples, read_horizon

    plots = trained["cwd"] / "plots"
    assert sorted(p.name for p in plots.iterdir()) == [
        "forecast_examples.csv", "forecast_examples.png", "horizon_mse.csv",
        "horizon_mse.png"]  # E4 has no variate selection: no attention
    assert read_examples(plots / "forecast_examples.csv")["window"].nunique() == 4
    horizon = read_horizon(plots / "horizon_mse.csv")
    assert len(horizon) == 96
    assert horizon["timesclip_mse"].mean() == pytest.approx(result["mse"], rel=1e-6)


@pytest.mark.parametrize("case, needles", [
    ("subset-all", ["--subset all is for yield files"]),
    ("other-columns", ["ETTh1_swapped.csv", "differ from the model's", "same columns"]),
])
def test_evaluate_refuses_in_one_line(trained, case, needles):
    assert_one_line_error(trained[case], 2, *needles)


def test_config_yaml_re_runs_a_forecast_run_exactly(etth1, tmp_path):
    """The full model (vision, contrastive, cross selection) on the first rows of ETTh1:
    `train --config OUT/config.yaml` repeats it epoch by epoch, its features read back from
    the fp16 cache the first run wrote."""
    head = tmp_path / "etth1_head.csv"
    pd.read_csv(etth1, nrows=600).to_csv(head, index=False)
    first = run_cli(["train", "--task", "forecast", "--data", head, "--borders", "ratio",
                     "--lookback", "48", "--horizon", "24", "--train-stride", "4",
                     "--epochs", "2", *SMALL, "--out", "A"], tmp_path, threads=1)
    assert first.returncode == 0, first
    again = run_cli(["train", "--config", tmp_path / "A" / "config.yaml", "--data", head,
                     "--no-baselines", "--out", "B"], tmp_path, threads=1)
    assert again.returncode == 0, again
    assert "computed and stored in cache" in first.stdout
    assert "loaded from cache" in again.stdout
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "AB")
    assert (a["val"], a["test"], a["best_epoch"]) == (b["val"], b["test"], b["best_epoch"])
    assert TrainConfig.from_yaml(tmp_path / "A" / "config.yaml").ablation_id == "E1"
    assert set(b["baselines"]) == {"naive"}  # --no-baselines: DLinear not trained
    assert "DLinear not trained" in again.stdout


# ----------------------------------------------------------------------------- bad input
def _without(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    return frame.drop(columns=[column])


#: case -> (args after `train`, substrings of the one error line); "{x}" -> inputs/x.
BAD = {
    "no-OT-column": (["--task", "forecast", "--data", "{no_ot.csv}"],
                     ["no_ot.csv", "no 'OT' column"]),
    "no-date-column": (["--task", "forecast", "--data", "{no_date.csv}"],
                       ["no_date.csv", "not 'date'"]),
    "lookback-longer-than-a-split": (["--task", "forecast", "--data", "{etth1}",
                                      "--lookback", "9000"],
                                     ["ETTh1.csv.gz", "lookback 9000", "shorter --lookback"]),
    "horizon-longer-than-a-split": (["--task", "forecast", "--data", "{etth1}",
                                     "--horizon", "3000"],
                                    ["ETTh1.csv.gz", "the val split", "--horizon"]),
    "yield-file-to-forecast": (["--task", "forecast", "--data", "{yield}"],
                               ["looks like a yield file", "use --task yield"]),
    "forecast-file-to-yield": (["--data", "{etth1}"],
                               ["ETTh1.csv.gz", "looks like a forecasting file",
                                "use --task forecast"]),
    "two-files": (["--task", "forecast", "--data", "{etth1}", "{no_ot.csv}"],
                  ["reads one file, got 2"]),
    "no-file": (["--task", "forecast"], ["--task forecast needs --data FILE"]),
    "yield-only-flag": (["--task", "forecast", "--data", "{etth1}", "--input-steps", "6"],
                        ["input_steps (6) only applies to the yield task"]),
    "forecast-only-flag": (["--data", "{yield}", "--lookback", "48"],
                           ["lookback (48) only applies to the forecast task",
                            "--task forecast"]),
    "yield-monitor": (["--task", "forecast", "--data", "{etth1}", "--monitor", "val_rmse"],
                      ["monitor must be one of val_loss, val_mae, val_mse"]),
    "no-baselines-for-yield": (["--data", "{yield}", "--no-baselines"],
                               ["--no-baselines applies to --task forecast"]),
}


@pytest.fixture(scope="module")
def inputs(etth1, small_csvs, tmp_path_factory):
    d = tmp_path_factory.mktemp("forecast-bad")
    frame = pd.read_csv(etth1, nrows=400)
    _without(frame, "OT").to_csv(d / "no_ot.csv", index=False)
    _without(frame, "date").to_csv(d / "no_date.csv", index=False)
    return {"etth1": str(etth1), "yield": str(small_csvs[0]), "dir": d}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_forecast_input_is_one_line_exit_2_and_writes_nothing(case, inputs, tmp_path,
                                                                   monkeypatch, capsys):
    args, needles = BAD[case]
    args = [inputs.get(a[1:-1], str(inputs["dir"] / a[1:-1])) if a.startswith("{") else a
            for a in args]
    monkeypatch.chdir(tmp_path)
    code = main(["train", *SMALL, "--out", "OUT", *args])
    err = capsys.readouterr().err.splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error:"), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert listing(tmp_path) == []


def test_a_bad_forecast_input_exits_2_as_a_process(inputs, tmp_path):
    run = run_cli(["train", "--task", "forecast", "--data", inputs["dir"] / "no_ot.csv",
                   *SMALL, "--out", "OUT"], tmp_path)
    assert_one_line_error(run, 2, "no 'OT' column")
    assert listing(tmp_path) == []
