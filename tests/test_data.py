"""Tests for timesclip.data: CSV schema and errors, splits, train-only scaling, synthetic data."""

from __future__ import annotations

import pathlib
import re
from pathlib import Path

import numpy as np
import pytest

from timesclip.config import TrainConfig
from timesclip.data import (
    SYNTHETIC_BANDS,
    DataBundle,
    Scaler,
    YieldTable,
    default_synthetic_paths,
    load_bundle,
    load_csvs,
    prepare_data,
    write_synthetic,
)
from timesclip.errors import DataError

# ----------------------------------------------------------------------------- helpers


def value(band: str, row: int, step: int) -> float:
    """A distinct, recognisable value per (band, row, step), so layout mistakes show."""
    return {"ndvi": 0.0, "red": 100.0, "NIR": 200.0}[band] + row + step / 100.0


def csv_text(bands: tuple[str, ...] = ("ndvi", "red"), steps: int = 4, year: int = 2019,
             yields: tuple[float, ...] = (5.0, 6.0, 7.0, 8.0), extra: bool = False) -> str:
    """A small file in the user schema; `extra` adds id/name columns between the bands."""
    header: list[str] = ["id", "county"] if extra else []
    for b in bands:
        header += [f"{b}_{t:02d}" for t in range(steps)]
        if extra:
            header.append(f"note_{b}")
    header.append(f"y{year}")
    lines = [",".join(header)]
    for r, y in enumerate(yields):
        cells: list[str] = [f"id{r}", f"County {r}"] if extra else []
        for b in bands:
            cells += [repr(value(b, r, t)) for t in range(steps)]
            if extra:
                cells.append("free text")
        cells.append(repr(y))
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def set_cell(text: str, data_row: int, column: str, new: str) -> str:
    """Replace one cell (data_row is 1-based, header excluded)."""
    lines = text.splitlines()
    header = lines[0].split(",")
    cells = lines[data_row].split(",")
    cells[header.index(column)] = new
    lines[data_row] = ",".join(cells)
    return "\n".join(lines) + "\n"


