"""Where the tests find the real data (shared/data/, outside the package).

Looked up by `benchmarks/data_files.py` (the one search the benchmarks use too):
$TIMESCLIP_REAL_DATA, then `shared/data/` in or beside the repository. A test that needs
it fails with a message saying where it looked: real-data coverage is never silently
skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from search_helpers import benchmark_module

data_files = benchmark_module("data_files")

#: The Illinois soybean preset (folder, pattern) the benchmarks' `--data illinois` reads.
ILLINOIS = data_files.DATA_PRESETS["illinois"]
FORECASTING = "forecasting"


def illinois_csvs() -> list[Path]:
    """The five yearly CSVs (2018-2022), or a test failure naming the places looked at."""
    files, places = data_files.find_data(ILLINOIS.folder, ILLINOIS.pattern)
    if not files:
        pytest.fail(f"the real Illinois soybean data ({ILLINOIS.folder}/{ILLINOIS.pattern}) "
                    f"is not in {data_files.places_text(places)}: set "
                    f"{data_files.DATA_ENV} to the folder that holds it")
    return files


def forecast_csv(name: str) -> Path:
    """One TSLib forecasting file (`ETTh1`, `exchange_rate`, ...: `<name>.csv.gz`), or a test
    failure naming the places looked at."""
    files, places = data_files.find_data(FORECASTING, f"{name}.csv.gz")
    if not files:
        pytest.fail(f"the forecasting file {FORECASTING}/{name}.csv.gz is not in "
                    f"{data_files.places_text(places)}: set {data_files.DATA_ENV} to the "
                    "folder that holds it")
    return files[0]
