"""Cross-validation: the folds of a yield data set, fit_folds (one configuration trained on
every fold in lockstep, reported as the mean), its resume and early stopping, and the
retrain of the selected configuration on all training rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from timesclip.config import TrainConfig
from timesclip.cv import (
    FOLD_REPORTED,
    FOLDS_FILE,
    fit_folds,
    fold_dir,
    fold_features,
    fold_key,
    retrain,
)
from timesclip.data import Scaler, load_bundle, write_synthetic
from timesclip.data.folds import CV_YEARS, all_training, cv_folds, parse_cv
from timesclip.errors import ConfigError, DataError
from timesclip.features import compute_features
from timesclip.metrics import EPOCH_METRICS
from timesclip.model import load_backbone
from timesclip.runtime import seed_everything
from timesclip.train import Training, fit

EPOCHS = 3


@pytest.fixture(scope="module")
def year_config(tiny_config):
    """The small data set's year split: test 2019, the pool 2016-2018 (3 x 40 rows)."""
    return tiny_config.replace(split="year", test_year=2019, epochs=EPOCHS, threads=1)


@pytest.fixture(scope="module")
def year_bundle(small_csvs, year_config):
    return load_bundle(year_config, small_csvs)


def _pool_index(bundle) -> np.ndarray:
    return np.sort(np.concatenate([bundle.train.index, bundle.val.index]))


# ----------------------------------------------------------------------------- the folds
@pytest.mark.parametrize("spec, groups", [
    (3, [[2016], [2017], [2018]]),
    (2, [[2016, 2018], [2017]]),  # sorted years dealt round-robin
    (CV_YEARS, [[2016], [2017], [2018]]),
])
def test_year_folds_partition_the_pooled_years(year_config, year_bundle, spec, groups):
    folds = cv_folds(year_config, year_bundle, spec)
    pool = _pool_index(year_bundle)
    assert len(folds) == len(groups)
    assert [sorted(set(f.val.years.tolist())) for f in folds] == groups
    # every pooled row is validated on exactly once, and never where it trains
    assert np.array_equal(np.sort(np.concatenate([f.val.index for f in folds])), pool)
    for fold, years in zip(folds, groups):
        assert np.array_equal(np.sort(np.concatenate([fold.train.index, fold.val.index])),
                              pool)
        assert not set(fold.train.years.tolist()) & set(years)  # whole years only
        # the test split is untouched: same rows, same raw values
        assert np.array_equal(fold.test.index, year_bundle.test.index)
        assert np.array_equal(fold.test.x_raw, year_bundle.test.x_raw)
        assert np.array_equal(fold.test.y_raw, year_bundle.test.y_raw)
        assert set(fold.test.years.tolist()) == {2019}
        # the raw values travel with their rows
        for part in (fold.train, fold.val):
            assert np.array_equal(part.y_raw, _raw_y(year_bundle, part.index))
    assert len(set(folds.fingerprints)) == len(folds)
    assert folds.fingerprints == cv_folds(year_config, year_bundle, spec).fingerprints


def _raw_y(bundle, index: np.ndarray) -> np.ndarray:
    by_row = {int(i): float(y) for part in (bundle.train, bundle.val, bundle.test)
              for i, y in zip(part.index, part.y_raw)}
    return np.array([by_row[int(i)] for i in index])


def test_each_folds_scaler_comes_from_its_own_training_rows(year_config, year_bundle):
    """No leakage: each fold standardises with the statistics of its training rows only,
    not of the pool (which holds its validation rows) nor of the source bundle."""
    folds = cv_folds(year_config, year_bundle, 3)
    pooled = Scaler.fit(np.concatenate([year_bundle.train.x_raw, year_bundle.val.x_raw]),
                        np.concatenate([year_bundle.train.y_raw, year_bundle.val.y_raw]))
    for fold in folds:
        own = Scaler.fit(fold.train.x_raw, fold.train.y_raw)
        np.testing.assert_allclose(fold.scaler.x_mean, own.x_mean, rtol=1e-12)
        np.testing.assert_allclose(fold.scaler.x_std, own.x_std, rtol=1e-12)
        assert (fold.scaler.y_mean, fold.scaler.y_std) == pytest.approx(
            (own.y_mean, own.y_std), rel=1e-12)
        assert abs(fold.scaler.y_mean - pooled.y_mean) > 1e-3  # or the test proves nothing
        # its training rows are standardised: mean 0, std 1 per band and for y
        np.testing.assert_allclose(fold.train.x.mean(axis=(0, 1)), 0.0, atol=1e-5)
        np.testing.assert_allclose(fold.train.x.std(axis=(0, 1)), 1.0, atol=1e-4)
        assert fold.train.y.mean() == pytest.approx(0.0, abs=1e-5)
        # every split of the fold, test included, is scaled with the fold's scaler
        for part in (fold.train, fold.val, fold.test):
            np.testing.assert_array_equal(part.x, fold.scaler.transform_x(part.x_raw))
            np.testing.assert_array_equal(part.y, fold.scaler.transform_y(part.y_raw))


