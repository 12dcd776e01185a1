"""Forecasting baselines: naive and DLinear on the TSLib windows, scored as TSLib scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from real_data import forecast_csv

from timesclip.data.forecast import load_forecast
from timesclip.errors import ConfigError
from timesclip.forecast_baselines import (
    DLINEAR_RECIPES,
    DLinear,
    dlinear_recipe,
    evaluate,
    fit_dlinear,
    forecast_baselines,
    main,
    naive_forecast,
    series_decomp,
)
from timesclip.metrics import ForecastErrors, forecast_metrics


@pytest.fixture(scope="module")
def etth1():
    """ETTh1 at L=H=96 with every 8th training window (val/test keep every window)."""
    return load_forecast(forecast_csv("ETTh1"), train_stride=8, warn=None)


def test_decomposition_matches_hand_computation():
    # kernel 3 pads one copy of each end value: [0 | 0 0 3 0 0 6 | 6]
    x = torch.tensor([0.0, 0.0, 3.0, 0.0, 0.0, 6.0])
    both = torch.stack([x, 10 * x], dim=-1)[None]  # [1, 6, 2]: variates are independent
    seasonal, trend = series_decomp(both, kernel_size=3)
    np.testing.assert_allclose(trend[0, :, 0], [0, 1, 1, 1, 2, 4], atol=1e-6)
    np.testing.assert_allclose(seasonal[0, :, 0], [0, -1, 2, -1, -2, 2], atol=1e-6)
    np.testing.assert_allclose(trend[0, :, 1], [0, 10, 10, 10, 20, 40], atol=1e-5)
    # kernel 5 pads two copies: [1 1 | 1 2 3 4 10 | 10 10]
    _, trend5 = series_decomp(torch.tensor([1.0, 2, 3, 4, 10]).reshape(1, 5, 1), kernel_size=5)
    np.testing.assert_allclose(trend5[0, :, 0], [1.6, 2.2, 4.0, 5.8, 7.4], atol=1e-6)
    with pytest.raises(ConfigError):
        series_decomp(both, kernel_size=4)


def test_dlinear_forward_is_seasonal_plus_trend_linear_maps():
    torch.manual_seed(0)
    model = DLinear(lookback=30, horizon=5, kernel_size=25)
    assert torch.allclose(model.seasonal.weight, torch.full((5, 30), 1 / 30))  # TSLib init
    with torch.no_grad():
        model.seasonal.weight.normal_()
        model.trend.weight.normal_()
    x = torch.randn(4, 30, 3)
    seasonal, trend = series_decomp(x, 25)
    by_hand = (torch.einsum("hl,blv->bhv", model.seasonal.weight, seasonal)
               + model.seasonal.bias[None, :, None]
               + torch.einsum("hl,blv->bhv", model.trend.weight, trend)
               + model.trend.bias[None, :, None])
    out = model(x)
    assert out.shape == (4, 5, 3)
    torch.testing.assert_close(out, by_hand, atol=1e-5, rtol=1e-5)


def test_naive_and_metrics_by_hand():
    x = np.arange(24, dtype=np.float32).reshape(2, 4, 3)  # [B, L, V]
    pred = naive_forecast(x, 2)
    assert pred.shape == (2, 2, 3)
    np.testing.assert_array_equal(pred[1, 1], x[1, -1])
    m = forecast_metrics(np.zeros((1, 2, 2)), np.array([[[1.0, -1.0], [3.0, 0.0]]]))
    assert m == {"mse": pytest.approx(11 / 4), "mae": pytest.approx(5 / 4)}
    errors = ForecastErrors()  # batch by batch == all at once
    errors.add(np.zeros((1, 1, 2)), np.array([[[1.0, -1.0]]]))
    errors.add(np.zeros((1, 1, 2)), np.array([[[3.0, 0.0]]]))
    assert errors.result() == pytest.approx(m)


def test_recipe_table_and_overrides():
    assert dlinear_recipe("ETTm1") == (0.0001, 8)
    assert dlinear_recipe("exchange_rate") == (0.0005, 8)
    assert dlinear_recipe("ETTh1", learning_rate=0.01) == (0.01, 32)
    assert dlinear_recipe("ETTh1", batch_size=64) == (0.005, 64)
    assert dlinear_recipe("my_sensor") == (0.0001, 32)  # TSLib's defaults
    assert set(DLINEAR_RECIPES) >= {"ETTh1", "ETTh2", "ETTm1", "ETTm2", "exchange_rate",
                                    "weather", "national_illness"}
    with pytest.raises(ConfigError):
        dlinear_recipe("ETTh1", learning_rate=0.0)


def test_dlinear_learns_beats_naive_and_keeps_its_best_epoch(etth1):
    torch.manual_seed(0)
    untrained = DLinear(96, 96)
    untrained.eval()
    def predict(model):
        return lambda x: model(torch.from_numpy(x)).detach().numpy()
    before = evaluate(predict(untrained), etth1.val)["mse"]
    naive = evaluate(lambda x: naive_forecast(x, 96), etth1.val)["mse"]
    fit = fit_dlinear(etth1, epochs=6, learning_rate=0.05, patience=3, seed=0)
    after = evaluate(predict(fit.model), etth1.val)["mse"]
    assert after < naive and after < 0.9 * before
    vals = [h["val_mse"] for h in fit.history]
    assert fit.best_epoch == 1 + int(np.argmin(vals))
    assert after == pytest.approx(min(vals), rel=1e-6)
    assert [h["lr"] for h in fit.history] == pytest.approx(
        [0.05, 0.05, 0.025, 0.0125, 0.00625, 0.003125][:len(vals)])  # TSLib lradj type1
    assert fit.learning_rate == 0.05 and fit.batch_size == 32 and fit.seconds > 0


def test_dlinear_early_stops_after_patience_keeps_best_weights_and_is_seeded(etth1):
    fit = fit_dlinear(etth1, epochs=10, patience=1, seed=0)  # recipe lr 0.005: val wobbles
    vals = [h["val_mse"] for h in fit.history]
    assert fit.epochs_run == len(vals) < 10 and vals[-1] >= min(vals[:-1])
    assert fit.epochs_run == fit.best_epoch + 1
    best = evaluate(lambda x: fit.model(torch.from_numpy(x)).detach().numpy(), etth1.val)
    assert best["mse"] == pytest.approx(min(vals), rel=1e-6)  # the best epoch's weights,
    assert best["mse"] != pytest.approx(vals[-1], rel=1e-6)  # not the last epoch's
    again = fit_dlinear(etth1, epochs=10, patience=1, seed=0)
    assert again.history == fit.history
    for a, b in zip(fit.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


def test_forecast_baselines_layout(etth1):
    lines: list[str] = []
    out = forecast_baselines(etth1, epochs=1, seed=0, log=lines.append)
    assert set(out) == {"naive", "dlinear"}
    for name in out:
        assert set(out[name]) == {"val", "test"}
        for split in ("val", "test"):
            assert set(out[name][split]) == {"mse", "mae"}
            assert all(isinstance(v, float) and np.isfinite(v) for v in out[name][split].values())
    naive_test = evaluate(lambda x: naive_forecast(x, 96), etth1.test)
    assert out["naive"]["test"] == naive_test
    assert out["naive"]["test"]["mse"] == pytest.approx(1.2944, abs=1e-3)  # measured
    assert out["dlinear"]["test"]["mse"] < out["naive"]["test"]["mse"]
    assert len(lines) == 1 and "s to fit" in lines[0] and "lr 0.005, batch 32" in lines[0]
    assert set(forecast_baselines(etth1, dlinear=False)) == {"naive"}


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not found" in err[0]
