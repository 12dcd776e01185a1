"""Load the user's yield CSVs (one or more files) into one validated array table.

Schema (see SEED.md): one row per field/county-season; feature columns `{band}_{NN}` with a
zero-padded step index NN = 00..T-1; exactly one target column `y{YYYY}` whose name carries the
season's year; any other column (ids, names) is ignored. Rows with yield <= 0.1 are failed or
unharvested fields and are dropped.

Why so strict: a tuning run spends hours of cluster time on whatever this loader returns, so a
malformed file must stop it at once with ONE line that names the file, the column and the
data row, and says how to fix it, instead of surfacing as a NaN loss in trial 37.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from timesclip.errors import DataError

#: `{band}_{NN}`: band name (may itself contain underscores) and a two-digit step index.
FEATURE_RE = re.compile(r"^(.+)_([0-9]{2})$")
#: `y{YYYY}`: the yield column; its name gives the season's year.
TARGET_RE = re.compile(r"^y([0-9]{4})$")
#: Rows whose yield is at or below this are dropped (failed / unharvested fields).
MIN_YIELD = 0.1


@dataclass
class YieldTable:
    """All usable rows of the given files, stacked, unscaled; the input of every split."""

    x: np.ndarray  # [N, T, V] float32, raw band values; T = steps in the files (e.g. 36)
    y: np.ndarray  # [N] float64 yields in their own units (rows with y <= 0.1 dropped)
    years: np.ndarray  # [N] int64, year parsed from the target column name y{YYYY}
    bands: list[str]  # V band names, the order of the last axis of x
    sources: list[str]  # the file paths read, as given
    fingerprint: str  # 16 hex chars of sha256 over (bands, x, y, years)
    dropped: int  # rows dropped because yield <= 0.1
    duplicates: int = 0  # kept rows that repeat an earlier row exactly (band values + yield)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.x.shape[1])


@dataclass
class _FileData:
    """One parsed file, before the files are reconciled with each other."""

    path: str
    bands: list[str]  # every band found, in first-appearance column order
    steps: dict[str, int]  # band -> number of steps (checked contiguous 00..n-1)
    columns: dict[tuple[str, int], str]  # (band, step) -> column name in the frame
    frame: pd.DataFrame  # only the kept rows (yield > 0.1); index = 0-based data row
    y: np.ndarray  # [n_kept] float64
    year: int
    dropped: int
    resolved: str  # absolute path with links resolved: the same file given twice
    digest: str  # sha256 of the bytes: the same content under two names


def _warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def load_csvs(paths: Sequence[str | Path], bands: Sequence[str] | None = None,
              min_steps: int = 1, *, for_model: bool = False,
              warn: Callable[[str], None] | None = _warn_stderr) -> YieldTable:
    """Read, validate and stack yield CSVs.

    Args:
        paths: one or more CSV files in the user schema.
        bands: band names to use, in this order (the last axis of `x`). None: every band of
            the first file in column order; all files must then have the same band set.
        min_steps: the fewest steps a file may have (the model's `--input-steps`).
        for_model: `bands` and `min_steps` are fixed by a trained model (evaluate), so a
            file that lacks them is told what the model needs, not which flag to change.
        warn: receives one line about exact duplicate rows (None: stay quiet).

    The same file given twice (same resolved path) or two files with the same bytes is an
    error: their rows would count twice and could land in both train and test. Rows that
    repeat another row exactly (every band value and the yield) are only warned about, with
    counts: repeated measurements can be legitimate, but the user should know.

    When files (or bands) have different numbers of steps, the table keeps the steps all of
    them share (00..T-1, T the smallest count), because only a leading window is ever used.
    Rows that are dropped anyway (yield <= 0.1) are not checked for bad feature cells.

    Raises:
        DataError: one line naming the file (and column / 1-based data row) and the fix.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if len(paths) == 0:
        raise DataError("no data files given: pass one or more CSV files with --data")
    wanted = _check_band_request(bands)

    files: list[_FileData] = []
    for p in paths:
        f = _read_file(str(p), wanted, for_model)
        for other in files:
            if other.resolved == f.resolved:
                raise DataError(f"{f.path} and {other.path} are the same file given twice; "
                                "pass each file once")
            if other.digest == f.digest:
                raise DataError(f"{f.path} has the same content as {other.path} (sha256 "
                                f"{f.digest[:12]}); pass each file once, or its rows count "
                                "twice and can land in both train and test")
        files.append(f)

    if wanted is None:
        chosen = list(files[0].bands)
        for f in files[1:]:
            if set(f.bands) != set(chosen):
                raise DataError(
                    f"{f.path}: bands {', '.join(f.bands)} differ from "
                    f"{', '.join(chosen)} in {files[0].path}; give every file the same band "
                    "columns or pick common bands with --bands")
    else:
        chosen = wanted

    n_steps = min(f.steps[b] for f in files for b in chosen)
    for f in files:
        have = min(f.steps[b] for b in chosen)
        if have < min_steps and for_model:
            raise DataError(
                f"{f.path}: only {have} steps per band (00..{have - 1:02d}) but the model "
                f"was trained on the first {min_steps}; pass CSVs with at least {min_steps} "
                "steps per band")
        if have < min_steps:
            raise DataError(
                f"{f.path}: only {have} steps per band (00..{have - 1:02d}) but "
                f"--input-steps needs {min_steps}; lower --input-steps to <= {have} "
                "or supply longer series")

    xs, ys, years = [], [], []
    for f in files:
        cols = [f.columns[(b, t)] for t in range(n_steps) for b in chosen]  # step-major
        block = _numeric_block(f, cols)  # [n, T*V] float64, validated
        xs.append(block.reshape(len(f.frame), n_steps, len(chosen)))  # [n, T, V]
        ys.append(f.y)
        years.append(np.full(len(f.y), f.year, dtype=np.int64))

    x = np.concatenate(xs, axis=0).astype(np.float32)  # [N, T, V]
    if not np.isfinite(x).all():  # finite in float64 but too large for float32
        raise DataError(f"{', '.join(f.path for f in files)}: band values exceed the float32 "
                        "range (|value| > 3.4e38); rescale the band columns")
    y = np.concatenate(ys).astype(np.float64)  # [N]
    yrs = np.concatenate(years).astype(np.int64)  # [N]
    duplicates = _report_duplicate_rows(files, x, y, warn)
    return YieldTable(x=x, y=y, years=yrs, bands=list(chosen), sources=[str(p) for p in paths],
                      fingerprint=table_fingerprint(chosen, x, y, yrs),
                      dropped=sum(f.dropped for f in files), duplicates=duplicates)


def _report_duplicate_rows(files: list[_FileData], x: np.ndarray, y: np.ndarray,
                           warn: Callable[[str], None] | None) -> int:
    """Count kept rows equal to an earlier row in every band value and the yield; warn once.

    x [N, T, V] and y [N] are the stacked kept rows of `files`, in file order.
    """
    n = len(y)
    if n < 2:
        return 0
    keys = np.concatenate([x.reshape(n, -1).astype(np.float64), y.reshape(n, 1)], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    first_of = first[inverse.reshape(-1)]  # [N] index of the first row with the same values
    repeats = np.flatnonzero(first_of != np.arange(n))
    if len(repeats) == 0:
        return 0
    file_of = np.concatenate([np.full(len(f.y), i) for i, f in enumerate(files)])  # [N]
    data_row = np.concatenate([f.frame.index.to_numpy() + 1 for f in files])  # 1-based
    within = int((file_of[repeats] == file_of[first_of[repeats]]).sum())
    if warn is not None:
        r = int(repeats[0])
        o = int(first_of[r])
        warn(f"{len(repeats)} of {n} rows repeat an earlier row exactly (same band values "
             f"and yield): {within} within a file, {len(repeats) - within} across files, "
             f"e.g. {files[file_of[r]].path} data row {data_row[r]} = "
             f"{files[file_of[o]].path} data row {data_row[o]}; repeated rows can land in "
             "both train and test: remove them unless they are distinct fields")
    return len(repeats)


def table_fingerprint(bands: Sequence[str], x: np.ndarray, y: np.ndarray,
                      years: np.ndarray) -> str:
    """16 hex chars identifying the data content (not the file names), for provenance."""
    h = hashlib.sha256()
    h.update(json.dumps(list(bands)).encode())
    for arr, dtype in ((x, "<f4"), (y, "<f8"), (years, "<i8")):
        a = np.ascontiguousarray(arr, dtype=dtype)
        h.update(json.dumps([dtype, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- internals
def _check_band_request(bands: Sequence[str] | None) -> list[str] | None:
    if bands is None:
        return None
    if isinstance(bands, str):
        bands = [b.strip() for b in bands.split(",") if b.strip()]
    wanted = [str(b) for b in bands]
    if not wanted:
        raise DataError("--bands is empty: name at least one band, e.g. --bands ndvi,evi")
    dupes = sorted({b for b in wanted if wanted.count(b) > 1})
    if dupes:
        raise DataError(f"--bands lists {', '.join(dupes)} more than once; name each band once")
    return wanted


def _read_file(path: str, wanted: list[str] | None, for_model: bool = False) -> _FileData:
    """Parse one file's header and rows; everything that can be checked per file is."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: file not found; check the path given to --data")
    if not p.is_file():
        raise DataError(f"{path}: not a regular file; pass CSV files (not directories) to --data")
    try:
        raw = p.read_bytes()  # read once: hashed for duplicate files, then parsed
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}); check the file's "
                        "permissions") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the file as a UTF-8 CSV") from None
    header = _raw_header(text)
    if not raw or header is None:
        raise DataError(f"{path}: the file is empty; it needs a header row and one row per "
                        "field")

    try:
        frame = pd.read_csv(io.StringIO(text), low_memory=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; it needs a header row and one row per "
                        "field") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a well-formed CSV ({_first_line(exc)}); every row needs "
                        "as many comma-separated cells as the header") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    header = [h.strip() for h in header]

    # --- target column
    targets = [c for c in header if TARGET_RE.match(c)]
    hint = ""
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        hint = " (the header looks ';'- or tab-separated: save it comma-separated)"
    if not targets:
        raise DataError(f"{path}: no target column named y + four-digit year (e.g. y2019); "
                        f"rename the yield column{hint}")
    if len(set(targets)) > 1:
        raise DataError(f"{path}: more than one target column ({', '.join(targets)}); keep "
                        "one y{YYYY} column per file (one file per year)")
    target = targets[0]
    year = int(TARGET_RE.match(target).group(1))  # type: ignore[union-attr]

    # --- feature columns
    columns: dict[tuple[str, int], str] = {}
    found: list[str] = []
    for c in header:
        m = FEATURE_RE.match(c)
        if m is None:
            continue
        band, step = m.group(1), int(m.group(2))
        if band not in found:
            found.append(band)
        columns[(band, step)] = c
    if not found:
        raise DataError(f"{path}: no band columns named {{band}}_{{NN}} (e.g. ndvi_00, "
                        "ndvi_01, ...); rename the feature columns to this pattern")
    if wanted is not None:
        missing = [b for b in wanted if b not in found]
        if missing and for_model:
            raise DataError(f"{path}: lacks band(s) {', '.join(missing)}; the model was "
                            f"trained on bands {', '.join(wanted)} and needs every one of "
                            f"them (this file has {', '.join(found)}); pass CSVs that have "
                            "these band columns")
        if missing:
            raise DataError(f"{path}: band(s) {', '.join(missing)} not found; available "
                            f"bands: {', '.join(found)}; fix --bands")
    used = wanted if wanted is not None else found
    used_cols = {columns[k] for k in columns if k[0] in used} | {target}
    dupes = sorted({c for c in header if c in used_cols and header.count(c) > 1})
    if dupes:
        raise DataError(f"{path}: column {dupes[0]} appears more than once; keep one copy")

    steps: dict[str, int] = {}
    for band in used:
        have = sorted(s for (b, s) in columns if b == band)
        if have != list(range(len(have))):
            missing_steps = sorted(set(range(max(have) + 1)) - set(have))
            where = (f"missing {band}_{missing_steps[0]:02d}" if missing_steps
                     else f"starts at {band}_{have[0]:02d}")
            raise DataError(f"{path}: band {band} steps are not contiguous 00..{max(have):02d} "
                            f"({where}); add the missing columns, or pick other bands with "
                            "--bands if these are not band columns")
        steps[band] = len(have)
    if len(frame) == 0:
        raise DataError(f"{path}: header only, no data rows; add one row per field")

    # --- target values: every row must hold a finite number
    yv = _to_float(frame, target, path)
    bad = ~np.isfinite(yv)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: column {target}, data row {i + 1}: {_describe(yv[i])} yield; "
                        "fill in the yield or remove the row")
    keep = yv > MIN_YIELD
    if not keep.any():
        raise DataError(f"{path}: all {len(yv)} rows have yield <= {MIN_YIELD} and would be "
                        f"dropped; check the {target} column (units?)")
    kept = frame.loc[keep]
    return _FileData(path=path, bands=found, steps=steps, columns=columns,
                     frame=kept, y=yv[keep], year=year, dropped=int((~keep).sum()),
                     resolved=str(p.resolve()), digest=hashlib.sha256(raw).hexdigest())


def _numeric_block(f: _FileData, cols: list[str]) -> np.ndarray:
    """Feature cells of the kept rows as float64 [n, len(cols)]; first bad cell -> DataError."""
    sub = f.frame[cols]
    non_numeric = [c for c in cols if not _is_number_dtype(sub[c])]
    if non_numeric:
        # the first offending cell in reading order: smallest row, then leftmost column
        first: tuple[int, int, str, str] | None = None
        order = {c: i for i, c in enumerate(cols)}
        for c in non_numeric:
            raw = sub[c]
            conv = pd.to_numeric(raw, errors="coerce")
            bad = conv.isna() & raw.notna()
            if bad.any():
                row = int(bad.idxmax())  # frame index = 0-based data row
                key = (row, order[c], c, str(raw.loc[row]))
                if first is None or key[:2] < first[:2]:
                    first = key
        if first is not None:
            row, _, col, val = first
            raise DataError(f"{f.path}: column {col}, data row {row + 1}: {val!r} is not a "
                            "number; fix the cell (use '.' as the decimal point) or remove "
                            "the row")
    block = sub.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(block)
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])  # row-major: first row, then column
        row = int(sub.index[r])
        raise DataError(f"{f.path}: column {cols[c]}, data row {row + 1}: "
                        f"{_describe(block[r, c])} value; fill in the cell or remove the row")
    return block


def _to_float(frame: pd.DataFrame, col: str, path: str) -> np.ndarray:
    raw = frame[col]
    if not _is_number_dtype(raw):
        conv = pd.to_numeric(raw, errors="coerce")
        bad = conv.isna() & raw.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{path}: column {col}, data row {i + 1}: {str(raw.iloc[i])!r} is "
                            "not a number; fix the cell (use '.' as the decimal point) or "
                            "remove the row")
        raw = conv
    return raw.to_numpy(dtype=np.float64, na_value=np.nan)


def _is_number_dtype(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _describe(v: float) -> str:
    if np.isnan(v):
        return "missing (empty or NaN)"
    return "infinite (inf)" if v > 0 else "infinite (-inf)"


def _raw_header(text: str) -> list[str] | None:
    """The header as written (pandas renames duplicate columns, which would hide them)."""
    for row in csv.reader(io.StringIO(text, newline="")):
        if any(cell.strip() for cell in row):
            return row
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["FEATURE_RE", "MIN_YIELD", "TARGET_RE", "YieldTable", "load_csvs",
           "table_fingerprint"]
