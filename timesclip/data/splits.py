"""Train/val/test splits and the train-only scaler.

Why a separate module: the user's own code standardised the test set with the test set's
statistics (leakage). Here the split comes first, the scaler is fitted on the train split
alone, on exactly the input window the model sees, and the other splits are transformed
with it. The scaler travels with the model (to_dict/from_dict) so predictions can be put
back into the yield's own units.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from timesclip.config import TrainConfig
from timesclip.data.csv_loader import YieldTable, load_csvs
from timesclip.data.synthetic import default_synthetic_paths
from timesclip.errors import DataError

#: Floor for standard deviations: a constant band (or constant yields) must not divide by 0.
STD_FLOOR = 1e-6
SPLITS = ("random", "year")


@dataclass
class Scaler:
    """Per-band standardisation of x and standardisation of y; statistics from TRAIN only."""

    x_mean: np.ndarray  # [V] per band, over train samples and all input steps
    x_std: np.ndarray  # [V] floored at STD_FLOOR
    y_mean: float
    y_std: float  # floored at STD_FLOOR

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> Scaler:
        """x [N, T, V], y [N] (the train split, already cropped to the input window)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"Scaler.fit needs x [N, T, V] and y [N] with N >= 1, got "
                             f"{x.shape} and {y.shape}")
        x_mean = x.mean(axis=(0, 1))  # [V]
        x_std = np.maximum(x.std(axis=(0, 1)), STD_FLOOR)  # [V]
        return cls(x_mean=x_mean, x_std=x_std, y_mean=float(y.mean()),
                   y_std=float(max(y.std(), STD_FLOOR)))

    def transform_x(self, x: np.ndarray) -> np.ndarray:
        """[..., V] raw -> [..., V] float32 standardised (broadcast over the band axis)."""
        return ((np.asarray(x, dtype=np.float64) - self.x_mean) / self.x_std).astype(np.float32)

    def transform_y(self, y: np.ndarray) -> np.ndarray:
        """[N] own units -> [N] float32 standardised."""
        return ((np.asarray(y, dtype=np.float64) - self.y_mean) / self.y_std).astype(np.float32)

    def inverse_y(self, y: np.ndarray) -> np.ndarray:
        """[N] standardised (model output) -> [N] float64 in the yield's own units."""
        return np.asarray(y, dtype=np.float64) * self.y_std + self.y_mean

    def to_dict(self) -> dict[str, Any]:
        """Plain lists/floats, so it can be stored in a checkpoint, JSON or YAML."""
        return {"x_mean": [float(v) for v in self.x_mean], "x_std": [float(v) for v in self.x_std],
                "y_mean": float(self.y_mean), "y_std": float(self.y_std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        try:
            x_mean = np.asarray(d["x_mean"], dtype=np.float64)
            x_std = np.asarray(d["x_std"], dtype=np.float64)
            scaler = cls(x_mean=x_mean, x_std=x_std, y_mean=float(d["y_mean"]),
                         y_std=float(d["y_std"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"stored scaler is malformed ({type(exc).__name__}: {exc}); "
                            "retrain to write a new checkpoint") from None
        if x_mean.ndim != 1 or x_mean.shape != x_std.shape:
            raise DataError("stored scaler is malformed (x_mean/x_std shapes differ); "
                            "retrain to write a new checkpoint")
        return scaler


@dataclass
class SplitData:
    """One split's arrays; row i of every array is the same field-season."""

    x: np.ndarray  # [N, input_steps, V] float32, scaled with the train Scaler
    y: np.ndarray  # [N] float32 scaled
    x_raw: np.ndarray  # [N, input_steps, V] float32, unscaled (rendering, baselines)
    y_raw: np.ndarray  # [N] float64 own units
    years: np.ndarray  # [N] int64
    index: np.ndarray  # [N] row indices into the YieldTable

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class DataBundle:
    """Everything the trainer needs about the data, plus what identifies it in reports."""

    train: SplitData
    val: SplitData
    test: SplitData
    scaler: Scaler
    bands: list[str]
    input_steps: int
    split: str  # "random" | "year"
    test_year: int | None
    fingerprint: str  # table fingerprint + split settings
    description: str  # one line for reports
    synthetic: bool


def scaled_split(x_raw: np.ndarray, y_raw: np.ndarray, years: np.ndarray, index: np.ndarray,
                 scaler: Scaler) -> SplitData:
    """One split's rows, standardised with `scaler` (fitted on a training split's rows).

    x_raw [n, input_steps, V] (already cropped to the window), y_raw [n] in the yield's own
    units, years [n], index [n] (row ids in the YieldTable). The one place raw rows become
    model input: `prepare_data` and the cross-validation folds (`timesclip.data.folds`)
    both scale through here, each with the scaler of its own training rows.
    """
    x_raw = np.ascontiguousarray(x_raw, dtype=np.float32)  # [n, input_steps, V]
    y_raw = np.asarray(y_raw).astype(np.float64)  # [n]
    return SplitData(x=scaler.transform_x(x_raw), y=scaler.transform_y(y_raw),
                     x_raw=x_raw, y_raw=y_raw, years=np.asarray(years).astype(np.int64),
                     index=np.asarray(index).astype(np.int64))


def prepare_data(table: YieldTable, *, input_steps: int, split: str = "random",
                 test_year: int | None = None, val_fraction: float = 0.15,
                 test_fraction: float = 0.15, seed: int = 42) -> DataBundle:
    """Split the table, crop x to the first `input_steps` steps, fit the scaler on train.

    random: a permutation seeded by `seed`; the first round(N*test_fraction) rows are test,
        the next round(N*val_fraction) val, the rest train.
    year: test = every row of `test_year`; val = a seeded val_fraction of the other rows.
    Each split's indices are sorted (the trainer shuffles its own batches).
    """
    n_total = len(table.y)
    where = ", ".join(table.sources) or "the data"
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use --split random or --split year")
    if not isinstance(input_steps, (int, np.integer)) or input_steps < 1:
        raise DataError(f"input_steps must be an integer >= 1, got {input_steps!r}")
    if input_steps > table.x.shape[1]:
        raise DataError(f"{where}: --input-steps {input_steps} but the data has only "
                        f"{table.x.shape[1]} steps per band; use --input-steps <= "
                        f"{table.x.shape[1]}")
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise DataError(f"{name} must be in (0, 1), got {frac!r}")

    rng = np.random.default_rng(seed)
    if split == "random":
        if test_year is not None:  # would be ignored: the user believes a year is held out
            raise DataError(f"test_year ({test_year}) only applies to the year split: add "
                            "--split year or drop --test-year")
        perm = rng.permutation(n_total)
        n_test = int(round(n_total * test_fraction))
        n_val = int(round(n_total * val_fraction))
        test_idx, val_idx = perm[:n_test], perm[n_test:n_test + n_val]
        train_idx = perm[n_test + n_val:]
    else:
        if test_year is None:
            raise DataError("--split year needs --test-year YYYY (the season to hold out)")
        present = sorted({int(v) for v in np.unique(table.years)})
        if int(test_year) not in present:
            raise DataError(f"{where}: no rows for test year {test_year}; years present: "
                            f"{', '.join(map(str, present))}; pick one with --test-year")
        test_year = int(test_year)
        test_idx = np.flatnonzero(table.years == test_year)
        rest = np.flatnonzero(table.years != test_year)
        rest = rest[rng.permutation(len(rest))]
        n_val = int(round(len(rest) * val_fraction))
        val_idx, train_idx = rest[:n_val], rest[n_val:]

    parts = {"train": np.sort(train_idx), "val": np.sort(val_idx), "test": np.sort(test_idx)}
    for name, idx in parts.items():
        if len(idx) < 2:
            sizes = ", ".join(f"{k} {len(v)}" for k, v in parts.items())
            raise DataError(f"{where}: the {name} split would hold {len(idx)} row(s) ({sizes} "
                            f"of {n_total} usable rows); every split needs >= 2 rows: add "
                            "data or change --val-fraction / --test-fraction / --test-year")

    x_win = table.x[:, :input_steps, :]  # [N, input_steps, V] crop BEFORE fitting
    scaler = Scaler.fit(x_win[parts["train"]], table.y[parts["train"]])

    def make(idx: np.ndarray) -> SplitData:
        return scaled_split(x_win[idx], table.y[idx], table.years[idx], idx, scaler)

    settings = {"table": table.fingerprint, "split": split, "test_year": test_year,
                "input_steps": int(input_steps), "seed": int(seed),
                "val_fraction": float(val_fraction), "test_fraction": float(test_fraction),
                "bands": list(table.bands)}
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    shown = [Path(s).name for s in table.sources]
    names = ", ".join(shown if len(shown) <= 3 else shown[:2] + [f"... ({len(shown)} files)"])
    years = sorted({int(v) for v in np.unique(table.years)})
    description = (f"{names} ({n_total} rows, {len(table.bands)} bands, "
                   f"years {years[0]}-{years[-1]})")
    return DataBundle(train=make(parts["train"]), val=make(parts["val"]),
                      test=make(parts["test"]), scaler=scaler, bands=list(table.bands),
                      input_steps=int(input_steps), split=split, test_year=test_year,
                      fingerprint=fingerprint, description=description, synthetic=False)


def load_bundle(config: TrainConfig, paths: Sequence[str | Path] | None, *,
                for_model: bool = False) -> DataBundle:
    """Load CSVs (None: the built-in synthetic data set) and split them as `config` says.

    for_model: the bands and window come from a trained model (see `load_csvs`).
    """
    synthetic = paths is None
    files = default_synthetic_paths() if paths is None else list(paths)
    table = load_csvs(files, bands=config.bands, min_steps=config.input_steps,
                      for_model=for_model)
    bundle = prepare_data(table, input_steps=config.input_steps, split=config.split,
                          test_year=config.test_year, val_fraction=config.val_fraction,
                          test_fraction=config.test_fraction, seed=config.split_seed)
    if synthetic:
        bundle = replace(bundle, synthetic=True, description=(
            f"synthetic crop-season data ({len(files)} files, {len(table.y)} rows, "
            f"{len(table.bands)} bands)"))
    return bundle


__all__ = ["STD_FLOOR", "DataBundle", "Scaler", "SplitData", "load_bundle", "prepare_data",
           "scaled_split"]
