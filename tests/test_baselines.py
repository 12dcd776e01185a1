"""The gradient-boosting reference: fitted on train, its setting chosen on validation only,
scored once on test — on the real Illinois soybean data and on a split built to tempt a
selection that peeks at test."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from real_data import illinois_csvs

from timesclip.metrics import regression_metrics
from tuner.report.baselines import HGB_SEED, hgb_baseline, reference_baselines

GRID = ({"learning_rate": 0.1, "max_leaf_nodes": 3, "max_iter": 20},
        {"learning_rate": 0.1, "max_leaf_nodes": 15, "max_iter": 100})


@pytest.fixture(scope="module")
def illinois():
    """The real data: year split, 2022 held out, mid-May to mid-September."""
    from timesclip.config import TrainConfig
    from timesclip.data import load_bundle

    config = TrainConfig(backbone="tiny", split="year", test_year=2022, input_steps=12)
    return load_bundle(config, illinois_csvs())


def _fit_by_hand(bundle, setting):
    """Validation and test predictions (own units) of one setting, fitted here."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):  # see tuner.report.baselines: busy cores
        model = HistGradientBoostingRegressor(**setting, early_stopping=False,
                                              random_state=HGB_SEED)
        model.fit(bundle.train.x.reshape(len(bundle.train), -1), bundle.train.y)
        return [bundle.scaler.inverse_y(model.predict(split.x.reshape(len(split), -1)))
                for split in (bundle.val, bundle.test)]


def test_hgb_on_real_data_picks_the_validation_best_setting(illinois):
    result = hgb_baseline(illinois, GRID)
    val_rmse = [regression_metrics(illinois.val.y_raw, _fit_by_hand(illinois, s)[0])["rmse"]
                for s in GRID]
    chosen = GRID[int(np.argmin(val_rmse))]
    assert result.extra == {k: float(v) for k, v in chosen.items()}
    val_pred, test_pred = _fit_by_hand(illinois, chosen)
    assert result.val == pytest.approx(regression_metrics(illinois.val.y_raw, val_pred))
    assert result.test == pytest.approx(regression_metrics(illinois.test.y_raw, test_pred))
    assert result.name == "hgb" and result.params > 0
    assert "chosen on val" in result.detail


def test_hgb_never_selects_on_test(illinois):
    """Make the validation-WORSE setting perfect on test: a selection that looked at test
    would take it (test RMSE 0); selection on validation must not."""
    val_rmse, test_preds = [], []
    for setting in GRID:
        val_pred, test_pred = _fit_by_hand(illinois, setting)
        val_rmse.append(regression_metrics(illinois.val.y_raw, val_pred)["rmse"])
        test_preds.append(test_pred)
    worse = int(np.argmax(val_rmse))
    assert val_rmse[0] != val_rmse[1]
    rigged_test = dataclasses.replace(illinois.test, y_raw=test_preds[worse].copy())
    rigged = dataclasses.replace(illinois, test=rigged_test)
    result = hgb_baseline(rigged, GRID)
    assert result.extra == {k: float(v) for k, v in GRID[1 - worse].items()}
    assert result.test["rmse"] > 0.1  # the rigged, test-perfect setting was not taken
    assert hgb_baseline(rigged, [GRID[worse]]).test["rmse"] == pytest.approx(0.0, abs=1e-9)


def test_reference_baselines_order_and_progress_lines(small_bundle):
    lines: list[str] = []
    refs = reference_baselines(small_bundle, echo=lines.append)
    assert [r.name for r in refs] == ["mean", "ridge", "hgb"]
    assert len(lines) == 2 and "gradient boosting" in lines[0] and "done in" in lines[1]
    again = reference_baselines(small_bundle)  # seeded: the same numbers every rebuild
    assert again[2].test == refs[2].test


def test_refit_scores_the_chosen_setting_fitted_on_train_and_val(illinois):
    """Beside a --cv search (whose exported model trained on every training row) each
    reference's chosen setting is refitted on train + val before test: the choice and its
    validation numbers are unchanged, the test numbers are those of the refitted model."""
    from sklearn.linear_model import Ridge

    plain = {r.name: r for r in reference_baselines(illinois)}
    refit = {r.name: r for r in reference_baselines(illinois, refit=True)}
    for name in ("mean", "ridge", "hgb"):
        assert refit[name].refit and not plain[name].refit
        assert refit[name].extra.keys() == plain[name].extra.keys()
        assert refit[name].test != plain[name].test
    assert refit["ridge"].extra == plain["ridge"].extra  # same alpha chosen on val
    assert refit["ridge"].val == plain["ridge"].val
    x = np.concatenate([illinois.train.x, illinois.val.x]).reshape(
        len(illinois.train) + len(illinois.val), -1)
    y = np.concatenate([illinois.train.y, illinois.val.y])
    model = Ridge(alpha=refit["ridge"].extra["alpha"]).fit(x, y)
    pred = illinois.scaler.inverse_y(model.predict(illinois.test.x.reshape(len(illinois.test),
                                                                            -1)))
    assert refit["ridge"].test == pytest.approx(regression_metrics(illinois.test.y_raw, pred))
    all_y = np.concatenate([illinois.train.y_raw, illinois.val.y_raw])
    assert refit["mean"].extra["train_mean"] == pytest.approx(float(all_y.mean()))
