"""Data: the user's CSV schema, the synthetic crop-season data set, splits and scaling.

Flow: `load_csvs` (validated raw table) -> `prepare_data` (split, crop to the input
window, train-only scaler) -> `DataBundle`; `load_bundle` does both from a TrainConfig.
"""

from timesclip.data.csv_loader import YieldTable, load_csvs
from timesclip.data.splits import DataBundle, Scaler, SplitData, load_bundle, prepare_data
from timesclip.data.synthetic import SYNTHETIC_BANDS, default_synthetic_paths, write_synthetic

__all__ = ["SYNTHETIC_BANDS", "DataBundle", "Scaler", "SplitData", "YieldTable",
           "default_synthetic_paths", "load_bundle", "load_csvs", "prepare_data",
           "write_synthetic"]
