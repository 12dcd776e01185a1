"""Forecasting data: TSLib's splits, scaler and windows, checked against an independent,
loop-based transcription of TSLib's Dataset_ETT_hour / Dataset_ETT_minute / Dataset_Custom."""

from __future__ import annotations

import gzip
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from real_data import forecast_csv, illinois_csvs
from sklearn.preprocessing import StandardScaler

from timesclip.data.forecast import (
    ForecastScaler,
    load_forecast,
    looks_like_forecast_csv,
)
from timesclip.errors import ConfigError, DataError


class TSLibReference:
    """TSLib's `__read_data__` / `__getitem__` / `__len__` for features='M', scale=True,
    label_len=0, written out line by line from TSLib's data_loader.py (own scaler: sklearn's,
    as TSLib uses). `data` is TSLib's --data: 'ETTh1', 'ETTm1', ... or 'custom'."""

    def __init__(self, path, data: str, flag: str, seq_len: int, pred_len: int) -> None:
        self.seq_len, self.label_len, self.pred_len = seq_len, 0, pred_len
        self.set_type = {"train": 0, "val": 1, "test": 2}[flag]
        self.scaler = StandardScaler()
        df_raw = pd.read_csv(path)
        if data.startswith("ETTh"):
            border1s = [0, 12 * 30 * 24 - self.seq_len, 12 * 30 * 24 + 4 * 30 * 24 - self.seq_len]
            border2s = [12 * 30 * 24, 12 * 30 * 24 + 4 * 30 * 24, 12 * 30 * 24 + 8 * 30 * 24]
        elif data.startswith("ETTm"):
            border1s = [0, 12 * 30 * 24 * 4 - self.seq_len,
                        12 * 30 * 24 * 4 + 4 * 30 * 24 * 4 - self.seq_len]
            border2s = [12 * 30 * 24 * 4, 12 * 30 * 24 * 4 + 4 * 30 * 24 * 4,
                        12 * 30 * 24 * 4 + 8 * 30 * 24 * 4]
        else:
            cols = list(df_raw.columns)
            cols.remove("OT")
            cols.remove("date")
            df_raw = df_raw[["date"] + cols + ["OT"]]
            num_train = int(len(df_raw) * 0.7)
            num_test = int(len(df_raw) * 0.2)
            num_vali = len(df_raw) - num_train - num_test
            border1s = [0, num_train - self.seq_len, len(df_raw) - num_test - self.seq_len]
            border2s = [num_train, num_train + num_vali, len(df_raw)]
        border1 = border1s[self.set_type]
        border2 = border2s[self.set_type]
        df_data = df_raw[df_raw.columns[1:]]
        train_data = df_data[border1s[0]:border2s[0]]
        self.scaler.fit(train_data.values)
        data_all = self.scaler.transform(df_data.values)
        self.data_x = data_all[border1:border2]
        self.data_y = data_all[border1:border2]
        self.columns = list(df_data.columns)

    def __getitem__(self, index):
        s_begin = index
        s_end = s_begin + self.seq_len
        r_begin = s_end - self.label_len
        r_end = r_begin + self.label_len + self.pred_len
        return self.data_x[s_begin:s_end], self.data_y[r_begin:r_end]

    def __len__(self) -> int:
        return len(self.data_x) - self.seq_len - self.pred_len + 1


def reference_naive(ref: TSLibReference) -> tuple[float, float]:
    """Naive (repeat last value) MSE / MAE over every window, one window at a time."""
    sq = ab = 0.0
    count = 0
    for i in range(len(ref)):
        seq_x, seq_y = ref[i]
        pred = np.repeat(seq_x[-1:, :], ref.pred_len, axis=0)
        sq += float(((pred - seq_y) ** 2).sum())
        ab += float(np.abs(pred - seq_y).sum())
        count += seq_y.size
    return sq / count, ab / count


