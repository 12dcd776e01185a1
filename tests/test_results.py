"""tuner.results on REAL (small) Ray Tune experiments.

The trainables here are stand-ins that write the on-disk layout of tuner/trainable.py
(train_config.yaml, the CONTRACT metrics through tune.report, final.json when fit() would
return) without training a model: these tests are about reading and reporting, so the
metrics are chosen functions of the config and every expectation is computed from them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from timesclip.config import TrainConfig
from timesclip.errors import UserError
from tuner.results import (
    CONTRACT_COLUMNS,
    asha_rungs,
    build_report,
    markdown_table,
    summarize_error,
    trials_table,
    write_summary,
)

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # noqa: E402

MAX_EPOCHS = 8
# lr -> (quality offset q, behaviour). val_rmse(epoch) = q + 1/epoch.
SEARCH_PLAN = {
    1e-3: (0.5, "full"),  # runs to max_epochs: ASHA stops it at max_t, no final.json
    2e-3: (0.2, "early"),  # trainer early stopping after 5 epochs: final.json, best trial
    3e-3: (0.0, "nan"),  # passes rung 1, then raises NonFiniteLossError in epoch 2
    4e-3: (10.0, "full"),  # far worse: ASHA stops it at the first rung
    5e-3: (20.0, "full"),
    6e-3: (30.0, "full"),
}
ARM_RMSE = {"E1": 1.0, "E2": 1.2, "E3": 1.1, "E4": 1.5, "E5": 2.0}


def _quiet(*_: object) -> None:
    return None


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _search_trainable(plan: dict, max_epochs: int):
    """A function trainable built in a closure so Ray pickles it by value."""

    def trainable(params: dict) -> None:
        import json as _json
        import os

        from ray import tune as _tune

        from timesclip.config import TrainConfig as _TC
        from timesclip.errors import NonFiniteLossError

        trial_dir = _tune.get_context().get_trial_dir()
        config = _TC(backbone="tiny", epochs=max_epochs, lr=params["lr"],
                     contrastive_weight=params["contrastive_weight"])
        config.to_yaml(os.path.join(trial_dir, "train_config.yaml"))
        q, behaviour = plan[params["lr"]]
        last = 5 if behaviour == "early" else max_epochs
        for epoch in range(1, last + 1):
            if behaviour == "nan" and epoch == 2:
                raise NonFiniteLossError(epoch=2, step=3, value=float("nan"))
            rmse = q + 1.0 / epoch
            _tune.report({"epoch": epoch, "train_loss": rmse ** 2 + 0.1,
                          "train_regression_loss": rmse ** 2, "train_contrastive_loss": 0.1,
                          "val_loss": rmse ** 2, "val_rmse": rmse, "val_mae": 0.8 * rmse,
                          "val_r2": 1.0 - rmse / 10.0, "val_mape": 10.0 * rmse,
                          "lr": params["lr"]})
        final = {"epochs_run": last, "best_epoch": last, "stopped_early": behaviour == "early",
                 "best_val_rmse": q + 1.0 / last,
                 "val": {"rmse": q + 1.0 / last, "mae": 0.0, "r2": 0.0, "mape": 0.0},
                 "test": None, "params": {"total": 100, "trainable": 60, "frozen": 40},
                 "train_seconds": 1.5, "backbone": "tiny", "ablation": None,
                 "seed": config.seed}
        with open(os.path.join(trial_dir, "final.json"), "w") as fh:
            _json.dump(final, fh)

    return trainable


def _ablation_trainable(arm_rmse: dict):
    def trainable(params: dict) -> None:
        import json as _json
        import os

        from ray import tune as _tune

        from timesclip.config import TrainConfig as _TC
        from timesclip.config import apply_ablation

        trial_dir = _tune.get_context().get_trial_dir()
        arm, seed = params["ablation"], int(params["seed"])
        config = apply_ablation(_TC(backbone="tiny", epochs=2, seed=seed), arm)
        config.to_yaml(os.path.join(trial_dir, "train_config.yaml"))
        base = arm_rmse[arm] + 0.1 * seed
        for epoch in (1, 2):
            if arm == "E5" and seed == 1 and epoch == 2:
                raise RuntimeError("worker lost")
            _tune.report({"epoch": epoch, "val_rmse": base + 1.0 / epoch, "val_mae": base,
                          "val_r2": 0.5, "val_mape": 5.0, "val_loss": base})
        test = {"rmse": base, "mae": 0.7 * base, "r2": 0.3 - 0.1 * seed, "mape": 4.0 + seed}
        params_total = 1000 if config.use_vision else 800
        final = {"epochs_run": 2, "best_epoch": 2, "stopped_early": False,
                 "best_val_rmse": base + 0.5, "val": test, "test": test,
                 "params": {"total": params_total, "trainable": 300,
                            "frozen": params_total - 300},
                 "train_seconds": 2.0 + seed, "backbone": "tiny", "ablation": arm,
                 "seed": seed}
        with open(os.path.join(trial_dir, "final.json"), "w") as fh:
            _json.dump(final, fh)

    return trainable


def _meta(name: str, kind: str, sampled: list[str], budget: dict, data: dict) -> dict:
    return {"name": name, "space": "full" if kind == "search" else "ablation", "kind": kind,
            "metric": "val_rmse", "mode": "min", "backbone": "tiny", "data": data,
            "base_config": TrainConfig(backbone="tiny").to_dict(), "sampled_names": sampled,
            "budget": budget, "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
            "versions": {"timesclip": "0.1.0", "ray": ray.__version__},
            "started": "2026-01-01T00:00:00+00:00"}


@pytest.fixture(scope="module")
def bundle():
    from timesclip.data import load_bundle

    return load_bundle(TrainConfig(backbone="tiny"), None)


@pytest.fixture(scope="module")
def search_exp(tmp_path_factory, ray_session) -> Path:
    storage = tmp_path_factory.mktemp("storage")
    budget = {"num_samples": len(SEARCH_PLAN), "max_epochs": MAX_EPOCHS, "grace_period": 1,
              "reduction_factor": 2, "max_concurrent": 1}
    tuner = tune.Tuner(
        _search_trainable(SEARCH_PLAN, MAX_EPOCHS),
        param_space={"lr": tune.grid_search(list(SEARCH_PLAN)), "contrastive_weight": 0.05},
        tune_config=tune.TuneConfig(
            metric="val_rmse", mode="min", max_concurrent_trials=1,
            scheduler=ASHAScheduler(time_attr="epoch", max_t=MAX_EPOCHS, grace_period=1,
                                    reduction_factor=2)),
        run_config=tune.RunConfig(storage_path=str(storage), name="search", verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)))
    tuner.fit()
    exp = storage / "search"
    data = {"paths": None, "description": "synthetic test data", "fingerprint": "f" * 16,
            "synthetic": True}
    meta = _meta("search", "search", ["lr", "contrastive_weight"], budget, data)
    (exp / "search_meta.json").write_text(json.dumps(meta))
    return exp


@pytest.fixture(scope="module")
def search_report(search_exp):
    return build_report(search_exp, echo=_quiet)


@pytest.fixture(scope="module")
def ablation_exp(tmp_path_factory, ray_session, bundle) -> Path:
    storage = tmp_path_factory.mktemp("storage_ablation")
    tuner = tune.Tuner(
        _ablation_trainable(ARM_RMSE),
        param_space={"ablation": tune.grid_search(list(ARM_RMSE)),
                     "seed": tune.grid_search([0, 1])},
        tune_config=tune.TuneConfig(metric="val_rmse", mode="min", max_concurrent_trials=2,
                                    scheduler=FIFOScheduler()),
        run_config=tune.RunConfig(storage_path=str(storage), name="ablation", verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)))
    tuner.fit()
    exp = storage / "ablation"
    data = {"paths": None, "description": bundle.description,
            "fingerprint": bundle.fingerprint, "synthetic": True}
    budget = {"num_samples": 1, "max_epochs": 2, "grace_period": 2, "reduction_factor": 2,
              "max_concurrent": 2}
    (exp / "search_meta.json").write_text(
        json.dumps(_meta("ablation", "ablation", ["ablation", "seed"], budget, data)))
    return exp


# ------------------------------------------------------------------------------ helpers
def _read_both(report_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(report_dir / "trials.csv"), pd.read_parquet(report_dir / "trials.parquet")


def _assert_same_table(csv: pd.DataFrame, parquet: pd.DataFrame) -> None:
    assert list(csv.columns) == list(parquet.columns)
    assert len(csv) == len(parquet)
    for col in csv.columns:
        a, b = csv[col], parquet[col]
        if pd.api.types.is_numeric_dtype(b) and not pd.api.types.is_bool_dtype(b):
            np.testing.assert_allclose(a.astype(float).to_numpy(),
                                       b.astype("float64").to_numpy(), equal_nan=True,
                                       err_msg=col)
        else:
            assert a.fillna("").astype(str).tolist() == b.fillna("").astype(str).tolist(), col


def _by_lr(table: pd.DataFrame) -> dict[float, pd.Series]:
    return {float(row["config.lr"]): row for _, row in table.iterrows()}


# ------------------------------------------------------------------------------ search kind
def test_trials_table_contract_columns_and_formats_agree(search_report):
    csv, parquet = _read_both(search_report.directory)
    expected = CONTRACT_COLUMNS + ["config.lr", "config.contrastive_weight"]
    for table in (csv, parquet):
        assert all(col in table.columns for col in expected)
        assert len(table) == len(SEARCH_PLAN)
    _assert_same_table(csv, parquet)
    # Sorted by best_val_rmse ascending, NaN last.
    values = parquet["best_val_rmse"].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    assert np.all(np.diff(finite) >= 0)
    assert not np.isfinite(values[len(finite):]).any()


def test_statuses_errors_and_stop_reasons(search_report):
    table = pd.read_parquet(search_report.trials_parquet)
    rows = _by_lr(table)
    failed = rows[3e-3]
    assert failed["status"] == "ERROR"
    assert failed["stopped_by"] == "error"
    assert "NonFiniteLossError" in failed["error"] and "non-finite loss" in failed["error"]
    assert "\n" not in failed["error"] and len(failed["error"]) <= 300
    assert failed["epochs_run"] == 1

    early = rows[2e-3]
    assert early["stopped_by"] == "early_stopping" and early["epochs_run"] == 5
    assert early["params_total"] == 100 and early["train_seconds"] == pytest.approx(1.5)
    full = rows[1e-3]
    assert full["stopped_by"] == "completed" and full["epochs_run"] == MAX_EPOCHS
    for lr in (4e-3, 5e-3, 6e-3):
        row = rows[lr]
        assert row["status"] == "TERMINATED"  # Ray reports ASHA stops as TERMINATED
        assert row["stopped_by"] == "asha"
        assert row["epochs_run"] < MAX_EPOCHS
        assert not (search_report.directory.parent / row["trial_dir"] / "final.json").exists()
    for lr, (q, _) in SEARCH_PLAN.items():
        row = rows[lr]
        assert row["error"] == ("" if lr != 3e-3 else row["error"])
        assert row["best_val_rmse"] == pytest.approx(q + 1.0 / row["epochs_run"])
        assert row["last_val_rmse"] == pytest.approx(q + 1.0 / row["epochs_run"])
        assert row["best_epoch"] == row["epochs_run"]
        assert row["best_val_mae"] == pytest.approx(0.8 * row["best_val_rmse"])
        assert row["wall_seconds"] >= 0
        assert row["config.contrastive_weight"] == pytest.approx(0.05)
        assert row["backbone"] == "tiny"


def test_best_config_is_the_min_val_rmse_trial(search_report):
    table = pd.read_parquet(search_report.trials_parquet)
    ok = table[table["status"] != "ERROR"]
    best_row = ok.loc[ok["best_val_rmse"].idxmin()]
    assert search_report.best_trial_id == best_row["trial_id"]
    assert best_row["config.lr"] == pytest.approx(2e-3)

    config = TrainConfig.from_yaml(search_report.best_config)  # provenance is ignored
    trial_config = TrainConfig.from_yaml(
        search_report.directory.parent / best_row["trial_dir"] / "train_config.yaml")
    assert config == trial_config
    provenance = yaml.safe_load(search_report.best_config.read_text())["provenance"]
    assert provenance["trial_id"] == best_row["trial_id"]
    assert provenance["metric"]["name"] == "val_rmse"
    assert provenance["metric"]["value"] == pytest.approx(best_row["best_val_rmse"])
    assert provenance["data"]["fingerprint"] == "f" * 16
    assert provenance["backbone"] == "tiny"
    assert provenance["versions"]["ray"] == ray.__version__
    assert "test" not in provenance  # no best_test.json in this experiment


def test_summary_mentions_backbone_rungs_failures(search_report):
    text = search_report.summary_md.read_text()
    assert "random toy backbone" in text and "NOT from pretrained CLIP" in text
    assert "SYNTHETIC" in text and "f" * 16 in text
    assert "NonFiniteLossError" in text
    assert "no best_test.json" in text
    table = pd.read_parquet(search_report.trials_parquet)
    # Rung table: the row for epoch 1 counts exactly the ASHA-stopped trials that ended there.
    stopped_at_1 = int(((table["epochs_run"] == 1) & (table["stopped_by"] == "asha")).sum())
    assert f"| 1 | yes | {len(table)} | {stopped_at_1} |" in text


def test_rebuild_is_deterministic_and_test_metrics_exported(search_exp, search_report,
                                                            tmp_path):
    exp = tmp_path / "copy"
    shutil.copytree(search_exp, exp)
    first = build_report(exp, echo=_quiet).trials_csv.read_bytes()
    best_id = pd.read_csv(exp / "report" / "trials.csv")["trial_id"][0]
    (exp / "best_test.json").write_text(json.dumps(
        {"trial_id": best_id, "val_rmse": 0.4,
         "test": {"rmse": 0.55, "mae": 0.4, "r2": 0.8, "mape": 7.0}}))
    paths = build_report(exp, echo=_quiet)
    assert paths.trials_csv.read_bytes() == first
    assert first == search_report.trials_csv.read_bytes()  # the copy reports the same trials
    provenance = yaml.safe_load(paths.best_config.read_text())["provenance"]
    assert provenance["test"]["rmse"] == pytest.approx(0.55)
    summary = paths.summary_md.read_text()
    assert "test split, evaluated once for the exported configuration" in summary
    assert not list(exp.glob(".report-*"))  # no temporary directories left behind


def _rewrite_statuses(exp: Path, new: dict[str, str]) -> None:
    state_file = sorted(exp.glob("experiment_state-*.json"))[-1]
    data = json.loads(state_file.read_text())
    for entry in data["trial_data"]:
        state = json.loads(entry[0])
        if state["trial_id"] in new:
            state["status"] = new[state["trial_id"]]
            entry[0] = json.dumps(state, indent=2)
    state_file.write_text(json.dumps(data))


def test_interrupted_experiment(search_exp, tmp_path):
    exp = tmp_path / "interrupted"
    shutil.copytree(search_exp, exp, ignore=shutil.ignore_patterns("report"))
    table = pd.read_parquet(build_report(exp, echo=_quiet).trials_parquet)
    rows = _by_lr(table)
    running, pending = rows[4e-3], rows[5e-3]
    _rewrite_statuses(exp, {running["trial_id"]: "RUNNING", pending["trial_id"]: "PENDING"})
    (exp / pending["trial_dir"] / "result.json").unlink()
    (exp / pending["trial_dir"] / "train_config.yaml").unlink()
    with open(exp / running["trial_dir"] / "result.json", "a") as fh:
        fh.write('{"epoch": 2, "val_rm')  # a line cut off by the interruption
    shutil.rmtree(exp / "report")

    paths = build_report(exp, echo=_quiet)
    after = _by_lr(pd.read_parquet(paths.trials_parquet))
    assert after[4e-3]["status"] == "RUNNING" and after[4e-3]["stopped_by"] == "unfinished"
    assert after[4e-3]["epochs_run"] == running["epochs_run"]
    assert after[5e-3]["status"] == "PENDING" and after[5e-3]["epochs_run"] == 0
    assert math.isnan(after[5e-3]["best_val_rmse"])
    assert after[5e-3]["config.lr"] == pytest.approx(5e-3)  # from Ray's params
    assert "Interrupted" in paths.summary_md.read_text()
    assert paths.best_config is not None


def test_no_finite_metric_means_no_best_config(search_exp, tmp_path):
    exp = tmp_path / "nometric"
    shutil.copytree(search_exp, exp, ignore=shutil.ignore_patterns("report"))
    for result in exp.glob("*/result.json"):
        result.write_text("")
    for final in exp.glob("*/final.json"):  # would otherwise supply best_val_rmse
        final.unlink()
    paths = build_report(exp, echo=_quiet)
    assert paths.best_config is None
    assert not (paths.directory / "best_config.yaml").exists()
    assert "best_config.yaml was not written" in paths.summary_md.read_text()


def test_not_an_experiment_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="search_meta.json"):
        build_report(tmp_path, echo=_quiet)
    with pytest.raises(UserError, match="not a directory"):
        build_report(tmp_path / "missing", echo=_quiet)


# ------------------------------------------------------------------------------ ablation kind
def test_ablation_report(ablation_exp, bundle):
    paths = build_report(ablation_exp, echo=_quiet)
    assert paths.best_config is None and not (paths.directory / "best_config.yaml").exists()
    table = pd.read_csv(paths.ablation_csv, keep_default_na=False, na_values=[""])
    assert table["row"].tolist() == ["E1", "E2", "E3", "E4", "E5", "mean", "ridge"]
    by_row = table.set_index("row")
    for arm, base in ARM_RMSE.items():
        values = [base, base + 0.1] if arm != "E5" else [base]
        assert by_row.loc[arm, "n"] == len(values)
        assert by_row.loc[arm, "test_rmse_mean"] == pytest.approx(np.mean(values))
        if len(values) > 1:
            assert by_row.loc[arm, "test_rmse_std"] == pytest.approx(np.std(values, ddof=1))
            assert by_row.loc[arm, "test_r2_mean"] == pytest.approx(0.25)
        else:
            assert math.isnan(by_row.loc[arm, "test_rmse_std"])
    assert by_row.loc["E4", "params_total"] == 800 and by_row.loc["E1", "params_total"] == 1000
    assert by_row.loc["E1", "train_seconds_mean"] == pytest.approx(2.5)
    assert "1 of 2 trials" in by_row.loc["E5", "note"]
    for ref in ("mean", "ridge"):
        for metric in ("rmse", "mae", "r2", "mape"):
            assert np.isfinite(by_row.loc[ref, f"test_{metric}_mean"])
    # The mean predictor, recomputed here: R² <= 0 on test by construction.
    mean = bundle.train.y_raw.mean()
    rmse = float(np.sqrt(np.mean((bundle.test.y_raw - mean) ** 2)))
    assert by_row.loc["mean", "test_rmse_mean"] == pytest.approx(rmse)
    assert by_row.loc["mean", "test_r2_mean"] <= 0
    assert by_row.loc["ridge", "params_total"] == bundle.train.x[0].size + 1

    trials = pd.read_parquet(paths.trials_parquet)
    for col in ("config.ablation", "config.seed", "config.use_vision", "config.use_contrastive",
                "config.use_variate_selection", "config.language_backbone"):
        assert col in trials
    e4 = trials[trials["config.ablation"] == "E4"].iloc[0]
    assert not e4["config.use_vision"] and e4["test_rmse"] >= ARM_RMSE["E4"]
    md = paths.ablation_md.read_text()
    assert "random toy backbone" in md and "test split" in md and "E5" in md and "ridge" in md
    # Deterministic rebuild, the baselines recomputed from search_meta.json this time.
    again = build_report(ablation_exp, data_bundle=bundle, echo=_quiet)
    assert again.ablation_csv.read_bytes() == paths.ablation_csv.read_bytes()
    assert again.trials_csv.read_bytes() == paths.trials_csv.read_bytes()


def test_ablation_baselines_unavailable_when_data_changed(ablation_exp, bundle, tmp_path):
    exp = tmp_path / "changed"
    shutil.copytree(ablation_exp, exp, ignore=shutil.ignore_patterns("report"))
    other = dataclasses.replace(bundle, fingerprint="0" * 16)
    notes: list[str] = []
    paths = build_report(exp, data_bundle=other, echo=notes.append)
    table = pd.read_csv(paths.ablation_csv, keep_default_na=False, na_values=[""])
    refs = table.set_index("row").loc[["mean", "ridge"]]
    assert refs["test_rmse_mean"].isna().all()
    assert refs["note"].str.contains("data changed").all()
    assert any("data changed" in n for n in notes)


# ------------------------------------------------------------------------------ CLI
def test_cli_bad_path_is_one_line_exit_2(tmp_path):
    for target in (tmp_path / "nope", tmp_path):
        proc = subprocess.run([sys.executable, "-m", "tuner.results", str(target)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(target) in lines[0]


def test_cli_rebuilds_report(search_exp, tmp_path):
    exp = tmp_path / "cli"
    shutil.copytree(search_exp, exp, ignore=shutil.ignore_patterns("report"))
    proc = subprocess.run([sys.executable, "-m", "tuner.results", str(exp)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(exp / "report" / "trials.parquet") in proc.stdout
    assert "best_config.yaml" in proc.stdout
    assert "| trial_id |" in proc.stdout
    assert (exp / "report" / "summary.md").is_file()


# ------------------------------------------------------------------------------ units
def test_summarize_error_keeps_message_and_chain():
    text = ("Failure # 1 (occurred at 2026-01-01_00-00-00)\n"
            "\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1)\n"
            '  File "x.py", line 3, in f\n'
            "    raise ValueError('a')\n"
            "ValueError: first failure\n"
            "Failure # 2 (occurred at 2026-01-01_00-00-01)\n"
            '  File "x.py", line 3, in f\n'
            "pkg.mod.DataError: bad file data.csv\nsecond line of the message\n\n"
            "During handling of the above exception, another exception occurred:\n\n"
            '  File "ray/air/util.py", line 5\n'
            "TypeError: cannot copy\n")
    assert summarize_error(text) == ("DataError: bad file data.csv second line of the message"
                                     " -> TypeError: cannot copy")
    assert summarize_error("Failure # 1 (x)\nsomething odd happened\n") == \
        "something odd happened"


def test_asha_rungs_and_markdown():
    assert asha_rungs({"grace_period": 1, "reduction_factor": 2, "max_epochs": 8}) == \
        [1, 2, 4, 8]
    assert asha_rungs({"grace_period": 2, "reduction_factor": 3, "max_epochs": 10}) == \
        [2, 6, 10]
    assert asha_rungs({"grace_period": 1, "reduction_factor": 2.5, "max_epochs": 10}) == \
        [1, 3, 7, 10]
    assert asha_rungs({}) == []
    table = markdown_table(["a", "b"], [[1, "x|y"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]


def test_empty_experiment_table_and_summary(tmp_path):
    meta = _meta("empty", "search", ["lr"], {"max_epochs": 4, "grace_period": 1,
                                             "reduction_factor": 2}, {"synthetic": False})
    table = trials_table([], meta)
    assert list(table.columns[:len(CONTRACT_COLUMNS)]) == CONTRACT_COLUMNS
    assert "config.lr" in table.columns and len(table) == 0
    write_summary(tmp_path / "summary.md", meta, table, None, None, [], None)
    text = (tmp_path / "summary.md").read_text()
    assert "| total | 0 |" in text and "best_config.yaml was not written" in text