def test_random_split_folds_rows_seeded_by_split_seed(tiny_config, small_csvs):
    bundle = load_bundle(tiny_config, small_csvs)
    assert bundle.split == "random"
    folds = cv_folds(tiny_config, bundle, 4)
    pool = _pool_index(bundle)
    vals = [f.val.index for f in folds]
    assert np.array_equal(np.sort(np.concatenate(vals)), pool)
    assert max(map(len, vals)) - min(map(len, vals)) <= 1  # dealt round-robin
    assert all(np.array_equal(f.test.index, bundle.test.index) for f in folds)
    again = cv_folds(tiny_config, bundle, 4)
    assert all(np.array_equal(a.val.index, b.val.index) for a, b in zip(folds, again))
    other = cv_folds(tiny_config.replace(split_seed=7), bundle, 4)
    assert not np.array_equal(folds[0].val.index, other[0].val.index)


def _two_year_bundle(tmp_path):
    paths = write_synthetic(tmp_path, years=range(2018, 2020), n_per_year=20, seed=3)
    config = TrainConfig(backbone="tiny", split="year", test_year=2019, device="cpu")
    return config, load_bundle(config, paths)


@pytest.mark.parametrize("case, spec, error, expected", [
    ("one fold", 1, ConfigError,
     "--cv 1: cross-validation needs at least 2 folds; use --cv 2 or more, --cv years, or "
     "leave --cv out for the single validation split"),
    ("zero", "0", ConfigError, "--cv 0: cross-validation needs at least 2 folds"),
    ("not a number", "five", ConfigError,
     "--cv must be a number of folds >= 2 or 'years', got 'five'; e.g. --cv 5 or --cv years"),
    ("a bool", True, ConfigError, "--cv must be a number of folds >= 2 or 'years'"),
    ("more folds than years", 4, DataError,
     "--cv 4: folds are whole years and the training data hold 3 (2016, 2017, 2018) (test "
     "year 2019); use --cv 3 or fewer, or --cv years"),
    ("years on the random split", CV_YEARS, ConfigError,
     "--cv years leaves one year out, which needs --split year --test-year YYYY"),
    ("one training year", CV_YEARS, DataError,
     "--cv years needs at least 2 training years, the data hold only 2018 (test year "
     "2019); add a season's file or leave --cv out"),
    ("one training year, K folds", 2, DataError,
     "--cv 2 needs at least 2 training years, the data hold only 2018 (test year 2019)"),
])
def test_bad_cv_values_are_one_line(case, spec, error, expected, year_config, year_bundle,
                                    tiny_config, small_csvs, tmp_path):
    config, bundle = year_config, year_bundle
    if case == "years on the random split":
        config, bundle = tiny_config, load_bundle(tiny_config, small_csvs)
    elif case.startswith("one training year"):
        config, bundle = _two_year_bundle(tmp_path)
    with pytest.raises(error) as info:
        cv_folds(config, bundle, spec)
    message = str(info.value)
    assert "\n" not in message and message.startswith(expected), message


