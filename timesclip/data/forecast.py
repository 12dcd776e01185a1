"""Long-horizon forecasting data, split, scaled and windowed exactly as Time-Series-Library.

Why exact: published forecasting tables (TimesCLIP Table 4, iTransformer, DLinear, ...) all
come from TSLib's `Dataset_ETT_hour`, `Dataset_ETT_minute` and `Dataset_Custom`. A number is
only comparable with them if the rows of every split, the scaler and the windows are the same:
- borders: ETTh files 12/4/4 months of hourly rows, ETTm files the same in 15-minute rows,
  every other file 70/10/20 % of the rows; val and test start `lookback` rows early so their
  first window's input lies in the previous split;
- a StandardScaler (population std) fitted on the training rows only, applied to all rows;
- every variate is input and output (TSLib `features=M`), `OT` moved last as `Dataset_Custom`
  does;
- window i of a split with rows [b1, b2): x = rows [b1+i, b1+i+L), y = the next H rows.
  Every val/test window is kept (TSLib's old `drop_last=True` test loader dropped some).
The files' quirks are kept as TSLib keeps them (it cleans nothing) and reported once each.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from timesclip.config import BORDERS
from timesclip.data.csv_loader import FEATURE_RE, TARGET_RE, _warn_stderr
from timesclip.errors import ConfigError, DataError

TARGET = "OT"
DATE = "date"
SPLIT_NAMES = ("train", "val", "test")
BORDER_RULES = BORDERS  # TrainConfig.borders' choices
#: Sensor sentinel the weather file uses for "no reading"; kept (TSLib keeps it), reported.
SENTINEL = -9999.0
_HOUR_MONTH = 30 * 24  # rows per "month" in TSLib's ETTh borders (hourly data)


def forecast_name(path: str | Path) -> str:
    """`ETTh1.csv.gz` -> `ETTh1`: the data set's name (recipes and border rules key on it)."""
    name = Path(path).name
    for suffix in (".gz", ".csv"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    return name


def border_rule(path: str | Path, borders: str = "auto") -> str:
    """Which TSLib split applies: `auto` picks it from the file name as TSLib's `--data` does
    (ETTh* -> etth, ETTm* -> ettm, anything else -> ratio, i.e. `Dataset_Custom`)."""
    if borders not in BORDER_RULES:
        raise ConfigError(f"borders must be one of {', '.join(BORDER_RULES)}, got {borders!r}")
    if borders != "auto":
        return borders
    name = forecast_name(path)
    return "etth" if name.startswith("ETTh") else "ettm" if name.startswith("ETTm") else "ratio"


def tslib_borders(n_rows: int, lookback: int, rule: str) -> tuple[list[int], list[int]]:
    """TSLib's `border1s`, `border2s` (train, val, test) for a file of `n_rows` rows."""
    if rule in ("etth", "ettm"):
        m = _HOUR_MONTH * (4 if rule == "ettm" else 1)
        return ([0, 12 * m - lookback, 12 * m + 4 * m - lookback],
                [12 * m, 12 * m + 4 * m, 12 * m + 8 * m])
    if rule != "ratio":
        raise ConfigError(f"unknown border rule {rule!r}; use etth, ettm or ratio")
    num_train = int(n_rows * 0.7)
    num_test = int(n_rows * 0.2)
    num_vali = n_rows - num_train - num_test
    return ([0, num_train - lookback, n_rows - num_test - lookback],
            [num_train, num_train + num_vali, n_rows])


@dataclass(frozen=True)
class ForecastScaler:
    """sklearn-StandardScaler-equivalent per-variate standardisation (population std; a
    constant variate gets std 1, as sklearn does). Fitted on the training rows only."""

    mean: np.ndarray  # [V] float64
    std: np.ndarray  # [V] float64

    @classmethod
    def fit(cls, rows: np.ndarray) -> ForecastScaler:
        """rows [N, V] raw values of the training split."""
        rows = np.asarray(rows, dtype=np.float64)
        std = rows.std(axis=0)  # ddof=0, like sklearn
        return cls(mean=rows.mean(axis=0), std=np.where(std == 0.0, 1.0, std))

    def transform(self, rows: np.ndarray) -> np.ndarray:
        """[..., V] raw -> [..., V] float64 standardised."""
        return (np.asarray(rows, dtype=np.float64) - self.mean) / self.std

    def inverse_transform(self, rows: np.ndarray) -> np.ndarray:
        """[..., V] standardised (e.g. a forecast) -> [..., V] float64 in the file's units."""
        return np.asarray(rows, dtype=np.float64) * self.std + self.mean

    def to_dict(self) -> dict[str, Any]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ForecastScaler:
        try:
            mean = np.asarray(d["mean"], dtype=np.float64)
            std = np.asarray(d["std"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"stored forecasting scaler is malformed ({type(exc).__name__}: "
                            f"{exc}); retrain to write a new checkpoint") from None
        if mean.ndim != 1 or mean.shape != std.shape or not np.all(std > 0):
            raise DataError("stored forecasting scaler is malformed (mean/std shapes differ "
                            "or std <= 0); retrain to write a new checkpoint")
        return cls(mean=mean, std=std)


@dataclass(frozen=True)
class ForecastSplit:
    """One split's scaled rows and its sliding windows, read on demand (nothing materialised).

    Window i starts at row `i * stride` of `data`: x = data[s : s+L], y = data[s+L : s+L+H].
    """

    name: str  # "train" | "val" | "test"
    data: np.ndarray  # [rows, V] float32, standardised, rows [border1, border2) of the file
    border1: int
    border2: int
    lookback: int
    horizon: int
    stride: int = 1  # every stride-th window (training only; val and test use 1)

    @property
    def total_windows(self) -> int:
        """TSLib's `len()`: len(data_x) - seq_len - pred_len + 1 (before any stride)."""
        return self.data.shape[0] - self.lookback - self.horizon + 1

    @property
    def n_windows(self) -> int:
        return -(-self.total_windows // self.stride)  # ceil

    def __len__(self) -> int:
        """Windows of this split (after the stride): what a run iterates and scores."""
        return self.n_windows

    def starts(self, idx: Any) -> np.ndarray:
        """Window indices [B] -> their first rows in `data` [B]; out-of-range -> IndexError."""
        idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_windows):
            raise IndexError(f"{self.name} window index out of range 0..{self.n_windows - 1}")
        return idx * self.stride

    def x(self, idx: Any) -> np.ndarray:
        """Inputs of windows `idx` -> [B, L, V] float32 (only these B windows are copied)."""
        rows = self.starts(idx)[:, None] + np.arange(self.lookback)  # [B, L]
        return self.data[rows]

    def y(self, idx: Any) -> np.ndarray:
        """Targets of windows `idx` -> [B, H, V] float32."""
        rows = self.starts(idx)[:, None] + self.lookback + np.arange(self.horizon)  # [B, H]
        return self.data[rows]

    def batches(self, batch_size: int, *, shuffle: bool = False,
                rng: np.random.Generator | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (x [B, L, V], y [B, H, V]) over every window once; the last batch may be
        short (no drop_last). shuffle needs `rng` so an epoch's order is reproducible."""
        order = np.arange(self.n_windows)
        if shuffle:
            if rng is None:
                raise ValueError("shuffle=True needs rng (a seeded numpy Generator)")
            order = rng.permutation(order)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield self.x(idx), self.y(idx)


@dataclass(frozen=True)
class ForecastBundle:
    """Everything a forecasting run needs about its data, plus what identifies it."""

    name: str  # e.g. "ETTh1"
    path: str
    columns: list[str]  # V variate names, OT last
    train: ForecastSplit
    val: ForecastSplit
    test: ForecastSplit
    scaler: ForecastScaler
    lookback: int
    horizon: int
    borders: str  # "etth" | "ettm" | "ratio" (resolved, never "auto")
    border1s: list[int]
    border2s: list[int]
    n_rows: int
    fingerprint: str  # 16 hex chars: sha256 over the file's bytes + L, H and the borders
    description: str  # one line for reports
    quirks: list[str] = field(default_factory=list)  # each quirk found, as warned

    #: A forecasting file is real data (reports label synthetic data; read generically).
    synthetic = False

    @property
    def bands(self) -> list[str]:
        """The variate names (`columns`, OT last): what the yield bundle calls its bands, so
        checkpoints, attention tables and reports read both bundles alike."""
        return list(self.columns)

    def split(self, name: str) -> ForecastSplit:
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)


def refuse_forecast_files(paths: Sequence[str | Path]) -> None:
    """The yield loader's check: a forecasting file is named as such (DataError), rather
    than failing later for lacking {band}_{NN} columns."""
    for path in paths:
        if looks_like_forecast_csv(path):
            raise DataError(f"{path}: looks like a forecasting file (first column 'date', an "
                            "'OT' column), not a yield file: use --task forecast")


def looks_like_forecast_csv(path: str | Path) -> bool:
    """Whether a file's header says "forecasting file" (first column `date`, an `OT` column).

    For the yield loader's error message ("use --task forecast"); never raises."""
    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            header = _header(fh.readline().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, EOFError):
        return False
    return bool(header) and header[0] == DATE and TARGET in header


def load_forecast(path: str | Path, *, lookback: int = 96, horizon: int = 96,
                  borders: str = "auto", train_stride: int = 1,
                  warn: Callable[[str], None] | None = _warn_stderr) -> ForecastBundle:
    """Read a TSLib CSV (`.csv` or `.csv.gz`), split, scale and window it as TSLib does.

    lookback, horizon: L and H (TSLib's seq_len, pred_len); ILI is usually run with 36/24.
    borders: "auto" (from the file name), "etth", "ettm" or "ratio" (70/10/20).
    train_stride: keep every N-th training window (CPU budgets); val/test keep every window.
    warn: receives one line per quirk found (None: stay quiet); the lines are also in
        `bundle.quirks`. Bad input raises one-line `DataError`s naming the file and the fix.
    """
    for label, value in (("lookback", lookback), ("horizon", horizon),
                         ("train_stride", train_stride)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{label} must be an integer >= 1, got {value!r}")
    rule = border_rule(path, borders)
    p = Path(path)
    raw = _read_bytes(p)
    frame, columns = _parse(raw, str(path))
    values = frame[columns].to_numpy(dtype=np.float64)  # [n, V] raw, OT last
    n = len(frame)

    b1s, b2s = tslib_borders(n, lookback, rule)
    if b2s[2] > n:
        raise DataError(f"{path}: {rule} borders need {b2s[2]} rows but the file has {n}; "
                        "use borders='ratio' (70/10/20) for this file")
    if min(b1s) < 0:
        raise DataError(f"{path}: lookback {lookback} is longer than the train split "
                        f"({b2s[0]} rows), so val/test cannot start {lookback} rows early as "
                        "TSLib does; use a shorter --lookback")
    for i, name in enumerate(SPLIT_NAMES):
        rows = b2s[i] - b1s[i]  # TSLib's len(data_x), lookback rows before val/test included
        if rows - lookback - horizon + 1 < 1:
            raise DataError(f"{path}: the {name} split has {rows} rows, fewer than lookback + "
                            f"horizon = {lookback + horizon}, so it has no window; use a "
                            "shorter --lookback / --horizon")

    scaler = ForecastScaler.fit(values[b1s[0]:b2s[0]])  # TRAIN rows only
    scaled = scaler.transform(values).astype(np.float32)  # [n, V]
    splits = [ForecastSplit(name=nm, data=scaled[b1s[i]:b2s[i]], border1=b1s[i],
                            border2=b2s[i], lookback=lookback, horizon=horizon,
                            stride=train_stride if nm == "train" else 1)
              for i, nm in enumerate(SPLIT_NAMES)]

    quirks = _quirks(p.name, frame, columns, values)
    for line in quirks if warn is not None else []:
        warn(line)
    settings = {"lookback": int(lookback), "horizon": int(horizon), "borders": rule,
                "border1s": b1s, "border2s": b2s}
    digest = hashlib.sha256(raw)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    stride = f", training stride {train_stride}" if train_stride > 1 else ""
    counts = " / ".join(f"{s.name} {s.n_windows}" for s in splits)
    description = (f"{p.name} ({n} rows, {len(columns)} variates, {rule} borders, "
                   f"lookback {lookback}, horizon {horizon}; windows {counts}{stride})")
    return ForecastBundle(name=forecast_name(p), path=str(path), columns=columns,
                          train=splits[0], val=splits[1], test=splits[2], scaler=scaler,
                          lookback=int(lookback), horizon=int(horizon), borders=rule,
                          border1s=b1s, border2s=b2s, n_rows=n,
                          fingerprint=digest.hexdigest()[:16], description=description,
                          quirks=quirks)


# ----------------------------------------------------------------------------- reading
def _read_bytes(p: Path) -> bytes:
    """The file's bytes as stored (the fingerprint hashes these); errors -> DataError."""
    if not p.exists():
        raise DataError(f"{p}: file not found; check the forecasting data path")
    if not p.is_file():
        raise DataError(f"{p}: not a regular file; pass a .csv or .csv.gz file")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({exc.strerror or exc}); check its permissions"
                        ) from None


def _header(text: str) -> list[str]:
    """The header row's cells as written (U+FFFD characters stay; CRLF is stripped)."""
    first = text.split("\n", 1)[0].rstrip("\r")
    return next(csv.reader([first])) if first.strip() else []


def _parse(raw: bytes, path: str) -> tuple[pd.DataFrame, list[str]]:
    """Parse and validate; returns the frame and the variate columns (OT last)."""
    try:  # CRLF is handled by the CSV parser
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8-sig")
    except (OSError, EOFError, gzip.BadGzipFile):
        raise DataError(f"{path}: not a readable gzip file; re-download or decompress it"
                        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the file as a UTF-8 CSV") from None
    header = _header(text)
    if not header:
        raise DataError(f"{path}: the file is empty; a forecasting CSV needs a header "
                        "(date, variates..., OT) and one row per time step")
    if any(TARGET_RE.match(c.strip()) for c in header) or \
            sum(bool(FEATURE_RE.match(c.strip())) for c in header) > len(header) // 2:
        raise DataError(f"{path}: looks like a yield file ({{band}}_{{NN}} / y{{YYYY}} "
                        "columns), not a forecasting file: use --task yield")
    if header[0] != DATE:
        raise DataError(f"{path}: the first column is {header[0]!r}, not 'date'; a "
                        "forecasting CSV has the time stamps first, in a column named date")
    if TARGET not in header:
        raise DataError(f"{path}: no 'OT' column; a forecasting CSV names its target "
                        "variate OT (rename it)")
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise DataError(f"{path}: column {dupes[0]!r} appears more than once; keep one copy")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={DATE: str})
    except pd.errors.ParserError as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a well-formed CSV ({line}); every row needs as many "
                        "comma-separated cells as the header") from None
    if len(frame) == 0:
        raise DataError(f"{path}: header only, no data rows; add one row per time step")
    columns = [c for c in frame.columns if c not in (DATE, TARGET)] + [TARGET]
    for col in columns:
        series = frame[col]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            conv = series.astype(np.float64)
        else:
            conv = pd.to_numeric(series, errors="coerce")
        bad = ~np.isfinite(conv.to_numpy(dtype=np.float64, na_value=np.nan))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            cell = series.iloc[i]
            what = "is empty" if pd.isna(cell) else f"holds {str(cell)!r}, not a finite number"
            raise DataError(f"{path}: column {col!r}, data row {i + 1} {what}; fix the cell "
                            "(use '.' as the decimal point) or remove the row")
        frame[col] = conv
    stamps = _dates(frame[DATE])
    bad = stamps.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column 'date', data row {i + 1} holds "
                        f"{str(frame[DATE].iloc[i])!r}, not a date; fix the cell or remove "
                        "the row")
    frame[DATE] = stamps
    return frame, columns


