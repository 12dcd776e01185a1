"""Cross-validation folds of a yield data set, and the pooled training set of the retrain.

Why: on a small yield data set (Illinois soybean: 421 rows, a year split leaves ~50
validation rows) a configuration's score on the one validation split is partly luck, and
so is a search that selects by it. Cross-validation scores every configuration on every
training row instead: the pool is every row that is not test (the bundle's train + val),
cut into folds; each fold trains on the rest of the pool and validates on its own rows,
and a configuration's score is the mean over the folds.

- Year split (`--split year`): folds are made of whole YEARS, the unit the test split holds
  out. `spec` K: the training years sorted and dealt round-robin (fold k validates on
  years[k], years[k + K], ...), deterministic, no shuffle, so no seed is involved;
  `spec` "years": leave one year out, one fold per training year.
- Random split: `spec` K folds of ROWS (a split of random rows is validated on random
  rows): the pool permuted by `split_seed` and dealt round-robin. "years" is refused
  there (the random split's test rows come from every year, so no year is held out).
- The forecast task is refused: its validation split holds thousands of windows
  (Time-Series-Library's borders), so selection on it is not small-sample noise, and its
  splits are contiguous in time, which row or year folds would break.

Each fold's scaler is fitted on that fold's training rows only (`Scaler.fit` and
`scaled_split`, the loader's own code), and the test split keeps its rows, scaled with the
fold's scaler (the model of a fold only ever sees its own scaling). The test split is
never part of any fold.

`all_training` is the data of the final retrain of the selected configuration: every
non-test row is trained on (with a scaler of its own); it has no held-out rows, so its
`val` split is the same pooled rows and its validation metrics are the fit to the
training data, never a selection criterion (the retrain keeps its last epoch's weights,
see `timesclip.cv.retrain`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from timesclip.config import TrainConfig
from timesclip.data.splits import DataBundle, Scaler, SplitData, scaled_split
from timesclip.errors import ConfigError, DataError

#: The `--cv` value of leave-one-year-out.
CV_YEARS = "years"
#: What `--cv` takes: K >= 2 folds, or CV_YEARS.
CvSpec = int | str


def parse_cv(value: object) -> CvSpec:
    """A `--cv` value as given on a command line or in a stored config: an integer K >= 2
    (K folds) or "years" (leave one year out). ConfigError in one line otherwise."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == CV_YEARS:
            return CV_YEARS
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"--cv must be a number of folds >= 2 or 'years', got "
                              f"{value!r}; e.g. --cv 5 or --cv years") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"--cv must be a number of folds >= 2 or 'years', got {value!r}; "
                          "e.g. --cv 5 or --cv years")
    if value < 2:
        raise ConfigError(f"--cv {value}: cross-validation needs at least 2 folds; use "
                          "--cv 2 or more, --cv years, or leave --cv out for the single "
                          "validation split")
    return int(value)


@dataclass(frozen=True)
class Folds:
    """The folds of one data set: read like a list of DataBundles (`len`, iteration,
    indexing), plus the bundle they were cut from (`source`: its vision features serve
    every fold, see `timesclip.cv.fold_features`) and what each fold validates on."""

    source: DataBundle
    spec: CvSpec
    bundles: tuple[DataBundle, ...]
    held_out: tuple[str, ...]  # per fold, e.g. "years 2016, 2019" or "41 rows"

    def __len__(self) -> int:
        return len(self.bundles)

    def __iter__(self) -> Iterator[DataBundle]:
        return iter(self.bundles)

    def __getitem__(self, k: int) -> DataBundle:
        return self.bundles[k]

    @property
    def fingerprints(self) -> list[str]:
        """Each fold's data fingerprint: a resumed CV run must find the same folds."""
        return [b.fingerprint for b in self.bundles]


def _refuse_forecast(config: TrainConfig, bundle: object, what: str) -> None:
    if config.task != "yield" or not isinstance(bundle, DataBundle):
        raise ConfigError(f"{what} is for the yield task: a forecasting file's validation "
                          "split holds thousands of windows, so selecting on it is not "
                          "small-sample noise (and its splits are contiguous in time); drop "
                          "--cv for --task forecast")


def _pool(bundle: DataBundle) -> dict[str, np.ndarray]:
    """Every non-test row (train + val), in table order (as prepare_data orders a split)."""
    parts = (bundle.train, bundle.val)
    index = np.concatenate([p.index for p in parts])  # [n]
    order = np.argsort(index, kind="stable")
    return {"x_raw": np.concatenate([p.x_raw for p in parts])[order],  # [n, T, V]
            "y_raw": np.concatenate([p.y_raw for p in parts])[order],  # [n]
            "years": np.concatenate([p.years for p in parts])[order],  # [n]
            "index": index[order]}  # [n]


