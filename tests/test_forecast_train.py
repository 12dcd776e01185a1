"""fit() on a forecasting file: the per-epoch report, streaming batches, fp16 features,
resume, and the one test scoring (`evaluate_forecast`) the search and the report use.

Runs on the first rows of the real ETTh1 file (70/10/20 borders, lookback 48, horizon 24,
every 4th training window): every code path of the full-size run at a CPU-test size.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from real_data import forecast_csv
from test_train import Crash, crash_after

from timesclip.config import TrainConfig
from timesclip.data import load_bundle
from timesclip.errors import ConfigError
from timesclip.features import compute_features
from timesclip.metrics import FORECAST_EPOCH_METRICS
from timesclip.train import fit

ROWS = 800  # ratio borders: train 560, val 80 (+48), test 160 (+48) rows


@pytest.fixture(scope="module")
def head_csv(tmp_path_factory):
    """The first ROWS rows of ETTh1, unchanged (a real file at test size)."""
    frame = pd.read_csv(forecast_csv("ETTh1"), nrows=ROWS)
    path = tmp_path_factory.mktemp("forecast-head") / "etth1_head.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def config():
    return TrainConfig(task="forecast", backbone="tiny", lookback=48, horizon=24,
                       borders="ratio", train_stride=4, d_model=32, n_heads=4, batch_size=16,
                       epochs=3, lr=1e-3, seed=1, device="cpu", dropout=0.2)


@pytest.fixture(scope="module")
def bundle(config, head_csv):
    return load_bundle(config, [head_csv])


@pytest.fixture(scope="module")
def features(config, bundle, one_torch_thread):
    return compute_features(config, bundle, progress=None)


def test_features_are_fp16_one_row_per_window(bundle, features):
    assert [len(bundle.split(s)) for s in ("train", "val", "test")] == [123, 57, 137]
    for split, tensor in features.items():
        assert tensor.dtype == torch.float16, split
        assert tuple(tensor.shape) == (len(bundle.split(split)), 7, 64)  # [N, V, Hv]
        assert torch.isfinite(tensor).all()
    # window i of the strided train split is window 4 * i of the file: the same picture
    # whatever the stride, so a feature equals the unstrided pass's window 4 * i
    plain = load_bundle(TrainConfig(task="forecast", lookback=48, horizon=24,
                                    borders="ratio"), [bundle.path])
    again = compute_features(TrainConfig(task="forecast", backbone="tiny", lookback=48,
                                         horizon=24, borders="ratio"), plain, progress=None)
    torch.testing.assert_close(again["train"][::4], features["train"], atol=2e-3, rtol=0)


def test_fit_reports_the_forecast_metrics_and_logs_them(config, bundle, features, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    seen = []
    result = fit(config, bundle, vision_features=features, checkpoint_dir=tmp_path / "ck",
                 tb_dir=tmp_path / "tb", report=lambda e, m, c: seen.append(m))
    assert [int(m["epoch"]) for m in seen] == [1, 2, 3]
    for metrics in seen:
        assert set(FORECAST_EPOCH_METRICS) <= set(metrics)
        assert "val_rmse" not in metrics
        assert all(math.isfinite(metrics[k]) for k in FORECAST_EPOCH_METRICS)
        # the optimised loss: MSE on the standardised scale + weight x InfoNCE
        assert metrics["val_loss"] > metrics["val_mse"] > 0
        assert metrics["train_loss"] == pytest.approx(
            metrics["train_regression_loss"] + 0.1 * metrics["train_contrastive_loss"],
            rel=1e-5)
    assert result.monitor == "val_mse" and set(result.val) == set(result.test) == {"mse",
                                                                                  "mae"}
    best = min(seen, key=lambda m: m["val_mse"])
    assert result.best_epoch == best["epoch"] and result.val["mse"] == best["val_mse"]
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"Loss/train", "Loss/train_regression", "Loss/train_contrastive", "Loss/val",
            "Metrics/MSE", "Metrics/MAE", "LR"} <= tags
    assert "Metrics/RMSE" not in tags
    assert [e.value for e in acc.Scalars("Metrics/MSE")] == pytest.approx(
        [m["val_mse"] for m in seen], rel=1e-6)


def test_training_batches_stream_every_window_once(config, bundle, features):
    from timesclip.task_data import task_data

    run = task_data(config, bundle, features, torch.device("cpu"))
    seen = []
    for x, y, f in run.train_batches(epoch=2):
        assert x.shape[1:] == (48, 7) and y.shape[1:] == (24, 7) and f.shape[1:] == (7, 64)
        assert len(x) <= config.batch_size
        seen.append((x, y, f))
    xs = torch.cat([x for x, _, _ in seen])
    assert len(xs) == len(bundle.train) == 123
    # each batch row is one window: its inputs, its targets, its own features
    all_x = torch.from_numpy(bundle.train.x(np.arange(123)))  # [N, L, V]
    order = [int(torch.nonzero((all_x == row).all(-1).all(-1))[0]) for row in xs]
    assert sorted(order) == list(range(123)) and order != list(range(123))  # shuffled
    ys = torch.cat([y for _, y, _ in seen])
    fs = torch.cat([f for _, _, f in seen])
    assert torch.equal(ys, torch.from_numpy(bundle.train.y(np.array(order))))
    assert torch.equal(fs, features["train"][order])
    again = torch.cat([x for x, _, _ in run.train_batches(epoch=2)])
    assert torch.equal(again, xs)  # the order is a function of (seed, epoch)
    assert not torch.equal(torch.cat([x for x, _, _ in run.train_batches(epoch=3)]), xs)


def test_resume_continues_as_if_never_stopped(config, bundle, features, tmp_path):
    full = fit(config, bundle, vision_features=features, checkpoint_dir=tmp_path / "full")
    with pytest.raises(Crash):
        fit(config, bundle, vision_features=features, checkpoint_dir=tmp_path / "part",
            report=crash_after(2))
    resumed = fit(config, bundle, vision_features=features, checkpoint_dir=tmp_path / "part",
                  resume_from=tmp_path / "part")
    assert resumed.epochs_run == full.epochs_run == 3
    assert resumed.history == full.history  # every metric of every epoch, exactly
    assert resumed.val == full.val and resumed.test == full.test
    weights = [torch.load(tmp_path / d / "best.pt", weights_only=True)["model"]
               for d in ("full", "part")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_test_scoring_is_fits_and_keeps_what_the_report_draws(config, bundle, features,
                                                                  tmp_path):
    from timesclip.forecast_baselines import forecast_baselines
    from timesclip.inference import evaluate_forecast, load_for_inference

    result = fit(config.replace(epochs=1), bundle, vision_features=features,
                 checkpoint_dir=tmp_path / "ck")
    model, loaded, scaler, variates, backbone = load_for_inference(tmp_path / "ck", "cpu")
    assert variates == bundle.columns and np.array_equal(scaler.mean, bundle.scaler.mean)
    shared = evaluate_forecast(model, loaded, backbone, bundle.test, scaler,
                               features=features["test"])
    assert shared.metrics == result.test  # the same pass as fit's test scoring
    fresh = evaluate_forecast(model, loaded, backbone, bundle.test, scaler, progress=None)
    assert fresh.metrics == pytest.approx(result.test, rel=1e-4)  # features drawn afresh
    naive = forecast_baselines(bundle, dlinear=False)["naive"]["test"]
    assert shared.naive == pytest.approx(naive, rel=1e-12)
    h = 24
    assert shared.mse_per_step.shape == shared.naive_mse_per_step.shape == (h,)
    assert shared.mse_per_step.mean() == pytest.approx(shared.metrics["mse"], rel=1e-9)
    assert shared.naive_mse_per_step.mean() == pytest.approx(naive["mse"], rel=1e-9)
    assert shared.attention.shape == (7, 7)
    np.testing.assert_allclose(shared.attention.sum(1), 1.0, atol=1e-6)
    # four example windows spread over the split; OT in the file's own units
    assert list(shared.example_windows) == [0, 45, 91, 136]
    raw = pd.read_csv(bundle.path)["OT"].to_numpy()
    first = bundle.test.border1  # window i's input: file rows first + i .. + L
    for k, window in enumerate(shared.example_windows):
        start = first + int(window)
        np.testing.assert_allclose(shared.history[k], raw[start:start + 48], rtol=1e-5)
        np.testing.assert_allclose(shared.truth[k], raw[start + 48:start + 72], rtol=1e-5)
        np.testing.assert_allclose(shared.naive_prediction[k], raw[start + 47], rtol=1e-5)
    assert shared.prediction.shape == (4, h) and np.isfinite(shared.prediction).all()


def test_data_of_another_window_or_task_is_refused(config, bundle, small_bundle, tiny_config):
    with pytest.raises(ConfigError, match="the data has lookback 48 but the config says 96"):
        fit(config.replace(lookback=96), bundle)
    with pytest.raises(ConfigError, match="train_stride 4 but the config says 1"):
        fit(config.replace(train_stride=1), bundle)
    with pytest.raises(ConfigError, match="task is 'forecast' but the data is a yield"):
        fit(config, small_bundle)
    with pytest.raises(ConfigError, match="task is 'yield' but the data is a forecasting"):
        fit(tiny_config, bundle)


def test_a_diverging_forecast_run_stops_with_the_specific_error(config, bundle):
    from timesclip.errors import NonFiniteLossError

    with pytest.raises(NonFiniteLossError):
        fit(config.replace(lr=1e30, grad_clip=0.0, use_vision=False, use_contrastive=False,
                           epochs=2), bundle)


@pytest.mark.e2e
def test_the_full_model_beats_naive_on_strided_etth1():
    """E1 (vision, contrastive, the paper's variate selection) on the real ETTh1 file,
    L = H = 96, every 16th training window, 3 epochs: every test window scored."""
    from timesclip.forecast_baselines import forecast_baselines

    config = TrainConfig(task="forecast", backbone="tiny", train_stride=16, d_model=32,
                         epochs=3, lr=1e-3, seed=1, device="cpu")
    data = load_bundle(config, [forecast_csv("ETTh1")], warn=None)
    result = fit(config, data)
    naive = forecast_baselines(data, dlinear=False)["naive"]["test"]
    assert result.test["mse"] < 0.6 * naive["mse"]
    assert result.test["mae"] < naive["mae"]