def _dates(raw: pd.Series) -> pd.Series:
    """Parse time stamps; the inferred single format first (fast), then per element."""
    stamps = pd.to_datetime(raw, errors="coerce")
    if stamps.isna().any():
        stamps = pd.to_datetime(raw, errors="coerce", format="mixed")
    return stamps


# ----------------------------------------------------------------------------- quirks
def _quirks(fname: str, frame: pd.DataFrame, columns: list[str],
            values: np.ndarray) -> list[str]:
    """One line per kind of quirk found; nothing is changed (TSLib cleans nothing)."""
    out: list[str] = []
    odd = [c for c in columns if "\ufffd" in c]
    if odd:
        out.append(f"{fname}: {len(odd)} column name(s) hold U+FFFD replacement characters "
                   f"(the source's encoding was lost), e.g. {odd[0]!r}; names kept as read")
    sentinel = (values == SENTINEL).sum(axis=0)  # [V]
    if sentinel.any():
        where = ", ".join(f"{int(k)} in {c}" for k, c in
                          sorted(zip(sentinel, columns), key=lambda t: -t[0]) if k)
        out.append(f"{fname}: {int(sentinel.sum())} values of {SENTINEL:g} (sensor "
                   f"sentinels: {where}) kept as TSLib keeps them")
    stamps = frame[DATE]
    step = stamps.diff().iloc[1:]
    if len(step):
        dup = np.flatnonzero((step == pd.Timedelta(0)).to_numpy()) + 1
        back = np.flatnonzero((step < pd.Timedelta(0)).to_numpy()) + 1
        usual = step[step > pd.Timedelta(0)].mode()
        gaps = (np.flatnonzero((step > usual.iloc[0]).to_numpy()) + 1
                if len(usual) else np.array([], dtype=int))
        if len(dup):
            out.append(f"{fname}: {len(dup)} duplicated time stamp(s) (first {stamps.iloc[dup[0]]}"
                       f", data row {dup[0] + 1}) kept as TSLib keeps them")
        if len(back):
            out.append(f"{fname}: {len(back)} time stamp(s) earlier than the row before "
                       f"(first at data row {back[0] + 1}) kept in file order, as TSLib does")
        if len(gaps):
            g = gaps[0]
            out.append(f"{fname}: {len(gaps)} gap(s) longer than the usual step "
                       f"{_span(usual.iloc[0])} (first {stamps.iloc[g - 1]} -> {stamps.iloc[g]}) "
                       "kept as TSLib keeps them (no rows inserted)")
    same = np.all(values[1:] == values[:-1], axis=1)  # [n-1] row equals the row before
    if same.any():
        edges = np.diff(np.concatenate([[0], same.astype(np.int8), [0]]))
        lengths = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
        out.append(f"{fname}: {int(same.sum())} rows repeat the row before them exactly "
                   f"({len(lengths)} runs, longest {int(lengths.max())}) kept as TSLib "
                   "keeps them")
    return out


def _span(step: pd.Timedelta) -> str:
    """A time step in words: 10 min, 1 h, 7 days."""
    secs = int(step.total_seconds())
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if secs % size == 0:
            return f"{secs // size} {unit}"
    return f"{secs} s"


__all__ = ["BORDER_RULES", "SPLIT_NAMES", "ForecastBundle", "ForecastScaler", "ForecastSplit",
           "border_rule", "forecast_name", "load_forecast", "looks_like_forecast_csv",
           "refuse_forecast_files",
           "tslib_borders"]
