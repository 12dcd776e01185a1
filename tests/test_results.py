"""tuner.report (and its CLI, tuner.results) on experiment folders written without Ray.

Each experiment is what the search driver leaves behind: `search_meta.json`, a
`journal.jsonl` appended through the real writer (`tuner.journal.Journal.append`), and each
trial's `train_config.yaml` / `final.json`. The metrics are chosen numbers, so every
expectation below is computed from the plan, not read back from the code under test.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from journal_fixtures import ExperimentWriter, rmse_metrics
from search_helpers import in_process

from timesclip.config import TrainConfig, apply_ablation
from timesclip.errors import UserError
from tuner.journal import summarize_error
from tuner.layout import JOURNAL_FILE
from tuner.report import (
    CONTRACT_COLUMNS,
    asha_rungs,
    build_report,
    load_meta,
    load_trials,
    markdown_table,
    trials_table,
    write_summary,
)
from tuner.results import main

MAX_EPOCHS = 8
NODE_A, NODE_B = "10.0.0.1/aaaaaaaa", "10.0.0.2/bbbbbbbb"
SAMPLED = ["use_contrastive", "contrastive_weight", "temperature", "lr"]
ARM_RMSE = {"E1": 1.0, "E2": 1.2, "E3": 1.1, "E4": 1.5, "E5": 2.0}
DIVERGED_ERROR = "diverged: non-finite loss (nan) at epoch 2, step 3"
FAILED_ERROR = "RuntimeError: CUDA error: an illegal memory access was encountered"
RETRY_ERRORS = ["RayActorError: The actor died unexpectedly before finishing this task.",
                "NodeDiedError: node 10.0.0.1 was lost"]


def _quiet(*_: object) -> None:
    return None


def _meta(name: str, kind: str, sampled: list[str], budget: dict, data: dict,
          base: TrainConfig) -> dict:
    return {"name": name, "space": "full" if kind == "search" else "ablation", "kind": kind,
            "metric": "val_rmse", "mode": "min", "backbone": "tiny", "data": data,
            "base_config": base.to_dict(), "sampled_names": sampled, "budget": budget,
            "searcher": "tpe" if kind == "search" else "grid",
            "scheduler": "asha" if kind == "search" else "fifo", "seed": 0,
            "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
            "versions": {"timesclip": "0.1.0", "ray": "9.9.9"},
            "started": "2026-01-01T00:00:00+00:00"}


def _data(bundle, paths) -> dict:
    return {"paths": [str(p) for p in paths], "description": "synthetic test data",
            "fingerprint": bundle.fingerprint, "synthetic": True}


def _v(q: float, epoch: int) -> float:
    """The validation RMSE of the plan: q + 1/epoch."""
    return q + 1.0 / epoch


def _final(tid_config: TrainConfig, epochs: int, best: float, *, test: dict | None = None,
           train_seconds: float = 1.5, total: int = 100) -> dict:
    return {"epochs_run": epochs, "best_epoch": epochs, "stopped_early": epochs < MAX_EPOCHS,
            "best_val_rmse": best, "val": {"rmse": best, "mae": 0.0, "r2": 0.0, "mape": 0.0},
            "test": test, "params": {"total": total, "trainable": 60, "frozen": total - 60},
            "train_seconds": train_seconds, "backbone": "tiny", "ablation": None,
            "seed": tid_config.seed}


def write_search(exp: Path, bundle, paths, base: TrainConfig, *,
                 interrupted: bool = False) -> dict[str, str]:
    """A search of 7 trials over two driver runs (the first interrupted by SIGINT).

    t0000 completed (8 epochs; its final.json has the best TEST score of all)
    t0001 early stopping after 5 epochs: the best validation value of the ended trials
    t0002 diverged at epoch 2 (epoch 1 better than t0001)
    t0003 error after two retries (infrastructure), re-reported epoch 2; epoch 1 the best
    t0004 stopped by ASHA at epoch 1
    t0005 stopped by ASHA at epoch 2; epoch 1 in driver run 1, epoch 2 in run 2
    t0006 stopped by ASHA at epoch 1 (created in driver run 2)
    interrupted=True: run 2 is killed (no driver_end) with t0007 RUNNING and t0008 PENDING.
    """
    budget = {"num_samples": 9 if interrupted else 7, "max_epochs": MAX_EPOCHS,
              "grace_period": 1, "reduction_factor": 2, "max_concurrent": 2}
    w = ExperimentWriter(exp, _meta(exp.name, "search", SAMPLED, budget, _data(bundle, paths),
                                    base))

    def config(params: dict) -> TrainConfig:
        return base.replace(**params, epochs=MAX_EPOCHS)

    w.driver_start(1, 1000.0)
    # t0000: completed, worse validation, far better test metrics
    p0 = {"use_contrastive": False, "lr": 1e-3}
    t0 = w.trial(1001.0, p0)
    w.start(t0, 1002.0)
    w.train_config(t0, config(p0))
    for e in range(1, MAX_EPOCHS + 1):
        w.result(t0, 1002.0 + e, e, rmse_metrics(_v(0.5, e), e),
                 decision="stop" if e == MAX_EPOCHS else "continue")
    w.end(t0, 1011.0, "TERMINATED", "completed", value=_v(0.5, 8), best_epoch=8,
          epochs_run=8)
    w.final(t0, _final(config(p0), 8, _v(0.5, 8),
                       test={"rmse": 0.01, "mae": 0.01, "r2": 0.99, "mape": 0.1}))
    # t0001: early stopping after 5 epochs, the winner
    p1 = {"use_contrastive": True, "contrastive_weight": 0.05, "temperature": 0.07, "lr": 2e-3}
    t1 = w.trial(1012.0, p1)
    w.start(t1, 1013.0)
    w.train_config(t1, config(p1))
    for e in range(1, 6):
        w.result(t1, 1013.0 + e, e, rmse_metrics(_v(0.2, e), e))
    w.end(t1, 1019.0, "TERMINATED", "early_stopping", value=_v(0.2, 5), best_epoch=5,
          epochs_run=5)
    w.final(t1, _final(config(p1), 5, _v(0.2, 5)))
    # t0002: diverged; epoch 1 (0.1) is better than t0001's best (0.4)
    p2 = {"use_contrastive": True, "contrastive_weight": 0.5, "temperature": 0.01, "lr": 3e-3}
    t2 = w.trial(1020.0, p2)
    w.start(t2, 1021.0)
    w.train_config(t2, config(p2))
    w.result(t2, 1022.0, 1, rmse_metrics(0.1, 1))
    w.diverged(t2, 1023.0, 2)
    w.end(t2, 1024.0, "DIVERGED", "diverged", value=0.1, best_epoch=1, epochs_run=1,
          error=DIVERGED_ERROR)
    # t0003: reports 3 epochs on node A, retried twice, re-reports epoch 2 on node B, fails
    p3 = {"use_contrastive": False, "lr": 4e-3}
    t3 = w.trial(1025.0, p3)
    w.start(t3, 1026.0)
    w.train_config(t3, config(p3))
    for e, value in ((1, 0.05), (2, 0.3), (3, 0.2)):
        w.result(t3, 1026.0 + e, e, rmse_metrics(value, e), node=NODE_A)
    w.retry(t3, 1030.0, RETRY_ERRORS[0], node="10.0.0.1")
    w.retry(t3, 1031.0, RETRY_ERRORS[1], node="10.0.0.1")
    w.result(t3, 1033.0, 2, rmse_metrics(0.06, 2), node=NODE_B)
    w.end(t3, 1034.0, "ERROR", "error", value=0.05, best_epoch=1, epochs_run=2,
          error=FAILED_ERROR)
    # t0004: ASHA stops it at the first rung
    p4 = {"use_contrastive": False, "lr": 5e-3}
    t4 = w.trial(1035.0, p4)
    w.start(t4, 1036.0)
    w.train_config(t4, config(p4))
    w.result(t4, 1037.0, 1, rmse_metrics(_v(10.0, 1), 1, seconds=0.25), decision="stop",
             rung=(1.0, _v(10.0, 1)))
    w.end(t4, 1038.0, "TERMINATED", "asha", value=_v(10.0, 1), best_epoch=1, epochs_run=1)
    # t0005: epoch 1 now, then the driver is interrupted
    p5 = {"use_contrastive": False, "lr": 6e-3}
    t5 = w.trial(1050.0, p5)
    w.start(t5, 1050.0)
    w.train_config(t5, config(p5))
    w.result(t5, 1060.0, 1, rmse_metrics(_v(1.0, 1), 1, seconds=0.5), rung=(1.0, _v(1.0, 1)))
    w.driver_end(1100.0, how="interrupted", signal="SIGINT")

    w.driver_start(2, 2000.0)
    w.attach(t5, 2004.0, "ray-resumed-t0005")
    w.start(t5, 2005.0, ray_id="ray-resumed-t0005")
    w.result(t5, 2008.0, 2, rmse_metrics(_v(1.0, 2), 2, seconds=0.75), decision="stop",
             node=NODE_B, rung=(2.0, _v(1.0, 2)))
    w.end(t5, 2009.0, "TERMINATED", "asha", value=_v(1.0, 2), best_epoch=2, epochs_run=2)
    p6 = {"use_contrastive": True, "contrastive_weight": 0.2, "temperature": 0.1, "lr": 7e-3}
    t6 = w.trial(2010.0, p6)
    w.start(t6, 2011.0)
    w.train_config(t6, config(p6))
    w.result(t6, 2012.0, 1, rmse_metrics(_v(20.0, 1), 1), decision="stop",
             rung=(1.0, _v(20.0, 1)))
    w.end(t6, 2013.0, "TERMINATED", "asha", value=_v(20.0, 1), best_epoch=1, epochs_run=1)
    if interrupted:
        p7 = {"use_contrastive": False, "lr": 8e-3}
        t7 = w.trial(2020.0, p7)
        w.start(t7, 2021.0)
        w.train_config(t7, config(p7))
        w.result(t7, 2022.0, 1, rmse_metrics(0.02, 1), rung=(1.0, 0.02))
        w.result(t7, 2023.0, 2, rmse_metrics(0.03, 2), node=NODE_B)
        w.trial(2024.0, {"use_contrastive": False, "lr": 9e-3})  # t0008: never started
        w.close()  # killed: no driver_end
    else:
        w.driver_end(2050.0)
        w.close()
    return w.dirs


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def search_exp(tmp_path_factory, small_bundle, small_csvs, tiny_config) -> Path:
    exp = tmp_path_factory.mktemp("storage") / "search"
    write_search(exp, small_bundle, small_csvs, tiny_config)
    return exp


@pytest.fixture(scope="module")
def search_report(search_exp, small_bundle):
    return build_report(search_exp, data_bundle=small_bundle, echo=_quiet)


@pytest.fixture(scope="module")
def interrupted_exp(tmp_path_factory, small_bundle, small_csvs, tiny_config) -> Path:
    exp = tmp_path_factory.mktemp("storage_interrupted") / "interrupted"
    write_search(exp, small_bundle, small_csvs, tiny_config, interrupted=True)
    return exp


@pytest.fixture(scope="module")
def ablation_exp(tmp_path_factory, small_bundle, small_csvs, tiny_config) -> Path:
    """Arms E1..E5 x seeds 0, 1 (FIFO, 2 epochs each); E5 seed 1 fails after epoch 1."""
    exp = tmp_path_factory.mktemp("storage_ablation") / "ablation"
    budget = {"num_samples": 10, "max_epochs": 2, "grace_period": 2, "reduction_factor": 2,
              "max_concurrent": 2}
    w = ExperimentWriter(exp, _meta("ablation", "ablation", ["ablation", "seed"], budget,
                                    _data(small_bundle, small_csvs), tiny_config))
    w.driver_start(1, 100.0)
    t = 100.0
    for arm, arm_rmse in ARM_RMSE.items():
        for seed in (0, 1):
            t += 10.0
            params = {"ablation": arm, "seed": seed}
            tid = w.trial(t + 1, params)
            config = apply_ablation(tiny_config.replace(epochs=2, seed=seed), arm)
            w.start(tid, t + 2)
            w.train_config(tid, config)
            base = arm_rmse + 0.1 * seed
            if arm == "E5" and seed == 1:
                w.result(tid, t + 3, 1, rmse_metrics(base + 1.0, 1))
                w.end(tid, t + 4, "ERROR", "error", value=base + 1.0, best_epoch=1,
                      epochs_run=1, error="RuntimeError: worker lost")
                continue
            for epoch in (1, 2):
                w.result(tid, t + 2 + epoch, epoch, rmse_metrics(base + 1.0 / epoch, epoch))
            w.end(tid, t + 5, "TERMINATED", "completed", value=base + 0.5, best_epoch=2,
                  epochs_run=2)
            test = {"rmse": base, "mae": 0.7 * base, "r2": 0.3 - 0.1 * seed, "mape": 4.0 + seed}
            total = 1000 if config.use_vision else 800
            w.final(tid, {"epochs_run": 2, "best_epoch": 2, "stopped_early": False,
                          "best_val_rmse": base + 0.5, "val": test, "test": test,
                          "params": {"total": total, "trainable": 300, "frozen": total - 300},
                          "train_seconds": 2.0 + seed, "backbone": "tiny", "ablation": arm,
                          "seed": seed})
    w.driver_end(t + 20)
    w.close()
    return exp


# ------------------------------------------------------------------------------ helpers
def _read_both(report_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(report_dir / "trials.csv"), pd.read_parquet(report_dir / "trials.parquet")


def _assert_same_table(csv_table: pd.DataFrame, parquet: pd.DataFrame) -> None:
    assert list(csv_table.columns) == list(parquet.columns)
    assert len(csv_table) == len(parquet)
    for col in csv_table.columns:
        a, b = csv_table[col], parquet[col]
        if pd.api.types.is_numeric_dtype(b) and not pd.api.types.is_bool_dtype(b):
            np.testing.assert_allclose(a.astype(float).to_numpy(),
                                       b.astype("float64").to_numpy(), equal_nan=True,
                                       err_msg=col)
        else:
            assert a.fillna("").astype(str).tolist() == b.fillna("").astype(str).tolist(), col


def _rows(table: pd.DataFrame) -> dict[str, pd.Series]:
    return {row["trial_id"]: row for _, row in table.iterrows()}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report"))
    return dst


# ------------------------------------------------------------------------------ search kind
def test_trials_table_contract_columns_and_formats_agree(search_report):
    csv_table, parquet = _read_both(search_report.directory)
    expected = CONTRACT_COLUMNS + [f"config.{n}" for n in SAMPLED]
    for table in (csv_table, parquet):
        assert list(table.columns[:len(CONTRACT_COLUMNS)]) == CONTRACT_COLUMNS
        assert all(col in table.columns for col in expected)
        assert len(table) == 7
    _assert_same_table(csv_table, parquet)
    # Trials that ended normally come first, best validation value first; then the others.
    terminated = (parquet["status"] == "TERMINATED").to_numpy()
    assert terminated.sum() == 5 and terminated[:5].all()
    values = parquet["best_val_rmse"].to_numpy(dtype=float)[:5]
    assert np.all(np.diff(values) >= 0)
    assert parquet["trial_id"].iloc[0] == search_report.best_trial_id == "t0001"


def test_statuses_errors_and_stop_reasons(search_report):
    rows = _rows(pd.read_parquet(search_report.trials_parquet))
    expected = {"t0000": ("TERMINATED", "completed", 8), "t0001": ("TERMINATED",
                "early_stopping", 5), "t0002": ("DIVERGED", "diverged", 1),
                "t0003": ("ERROR", "error", 2), "t0004": ("TERMINATED", "asha", 1),
                "t0005": ("TERMINATED", "asha", 2), "t0006": ("TERMINATED", "asha", 1)}
    for tid, (status, stopped_by, epochs) in expected.items():
        row = rows[tid]
        assert (row["status"], row["stopped_by"], row["epochs_run"]) == \
            (status, stopped_by, epochs), tid
        assert row["backbone"] == "tiny"
        assert row["wall_seconds"] >= 0
    assert rows["t0002"]["error"] == DIVERGED_ERROR
    assert rows["t0003"]["error"] == FAILED_ERROR
    assert all(rows[t]["error"] == "" for t in ("t0000", "t0001", "t0004", "t0005", "t0006"))
    for tid, q in (("t0000", 0.5), ("t0001", 0.2), ("t0004", 10.0), ("t0005", 1.0),
                   ("t0006", 20.0)):
        row = rows[tid]
        assert row["best_val_rmse"] == pytest.approx(_v(q, row["epochs_run"]))
        assert row["last_val_rmse"] == pytest.approx(_v(q, row["epochs_run"]))
        assert row["best_epoch"] == row["epochs_run"]
        assert row["best_val_mae"] == pytest.approx(0.8 * row["best_val_rmse"])
    # The retried trial: epoch 3 belonged to the abandoned attempt, epoch 2 was re-reported.
    assert rows["t0003"]["best_val_rmse"] == pytest.approx(0.05)
    assert rows["t0003"]["last_val_rmse"] == pytest.approx(0.06)
    assert rows["t0003"]["best_epoch"] == 1
    # final.json numbers for the trials whose fit() returned, none for the ASHA-stopped.
    assert rows["t0001"]["params_total"] == 100 and rows["t0001"]["train_seconds"] == 1.5
    assert pd.isna(rows["t0004"]["params_total"])


def test_node_failures_and_retry_errors(search_report):
    rows = _rows(pd.read_parquet(search_report.trials_parquet))
    assert rows["t0003"]["node"] == NODE_B  # where it ran last
    assert rows["t0003"]["num_failures"] == 2
    assert rows["t0003"]["retry_errors"] == " | ".join(RETRY_ERRORS)
    assert rows["t0005"]["node"] == NODE_B and rows["t0000"]["node"] == NODE_A
    for tid in ("t0000", "t0001", "t0002", "t0004", "t0005", "t0006"):
        assert rows[tid]["num_failures"] == 0 and rows[tid]["retry_errors"] == ""


def test_wall_seconds_are_summed_over_driver_runs(search_report):
    rows = _rows(pd.read_parquet(search_report.trials_parquet))
    # From its start to its last event, per driver run: t0005 ran 1050..1060 in run 1 and
    # 2005..2009 in run 2 (attached at 2004); the gap between the runs is not counted.
    assert rows["t0005"]["wall_seconds"] == pytest.approx(10.0 + 4.0)
    assert rows["t0000"]["wall_seconds"] == pytest.approx(1011.0 - 1002.0)
    assert rows["t0003"]["wall_seconds"] == pytest.approx(1034.0 - 1026.0)
    summary = search_report.summary_md.read_text()
    # The experiment: 1000..1100 (interrupted) + 2000..2050.
    assert "wall time: 150 s over 2 driver run(s); 1 interrupted (SIGINT) and resumed" \
        in summary


def test_train_seconds_of_asha_stopped_trial_sum_epoch_times(search_report):
    rows = _rows(pd.read_parquet(search_report.trials_parquet))
    assert rows["t0005"]["train_seconds"] == pytest.approx(0.5 + 0.75)
    assert rows["t0004"]["train_seconds"] == pytest.approx(0.25)
    assert rows["t0000"]["train_seconds"] == pytest.approx(1.5)  # fit() returned: final.json


def test_inactive_parameters_are_empty_not_defaults(search_report):
    text = search_report.trials_csv.read_text()
    by_id = {r["trial_id"]: r for r in csv.DictReader(io.StringIO(text))}
    for tid in ("t0000", "t0003", "t0004", "t0005"):  # use_contrastive False
        assert by_id[tid]["config.use_contrastive"] == "False"
        assert by_id[tid]["config.temperature"] == "", tid
        assert by_id[tid]["config.contrastive_weight"] == "", tid
    assert float(by_id["t0001"]["config.temperature"]) == pytest.approx(0.07)
    assert float(by_id["t0001"]["config.contrastive_weight"]) == pytest.approx(0.05)
    parquet = _rows(pd.read_parquet(search_report.trials_parquet))
    assert pd.isna(parquet["t0000"]["config.temperature"])
    assert pd.isna(parquet["t0000"]["config.contrastive_weight"])
    assert parquet["t0002"]["config.temperature"] == pytest.approx(0.01)


def test_best_config_is_the_min_validation_trial(search_report, search_exp):
    assert search_report.best_trial_id == "t0001"
    config = TrainConfig.from_yaml(search_report.best_config)  # provenance is ignored
    trial_dir = next((search_exp / "trials").glob("t0001-*"))
    assert config == TrainConfig.from_yaml(trial_dir / "train_config.yaml")
    provenance = yaml.safe_load(search_report.best_config.read_text())["provenance"]
    assert provenance["trial_id"] == "t0001"
    assert provenance["metric"]["name"] == "val_rmse"
    assert provenance["metric"]["split"] == "validation"
    assert provenance["metric"]["value"] == pytest.approx(_v(0.2, 5))
    assert provenance["metric"]["epoch"] == 5
    assert provenance["backbone"] == "tiny"
    assert provenance["versions"]["ray"] == "9.9.9"
    assert "test" not in provenance  # no best_test.json in this experiment


def test_best_is_never_chosen_by_test_metric_or_from_failed_trials(search_report):
    rows = _rows(pd.read_parquet(search_report.trials_parquet))
    # t0000 has by far the best test RMSE, t0002 (diverged) and t0003 (error) better
    # validation values: none of them is the choice.
    assert rows["t0000"]["test_rmse"] == pytest.approx(0.01)
    assert rows["t0002"]["best_val_rmse"] < rows["t0001"]["best_val_rmse"]
    assert rows["t0003"]["best_val_rmse"] < rows["t0001"]["best_val_rmse"]
    assert search_report.best_trial_id == "t0001"


def test_summary_mentions_backbone_rungs_failures_and_retries(search_report):
    text = search_report.summary_md.read_text()
    assert "random toy backbone" in text and "NOT from pretrained CLIP" in text
    assert "SYNTHETIC" in text
    assert "no best_test.json" in text
    assert "## Failures (2)" in text
    assert f"- `t0002` (diverged) after 1 epoch(s): {DIVERGED_ERROR}" in text
    assert f"- `t0003` (error) after 2 epoch(s): {FAILED_ERROR}" in text
    assert "## Retried trials (1)" in text
    assert (f"- `t0003` retried 2x (last on node {NODE_B}): " + " | ".join(RETRY_ERRORS)) \
        in text
    assert "interrupted:" not in text  # every trial of the budget ended
    table = pd.read_parquet(search_report.trials_parquet)
    # Rung table: the row for epoch 1 counts exactly the ASHA-stopped trials that ended there.
    stopped_at_1 = int(((table["epochs_run"] == 1) & (table["stopped_by"] == "asha")).sum())
    assert stopped_at_1 == 2
    assert f"| 1 | yes | {len(table)} | {stopped_at_1} |" in text


def test_rebuild_is_deterministic_and_test_metrics_exported(search_exp, search_report,
                                                            small_bundle, tmp_path):
    exp = _copy(search_exp, tmp_path / "copy")
    first = build_report(exp, data_bundle=small_bundle, echo=_quiet).trials_csv.read_bytes()
    assert first == search_report.trials_csv.read_bytes()  # the copy reports the same trials
    (exp / "best_test.json").write_text(json.dumps(
        {"trial_id": "t0001", "val_rmse": 0.4,
         "test": {"rmse": 0.55, "mae": 0.4, "r2": 0.8, "mape": 7.0}}))
    paths = build_report(exp, data_bundle=small_bundle, echo=_quiet)
    assert paths.trials_csv.read_bytes() == first
    provenance = yaml.safe_load(paths.best_config.read_text())["provenance"]
    assert provenance["test"]["rmse"] == pytest.approx(0.55)
    summary = paths.summary_md.read_text()
    assert "test split, evaluated once for the exported configuration (trial `t0001`)" \
        in summary
    assert "reference: predict the training mean (same test split)" in summary
    assert "reference: gradient boosting on the flattened input window (same test split)" \
        in summary
    assert not list(exp.glob(".report-*"))  # no temporary directories left behind


def test_best_test_of_another_trial_does_not_change_the_choice(search_exp, small_bundle,
                                                               tmp_path):
    exp = _copy(search_exp, tmp_path / "other")
    (exp / "best_test.json").write_text(json.dumps(
        {"trial_id": "t0000", "test": {"rmse": 0.01, "mae": 0.01, "r2": 0.99, "mape": 0.1}}))
    paths = build_report(exp, data_bundle=small_bundle, echo=_quiet)
    assert paths.best_trial_id == "t0001"
    provenance = yaml.safe_load(paths.best_config.read_text())["provenance"]
    assert provenance["trial_id"] == "t0001" and "test" not in provenance
    assert "t0000" in provenance["test_note"]
    assert "best_test.json was evaluated for trial `t0000`, not for `t0001`" in \
        paths.summary_md.read_text()


def test_interrupted_experiment(interrupted_exp, small_bundle):
    notes: list[str] = []
    paths = build_report(interrupted_exp, data_bundle=small_bundle, echo=notes.append)
    table = pd.read_parquet(paths.trials_parquet)
    rows = _rows(table)
    assert table["trial_id"].iloc[0] == "t0001"  # ended trials rank first
    running, pending = rows["t0007"], rows["t0008"]
    assert running["status"] == "RUNNING" and running["stopped_by"] == "unfinished"
    assert running["epochs_run"] == 2 and running["node"] == NODE_B
    assert running["best_val_rmse"] == pytest.approx(0.02)  # the best value of all ...
    assert pending["status"] == "PENDING" and pending["stopped_by"] == "unfinished"
    assert pending["epochs_run"] == 0 and math.isnan(pending["best_val_rmse"])
    assert pending["config.lr"] == pytest.approx(9e-3)  # from the journal
    assert pending["backbone"] == "tiny"  # from search_meta.json: no train_config.yaml
    # ... yet an interrupted search exports nothing.
    assert paths.best_config is None and paths.best_trial_id is None
    assert not (paths.directory / "best_config.yaml").exists()
    summary = paths.summary_md.read_text()
    assert "interrupted: 7 of 9 trials finished" in summary
    # Run 1 was interrupted by SIGINT, run 2 killed (no driver_end): both listed.
    assert "over 2 driver run(s); 2 interrupted (SIGINT, crashed)" in summary
    assert any("interrupted (7 of 9 trials finished)" in n for n in notes)


def test_no_finite_metric_means_no_best_config(tmp_path, small_bundle, small_csvs,
                                               tiny_config):
    exp = tmp_path / "nometric"
    budget = {"num_samples": 2, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2}
    w = ExperimentWriter(exp, _meta("nometric", "search", ["lr"], budget,
                                    _data(small_bundle, small_csvs), tiny_config))
    w.driver_start(1, 10.0)
    for i in range(2):
        tid = w.trial(11.0 + i, {"lr": 1e-3 * (i + 1)})
        w.train_config(tid, tiny_config)
        metrics = {**rmse_metrics(1.0, 1), "val_rmse": float("nan")}  # written as null
        w.result(tid, 12.0 + i, 1, metrics)
        w.end(tid, 13.0 + i, "TERMINATED", "early_stopping", epochs_run=1)
    w.driver_end(20.0)
    w.close()
    paths = build_report(exp, data_bundle=small_bundle, echo=_quiet)
    assert paths.best_config is None
    assert not (paths.directory / "best_config.yaml").exists()
    assert "best_config.yaml was not written" in paths.summary_md.read_text()
    assert pd.read_parquet(paths.trials_parquet)["best_val_rmse"].isna().all()


def test_not_an_experiment_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="search_meta.json"):
        build_report(tmp_path, echo=_quiet)
    with pytest.raises(UserError, match="not a directory"):
        build_report(tmp_path / "missing", echo=_quiet)
    (tmp_path / "search_meta.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        build_report(tmp_path, echo=_quiet)
    (tmp_path / "search_meta.json").write_text(json.dumps({"name": "x", "kind": "search"}))
    with pytest.raises(UserError, match="journal.jsonl"):
        build_report(tmp_path, echo=_quiet)


def test_report_reads_no_pickle(search_exp, small_bundle, tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bomb = pickle.dumps(Payload())
    exp = _copy(search_exp, tmp_path / "pickles")
    trials = exp / "trials"
    (trials / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(bomb)
    (trials / "tuner.pkl").write_bytes(bomb)
    (trials / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(
        {"trial_data": [[json.dumps({"trial_id": "t0001", "status": "ERROR"}), bomb.hex()]],
         "runner_data": {"_search_alg": bomb.hex()}}))
    for trial_dir in trials.glob("t0*"):
        (trial_dir / "params.pkl").write_bytes(bomb)
        (trial_dir / "result.json").write_text("this is not what the report reads\n")
    paths = build_report(exp, data_bundle=small_bundle, echo=_quiet)
    assert not marker.exists()
    assert paths.best_trial_id == "t0001"
    assert pd.read_csv(paths.trials_csv)["status"].tolist() == \
        pd.read_csv(search_exp / "report" / "trials.csv")["status"].tolist()


def test_torn_last_journal_line_is_ignored(search_exp, search_report, small_bundle, tmp_path):
    exp = _copy(search_exp, tmp_path / "torn")
    line = json.dumps({"ev": "result", "seg": 2, "t": 2060.0, "tid": "t0006", "epoch": 2,
                       "decision": "continue", "metrics": rmse_metrics(0.0001, 2)})
    with open(exp / JOURNAL_FILE, "ab") as fh:
        fh.write(line[: len(line) // 2].encode())  # no newline: the write was cut
    before = (exp / JOURNAL_FILE).read_bytes()
    paths = build_report(exp, data_bundle=small_bundle, echo=_quiet)
    assert paths.trials_csv.read_bytes() == search_report.trials_csv.read_bytes()
    assert (exp / JOURNAL_FILE).read_bytes() == before  # the report only reads


def test_load_trials_reads_journal_and_trial_files(search_exp):
    records = {r.trial_id: r for r in load_trials(search_exp)}
    assert list(records) == [f"t{i:04d}" for i in range(7)]
    assert records["t0001"].final is not None and records["t0004"].final is None
    assert records["t0001"].train_config["temperature"] == pytest.approx(0.07)
    assert records["t0001"].params == {"use_contrastive": True, "contrastive_weight": 0.05,
                                       "temperature": 0.07, "lr": 2e-3}
    assert records["t0003"].history["epoch"].tolist() == [1, 2]
    assert load_meta(search_exp)["kind"] == "search"


# ------------------------------------------------------------------------------ ablation kind
def test_ablation_report(ablation_exp, small_bundle):
    paths = build_report(ablation_exp, echo=_quiet)  # baselines from search_meta.json's data
    assert paths.best_config is None and not (paths.directory / "best_config.yaml").exists()
    table = pd.read_csv(paths.ablation_csv, keep_default_na=False, na_values=[""])
    assert table["row"].tolist() == ["E1", "E2", "E3", "E4", "E5", "mean", "ridge", "hgb"]
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
    for ref in ("mean", "ridge", "hgb"):
        for metric in ("rmse", "mae", "r2", "mape"):
            assert np.isfinite(by_row.loc[ref, f"test_{metric}_mean"])
    # The mean predictor, recomputed here: R² <= 0 on test by construction.
    mean = small_bundle.train.y_raw.mean()
    rmse = float(np.sqrt(np.mean((small_bundle.test.y_raw - mean) ** 2)))
    assert by_row.loc["mean", "test_rmse_mean"] == pytest.approx(rmse)
    assert by_row.loc["mean", "test_r2_mean"] <= 0
    assert by_row.loc["ridge", "params_total"] == small_bundle.train.x[0].size + 1
    assert by_row.loc["hgb", "params_total"] > 0  # tree nodes
    assert "chosen on val" in by_row.loc["hgb", "note"]

    trials = pd.read_parquet(paths.trials_parquet)
    for col in ("config.ablation", "config.seed", "config.use_vision", "config.use_contrastive",
                "config.use_variate_selection", "config.language_backbone"):
        assert col in trials
    e4 = trials[trials["config.ablation"] == "E4"].iloc[0]
    assert not e4["config.use_vision"] and e4["test_rmse"] >= ARM_RMSE["E4"]
    e5_failed = trials[(trials["config.ablation"] == "E5") & (trials["config.seed"] == 1)]
    assert e5_failed["status"].tolist() == ["ERROR"]
    md = paths.ablation_md.read_text()
    assert "random toy backbone" in md and "test split" in md and "E5" in md and "ridge" in md
    assert "| hgb |" in md
    # Deterministic rebuild, the baselines from the given bundle this time.
    again = build_report(ablation_exp, data_bundle=small_bundle, echo=_quiet)
    assert again.ablation_csv.read_bytes() == paths.ablation_csv.read_bytes()
    assert again.trials_csv.read_bytes() == paths.trials_csv.read_bytes()


def test_ablation_baselines_unavailable_when_data_changed(ablation_exp, small_bundle,
                                                          tmp_path):
    exp = _copy(ablation_exp, tmp_path / "changed")
    other = dataclasses.replace(small_bundle, fingerprint="0" * 16)
    notes: list[str] = []
    paths = build_report(exp, data_bundle=other, echo=notes.append)
    table = pd.read_csv(paths.ablation_csv, keep_default_na=False, na_values=[""])
    refs = table.set_index("row").loc[["mean", "ridge", "hgb"]]
    assert refs["test_rmse_mean"].isna().all()
    assert refs["note"].str.contains("data changed").all()
    assert any("data changed" in n for n in notes)


# ------------------------------------------------------------------------------ CLI
def test_cli_bad_path_is_one_line_exit_2(tmp_path):
    """As a user runs it (a fresh interpreter) for a missing folder, in this process for a
    folder that is no experiment."""
    for target, run in ((tmp_path / "nope", "subprocess"), (tmp_path, "in process")):
        proc = (subprocess.run([sys.executable, "-m", "tuner.results", str(target)],
                               capture_output=True, text=True, timeout=120)
                if run == "subprocess" else in_process("tuner.results", [str(target)]))
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(target) in lines[0]


def test_a_bad_path_is_said_before_the_heavy_imports(tmp_path):
    """A wrong path is reported without importing torch or matplotlib (seconds a user
    would wait for one line; tuner.report imports its modules on demand)."""
    code = ("import sys; from tuner.results import main; rc = main([sys.argv[1]]); "
            "print(rc, 'torch' in sys.modules, 'matplotlib' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stdout + proc.stderr
    assert "is not a directory" in proc.stderr


def test_cli_rebuilds_report(search_exp, tmp_path):
    exp = _copy(search_exp, tmp_path / "cli")
    proc = subprocess.run([sys.executable, "-m", "tuner.results", str(exp)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(exp / "report" / "trials.parquet") in proc.stdout
    assert "best_config.yaml" in proc.stdout
    assert "| trial_id |" in proc.stdout and "t0001" in proc.stdout
    assert (exp / "report" / "summary.md").is_file()


def test_cli_on_interrupted_experiment_exits_0_with_a_note(interrupted_exp, tmp_path,
                                                           capsys):
    exp = _copy(interrupted_exp, tmp_path / "cli-interrupted")
    assert main([str(exp)]) == 0
    out = capsys.readouterr().out
    assert "note: best_config.yaml not written: the search is interrupted" in out
    assert "best_config.yaml" not in out.split("note:")[0]


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
    long = summarize_error("Failure # 1 (x)\nValueError: " + "x" * 1000 + "\n")
    assert len(long) == 300 and long.endswith("...")


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


def test_empty_experiment_table_and_summary(tmp_path, tiny_config):
    meta = _meta("empty", "search", ["lr"], {"max_epochs": 4, "grace_period": 1,
                                             "reduction_factor": 2}, {"synthetic": False},
                 tiny_config)
    table = trials_table([], meta)
    assert list(table.columns[:len(CONTRACT_COLUMNS)]) == CONTRACT_COLUMNS
    assert "config.lr" in table.columns and len(table) == 0
    write_summary(tmp_path / "summary.md", meta, table, None, None, [], None)
    text = (tmp_path / "summary.md").read_text()
    assert "| total | 0 |" in text and "best_config.yaml was not written" in text


def test_empty_journal_reports_zero_trials(tmp_path, tiny_config):
    """A search stopped before its first trial was journaled: an empty report, no crash."""
    exp = tmp_path / "nothing"
    w = ExperimentWriter(exp, _meta("nothing", "search", ["lr"],
                                    {"num_samples": 3, "max_epochs": 4, "grace_period": 1,
                                     "reduction_factor": 2}, {"synthetic": False},
                                    tiny_config))
    w.driver_start(1, 5.0)
    w.close()
    paths = build_report(exp, echo=_quiet)
    assert len(pd.read_csv(paths.trials_csv)) == 0
    assert paths.best_config is None
    assert "interrupted: 0 of 3 trials finished" in paths.summary_md.read_text()


# ------------------------------------------------------------------------------ one notion each
def test_rung_table_counts_every_trial_once_by_how_it_ended(search_report):
    """The rung table has one count column per StopReason (a diverged trial is counted) and
    no column that nothing produces."""
    from tuner.outcomes import StopReason

    text = search_report.summary_md.read_text()
    rung = text.split("## ASHA rungs")[1].split("## Top")[0]
    lines = [ln for ln in rung.splitlines() if ln.startswith("|")]
    assert lines[0] == ("| epochs | ASHA rung | reached | stopped by ASHA | early stopping | "
                        "completed | diverged | error | unfinished |")
    assert len(lines[0].split("|")) - 5 == len(StopReason)  # 3 leading columns + 6 reasons
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    counts = [[int(c) for c in row[3:]] for row in rows]
    table = pd.read_parquet(search_report.trials_parquet)
    assert sum(map(sum, counts)) == len(table) == 7  # every trial exactly once
    # epoch 1: t0004 and t0006 stopped by ASHA, t0002 diverged
    assert rows[0][:3] == ["1", "yes", "7"] and counts[0] == [2, 0, 0, 1, 0, 0]
    assert "no results" not in text


def test_faded_curves_are_the_trials_that_did_not_run_their_course():
    from tuner.outcomes import StopReason
    from tuner.report.figures.curves import FADED

    assert set(FADED) == set(StopReason) - {StopReason.COMPLETED, StopReason.EARLY_STOPPING}


def test_a_maximised_metric_ranks_and_picks_by_the_same_comparison(search_exp):
    """metric val_r2 (mode max): the best_* columns come from the epoch of the highest R²,
    the table is ordered highest first, and its first row is select_best's trial."""
    from tuner.journal import load_state
    from tuner.outcomes import select_best

    meta = {**load_meta(search_exp), "metric": "val_r2", "mode": "max"}
    state = load_state(search_exp)
    # t0000's epoch 3 now has the highest R² of all, though not its lowest RMSE (epoch 8)
    state.trials["t0000"].history[3]["val_r2"] = 0.999
    table = trials_table(load_trials(search_exp, state), meta)
    ended = table[table["status"] == "TERMINATED"]
    values = ended["best_val_r2"].to_numpy(dtype=float)
    assert np.all(np.diff(values) <= 0) and len(values) == 5
    assert table["trial_id"].iloc[0] == select_best(state.trials.values(), "val_r2",
                                                    "max").tid == "t0000"
    rows = _rows(table)
    assert rows["t0000"]["best_epoch"] == 3 and rows["t0000"]["best_val_r2"] == 0.999
    assert rows["t0000"]["best_val_rmse"] == pytest.approx(_v(0.5, 3))  # epoch 3's row
    # t0003 re-reported epoch 2 (0.06) after epoch 1 (0.05): R² = 1 - rmse/10 peaks at epoch 1
    assert rows["t0003"]["best_epoch"] == 1
    assert rows["t0003"]["best_val_r2"] == pytest.approx(1 - 0.05 / 10)
    assert rows["t0003"]["best_val_rmse"] == pytest.approx(0.05)  # the same epoch's row


@pytest.mark.parametrize("dirname", ["../../outside", "linked"])
def test_a_journaled_folder_outside_the_experiment_is_refused(search_exp, tmp_path, dirname):
    """A journal altered to name a trial folder outside the experiment (a relative path, or
    a folder under trials/ that links elsewhere): one-line error, exit code 2, and nothing
    is read from that folder or written."""
    exp = _copy(search_exp, tmp_path / "crafted")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "train_config.yaml").write_text("backbone: tiny\n")
    (exp / "trials" / "linked").symlink_to(outside)
    lines = (exp / JOURNAL_FILE).read_text().splitlines()
    for i, line in enumerate(lines):
        event = json.loads(line)
        if event["ev"] == "trial" and event["tid"] == "t0001":
            event["dir"] = dirname
            lines[i] = json.dumps(event)
    (exp / JOURNAL_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="refusing to use it"):
        build_report(exp, echo=_quiet)
    assert not (exp / "report").exists() and not list(exp.glob(".report-*"))
    proc = subprocess.run([sys.executable, "-m", "tuner.results", str(exp)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and dirname in err[0]
