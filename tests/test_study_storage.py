"""tuner.study (where the Optuna study lives, opened read-only) and the benchmark that
times the driver's Optuna calls in it."""

from __future__ import annotations

import optuna
import pytest
from search_helpers import benchmark_module

from tuner.layout import LEGACY_OPTUNA_DB, OPTUNA_JOURNAL
from tuner.spaces import load_space
from tuner.study import find_study, open_stored_study, study_storage


def test_the_benchmark_makes_the_drivers_calls(tmp_path):
    """Each trial: asked with the space's suggests, every epoch reported, told COMPLETE."""
    bench = benchmark_module("study_storage")
    path = tmp_path / OPTUNA_JOURNAL
    row = bench.drive(study_storage(path), load_space("quick").define_by_run, 4, 2)
    assert row["per_trial"] == pytest.approx(row["ask"] + 2 * row["report"] + row["tell"])
    assert min(row.values()) > 0
    study = optuna.load_study(study_name=None, storage=study_storage(path, read_only=True))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert all(sorted(t.intermediate_values) == [1, 2] for t in study.trials)
    assert all("lr" in t.params and "use_contrastive" in t.params for t in study.trials)


def test_the_study_file_is_the_journal_or_an_earlier_versions_sqlite(tmp_path):
    assert find_study(tmp_path) is None
    (tmp_path / LEGACY_OPTUNA_DB).write_bytes(b"")
    assert find_study(tmp_path) == tmp_path / LEGACY_OPTUNA_DB
    (tmp_path / OPTUNA_JOURNAL).write_bytes(b"")
    assert find_study(tmp_path) == tmp_path / OPTUNA_JOURNAL


def test_read_only_opening_never_creates_or_writes(tmp_path):
    missing = tmp_path / OPTUNA_JOURNAL
    with pytest.raises(FileNotFoundError):
        study_storage(missing, read_only=True)
    assert list(tmp_path.iterdir()) == []
    optuna.create_study(study_name="s", storage=study_storage(missing))
    before = missing.read_bytes()
    study = open_stored_study(missing, "s")
    with pytest.raises(PermissionError, match="read-only"):
        study.ask()
    assert missing.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [OPTUNA_JOURNAL]  # no lock file
