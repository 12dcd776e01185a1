"""A cross-validated search (--cv) end to end, on the real Illinois soybean data.

Real `python -m tuner.search` processes: three seasons (2020-2022, test year 2022), so
`--cv years` makes two folds (2020, 2021). The search is SIGKILLed after its third
journaled result and resumed to the end. What must hold: every reported value is the mean
over the folds (the journal keeps each fold's value beside it), each checkpoint holds one
model per fold, the selected configuration is retrained on every training row for its
selected epochs and only that model is scored on test (exactly what `timesclip.cv.retrain`
gives for the exported configuration), and the report and best_config.yaml say so.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from real_data import illinois_csvs
from search_helpers import check_consistent, journal_events, killed_then_resumed

pytestmark = pytest.mark.e2e

NAME, SAMPLES, EPOCHS = "cv", 3, 3
YEAR_FLAGS = ("--split", "year", "--test-year", "2022", "--input-steps", "12")


def _files() -> list[str]:
    files = [str(p) for p in illinois_csvs() if p.stem[-4:] in ("2020", "2021", "2022")]
    assert len(files) == 3, files
    return files


def _args(storage, *extra: str) -> list[str]:
    return ["tuner.search", "--space", "quick", "--data", *_files(), *YEAR_FLAGS,
            "--cv", "years", "--backbone", "tiny", "--num-samples", str(SAMPLES),
            "--max-epochs", str(EPOCHS), "--storage", str(storage), "--name", NAME,
            "--num-cpus", "2", "--no-dashboard", "--cpus-per-trial", "1", "--seed", "3",
            *extra]


@pytest.fixture(scope="module")
def cv_search(tmp_path_factory):
    """Killed after its third result, then resumed to the end."""
    storage = tmp_path_factory.mktemp("cv")
    killed, stdout = killed_then_resumed(_args(storage), "cv search")
    assert "selection: --cv years, val_rmse is the mean over 2 folds" in killed.stdout
    return {"exp": storage / NAME, "stdout": stdout}


def test_every_result_is_the_mean_over_the_folds(cv_search):
    exp = cv_search["exp"]
    counts = check_consistent(exp, SAMPLES)
    assert counts["drivers"] == 2 and counts["interruptions"] == 1
    meta = json.loads((exp / "search_meta.json").read_text())
    assert meta["cv"] == "years" and meta["folds"] == ["year 2020", "year 2021"]
    results = [e["metrics"] for e in journal_events(exp) if e["ev"] == "result"]
    assert results
    for m in results:
        assert m["cv_folds"] == 2
        for name in ("val_rmse", "val_mae", "train_loss"):
            folds = [m[f"fold{k}_{name}"] for k in range(2)]
            assert m[name] == pytest.approx(np.mean(folds), rel=1e-9)
        assert m["fold0_val_rmse"] != m["fold1_val_rmse"]  # two different models


def test_a_checkpoint_holds_one_model_per_fold(cv_search):
    from tuner.journal import load_state

    exp = cv_search["exp"]
    state = load_state(exp)
    for trial in state.trials.values():
        ckdir = exp / "trials" / trial.dirname / trial.checkpoint
        folds = json.loads((ckdir / "folds.json").read_text())
        assert folds["cv"] == "years" and len(folds["fingerprints"]) == 2
        for k in range(2):
            assert (ckdir / f"fold_{k}" / "best.pt").is_file()
            assert (ckdir / f"fold_{k}" / "last.pt").is_file()


def test_the_selected_configuration_is_retrained_and_scored_once(cv_search):
    from timesclip.config import TrainConfig
    from timesclip.cv import retrain
    from timesclip.data import load_bundle
    from tuner.journal import load_state
    from tuner.outcomes import best_value, select_best

    exp = cv_search["exp"]
    meta = json.loads((exp / "search_meta.json").read_text())
    best_test = json.loads((exp / "best_test.json").read_text())
    best = select_best(load_state(exp).trials.values(), "val_rmse", "min")
    value, epoch = best_value(best.history, "val_rmse", "min")
    assert best_test["trial_id"] == best.tid and best_test["val_rmse"] == value
    assert best_test["selected_epoch"] == best_test["epoch"] == \
        best_test["retrain_epochs"] == epoch
    assert best_test["checkpoint"] == "best_retrain"
    assert (exp / "best_retrain" / "best.pt").is_file()

    # the exported configuration retrained here gives the very test score of the search
    config = TrainConfig.from_yaml(exp / "report" / "best_config.yaml")
    data = load_bundle(config, meta["data"]["paths"])
    assert best_test["retrain_rows"] == len(data.train) + len(data.val)
    again = retrain(config, data, epoch, checkpoint_dir=exp.parent / "again")
    assert again.test == pytest.approx(best_test["test"], rel=1e-5)
    assert "retrained on all" in cv_search["stdout"]


def test_report_and_export_say_how_it_was_selected(cv_search):
    exp = cv_search["exp"]
    rows = json.loads((exp / "best_test.json").read_text())["retrain_rows"]
    summary = (exp / "report" / "summary.md").read_text()
    assert "as the mean over 2 cross-validation folds (--cv years: year 2020; year 2021" \
        in summary
    assert f"scored with the configuration retrained on all {rows} training rows" in summary
    assert "refitted on train + val" in summary  # the references saw the same rows
    provenance = yaml.safe_load((exp / "report" / "best_config.yaml").read_text())[
        "provenance"]
    assert provenance["metric"]["split"] == "mean over the folds of --cv years"
    assert provenance["test"]["model"].startswith(f"retrained on all {rows} training rows")
    page = (exp / "report" / "index.html").read_text()
    assert "id='selection'" in page and "mean over 2 cross-validation folds" in page
    assert "id='retrained'" in page
