"""Data: the user's yield CSVs and the forecasting files, split and scaled for one run.

Yield flow: `load_csvs` (validated raw table) -> `prepare_data` (split, crop to the input
window, train-only scaler) -> `DataBundle`. Forecasting: `load_forecast` (TSLib's borders,
train-only scaler, windows read on demand) -> `ForecastBundle`. `load_bundle` is the one
entry point: it reads what `config.task` asks for and refuses a file of the other task in
one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from timesclip.config import TrainConfig
from timesclip.data.csv_loader import YieldTable, load_csvs
from timesclip.data.csv_loader import _warn_stderr as warn_stderr
from timesclip.data.forecast import (
    ForecastBundle,
    ForecastScaler,
    ForecastSplit,
    load_forecast,
    looks_like_forecast_csv,
    refuse_forecast_files,
)
from timesclip.data.splits import DataBundle, Scaler, SplitData, prepare_data
from timesclip.data.splits import load_bundle as load_yield_bundle
from timesclip.data.synthetic import SYNTHETIC_BANDS, default_synthetic_paths, write_synthetic
from timesclip.errors import DataError

#: What `load_bundle` returns: the yield task's bundle or the forecast task's.
Bundle = DataBundle | ForecastBundle


def load_bundle(config: TrainConfig, paths: Sequence[str | Path] | None, *,
                for_model: bool = False,
                warn: Callable[[str], None] | None = warn_stderr) -> Bundle:
    """The data of one run, as `config.task` reads it.

    yield: CSVs in the user schema (None: the built-in synthetic data set), split and
    scaled as `config` says (`timesclip.data.splits.load_bundle`); a forecasting file is
    refused ("use --task forecast"). forecast: exactly one Time-Series-Library file, split
    by `config.borders` into `config.lookback` / `config.horizon` windows (training windows
    every `config.train_stride`-th); a yield file is refused ("use --task yield").
    for_model (yield): the bands and window come from a trained model (see `load_csvs`).
    warn (forecast): receives one line per quirk of the file (None: quiet; they are in
    `bundle.quirks` too). Raises one-line DataErrors naming the file and the fix.
    """
    if config.task == "forecast":
        if not paths:
            raise DataError("--task forecast needs --data FILE: one Time-Series-Library CSV "
                            "(date first, OT last), e.g. ETTh1.csv.gz; there is no built-in "
                            "forecasting data set")
        files = list(paths)
        if len(files) != 1:
            raise DataError(f"--task forecast reads one file, got {len(files)} "
                            f"({', '.join(Path(f).name for f in files)}); pass one --data "
                            "FILE per run")
        return load_forecast(files[0], lookback=config.lookback, horizon=config.horizon,
                             borders=config.borders, train_stride=config.train_stride,
                             warn=warn)
    if paths is not None:
        refuse_forecast_files(paths)
    return load_yield_bundle(config, paths, for_model=for_model)


__all__ = ["SYNTHETIC_BANDS", "Bundle", "DataBundle", "ForecastBundle", "ForecastScaler",
           "ForecastSplit", "Scaler", "SplitData", "YieldTable", "default_synthetic_paths",
           "load_bundle", "load_csvs", "load_forecast", "load_yield_bundle",
           "looks_like_forecast_csv", "prepare_data", "refuse_forecast_files",
           "write_synthetic"]