def test_cv_refuses_the_forecast_task(year_bundle):
    config = TrainConfig(task="forecast", backbone="tiny", device="cpu")
    for call in (lambda: cv_folds(config, year_bundle, 3),
                 lambda: all_training(config, year_bundle)):
        with pytest.raises(ConfigError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and "yield task" in message
        assert "thousands of windows" in message and "drop --cv" in message


def test_parse_cv_reads_what_a_command_line_gives():
    assert parse_cv("years") == parse_cv(" Years ") == CV_YEARS
    assert parse_cv("5") == parse_cv(5) == parse_cv(np.int64(5)) == 5


def test_all_training_pools_every_non_test_row_with_its_own_scaler(year_config,
                                                                   year_bundle):
    data = all_training(year_config, year_bundle)
    pool = _pool_index(year_bundle)
    assert np.array_equal(data.train.index, pool) and np.array_equal(data.val.index, pool)
    assert np.array_equal(data.test.index, year_bundle.test.index)
    assert np.array_equal(data.test.y_raw, year_bundle.test.y_raw)
    own = Scaler.fit(data.train.x_raw, data.train.y_raw)
    np.testing.assert_allclose(data.scaler.x_mean, own.x_mean, rtol=1e-12)
    assert data.scaler.y_mean == pytest.approx(own.y_mean, rel=1e-12)
    # not the source's scaler, which saw only its train split (the val rows are added)
    assert abs(data.scaler.y_mean - year_bundle.scaler.y_mean) > 1e-4
    np.testing.assert_array_equal(data.test.x, data.scaler.transform_x(data.test.x_raw))
    assert data.fingerprint != year_bundle.fingerprint


# ----------------------------------------------------------------------------- fit_folds
@pytest.fixture(scope="module")
def shared(year_config, year_bundle, one_torch_thread):
    """The backbone and the source's vision features, made as fit() makes them."""
    seed_everything(year_config.seed)
    backbone = load_backbone(year_config.backbone, need_vision=True)
    features = compute_features(year_config, year_bundle, backbone, progress=None)
    return backbone, features


@pytest.fixture(scope="module")
def reference(year_config, year_bundle, shared, tmp_path_factory):
    """One uninterrupted fit_folds run over the 3 year folds: (folds, reports, result)."""
    backbone, features = shared
    folds = cv_folds(year_config, year_bundle, 3)
    root = tmp_path_factory.mktemp("cv-reference")
    reports: list[tuple[int, dict, str | None]] = []
    result = fit_folds(year_config, folds, report=lambda e, m, c: reports.append((e, m, c)),
                       checkpoint_dir=root / "ck", vision_features=features,
                       backbone=backbone, tb_dir=root / "tb")
    return folds, reports, result, root


def test_fold_features_index_the_sources_features(year_config, year_bundle, shared):
    """A fold's rows get the very feature rows its source computed (no second pass): equal
    to the features computed for the fold itself."""
    backbone, features = shared
    fold = cv_folds(year_config, year_bundle, 3)[1]
    indexed = fold_features(features, year_bundle, fold)
    direct = compute_features(year_config, fold, backbone, progress=None)
    for split in ("train", "val", "test"):
        assert indexed[split].shape == direct[split].shape
        torch.testing.assert_close(indexed[split], direct[split], rtol=1e-5, atol=1e-5)


def test_fit_folds_reports_the_mean_of_the_folds_run_alone(year_config, reference, shared):
    """Lockstep changes nothing: fold k's numbers are those of fit() on fold k alone with
    the same seed, and each report carries their mean under fit()'s names."""
    folds, reports, result, root = reference
    backbone, features = shared
    alone = [fit(year_config, fold, evaluate_test=False, backbone=backbone,
                 vision_features=fold_features(features, folds.source, fold))
             for fold in folds]
    assert [e for e, _, _ in reports] == list(range(1, EPOCHS + 1))
    for epoch, metrics, checkpoint in reports:
        assert checkpoint == str(root / "ck")
        assert set(EPOCH_METRICS) <= set(metrics) and metrics["cv_folds"] == 3
        for name in EPOCH_METRICS[1:]:
            per_fold = [run.history[epoch - 1][name] for run in alone]
            assert metrics[name] == pytest.approx(np.mean(per_fold), rel=1e-6), name
        for k, run in enumerate(alone):
            for name in FOLD_REPORTED:
                assert metrics[fold_key(k, name)] == pytest.approx(
                    run.history[epoch - 1][name], rel=1e-6), (k, name)
        assert metrics["fit_ends"] is (epoch == EPOCHS)
        assert metrics["params_total"] == alone[0].params["total"]
    # the folds differ (or the mean could hide a broken fold)
    assert len({round(r.history[-1]["val_rmse"], 6) for r in alone}) == 3
    rmse = [m["val_rmse"] for _, m, _ in reports]
    best = int(np.argmin(rmse)) + 1
    assert (result.best_epoch, result.best_value) == (best, pytest.approx(min(rmse)))
    assert result.fold_values == pytest.approx(
        [run.history[best - 1]["val_rmse"] for run in alone], rel=1e-6)
    assert result.val["rmse"] == pytest.approx(min(rmse))
    assert (result.epochs_run, result.stopped_early, result.spec) == (EPOCHS, False, 3)
    assert result.held_out == ["year 2016", "year 2017", "year 2018"]
    assert result.test is None  # a CV run never scores test (the retrain does)
    saved = json.loads(json.dumps(result.metrics_json()))
    assert (saved["best_epoch"], saved["cv"], saved["folds"]) == (best, 3, 3)
    # each fold's checkpoints, and the manifest naming the folds
    for k in range(3):
        last = torch.load(fold_dir(root / "ck", k) / "last.pt", weights_only=True)
        assert last["epoch"] == EPOCHS and last["data_fingerprint"] == folds[k].fingerprint
    assert (root / "ck" / FOLDS_FILE).is_file()


def test_fit_folds_tensorboard_has_the_mean_and_each_fold(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, reports, _, root = reference
    acc = EventAccumulator(str(root / "tb"))
    acc.Reload()
    mean = acc.Scalars("Metrics/RMSE")
    assert [e.step for e in mean] == [1, 2, 3]
    assert [e.value for e in mean] == pytest.approx([m["val_rmse"] for _, m, _ in reports])
    fold2 = acc.Scalars("fold2/Metrics/RMSE")
    assert [e.value for e in fold2] == pytest.approx(
        [m[fold_key(2, "val_rmse")] for _, m, _ in reports])


class Crash(Exception):
    pass


def _reported(reports: list) -> list[tuple[int, float]]:
    return [(e, m["val_rmse"]) for e, m, _ in reports]


def test_fit_folds_resumes_exactly(year_config, reference, shared, tmp_path):
    """Killed after epoch 1's report, then resumed: every fold continues where it stopped
    (weights, optimiser, scheduler, RNG) and the reports are the uninterrupted run's."""
    folds, reference_reports, reference_result, _ = reference
    backbone, features = shared

    def crash(epoch, metrics, checkpoint):
        if epoch == 1:
            raise Crash

    with pytest.raises(Crash):
        fit_folds(year_config, folds, report=crash, checkpoint_dir=tmp_path / "ck",
                  vision_features=features, backbone=backbone)
    reports: list = []
    result = fit_folds(year_config, folds, report=lambda e, m, c: reports.append((e, m, c)),
                       checkpoint_dir=tmp_path / "ck", resume_from=tmp_path / "ck",
                       vision_features=features, backbone=backbone)
    assert [e for e, _, _ in reports] == [2, 3]
    for (_, got, _), (_, want, _) in zip(reports, reference_reports[1:]):
        for key in [*EPOCH_METRICS[1:], *(fold_key(k, n) for k in range(3)
                                          for n in FOLD_REPORTED)]:
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), key
    assert (result.best_epoch, result.best_value) == (
        reference_result.best_epoch, pytest.approx(reference_result.best_value, rel=1e-6))
    assert [h["val_rmse"] for h in result.history] == pytest.approx(
        [h["val_rmse"] for h in reference_result.history], rel=1e-6)

    # a finished run resumed trains nothing and returns the same result
    again: list = []
    done = fit_folds(year_config, folds, report=lambda e, m, c: again.append(e),
                     checkpoint_dir=tmp_path / "copy", resume_from=tmp_path / "ck",
                     vision_features=features, backbone=backbone)
    assert again == [] and done.history == result.history
    assert all((fold_dir(tmp_path / "copy", k) / "last.pt").is_file() for k in range(3))


def test_fit_folds_brings_a_fold_left_behind_level(year_config, reference, shared, tmp_path,
                                                   monkeypatch):
    """A kill between two folds' checkpoints of epoch 2 (fold 0 saved it, fold 1 never
    trained it): the resume trains fold 1's epoch 2 first, reports epoch 2 (never reported
    before), and goes on exactly as the uninterrupted run."""
    folds, reference_reports, _, _ = reference
    backbone, features = shared
    step = Training.epoch

    def dies_in_fold_1(self, report=None):
        if self.checkpoint_dir.name == "fold_1" and self.epochs_run == 1:
            raise Crash
        return step(self, report)

    monkeypatch.setattr(Training, "epoch", dies_in_fold_1)
    first: list = []
    with pytest.raises(Crash):
        fit_folds(year_config, folds, report=lambda e, m, c: first.append((e, m, c)),
                  checkpoint_dir=tmp_path / "ck", vision_features=features, backbone=backbone)
    monkeypatch.setattr(Training, "epoch", step)
    epochs = [torch.load(fold_dir(tmp_path / "ck", k) / "last.pt",
                         weights_only=True)["epoch"] for k in range(3)]
    assert epochs == [2, 1, 1]
    resumed: list = []
    fit_folds(year_config, folds, report=lambda e, m, c: resumed.append((e, m, c)),
              checkpoint_dir=tmp_path / "ck", resume_from=tmp_path / "ck",
              vision_features=features, backbone=backbone)
    got, want = _reported(first + resumed), _reported(reference_reports)
    assert [e for e, _ in got] == [e for e, _ in want] == [1, 2, 3]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


def test_resuming_other_folds_is_refused(year_config, year_bundle, reference, shared):
    _, _, _, root = reference
    backbone, features = shared
    with pytest.raises(ConfigError) as info:
        fit_folds(year_config, cv_folds(year_config, year_bundle, 2), resume_from=root / "ck",
                  vision_features=features, backbone=backbone)
    message = str(info.value)
    assert "\n" not in message and "--cv 3" in message and "start again" in message


def test_early_stopping_follows_the_mean_over_folds(year_config, year_bundle, shared):
    """One patience for the run, on the mean: the run stops `patience` epochs after the
    mean's best, although one fold had stopped improving for longer than that before
    (a run stopped per fold would have ended it earlier, or stopped folds apart)."""
    backbone, features = shared
    config = year_config.replace(lr=3e-3, dropout=0.0, epochs=12, patience=2)
    folds = cv_folds(config, year_bundle, 3)
    reports: list[dict] = []
    lines: list[str] = []
    result = fit_folds(config, folds, report=lambda e, m, c: reports.append(m),
                       vision_features=features, backbone=backbone, log=lines.append)
    mean = [m["val_rmse"] for m in reports]
    best = int(np.argmin(mean)) + 1
    assert result.stopped_early and result.epochs_run == best + config.patience < 12
    assert result.best_epoch == best
    assert [m["fit_ends"] for m in reports] == [False] * (len(reports) - 1) + [True]
    # the case that tells the mean from a fold's own patience: some fold went `patience`
    # epochs without improving before the mean did
    first_stop = []
    for k in range(3):
        series = [m[fold_key(k, "val_rmse")] for m in reports]
        stops = [e for e in range(config.patience + 1, len(series) + 1)
                 if min(series[:e]) < min(series[e - config.patience:e])]
        first_stop.append(min(stops, default=math.inf))
    assert min(first_stop) < result.epochs_run, first_stop
    assert any("early stopping: the mean val_rmse over 3 folds" in ln for ln in lines)


# ----------------------------------------------------------------------------- retrain
def test_retrain_trains_every_training_row_for_the_given_epochs(year_config, year_bundle,
                                                                shared, tmp_path):
    """The exported configuration's run: all training rows, `epochs` epochs of the
    configuration's own schedule (the first epochs of a full run, exactly), the last
    epoch's weights kept in best.pt, the test split scored once with them."""
    from timesclip.inference import evaluate_arrays, load_for_inference

    backbone, features = shared
    config = year_config.replace(scheduler="cosine", epochs=4)
    result = retrain(config, year_bundle, 2, checkpoint_dir=tmp_path / "rt",
                     vision_features=features, backbone=backbone)
    data = all_training(config, year_bundle)
    full = fit(config, data, evaluate_test=False, backbone=backbone,
               vision_features=fold_features(features, year_bundle, data))
    assert (result.epochs_run, result.best_epoch, result.stopped_early) == (2, 2, False)
    assert [h["lr"] for h in result.history] == [h["lr"] for h in full.history[:2]]
    assert result.history == [pytest.approx(h, rel=1e-6) for h in full.history[:2]]
    best = torch.load(tmp_path / "rt" / "best.pt", weights_only=True)
    assert best["epoch"] == 2
    assert Scaler.from_dict(best["scaler"]).y_mean == pytest.approx(data.scaler.y_mean)
    model, loaded, scaler, _, bb = load_for_inference(tmp_path / "rt", device="cpu")
    test = evaluate_arrays(model, loaded, scaler, bb, year_bundle.test.x_raw,
                           year_bundle.test.y_raw, progress=None)
    assert result.test == pytest.approx(test, rel=1e-5)
    assert result.checkpoint_path == str(tmp_path / "rt" / "best.pt")
    # val is the fit to the training rows of the kept (last) epoch, not a held-out score
    assert result.val["rmse"] == pytest.approx(result.history[-1]["val_rmse"])
    with pytest.raises(ConfigError, match=r"^stop_after must be an epoch in 1\.\.4"):
        retrain(config, year_bundle, 5, checkpoint_dir=tmp_path / "bad",
                vision_features=features, backbone=backbone)

