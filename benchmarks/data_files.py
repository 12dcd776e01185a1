"""Where the real data sets live, looked up in one place for the benchmarks and the tests.

The real data (the Illinois soybean CSVs, the Time-Series-Library forecasting files) is not
part of the package: it sits in a `shared/data/` folder in or beside the checkout, or in
the folder $TIMESCLIP_REAL_DATA names (a machine that keeps it elsewhere). Every caller
searches the same places in the same order, and each says in its own way what it does when
nothing is there: a benchmark refuses in one line (UserError), a test fails naming the
places (a real-data test is never skipped silently). So this module only finds files and
reports where it looked; it raises nothing and imports no test framework.

`DATA_PRESETS` names the data sets a benchmark can be pointed at by name (`--data
illinois`), with the data flags their runs need.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
#: The environment variable naming a folder that holds the data sets' folders.
DATA_ENV = "TIMESCLIP_REAL_DATA"


class Preset(NamedTuple):
    """A data set a benchmark takes by name: its folder, file pattern and run flags."""

    folder: str  # under a data place, e.g. yield_illinois_soybean
    pattern: str  # glob of its files inside the folder
    flags: list[str]  # the data flags its runs need (search / train CLI spelling)


#: Preset data sets, by the name `--data` takes.
DATA_PRESETS: dict[str, Preset] = {
    "illinois": Preset("yield_illinois_soybean", "illinois_soybean_*.csv",
                       ["--split", "year", "--test-year", "2022", "--input-steps", "12"]),
}


def data_places() -> list[Path]:
    """Where data sets are looked for, in order: $TIMESCLIP_REAL_DATA (when set), then
    shared/data/ inside the checkout, then shared/data/ beside it."""
    places = [Path(p) for p in [os.environ.get(DATA_ENV)] if p]
    return places + [ROOT / "shared" / "data", ROOT.parent / "shared" / "data"]


def find_data(folder: str, pattern: str) -> tuple[list[Path], list[Path]]:
    """(the files matching `folder`/`pattern` in the first place that has any, sorted by
    name; the places looked at). The files are [] when no place has them: the caller
    decides how to say so, naming the places."""
    places = data_places()
    for place in places:
        files = sorted(p for p in (place / folder).glob(pattern) if p.is_file())
        if files:
            return files, places
    return [], places


def places_text(places: list[Path]) -> str:
    """The places looked at, as a message names them."""
    return ", ".join(map(str, places))


__all__ = ["DATA_ENV", "DATA_PRESETS", "Preset", "ROOT", "data_places", "find_data",
           "places_text"]