def naive_ours(split, horizon: int) -> tuple[float, float]:
    idx = np.arange(split.n_windows)
    x, y = split.x(idx).astype(np.float64), split.y(idx).astype(np.float64)
    err = np.repeat(x[:, -1:, :], horizon, axis=1) - y
    return float((err ** 2).mean()), float(np.abs(err).mean())


# ----------------------------------------------------------------------------- TSLib parity
@pytest.mark.parametrize("name,data", [("ETTh1", "ETTh1"), ("exchange_rate", "custom")])
def test_naive_scores_and_windows_equal_tslib(name, data):
    path = forecast_csv(name)
    bundle = load_forecast(path, lookback=96, horizon=96, warn=None)
    for flag in ("train", "val", "test"):
        ref = TSLibReference(path, data, flag, 96, 96)
        ours = bundle.split(flag)
        assert ours.n_windows == len(ref), flag
        for i in (0, 1, len(ref) // 2, len(ref) - 1):
            seq_x, seq_y = ref[i]
            np.testing.assert_allclose(ours.x(i)[0], seq_x, atol=1e-5)
            np.testing.assert_allclose(ours.y(i)[0], seq_y, atol=1e-5)
    assert bundle.columns == ref.columns and bundle.columns[-1] == "OT"
    mse, mae = naive_ours(bundle.test, 96)
    ref_mse, ref_mae = reference_naive(TSLibReference(path, data, "test", 96, 96))
    assert mse == pytest.approx(ref_mse, abs=1e-5) and mae == pytest.approx(ref_mae, abs=1e-5)
    assert round(mse, 3) == round(ref_mse, 3) and round(mae, 3) == round(ref_mae, 3)


@pytest.mark.parametrize("name,data,lengths", [
    ("ETTh1", "ETTh1", (96, 96)), ("ETTh2", "ETTh2", (96, 192)), ("ETTm1", "ETTm1", (96, 96)),
    ("ETTm2", "ETTm2", (96, 192)), ("exchange_rate", "custom", (96, 96)),
    ("weather", "custom", (96, 96)), ("national_illness", "custom", (36, 24))])
def test_window_counts_equal_tslib_len(name, data, lengths):
    path = forecast_csv(name)
    seq_len, pred_len = lengths
    bundle = load_forecast(path, lookback=seq_len, horizon=pred_len, warn=None)
    for flag in ("train", "val", "test"):
        assert bundle.split(flag).total_windows == len(
            TSLibReference(path, data, flag, seq_len, pred_len)), flag
        assert bundle.split(flag).n_windows == bundle.split(flag).total_windows


def test_border_override_uses_the_ratio_rule_on_an_ett_file():
    path = forecast_csv("ETTh1")
    bundle = load_forecast(path, borders="ratio", warn=None)
    assert bundle.borders == "ratio"
    for flag in ("train", "val", "test"):
        assert bundle.split(flag).n_windows == len(TSLibReference(path, "custom", flag, 96, 96))
    with pytest.raises(ConfigError):
        load_forecast(path, borders="monthly", warn=None)


def test_scaler_is_fitted_on_training_rows_only():
    path = forecast_csv("ETTh1")
    bundle = load_forecast(path, warn=None)
    raw = pd.read_csv(path).iloc[:, 1:].to_numpy(np.float64)
    train_only = StandardScaler().fit(raw[:12 * 30 * 24])
    all_rows = StandardScaler().fit(raw)
    assert not np.allclose(train_only.mean_, all_rows.mean_, atol=1e-3)  # the check can fail
    np.testing.assert_allclose(bundle.scaler.mean, train_only.mean_, rtol=1e-12)
    np.testing.assert_allclose(bundle.scaler.std, train_only.scale_, rtol=1e-12)
    restored = ForecastScaler.from_dict(json.loads(json.dumps(bundle.scaler.to_dict())))
    np.testing.assert_array_equal(restored.mean, bundle.scaler.mean)
    np.testing.assert_array_equal(restored.std, bundle.scaler.std)
    with pytest.raises(DataError):
        ForecastScaler.from_dict({"mean": [0.0], "std": [0.0, 1.0]})


def test_ot_is_moved_last_and_a_plain_csv_reads_like_gz(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=n, freq="h").astype(str),
                          "a": rng.normal(size=n), "OT": rng.normal(size=n) + 5,
                          "b": rng.normal(size=n) * 3})
    path = tmp_path / "toy.csv"
    frame.to_csv(path, index=False)
    bundle = load_forecast(path, lookback=24, horizon=12, warn=None)
    assert bundle.columns == ["a", "b", "OT"] and bundle.borders == "ratio"
    for flag in ("train", "val", "test"):
        ref = TSLibReference(path, "custom", flag, 24, 12)
        assert bundle.split(flag).n_windows == len(ref)
        np.testing.assert_allclose(bundle.split(flag).y(len(ref) - 1)[0], ref[len(ref) - 1][1],
                                   atol=1e-5)
    with open(path, "rb") as src, gzip.open(tmp_path / "toy.csv.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    gz = load_forecast(tmp_path / "toy.csv.gz", lookback=24, horizon=12, warn=None)
    np.testing.assert_array_equal(gz.test.data, bundle.test.data)


# ----------------------------------------------------------------------------- windows
def test_windows_strides_batches_and_fingerprint(tmp_path):
    path = forecast_csv("ETTh1")
    full = load_forecast(path, warn=None)
    strided = load_forecast(path, train_stride=4, warn=None)
    assert strided.train.n_windows == math.ceil(full.train.n_windows / 4)
    np.testing.assert_array_equal(strided.train.x([1, 2]), full.train.x([4, 8]))
    np.testing.assert_array_equal(strided.train.y([1]), full.train.y([4]))
    assert strided.val.n_windows == full.val.n_windows  # val/test never strided
    assert strided.test.n_windows == full.test.n_windows
    x, y = full.test.x([0, 5]), full.test.y([0, 5])
    assert x.shape == (2, 96, 7) and y.shape == (2, 96, 7) and x.dtype == np.float32
    np.testing.assert_array_equal(x[1, 1:], full.test.x(6)[0, :-1])  # windows slide by one row
    with pytest.raises(IndexError):
        full.test.x(full.test.n_windows)
    sizes = [len(bx) for bx, _ in full.val.batches(1000)]
    assert sum(sizes) == full.val.n_windows and sizes[-1] == full.val.n_windows % 1000
    order = [bx[:, 0, 0] for bx, _ in full.val.batches(1000, shuffle=True,
                                                       rng=np.random.default_rng(1))]
    assert sorted(np.concatenate(order)) == sorted(full.val.data[:full.val.n_windows, 0])

    assert load_forecast(path, warn=None).fingerprint == full.fingerprint
    assert load_forecast(path, horizon=192, warn=None).fingerprint != full.fingerprint
    copy = tmp_path / "ETTh1.csv.gz"
    shutil.copyfile(path, copy)
    assert load_forecast(copy, warn=None).fingerprint == full.fingerprint
    text = gzip.decompress(copy.read_bytes()).decode().replace("30.5310001373291", "30.5", 1)
    copy.write_bytes(gzip.compress(text.encode()))
    assert load_forecast(copy, warn=None).fingerprint != full.fingerprint
    assert "8449" in full.description and "etth" in full.description


# ----------------------------------------------------------------------------- quirks
def test_weather_quirks_are_kept_and_reported_once_each():
    lines: list[str] = []
    bundle = load_forecast(forecast_csv("weather"), warn=lines.append)
    assert bundle.quirks == lines and len(set(lines)) == len(lines)
    sentinel = [q for q in lines if "-9999" in q]
    assert len(sentinel) == 1 and "50 in OT" in sentinel[0]
    assert len([q for q in lines if "duplicated time stamp" in q]) == 1
    assert len([q for q in lines if "gap" in q and "10 min" in q]) == 1
    assert len([q for q in lines if "U+FFFD" in q]) == 1
    assert all("\n" not in q for q in lines)
    assert bundle.columns[-1] == "OT" and len(bundle.columns) == 21
    assert sum("\ufffd" in c for c in bundle.columns) == 3
    assert not any("\r" in c for c in bundle.columns)
    raw_train = bundle.scaler.inverse_transform(bundle.train.data)
    assert int(np.isclose(raw_train[:, -1], -9999.0, atol=1e-2).sum()) == 50  # kept, not cleaned
    assert bundle.n_rows == 52696  # the duplicated row is kept, the gap is not filled
    quiet = load_forecast(forecast_csv("weather"), warn=None)
    assert quiet.quirks == lines


def test_ett_repeated_rows_are_reported():
    lines: list[str] = []
    load_forecast(forecast_csv("ETTh1"), warn=lines.append)
    assert len(lines) == 1 and "330 rows repeat the row before them" in lines[0]


# ----------------------------------------------------------------------------- bad input
def _csv(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def _good_rows(n: int) -> str:
    return "".join(f"2020-01-01 {i // 60:02d}:{i % 60:02d}:00,{i % 7},{i % 5}\n"
                   for i in range(n))


def _one_line_error(path, fragment: str, **kwargs) -> str:
    with pytest.raises(DataError) as exc:
        load_forecast(path, warn=None, **kwargs)
    message = str(exc.value)
    assert "\n" not in message and str(path) in message and fragment in message, message
    return message


def test_bad_input_gives_one_line_naming_file_and_fix(tmp_path):
    _one_line_error(_csv(tmp_path, "no_ot.csv", "date,a,b\n" + _good_rows(300)), "no 'OT'")
    _one_line_error(_csv(tmp_path, "date_late.csv", "a,date,OT\n1,2020-01-01,3\n"),
                    "not 'date'")
    bad_cell = "date,a,OT\n" + _good_rows(5) + "2020-01-02 00:00:00,abc,1\n" + _good_rows(300)
    msg = _one_line_error(_csv(tmp_path, "text.csv", bad_cell), "'abc'")
    assert "column 'a'" in msg and "data row 6" in msg
    empty_cell = "date,a,OT\n" + _good_rows(5) + "2020-01-02 00:00:00,,1\n" + _good_rows(300)
    _one_line_error(_csv(tmp_path, "hole.csv", empty_cell), "is empty")
    _one_line_error(_csv(tmp_path, "baddate.csv", "date,a,OT\n" + _good_rows(3)
                         + "someday,1,2\n" + _good_rows(300)), "not a date")
    _one_line_error(_csv(tmp_path, "empty.csv", ""), "empty")
    _one_line_error(tmp_path / "missing.csv.gz", "not found")
    ett = forecast_csv("ETTh1")
    msg = _one_line_error(ett, "val split has 2976 rows", horizon=3000)
    assert "3096" in msg and "--horizon" in msg
    _one_line_error(_csv(tmp_path, "short.csv", "date,a,OT\n" + _good_rows(100)),
                    "lookback 96 is longer than the train split (70 rows)")
    _one_line_error(_csv(tmp_path, "ETTh9.csv", "date,a,OT\n" + _good_rows(500)),
                    "borders='ratio'")
    with pytest.raises(ConfigError):
        load_forecast(ett, lookback=0, warn=None)


def test_yield_file_is_refused_and_recognised_both_ways():
    yield_csv = illinois_csvs()[0]
    msg = _one_line_error(yield_csv, "looks like a yield file")
    assert "--task yield" in msg
    assert not looks_like_forecast_csv(yield_csv)
    assert looks_like_forecast_csv(forecast_csv("weather"))  # gz, CRLF, U+FFFD header
    assert looks_like_forecast_csv(forecast_csv("exchange_rate"))
    assert not looks_like_forecast_csv(yield_csv.parent / "no_such_file.csv")
