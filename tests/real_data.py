"""Where the tests find the real Illinois soybean data (shared/data/, outside the package).

Looked up in $TIMESCLIP_REAL_DATA, then `shared/data/` in or beside the repository. A test
that needs it fails with a message saying where it looked: real-data coverage is never
silently skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ILLINOIS = "yield_illinois_soybean"


def illinois_csvs() -> list[Path]:
    """The five yearly CSVs (2018-2022), or a test failure naming the places looked at."""
    places = [Path(p) for p in [os.environ.get("TIMESCLIP_REAL_DATA")] if p]
    places += [REPO / "shared" / "data", REPO.parent / "shared" / "data"]
    for place in places:
        files = sorted((place / ILLINOIS).glob("illinois_soybean_*.csv"))
        if files:
            return files
    pytest.fail(f"the real Illinois soybean data ({ILLINOIS}/illinois_soybean_*.csv) is not "
                f"in {', '.join(map(str, places))}: set TIMESCLIP_REAL_DATA to the folder "
                "that holds it")


FORECASTING = "forecasting"


def forecast_csv(name: str) -> Path:
    """One TSLib forecasting file (`ETTh1`, `exchange_rate`, ...: `<name>.csv.gz`), or a test
    failure naming the places looked at."""
    places = [Path(p) for p in [os.environ.get("TIMESCLIP_REAL_DATA")] if p]
    places += [REPO / "shared" / "data", REPO.parent / "shared" / "data"]
    for place in places:
        path = place / FORECASTING / f"{name}.csv.gz"
        if path.is_file():
            return path
    pytest.fail(f"the forecasting file {FORECASTING}/{name}.csv.gz is not in "
                f"{', '.join(map(str, places))}: set TIMESCLIP_REAL_DATA to the folder that "
                "holds it")
