"""A forecasting search on the paper's own task: ETTh1, the forecast space, the tiny backbone.

Real `python -m tuner.search` processes: the search is SIGKILLed after its third journaled
result and resumed (it must end as consistent as a yield search does), its exported
best_config.yaml re-trains exactly with `python -m timesclip train --config`, and its
index.html shows the forecasting figures in a real browser.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from real_data import forecast_csv
from search_helpers import (
    check_consistent,
    cli,
    journal_events,
    killed_then_resumed,
    ok,
    tb_scalars,
)
from test_report_browser import assert_page_ok, chromium, render  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

NAME, SAMPLES, EPOCHS, STRIDE = "etth1", 4, 2, 32


def _args(storage, *extra: str) -> list[str]:
    return ["tuner.search", "--space", "forecast", "--data", str(forecast_csv("ETTh1")),
            "--backbone", "tiny", "--train-stride", str(STRIDE), "--num-samples",
            str(SAMPLES), "--max-epochs", str(EPOCHS), "--storage", str(storage),
            "--name", NAME, "--num-cpus", "2", "--no-dashboard", "--cpus-per-trial", "1",
            "--gpus-per-trial", "0", "--seed", "7", *extra]


@pytest.fixture(scope="module")
def forecast_search(tmp_path_factory):
    """Killed after its third result, then resumed to the end."""
    storage = tmp_path_factory.mktemp("forecast")
    _, stdout = killed_then_resumed(_args(storage), "forecasting search")
    return {"exp": storage / NAME, "stdout": stdout}


def test_the_resumed_search_is_consistent_and_scored_on_every_test_window(forecast_search):
    exp = forecast_search["exp"]
    counts = check_consistent(exp, SAMPLES)
    assert counts["drivers"] == 2 and counts["interruptions"] == 1
    meta = json.loads((exp / "search_meta.json").read_text())
    assert (meta["task"], meta["metric"]) == ("forecast", "val_mse")
    best_test = json.loads((exp / "best_test.json").read_text())
    assert set(best_test["test"]) == {"mse", "mae"}
    baselines = best_test["baselines"]
    assert set(baselines) == {"naive", "dlinear"}
    # the naive forecast scored by the search is the one the baselines hold (same windows)
    assert best_test["naive_on_test"]["mse"] == pytest.approx(baselines["naive"]["test"]["mse"])
    assert best_test["epoch"] == best_test["selected_epoch"]
    summary = (exp / "report" / "summary.md").read_text()
    assert "test split, evaluated once for the exported configuration" in summary
    assert "MSE" in summary and "reference: DLinear" in summary
    assert "test (evaluated once) MSE" in forecast_search["stdout"]
    events = journal_events(exp)
    assert any(e["ev"] == "result" and "val_mse" in e["metrics"] for e in events)


def test_best_config_retrains_the_trial_exactly(forecast_search, tmp_path):
    from tuner.journal import load_state

    exp = forecast_search["exp"]
    best_path = exp / "report" / "best_config.yaml"
    best = yaml.safe_load(best_path.read_text())
    assert best["task"] == "forecast" and best["train_stride"] == STRIDE
    trial = load_state(exp).trials[best["provenance"]["trial_id"]]
    out = tmp_path / "retrain"
    proc, wall = cli("timesclip", "train", "--config", best_path, "--out", out,
                     "--data", forecast_csv("ETTh1"), "--no-baselines", timeout=600)
    print(f"\n[wall] retrain best_config.yaml: {wall:.1f}s")
    ok(proc)
    for tag, name in (("Metrics/MSE", "val_mse"), ("Loss/val", "val_loss")):
        rerun = tb_scalars(out / "tb", tag)
        for epoch, metrics in trial.history.items():
            assert rerun[epoch] == float(np.float32(metrics[name])), (tag, epoch)


def test_forecast_page_in_chromium(forecast_search, chromium, tmp_path):  # noqa: F811
    exp = forecast_search["exp"]
    html = (exp / "report" / "index.html").read_text()
    optuna = [n for n in ("param_importance.png", "parallel_coordinates.png", "slice.png")
              if n in html]
    expected = ["search_history.png", "learning_curves.png", *optuna,
                "forecast_examples.png", "horizon_mse.png", "attention.png"]
    seen = render(chromium, exp / "report" / "index.html", tmp_path / "forecast.png")
    print(f"[screenshot] {seen['screenshot']}")
    assert_page_ok(seen, expected)
    assert "ETTh1.csv.gz" in seen["text"] and "Toy backbone." in seen["text"]
    assert "reference: DLinear" in seen["text"] and "test MSE" in seen["text"]