def raises_one_line(path_fragment: str, fn, *args, **kwargs) -> str:
    """Call fn, assert a one-line DataError naming the file; return the message."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    assert path_fragment in msg, msg
    return msg


def make_table(n: int = 40, steps: int = 6, bands: int = 2, years=(2019, 2020),
               seed: int = 0) -> YieldTable:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, steps, bands)).astype(np.float32) * 3 + 10
    y = rng.uniform(1, 10, size=n)
    yrs = np.array([years[i % len(years)] for i in range(n)], dtype=np.int64)
    return YieldTable(x=x, y=y, years=yrs, bands=[f"b{i}" for i in range(bands)],
                      sources=["mem.csv"], fingerprint="f" * 16, dropped=0)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("synthetic")
    write_synthetic(d)
    return d


# ----------------------------------------------------------------------------- loader: good files


def test_load_single_file_layout(tmp_path):
    p = write(tmp_path / "a.csv", csv_text())
    t = load_csvs([p])
    assert t.x.shape == (4, 4, 2) and t.x.dtype == np.float32
    assert t.y.dtype == np.float64 and t.years.dtype == np.int64
    assert t.bands == ["ndvi", "red"]
    assert t.sources == [str(p)]
    assert t.dropped == 0
    assert (t.years == 2019).all()
    np.testing.assert_allclose(t.y, [5, 6, 7, 8])
    for r in range(4):
        for s in range(4):
            assert t.x[r, s, 0] == pytest.approx(value("ndvi", r, s))
            assert t.x[r, s, 1] == pytest.approx(value("red", r, s))
    assert re.fullmatch(r"[0-9a-f]{16}", t.fingerprint), t.fingerprint


def test_extra_columns_ignored_and_bands_in_first_appearance_order(tmp_path):
    p = write(tmp_path / "a.csv", csv_text(bands=("red", "NIR", "ndvi"), extra=True))
    t = load_csvs([p])
    assert t.bands == ["red", "NIR", "ndvi"]
    assert t.x.shape == (4, 4, 3)
    assert t.x[2, 3, 1] == pytest.approx(value("NIR", 2, 3))
    # the same numbers without the extra columns give the same table
    q = write(tmp_path / "b.csv", csv_text(bands=("red", "NIR", "ndvi")))
    assert load_csvs([q]).fingerprint == t.fingerprint


def test_multiple_files_stacked_with_years_and_first_file_band_order(tmp_path):
    a = write(tmp_path / "a.csv", csv_text(bands=("ndvi", "red"), year=2018))
    b = write(tmp_path / "b.csv", csv_text(bands=("red", "ndvi"), year=2020,
                                           yields=(3.0, 4.0)))
    t = load_csvs([a, str(b)])
    assert t.bands == ["ndvi", "red"]
    assert t.x.shape == (6, 4, 2)
    assert t.years.tolist() == [2018] * 4 + [2020] * 2
    np.testing.assert_allclose(t.y, [5, 6, 7, 8, 3, 4])
    # file b's columns were in the other order but land on the first file's band axis
    assert t.x[5, 2, 0] == pytest.approx(value("ndvi", 1, 2))
    assert t.x[5, 2, 1] == pytest.approx(value("red", 1, 2))
    assert t.sources == [str(a), str(b)]


def test_explicit_band_subset_and_order(tmp_path):
    p = write(tmp_path / "a.csv", csv_text(bands=("ndvi", "red", "NIR")))
    t = load_csvs([p], bands=["NIR", "ndvi"])
    assert t.bands == ["NIR", "ndvi"]
    assert t.x.shape == (4, 4, 2)
    assert t.x[1, 2, 0] == pytest.approx(value("NIR", 1, 2))
    assert t.x[1, 2, 1] == pytest.approx(value("ndvi", 1, 2))
    # explicit bands only need to exist in every file: extra bands elsewhere are fine
    q = write(tmp_path / "b.csv", csv_text(bands=("NIR", "ndvi")))
    assert load_csvs([p, q], bands=["ndvi"]).x.shape == (8, 4, 1)


def test_missing_requested_band_names_file_and_available_bands(tmp_path):
    p = write(tmp_path / "a.csv", csv_text())
    msg = raises_one_line("a.csv", load_csvs, [p], bands=["ndvi", "evi"])
    assert "evi" in msg and "ndvi, red" in msg and "--bands" in msg


def test_rows_with_yield_at_most_0_1_dropped(tmp_path):
    p = write(tmp_path / "a.csv", csv_text(yields=(0.0, 0.1, 0.11, 5.0, -2.0)))
    t = load_csvs([p])
    assert t.dropped == 3
    np.testing.assert_allclose(t.y, [0.11, 5.0])
    # the kept rows keep their own features (rows 2 and 3 of the file)
    assert t.x[0, 0, 0] == pytest.approx(value("ndvi", 2, 0))
    assert t.x[1, 0, 0] == pytest.approx(value("ndvi", 3, 0))


def test_bad_cell_in_a_dropped_row_is_not_an_error(tmp_path):
    text = set_cell(csv_text(yields=(0.0, 5.0, 6.0)), 1, "red_02", "")
    t = load_csvs([write(tmp_path / "a.csv", text)])
    assert t.dropped == 1 and np.isfinite(t.x).all()


def test_fingerprint_depends_on_content_not_file_name(tmp_path):
    a = write(tmp_path / "a.csv", csv_text())
    b = write(tmp_path / "b.csv", csv_text())
    c = write(tmp_path / "c.csv", set_cell(csv_text(), 2, "red_01", "0.5"))
    assert load_csvs([a]).fingerprint == load_csvs([b]).fingerprint
    assert load_csvs([a]).fingerprint != load_csvs([c]).fingerprint


def test_files_with_different_step_counts_keep_the_common_steps(tmp_path):
    a = write(tmp_path / "a.csv", csv_text(steps=6))
    b = write(tmp_path / "b.csv", csv_text(steps=4, year=2020))
    t = load_csvs([a, b], min_steps=4)
    assert t.x.shape == (8, 4, 2)
    raises_one_line("b.csv", load_csvs, [a, b], min_steps=5)


# ----------------------------------------------------------------------------- loader: bad files

BAD_FILES = {
    # name: (file text, substrings the message must contain)
    "missing_target": (csv_text().replace("y2019", "yield"), ["y2019", "target"]),
    "two_targets": (csv_text().replace("red_03", "y2020"), ["y2019", "y2020"]),
    "no_band_columns": ("id,y2019\na,5.0\nb,6.0\n", ["{band}_{NN}"]),
    "non_numeric_cell": (set_cell(csv_text(), 3, "red_02", "abc"),
                         ["red_02", "data row 3", "'abc'"]),
    "non_numeric_target": (set_cell(csv_text(), 2, "y2019", "n/a?"),
                           ["y2019", "data row 2", "not a number"]),
    "nan_cell": (set_cell(csv_text(), 2, "ndvi_01", "NaN"), ["ndvi_01", "data row 2", "NaN"]),
    "empty_cell": (set_cell(csv_text(), 4, "ndvi_03", ""), ["ndvi_03", "data row 4"]),
    "inf_cell": (set_cell(csv_text(), 1, "red_00", "inf"), ["red_00", "data row 1", "inf"]),
    "nan_target": (set_cell(csv_text(), 3, "y2019", ""), ["y2019", "data row 3"]),
    "inf_target": (set_cell(csv_text(), 3, "y2019", "-inf"), ["y2019", "data row 3", "inf"]),
    "steps_not_contiguous": (csv_text().replace("red_02", "red_07"),
                             ["red", "contiguous", "red_02"]),
    "empty_file": ("", ["empty"]),
    "blank_lines_only": ("\n\n", ["empty"]),
    "header_only": (csv_text().splitlines()[0] + "\n", ["header only"]),
    "all_rows_dropped": (csv_text(yields=(0.0, 0.05)), ["<= 0.1", "y2019"]),
    "duplicate_column": (csv_text().replace("red_03", "red_02"), ["red_02", "more than once"]),
    "semicolon_separated": (csv_text().replace(",", ";"), ["separated"]),
    "ragged_row": (csv_text() + "1,2,3,4,5,6,7,8,9,10,11,12\n", ["well-formed"]),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_gives_one_line_naming_the_file(tmp_path, kind):
    text, needles = BAD_FILES[kind]
    p = write(tmp_path / f"bad_{kind}.csv", text)
    msg = raises_one_line(f"bad_{kind}.csv", load_csvs, [p])
    for needle in needles:
        assert needle in msg, (kind, msg)


def test_duplicate_column_fixture_really_duplicates():
    header = BAD_FILES["duplicate_column"][0].splitlines()[0].split(",")
    assert header.count("red_02") == 2


def test_fewer_steps_than_min_steps(tmp_path):
    p = write(tmp_path / "short.csv", csv_text(steps=4))
    msg = raises_one_line("short.csv", load_csvs, [p], min_steps=12)
    assert "--input-steps" in msg and "4" in msg
    assert load_csvs([p], min_steps=4).x.shape[1] == 4


def test_missing_and_unreadable_paths(tmp_path, monkeypatch):
    raises_one_line("nope.csv", load_csvs, [tmp_path / "nope.csv"])
    (tmp_path / "adir").mkdir()
    msg = raises_one_line("adir", load_csvs, [tmp_path / "adir"])
    assert "not a regular file" in msg
    raises_one_line("--data", load_csvs, [])

    # a file the process may not read (chmod 0 does not stop root, so the read itself is
    # made to fail the way the OS fails it)
    locked = write(tmp_path / "locked.csv", csv_text())
    other = write(tmp_path / "other.csv", csv_text(year=2020))
    read_bytes = pathlib.Path.read_bytes

    def refuse(self: pathlib.Path) -> bytes:
        if self.name == "locked.csv":
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    msg = raises_one_line("locked.csv", load_csvs, [other, locked])
    assert "cannot read (Permission denied)" in msg and "permissions" in msg
    assert len(load_csvs([other])) == 4  # the other file still reads


def test_same_file_twice_is_rejected_naming_both(tmp_path):
    a = write(tmp_path / "a.csv", csv_text())
    msg = raises_one_line("a.csv", load_csvs, [a, tmp_path / "." / "a.csv"])
    assert "same file given twice" in msg and msg.count("a.csv") == 2
    link = tmp_path / "link.csv"
    link.symlink_to(a)
    msg = raises_one_line("link.csv", load_csvs, [a, link])
    assert "a.csv" in msg and "same file given twice" in msg


def test_identical_content_under_two_names_is_rejected(tmp_path):
    a = write(tmp_path / "a.csv", csv_text(year=2018))
    b = write(tmp_path / "b.csv", csv_text(year=2019))
    copy = write(tmp_path / "copy_of_a.csv", csv_text(year=2018))
    msg = raises_one_line("copy_of_a.csv", load_csvs, [a, b, copy])
    assert f"{a}" in msg and "same content" in msg and "pass each file once" in msg
    assert len(load_csvs([a, b])) == 8  # different content: fine


def test_duplicate_rows_are_counted_and_warned_once(tmp_path, capsys):
    lines = csv_text(yields=(5.0, 6.0, 7.0, 8.0)).splitlines()
    # a.csv: data row 5 repeats data row 2 (within the file)
    a = write(tmp_path / "a.csv", "\n".join([*lines, lines[2]]) + "\n")
    # b.csv: rows 1 and 2 repeat a.csv's rows 1 and 2 (across files); row 3 is new
    other_row = set_cell(csv_text(), 3, "ndvi_00", "42.0").splitlines()[3]
    b = write(tmp_path / "b.csv", "\n".join([lines[0], lines[1], lines[2], other_row]) + "\n")
    warnings: list[str] = []
    t = load_csvs([a, b], warn=warnings.append)
    assert len(t) == 8 and t.duplicates == 3  # nothing dropped: a warning, not an error
    assert len(warnings) == 1
    line = warnings[0]
    assert "\n" not in line
    assert line.startswith("3 of 8 rows repeat an earlier row exactly")
    assert "1 within a file, 2 across files" in line
    assert f"{a} data row 5 = {a} data row 2" in line
    # the default: exactly one line on stderr
    capsys.readouterr()
    load_csvs([a, b])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0] == f"warning: {line}"
    # same bands but another yield is not a duplicate
    c = write(tmp_path / "c.csv", set_cell(csv_text(), 1, "y2019", "9.5"))
    assert load_csvs([c], warn=warnings.append).duplicates == 0 and len(warnings) == 1


def test_mismatched_band_sets_across_files(tmp_path):
    a = write(tmp_path / "a.csv", csv_text(bands=("ndvi", "red")))
    b = write(tmp_path / "b.csv", csv_text(bands=("ndvi", "NIR")))
    msg = raises_one_line("b.csv", load_csvs, [a, b])
    assert "a.csv" in msg and "--bands" in msg
    assert load_csvs([a, b], bands=["ndvi"]).x.shape == (8, 4, 1)


def test_non_numeric_reports_the_first_offending_cell(tmp_path):
    text = set_cell(csv_text(), 3, "ndvi_02", "x3")
    text = set_cell(text, 2, "red_01", "x2")  # earlier row, later column: this one is first
    text = set_cell(text, 2, "red_03", "x2b")
    msg = raises_one_line("a.csv", load_csvs, [write(tmp_path / "a.csv", text)])
    assert "red_01" in msg and "data row 2" in msg and "'x2'" in msg


# ----------------------------------------------------------------------------- splits


def test_random_split_disjoint_covering_deterministic():
    t = make_table(n=100)
    a = prepare_data(t, input_steps=4, seed=7)
    b = prepare_data(t, input_steps=4, seed=7)
    c = prepare_data(t, input_steps=4, seed=8)
    idx = [a.train.index, a.val.index, a.test.index]
    allidx = np.concatenate(idx)
    assert len(allidx) == 100 and len(np.unique(allidx)) == 100  # disjoint and covering
    assert (len(a.test), len(a.val), len(a.train)) == (15, 15, 70)
    for s1, s2 in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        np.testing.assert_array_equal(s1.index, s2.index)
    assert not np.array_equal(a.test.index, c.test.index)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.split == "random" and a.test_year is None and a.synthetic is False
    # rows carry their own data
    np.testing.assert_array_equal(a.test.x_raw, t.x[a.test.index, :4])
    np.testing.assert_array_equal(a.test.y_raw, t.y[a.test.index])
    np.testing.assert_array_equal(a.test.years, t.years[a.test.index])


def test_year_split_holds_out_exactly_that_year():
    t = make_table(n=90, years=(2018, 2019, 2020))
    d = prepare_data(t, input_steps=6, split="year", test_year=2019, val_fraction=0.2, seed=1)
    assert set(d.test.years.tolist()) == {2019}
    assert len(d.test) == int((t.years == 2019).sum())
    assert 2019 not in set(d.train.years.tolist()) | set(d.val.years.tolist())
    assert len(d.val) == 12 and len(d.train) == 48
    assert len(np.intersect1d(d.train.index, d.val.index)) == 0
    assert d.test_year == 2019 and d.split == "year"
    other = prepare_data(t, input_steps=6, split="year", test_year=2020, val_fraction=0.2)
    assert other.fingerprint != d.fingerprint


def test_year_split_errors():
    t = make_table(n=20, years=(2018, 2020))
    with pytest.raises(DataError) as info:
        prepare_data(t, input_steps=3, split="year", test_year=2019)
    msg = str(info.value)
    assert "\n" not in msg and "2019" in msg and "2018, 2020" in msg and "mem.csv" in msg
    with pytest.raises(DataError, match="--test-year"):
        prepare_data(t, input_steps=3, split="year", test_year=None)


def test_too_few_rows_for_a_split():
    with pytest.raises(DataError, match=">= 2 rows"):
        prepare_data(make_table(n=6), input_steps=3)


def test_input_steps_beyond_data():
    with pytest.raises(DataError, match="--input-steps"):
        prepare_data(make_table(steps=6), input_steps=7)


def test_crop_before_scaling():
    t = make_table(n=50, steps=6)
    t.x[:, 3:, :] += 1000.0  # steps beyond the window must not influence the scaler
    d = prepare_data(t, input_steps=3)
    assert d.train.x.shape == (len(d.train), 3, 2)
    win = t.x[d.train.index, :3].astype(np.float64)
    np.testing.assert_allclose(d.scaler.x_mean, win.mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(d.scaler.x_std, win.std(axis=(0, 1)), rtol=1e-5)
    # the train split is standardised by construction
    np.testing.assert_allclose(d.train.x.reshape(-1, 2).mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(d.train.x.reshape(-1, 2).std(0), 1, atol=1e-4)
    np.testing.assert_allclose(d.train.y.mean(), 0, atol=1e-5)


def test_scaler_uses_train_rows_only():
    t = make_table(n=60)
    base = prepare_data(t, input_steps=6, seed=3)
    changed_test = make_table(n=60)
    changed_test.x[base.test.index] *= 50.0
    changed_test.y[base.test.index] += 100.0
    same = prepare_data(changed_test, input_steps=6, seed=3)
    np.testing.assert_array_equal(same.scaler.x_mean, base.scaler.x_mean)
    np.testing.assert_array_equal(same.scaler.x_std, base.scaler.x_std)
    assert same.scaler.y_mean == base.scaler.y_mean and same.scaler.y_std == base.scaler.y_std
    # the test split is transformed with train statistics, so it is visibly off-centre now
    assert abs(float(same.test.y.mean())) > 10
    changed_train = make_table(n=60)
    changed_train.x[base.train.index[:5]] += 3.0
    changed_train.y[base.train.index[:5]] += 3.0
    moved = prepare_data(changed_train, input_steps=6, seed=3)
    assert not np.allclose(moved.scaler.x_mean, base.scaler.x_mean)
    assert moved.scaler.y_mean != base.scaler.y_mean


def test_scaler_roundtrip_floor_and_serialisation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5, 3)) * 4 + 2
    x[:, :, 2] = 7.0  # a constant band must not divide by zero
    y = rng.uniform(2, 9, size=30)
    s = Scaler.fit(x, y)
    assert s.x_std[2] > 0 and np.isfinite(s.transform_x(x)).all()
    assert s.transform_x(x).dtype == np.float32 and s.transform_y(y).dtype == np.float32
    back = s.inverse_y(s.transform_y(y))
    assert back.dtype == np.float64
    np.testing.assert_allclose(back, y, rtol=1e-6)
    s2 = Scaler.from_dict(s.to_dict())
    np.testing.assert_array_equal(s2.transform_x(x), s.transform_x(x))
    assert s2.inverse_y(np.array([0.0]))[0] == pytest.approx(y.mean())
    with pytest.raises(DataError):
        Scaler.from_dict({"x_mean": [0.0]})


# ----------------------------------------------------------------------------- synthetic data


def test_synthetic_is_deterministic_and_in_user_schema(tmp_path, synth_dir):
    a = write_synthetic(tmp_path / "a", years=[2016, 2017], n_per_year=40)
    b = write_synthetic(tmp_path / "b", years=[2017], n_per_year=40)
    assert [p.name for p in a] == ["synthetic_2016.csv", "synthetic_2017.csv"]
    assert a[1].read_bytes() == b[0].read_bytes()  # same bytes, independent of other years
    c = write_synthetic(tmp_path / "c", years=[2017], n_per_year=40, seed=1)
    assert c[0].read_bytes() != b[0].read_bytes()
    header = a[0].read_text().splitlines()[0].split(",")
    assert header[:2] == ["id", "county"] and header[-1] == "y2016"
    assert len(header) == 2 + 7 * 36 + 1
    assert not list((tmp_path / "a").glob("*.tmp"))

    paths = sorted(synth_dir.glob("synthetic_*.csv"))
    assert [p.name for p in paths] == [f"synthetic_{y}.csv" for y in range(2015, 2021)]
    t = load_csvs(paths)
    assert t.bands == SYNTHETIC_BANDS
    assert t.x.shape[1:] == (36, 7)
    assert 0 < t.dropped <= 0.03 * 1500 and len(t) == 1500 - t.dropped
    assert sorted(set(t.years.tolist())) == list(range(2015, 2021))
    assert 3.0 < float(np.median(t.y)) < 12.0
    # green-up: ndvi rises from the start of the season to mid-season, red falls
    ndvi, red = SYNTHETIC_BANDS.index("ndvi"), SYNTHETIC_BANDS.index("red")
    assert t.x[:, 14, ndvi].mean() > t.x[:, 0, ndvi].mean() + 0.3
    assert t.x[:, 14, red].mean() < t.x[:, 0, red].mean()


def test_synthetic_early_window_predicts_yield_better_than_mean(synth_dir):
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    t = load_csvs(sorted(synth_dir.glob("synthetic_*.csv")), min_steps=12)
    d = prepare_data(t, input_steps=12, seed=42)
    flat = lambda s: s.x.reshape(len(s), -1)  # noqa: E731  [N, 12*7]
    ridge = Ridge(alpha=1.0).fit(flat(d.train), d.train.y)
    pred = d.scaler.inverse_y(ridge.predict(flat(d.test)))
    r2_ridge = r2_score(d.test.y_raw, pred)
    r2_mean = r2_score(d.test.y_raw, np.full(len(d.test), d.train.y_raw.mean()))
    assert r2_ridge > 0.4, r2_ridge
    assert abs(r2_mean) < 0.05, r2_mean
    # the yield is not a trivial function of the window either
    assert r2_ridge < 0.95, r2_ridge


def test_default_synthetic_paths_creates_then_reuses(tmp_path, monkeypatch, synth_dir):
    monkeypatch.setenv("TIMESCLIP_CACHE", str(tmp_path / "cache"))
    paths = default_synthetic_paths()
    folder = tmp_path / "cache" / "synthetic-v1"
    assert [p.parent for p in paths] == [folder] * 6
    assert all(p.is_file() for p in paths)
    # default content equals write_synthetic's defaults
    assert paths[0].read_bytes() == (synth_dir / "synthetic_2015.csv").read_bytes()
    # nothing temporary left behind
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["synthetic-v1"]
    stamps = [p.stat().st_mtime_ns for p in paths]
    inode = folder.stat().st_ino
    again = default_synthetic_paths()
    assert again == paths
    assert [p.stat().st_mtime_ns for p in again] == stamps and folder.stat().st_ino == inode
    # a damaged cache is rebuilt, not trusted
    paths[2].write_text("truncated")
    fixed = default_synthetic_paths()
    assert fixed[2].read_bytes() == (synth_dir / "synthetic_2017.csv").read_bytes()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["synthetic-v1"]


def test_load_bundle_synthetic_and_files(tmp_path, monkeypatch, synth_dir):
    monkeypatch.setenv("TIMESCLIP_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(backbone="tiny", input_steps=12, bands=["ndvi", "red"], seed=5)
    b = load_bundle(cfg, None)
    assert isinstance(b, DataBundle)
    assert b.synthetic and b.description.startswith("synthetic")
    assert "\n" not in b.description
    assert b.bands == ["ndvi", "red"] and b.input_steps == 12
    assert b.train.x.shape[1:] == (12, 2) and b.test.x_raw.shape[1:] == (12, 2)
    assert b.train.x.dtype == np.float32 and b.train.y.dtype == np.float32
    files = sorted(synth_dir.glob("synthetic_*.csv"))
    same = load_bundle(cfg, files)
    assert not same.synthetic and "synthetic_2015.csv" in same.description
    assert same.fingerprint == b.fingerprint  # same content, same split settings
    np.testing.assert_array_equal(same.test.index, b.test.index)
    year = load_bundle(cfg.replace(split="year", test_year=2020), files)
    assert set(year.test.years.tolist()) == {2020} and year.fingerprint != b.fingerprint
    other_steps = load_bundle(cfg.replace(input_steps=18), files)
    assert other_steps.fingerprint != same.fingerprint
    with pytest.raises(DataError, match="--input-steps"):
        load_bundle(cfg.replace(input_steps=40, patch_length=6), files)