def _derived(bundle: DataBundle, pool: dict[str, np.ndarray], train: np.ndarray,
             val: np.ndarray, tag: dict[str, object], description: str) -> DataBundle:
    """A bundle whose train / val are the pool rows at positions `train` / `val`, scaled by
    a scaler fitted on the train rows alone; test keeps the source's rows."""
    scaler = Scaler.fit(pool["x_raw"][train], pool["y_raw"][train])

    def rows(pos: np.ndarray) -> SplitData:
        return scaled_split(pool["x_raw"][pos], pool["y_raw"][pos], pool["years"][pos],
                            pool["index"][pos], scaler)

    t = bundle.test
    test = scaled_split(t.x_raw, t.y_raw, t.years, t.index, scaler)
    fingerprint = hashlib.sha256(json.dumps({"source": bundle.fingerprint, **tag},
                                            sort_keys=True).encode()).hexdigest()[:16]
    return replace(bundle, train=rows(train), val=rows(val), test=test, scaler=scaler,
                   fingerprint=fingerprint, description=f"{bundle.description}; {description}")


def cv_folds(config: TrainConfig, bundle: DataBundle, spec: CvSpec) -> Folds:
    """The cross-validation folds of `bundle` (see the module docstring).

    spec: K >= 2 or "years" (any form `parse_cv` reads). Raises a one-line ConfigError for
    a spec that cannot be (K < 2, "years" on the random split, the forecast task) and a
    DataError for one the data cannot fill (more folds than training years, one training
    year, a fold with fewer than 2 rows on either side).
    """
    _refuse_forecast(config, bundle, "--cv")
    spec = parse_cv(spec)
    pool = _pool(bundle)
    n = len(pool["index"])
    if bundle.split == "year":
        years = sorted({int(y) for y in np.unique(pool["years"])})
        held = f"(test year {bundle.test_year})"
        if len(years) < 2:  # folds of whole years need two years to alternate
            raise DataError(f"--cv {spec} needs at least 2 training years, the data hold only "
                            f"{', '.join(map(str, years))} {held}; add a season's file or "
                            "leave --cv out")
        k = len(years) if spec == CV_YEARS else int(spec)
        if k > len(years):
            raise DataError(f"--cv {spec}: folds are whole years and the training data hold "
                            f"{len(years)} ({', '.join(map(str, years))}) {held}; use --cv "
                            f"{len(years)} or fewer, or --cv years")
        groups = [years[i::k] for i in range(k)]  # sorted years dealt round-robin
        vals = [np.flatnonzero(np.isin(pool["years"], g)) for g in groups]
        held_out = [f"year{'s' if len(g) > 1 else ''} {', '.join(map(str, g))}"
                    for g in groups]
        tags: list[dict[str, object]] = [{"cv": spec, "val_years": g} for g in groups]
    else:
        if spec == CV_YEARS:
            raise ConfigError("--cv years leaves one year out, which needs --split year "
                              "--test-year YYYY (the random split's test rows come from "
                              "every year); use --cv K for K folds of rows")
        k = int(spec)
        perm = np.random.default_rng(config.split_seed).permutation(n)
        vals = [np.sort(perm[i::k]) for i in range(k)]  # the pool dealt round-robin
        held_out = [f"{len(v)} rows" for v in vals]
        tags = [{"cv": spec, "fold": i, "split_seed": int(config.split_seed)}
                for i in range(k)]
    bundles = []
    for i, (val, tag, what) in enumerate(zip(vals, tags, held_out)):
        train = np.setdiff1d(np.arange(n), val)
        if len(val) < 2 or len(train) < 2:
            raise DataError(f"--cv {spec}: fold {i + 1} would validate on {len(val)} and "
                            f"train on {len(train)} of the {n} training rows; every side "
                            "needs >= 2 rows: use fewer folds or add data")
        bundles.append(_derived(bundle, pool, train, val, tag,
                                f"fold {i + 1}/{k} validates on {what}"))
    return Folds(source=bundle, spec=spec, bundles=tuple(bundles), held_out=tuple(held_out))


def all_training(config: TrainConfig, bundle: DataBundle) -> DataBundle:
    """Every non-test row of `bundle` as one training set, with a scaler of its own (the
    data of the final retrain of a cross-validated configuration).

    There are no held-out rows left: `val` is the same pooled rows, so a run on this
    bundle reports its fit to the training data as val_* and must not select by it (the
    retrain runs a fixed number of epochs and keeps the last, `timesclip.cv.retrain`).
    test: the source's rows, scaled with the new scaler.
    """
    _refuse_forecast(config, bundle, "the retrain on all training data")
    pool = _pool(bundle)
    everything = np.arange(len(pool["index"]))
    return _derived(bundle, pool, everything, everything, {"all_training": True},
                    f"all {len(everything)} training rows (no held-out rows: val = train)")


__all__ = ["CV_YEARS", "CvSpec", "Folds", "all_training", "cv_folds", "parse_cv"]
