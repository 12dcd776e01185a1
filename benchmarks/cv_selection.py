"""Is selecting by the one validation split noise, and does cross-validation select better?

    python benchmarks/cv_selection.py [--quick] [--seeds 3] [--trials 12] [--epochs 10]
                                      [--cv years] [--space full] [--data illinois|CSV ...]
                                      [--out results.json]

The question (Illinois soybean, year split, test year 2022): ~50 validation rows decide
which configuration a search exports. How well does a configuration's validation score
rank its test score, and does selecting by cross-validation (`--cv`) export a better
configuration on test than selecting by the single split?

Per seed s (default 0, 1, 2), `--trials` N configurations are drawn from `--space` exactly
as the search samples them (Optuna's RandomSampler(seed=s), ask + the space's
define_by_run, the space's trial_config on the search's base: the space's base, the data
flags, `--backbone`, seed s, `--epochs` E, the space's metric as the trainer's monitor).
Each configuration is trained twice, with real training:

  single split   fit(): its best validation value (val_rmse) and the test score of the
                 weights of that epoch (its best.pt);
  cross-val.     fit_folds() over the `--cv` folds (default "years": leave one training
                 year out, Illinois 2018-2021 -> 4 folds): the mean validation value at its
                 best mean epoch; then retrain() on every non-test row for that many epochs,
                 scored on test once.

Per seed it prints the Spearman rank correlation between validation and test (single
split: val vs its checkpoint's test; cross-validation: mean val vs the retrained test),
and the test score of the configuration each rule selects (`tuner.outcomes.select_best`,
the search's own notion of "best trial"):

  single         the single-split pick, its own checkpoint (what a search exports now);
  single+retrain the single-split pick retrained on every training row for its selected
                 epoch (one extra run per seed): separates "more training data" from
                 "better selection";
  cv             the cross-validated pick, retrained (what a --cv search exports);

with the best and median test score among the trials for context. Over seeds: the mean
Spearman each way and the paired differences cv - single and cv - single+retrain with
their mean and 95 % Student-t interval (`t_interval` of benchmarks/search_efficiency.py).
A configuration whose training diverges (NonFiniteLossError, in any of its runs) is
recorded as diverged and left out of the correlations and of both selections (the two
rules choose among the same configurations); the counts are printed.

The last line has a fixed form (one line, wrapped here):

    cv selection (--cv years) vs single split on test rmse: mean diff +X.XXX [lo, hi]
    over S seeds (negative: cv better)

`--data` defaults to the Illinois CSVs (found by benchmarks/data_files.py: in
$TIMESCLIP_REAL_DATA or shared/data/ in or beside the checkout) with `--data-flags`
"--split year --test-year 2022 --input-steps 12"; CSV paths replace the files (the flags
stay unless `--data-flags` says otherwise). The vision features are computed once per data
set and the backbone is loaded once; every run uses `--threads` CPU threads (default: the
CPUs this process may use). `--quick` (4 trials x 3 epochs x 2 seeds) is a smoke test, not
a measurement. `--out FILE` writes every number as JSON (after each seed, atomically).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `timesclip` and `benchmarks` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.data_files import DATA_PRESETS  # noqa: E402
from benchmarks.search_efficiency import preset_files, t_interval  # noqa: E402
from timesclip import atomic  # noqa: E402
from timesclip.cli_args import DATA_FIELDS, OneLineErrorParser, add_data_flags  # noqa: E402
from timesclip.config import TrainConfig  # noqa: E402
from timesclip.cv import fit_folds, retrain  # noqa: E402
from timesclip.data import DataBundle, load_bundle  # noqa: E402
from timesclip.data.folds import CvSpec, Folds, cv_folds, parse_cv  # noqa: E402
from timesclip.errors import ConfigError, NonFiniteLossError, UserError  # noqa: E402
from timesclip.features import compute_features, feature_key  # noqa: E402
from timesclip.metrics import METRIC_MODES, TASK_METRICS  # noqa: E402
from timesclip.model import Backbone, load_backbone  # noqa: E402
from timesclip.runtime import resolve_device  # noqa: E402
from timesclip.train import fit  # noqa: E402
from tuner.outcomes import Status, select_best  # noqa: E402
from tuner.spaces import SearchSpace, load_space  # noqa: E402

DEFAULTS = {"seeds": 3, "trials": 12, "epochs": 10}
QUICK = {"seeds": 2, "trials": 4, "epochs": 3}
DEFAULT_DATA = "illinois"
#: What TrainConfig fields decide the rows of a loaded bundle (its cache key here).
LOAD_FIELDS = (*DATA_FIELDS, "val_fraction", "test_fraction")
#: Runs of one configuration, in order; a diverged configuration names the first that did.
STAGES = ("single", "cv", "retrain")

Say = Callable[[str], None]


# ----------------------------------------------------------------------------- records
@dataclass
class TrialResult:
    """One configuration of one seed: its single-split run, its cross-validated run and the
    retrain of the latter (values in the metric's own units; nan where not reached)."""

    seed: int
    index: int  # 1-based, in draw order
    params: dict[str, Any]  # what the space sampled (Optuna's parameters + constants)
    single_value: float = math.nan  # best validation value of the single split
    single_epoch: int | None = None
    single_test: float = math.nan  # test score of the single split's best.pt
    single_history: list[dict[str, float]] = field(default_factory=list)
    cv_value: float = math.nan  # best MEAN validation value over the folds
    cv_epoch: int | None = None
    cv_fold_values: list[float] = field(default_factory=list)  # each fold's, at cv_epoch
    cv_history: list[dict[str, float]] = field(default_factory=list)  # the mean rows
    retrained_test: float = math.nan  # test score after retrain(cv_epoch epochs)
    diverged: str | None = None  # the first run (a STAGES name) that diverged
    seconds: dict[str, float] = field(default_factory=dict)  # per run

    @property
    def ok(self) -> bool:
        return self.diverged is None


class _Candidate(NamedTuple):
    """A trial as `select_best` reads one: a status and its history by epoch."""

    status: Status
    history: dict[int, dict[str, float]]
    trial: TrialResult


def _candidates(trials: Sequence[TrialResult], which: str) -> list[_Candidate]:
    """The trials under one rule (`single` or `cv` history); a diverged configuration is
    not TERMINATED, so select_best passes over it under both rules."""
    out = []
    for t in trials:
        rows = t.single_history if which == "single" else t.cv_history
        out.append(_Candidate(Status.TERMINATED if t.ok else Status.DIVERGED,
                              {int(r["epoch"]): r for r in rows}, t))
    return out


def select(trials: Sequence[TrialResult], metric: str, mode: str
           ) -> tuple[TrialResult | None, TrialResult | None]:
    """(the single-split pick, the cross-validated pick): the search's best trial by the
    single split's validation history and by the folds' mean history (ties: the earlier
    trial); None when every configuration diverged."""
    single = select_best(_candidates(trials, "single"), metric, mode)
    cv = select_best(_candidates(trials, "cv"), metric, mode)
    return (None if single is None else single.trial, None if cv is None else cv.trial)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (scipy), nan with fewer than 2 pairs or a constant side
    (no ranking to compare)."""
    if len(x) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(x, y).statistic)


def best_of(values: Sequence[float], mode: str) -> float:
    """The best finite value under `mode` (nan when there is none)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan
    return min(finite) if mode == "min" else max(finite)


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def seed_summary(trials: Sequence[TrialResult], metric: str, mode: str,
                 single_retrained_test: float) -> dict[str, Any]:
    """What one seed shows: the rank correlations, each rule's pick and its test score, the
    trials' best and median test score, the paired differences (cv minus the other rule).

    single_retrained_test: the test score of the single-split pick retrained on every
    training row for its selected epoch (nan when it diverged or nothing was picked).
    """
    ok = [t for t in trials if t.ok]
    single, cv = select(trials, metric, mode)
    single_test = single.single_test if single else math.nan
    cv_test = cv.retrained_test if cv else math.nan
    return {
        "seed": trials[0].seed if trials else None,
        "trials": len(trials), "ok": len(ok),
        "diverged": dict(Counter(t.diverged for t in trials if not t.ok)),
        "spearman_single": spearman([t.single_value for t in ok], [t.single_test for t in ok]),
        "spearman_cv": spearman([t.cv_value for t in ok], [t.retrained_test for t in ok]),
        "single_pick": single.index if single else None,
        "single_pick_epoch": single.single_epoch if single else None,
        "single_pick_test": single_test,
        "single_pick_retrained_test": single_retrained_test,
        "cv_pick": cv.index if cv else None,
        "cv_pick_epoch": cv.cv_epoch if cv else None,
        "cv_pick_test": cv_test,
        "best_test_single": best_of([t.single_test for t in ok], mode),
        "median_test_single": _median([t.single_test for t in ok]),
        "best_test_retrained": best_of([t.retrained_test for t in ok], mode),
        "median_test_retrained": _median([t.retrained_test for t in ok]),
        "diff_cv_minus_single": cv_test - single_test,
        "diff_cv_minus_single_retrained": cv_test - single_retrained_test,
    }


def _interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean and 95 % t-interval of the finite values (the seeds are the samples)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    mean, low, high = t_interval(finite)
    return {"mean": mean, "low": low, "high": high, "n": len(finite)}


def overall(summaries: Sequence[dict[str, Any]], mode: str) -> dict[str, Any]:
    """Over seeds: the mean Spearman each way and the paired differences' intervals.
    `cv_better`: seeds where the cv pick scored better on test than the single pick."""
    def finite(key: str) -> list[float]:
        return [s[key] for s in summaries if math.isfinite(s[key])]

    diffs = finite("diff_cv_minus_single")
    return {
        "seeds": len(summaries),
        "spearman_single": _interval(finite("spearman_single")),
        "spearman_cv": _interval(finite("spearman_cv")),
        "diff_cv_minus_single": _interval(diffs),
        "diff_cv_minus_single_retrained": _interval(finite("diff_cv_minus_single_retrained")),
        "cv_better": sum(1 for d in diffs if (d < 0 if mode == "min" else d > 0)),
        "same_pick": sum(1 for s in summaries
                         if s["cv_pick"] is not None and s["cv_pick"] == s["single_pick"]),
    }


def headline(summary: dict[str, Any], spec: CvSpec, test_key: str, mode: str) -> str:
    """The last line, in a fixed form."""
    d = summary["diff_cv_minus_single"]
    better = "negative" if mode == "min" else "positive"
    return (f"cv selection (--cv {spec}) vs single split on test {test_key}: mean diff "
            f"{_v(d['mean'], True)} [{_v(d['low'], True)}, {_v(d['high'], True)}] over "
            f"{d['n']} seeds ({better}: cv better)")


# ----------------------------------------------------------------------------- inputs
def data_fields(flags: Sequence[str]) -> dict[str, Any]:
    """The TrainConfig data fields a string of data flags sets (the train CLI's flags,
    e.g. --split year --test-year 2022 --input-steps 12); UserError in one line."""
    class _Parser(argparse.ArgumentParser):
        def error(self, message: str):  # type: ignore[override]
            raise UserError(f"--data-flags: {message}; give data flags such as "
                            "\"--split year --test-year 2022 --input-steps 12\"")

    parser = _Parser(add_help=False, allow_abbrev=False)
    add_data_flags(parser)
    parsed = parser.parse_args(list(flags))
    if parsed.data is not None:
        raise UserError("--data-flags: name the files with --data, not inside --data-flags")
    return {n: getattr(parsed, n) for n in DATA_FIELDS if getattr(parsed, n) is not None}


def data_files(data: Sequence[str]) -> tuple[list[Path], str]:
    """The CSVs `--data` names (a preset name or files) and a label to print."""
    if len(data) == 1 and data[0] in DATA_PRESETS:
        files = preset_files(data[0])
        return files, f"{data[0]} ({len(files)} files in {files[0].parent})"
    missing = [p for p in data if not Path(p).is_file()]
    if missing:
        raise UserError(f"--data: {missing[0]} is not a file; give CSV files or one of: "
                        f"{', '.join(DATA_PRESETS)}")
    files = [Path(p) for p in data]
    return files, f"{len(files)} file(s) ({', '.join(f.name for f in files)})"


def base_config(space: SearchSpace, fields: dict[str, Any], *, backbone: str, epochs: int,
                seed: int, threads: int) -> TrainConfig:
    """The base every trial of one seed starts from, merged in the search's order
    (`tuner.plan`): defaults <- the space's base <- data flags, backbone, seed <- the epoch
    budget and the space's metric as the monitor."""
    return TrainConfig.from_dict(
        {**TrainConfig().to_dict(), **space.base, **fields, "backbone": backbone,
         "seed": seed, "threads": threads, "epochs": epochs, "monitor": space.budget.metric},
        source="benchmark flags")


def draw(space: SearchSpace, base: TrainConfig, n: int, seed: int
         ) -> list[tuple[dict[str, Any], TrainConfig]]:
    """n (sampled params, trial config) of one seed: RandomSampler(seed) asked n times and
    each trial sampled by the space's define_by_run, as the search's OptunaSearch does
    (its trial config is Optuna's parameters plus the constants define_by_run returns)."""
    mode = METRIC_MODES[space.budget.metric]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed),
                                direction="minimize" if mode == "min" else "maximize")
    out = []
    for _ in range(n):
        trial = study.ask()
        constants = space.define_by_run(trial) or {}  # samples: trial.params is filled now
        params = {**trial.params, **constants}
        out.append((params, space.trial_config(base, params)))
    return out


class Shared:
    """What every run of the benchmark shares: the backbone (loaded once), the bundles and
    folds (loaded / cut once per data setting) and the vision features (computed once per
    bundle, for the base configuration)."""

    def __init__(self, files: Sequence[Path], backbone: Backbone) -> None:
        self.files, self.backbone = list(files), backbone
        self._bundles: dict[str, DataBundle] = {}
        self._folds: dict[tuple[str, str], Folds] = {}
        self._features: dict[str, dict[str, Any] | None] = {}

    def bundle(self, config: TrainConfig) -> DataBundle:
        key = json.dumps({f: getattr(config, f) for f in LOAD_FIELDS}, default=str)
        if key not in self._bundles:
            bundle = load_bundle(config, self.files)
            if not isinstance(bundle, DataBundle):
                raise ConfigError("cross-validation is for the yield task: give yield CSVs "
                                  "and no --task forecast in --data-flags")
            self._bundles[key] = bundle
        return self._bundles[key]

    def folds(self, config: TrainConfig, spec: CvSpec) -> Folds:
        bundle = self.bundle(config)
        key = (bundle.fingerprint, f"{spec}|{config.split_seed}")
        if key not in self._folds:
            self._folds[key] = cv_folds(config, bundle, spec)
        return self._folds[key]

    def base_features(self, base: TrainConfig) -> None:
        """Compute the base configuration's features for its bundle (once per key)."""
        bundle = self.bundle(base)
        key = feature_key(base, bundle)
        if key not in self._features:
            self._features[key] = compute_features(
                base, bundle, self.backbone, device=resolve_device(base.device),
                progress="vision features (once per data set)")

    def features(self, config: TrainConfig) -> dict[str, Any] | None:
        """The shared features when the run renders and encodes exactly as a base did (its
        feature_key is one computed); None lets the run compute its own."""
        return self._features.get(feature_key(config, self.bundle(config)))


# ----------------------------------------------------------------------------- runs
def _test(result: Any, test_key: str) -> float:
    return float(result.test[test_key]) if result.test else math.nan


def run_trial(config: TrainConfig, params: dict[str, Any], *, seed: int, index: int,
              shared: Shared, spec: CvSpec, test_key: str, say: Say,
              label: str = "") -> TrialResult:
    """One configuration's three runs (single split, folds, retrain); the first that
    diverges ends it (recorded in `diverged`)."""
    rec = TrialResult(seed=seed, index=index, params=params)
    bundle, features = shared.bundle(config), shared.features(config)
    metric = config.monitor_metric
    stage = STAGES[0]
    try:
        t0 = time.perf_counter()
        single = fit(config, bundle, evaluate_test=True, vision_features=features,
                     backbone=shared.backbone)
        rec.seconds[stage] = time.perf_counter() - t0
        rec.single_value, rec.single_epoch = float(single.best_value), single.best_epoch
        rec.single_test, rec.single_history = _test(single, test_key), single.history
        say(f"{label} single  {metric} {rec.single_value:.3f} (epoch {rec.single_epoch})  "
            f"test {test_key} {rec.single_test:.3f}  [{rec.seconds[stage]:.0f} s]")

        stage = STAGES[1]
        t0 = time.perf_counter()
        folds = fit_folds(config, shared.folds(config, spec), vision_features=features,
                          backbone=shared.backbone)
        rec.seconds[stage] = time.perf_counter() - t0
        rec.cv_value, rec.cv_epoch = float(folds.best_value), folds.best_epoch
        rec.cv_fold_values, rec.cv_history = folds.fold_values, folds.history
        say(f"{label} cv      {metric} {rec.cv_value:.3f} (epoch {rec.cv_epoch}; folds "
            f"{' '.join(f'{v:.2f}' for v in rec.cv_fold_values)})  "
            f"[{rec.seconds[stage]:.0f} s]")

        stage = STAGES[2]
        t0 = time.perf_counter()
        rec.retrained_test = retrain_test(config, bundle, rec.cv_epoch, shared, test_key)
        rec.seconds[stage] = time.perf_counter() - t0
        say(f"{label} retrain {rec.cv_epoch} epochs on all training rows  test {test_key} "
            f"{rec.retrained_test:.3f}  [{rec.seconds[stage]:.0f} s]")
    except NonFiniteLossError as exc:
        rec.diverged = stage
        say(f"{label} DIVERGED in the {stage} run ({exc}); left out of the ranking and "
            "selection")
    return rec


def retrain_test(config: TrainConfig, bundle: DataBundle, epochs: int, shared: Shared,
                 test_key: str) -> float:
    """Test score of `config` retrained on every non-test row for `epochs` epochs (the
    selected epoch: fit() and fit_folds() raise NonFiniteLossError before a run can end
    without one)."""
    with tempfile.TemporaryDirectory(prefix="cv-selection-retrain-") as ckdir:
        result = retrain(config, bundle, int(epochs), checkpoint_dir=ckdir,
                         vision_features=shared.features(config), backbone=shared.backbone)
    return _test(result, test_key)


def run_seed(seed: int, drawn: Sequence[tuple[dict[str, Any], TrainConfig]], *,
             shared: Shared, spec: CvSpec, test_key: str, mode: str, say: Say,
             elapsed: Callable[[], float] = lambda: math.nan
             ) -> tuple[list[TrialResult], dict[str, Any]]:
    """Every drawn configuration of one seed, then the seed's summary (with the one extra
    retrain of the single-split pick)."""
    trials = []
    for i, (params, config) in enumerate(drawn, start=1):
        label = f"  seed {seed} trial {i:2d}/{len(drawn)}"
        trials.append(run_trial(config, params, seed=seed, index=i, shared=shared,
                                spec=spec, test_key=test_key, say=say, label=label))
        say(f"{label} done  [elapsed {_clock(elapsed())}]")
    metric = drawn[0][1].monitor_metric if drawn else ""
    single, cv = select(trials, metric, mode)
    single_retrained = math.nan
    if single is not None:
        config = drawn[single.index - 1][1]
        if cv is not None and (cv.index, cv.cv_epoch) == (single.index, single.single_epoch):
            single_retrained = cv.retrained_test  # the very same retrain already ran
        else:
            try:
                t0 = time.perf_counter()
                single_retrained = retrain_test(config, shared.bundle(config),
                                                single.single_epoch, shared, test_key)
                say(f"  seed {seed}: single-split pick (trial {single.index}) retrained "
                    f"{single.single_epoch} epochs on all training rows  test {test_key} "
                    f"{single_retrained:.3f}  [{time.perf_counter() - t0:.0f} s; elapsed "
                    f"{_clock(elapsed())}]")
            except NonFiniteLossError as exc:
                say(f"  seed {seed}: the single-split pick diverged when retrained ({exc})")
    return trials, seed_summary(trials, metric, mode, single_retrained)


# ----------------------------------------------------------------------------- output
def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m{s:02d}s" if m >= 60 else f"{m}m{s:02d}s"


def _v(value: float | None, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.3f}" if sign else f"{value:.3f}"


def _iv(d: dict[str, Any]) -> str:
    return f"{_v(d['mean'], True)} [{_v(d['low'], True)}, {_v(d['high'], True)}] (n={d['n']})"


def seed_lines(s: dict[str, Any], metric: str, test_key: str) -> list[str]:
    diverged = ", ".join(f"{n} in the {stage} run" for stage, n in s["diverged"].items())
    return [
        f"seed {s['seed']}: Spearman({metric}, test {test_key}) over {s['ok']} of "
        f"{s['trials']} trials ({sum(s['diverged'].values())} diverged"
        f"{': ' + diverged if diverged else ''}): single split {_v(s['spearman_single'], True)}"
        f", cv {_v(s['spearman_cv'], True)}",
        f"seed {s['seed']}: selected test {test_key}: single {_v(s['single_pick_test'])} "
        f"(trial {s['single_pick']}, epoch {s['single_pick_epoch']}), single+retrain "
        f"{_v(s['single_pick_retrained_test'])}, cv {_v(s['cv_pick_test'])} (trial "
        f"{s['cv_pick']}, epoch {s['cv_pick_epoch']}); trials' test {test_key} best / median: "
        f"checkpoints {_v(s['best_test_single'])} / {_v(s['median_test_single'])}, retrained "
        f"{_v(s['best_test_retrained'])} / {_v(s['median_test_retrained'])}",
    ]


def overall_lines(o: dict[str, Any], summaries: Sequence[dict[str, Any]], metric: str,
                  test_key: str) -> list[str]:
    def per_seed(key: str, sign: bool = True) -> str:
        return " ".join(_v(s[key], sign) for s in summaries)

    return [
        f"over {o['seeds']} seeds:",
        f"  Spearman({metric}, test {test_key}) single split: mean "
        f"{_iv(o['spearman_single'])}; per seed {per_seed('spearman_single')}",
        f"  Spearman({metric}, test {test_key}) cv (retrained): mean "
        f"{_iv(o['spearman_cv'])}; per seed {per_seed('spearman_cv')}",
        f"  cv pick - single pick, test {test_key}: mean {_iv(o['diff_cv_minus_single'])}; "
        f"per seed {per_seed('diff_cv_minus_single')}",
        f"  cv pick - single pick retrained, test {test_key}: mean "
        f"{_iv(o['diff_cv_minus_single_retrained'])}; per seed "
        f"{per_seed('diff_cv_minus_single_retrained')}",
        f"  the cv pick was better on test in {o['cv_better']} of {o['seeds']} seeds; both "
        f"rules picked the same configuration in {o['same_pick']}",
    ]


def _json_safe(value: Any) -> Any:
    """Non-finite floats as null (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_out(path: Path | None, record: dict[str, Any]) -> None:
    if path is not None:
        atomic.write_text(path, json.dumps(_json_safe(record), indent=1) + "\n")


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="benchmarks/cv_selection.py", underscore_note=False,
                           description=__doc__.split("\n\n")[0],
                           epilog=__doc__.split("\n\n", 2)[2],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke test: {QUICK['trials']} trials x {QUICK['epochs']} epochs "
                        f"x {QUICK['seeds']} seeds (flags given explicitly still win)")
    p.add_argument("--seeds", type=int, metavar="N",
                   help=f"seeds (default {DEFAULTS['seeds']}): first-seed .. "
                        "first-seed+seeds-1")
    p.add_argument("--first-seed", type=int, default=0, metavar="S",
                   help="the first seed (default 0)")
    p.add_argument("--trials", type=int, metavar="N",
                   help=f"configurations drawn per seed (default {DEFAULTS['trials']}; at "
                        "least 2, a ranking needs two)")
    p.add_argument("--epochs", type=int, metavar="E",
                   help=f"epochs of every run (default {DEFAULTS['epochs']})")
    p.add_argument("--cv", default="years", metavar="K|years",
                   help="the folds: K >= 2, or 'years' (leave one training year out; the "
                        "default)")
    p.add_argument("--space", default="full", help="search space to draw from (default "
                   "full); a bundled name or a YAML path")
    p.add_argument("--backbone", default="tiny", help="CLIP backbone (default tiny: random, "
                   "small, no download)")
    p.add_argument("--data", nargs="+", default=[DEFAULT_DATA], metavar="CSV|PRESET",
                   help="CSV files or a preset name (default illinois: the Illinois soybean "
                        "CSVs)")
    p.add_argument("--data-flags", default=None, metavar="FLAGS",
                   help="data flags as one string (default: the illinois preset's, "
                        f"\"{' '.join(DATA_PRESETS[DEFAULT_DATA].flags)}\")")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of every run (default: the CPUs this process may use)")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="write every number as JSON to this file")
    return p


class Plan(NamedTuple):
    """Everything checked before the first run."""

    space: SearchSpace
    spec: CvSpec
    files: list[Path]
    label: str
    fields: dict[str, Any]
    seeds: list[int]
    trials: int
    epochs: int
    threads: int
    metric: str
    mode: str
    test_key: str


def plan(args: argparse.Namespace) -> Plan:
    """The checked settings; UserError in one line for anything wrong, before any run."""
    sizes = {k: getattr(args, k) if getattr(args, k) is not None
             else (QUICK if args.quick else DEFAULTS)[k] for k in DEFAULTS}
    least = {"seeds": 1, "trials": 2, "epochs": 1}
    for name, low in least.items():
        if sizes[name] < low:
            why = " (a ranking needs two configurations)" if name == "trials" else ""
            raise UserError(f"--{name} must be >= {low}, got {sizes[name]}{why}")
    threads = args.threads if args.threads is not None else len(os.sched_getaffinity(0))
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    spec = parse_cv(args.cv)
    space = load_space(args.space)
    if space.kind != "search":
        raise UserError(f"--space {args.space} is an ablation grid; give a search space "
                        "(e.g. full or quick)")
    metric = space.budget.metric
    mode = METRIC_MODES[metric]
    test_key = metric.removeprefix("val_")
    if test_key not in TASK_METRICS["yield"]:
        raise UserError(f"--space {args.space}: its metric {metric} has no test score on the "
                        f"yield task ({', '.join(TASK_METRICS['yield'])}); use a space whose "
                        "metric is one of val_rmse, val_mae, val_r2, val_mape")
    files, label = data_files(args.data)
    flags = shlex.split(args.data_flags) if args.data_flags is not None \
        else DATA_PRESETS[DEFAULT_DATA].flags
    fields = data_fields(flags)
    label += f"; {' '.join(flags)}"
    if args.out is not None and args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder; give a file name, e.g. "
                        f"{args.out / 'cv_selection.json'}")
    seeds = list(range(args.first_seed, args.first_seed + sizes["seeds"]))
    return Plan(space, spec, files, label, fields, seeds, sizes["trials"], sizes["epochs"],
                threads, metric, mode, test_key)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()

    def say(line: str) -> None:
        print(line, flush=True)

    def elapsed() -> float:
        return time.perf_counter() - started

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        p = plan(args)
        bases = {s: base_config(p.space, p.fields, backbone=args.backbone, epochs=p.epochs,
                                seed=s, threads=p.threads) for s in p.seeds}
        drawn = {s: draw(p.space, bases[s], p.trials, s) for s in p.seeds}  # checks configs
        shared = Shared(p.files, load_backbone(args.backbone, need_vision=True))
        first = bases[p.seeds[0]]
        bundle, folds = shared.bundle(first), shared.folds(first, p.spec)
        say(f"cv selection: {p.trials} configurations x {len(p.seeds)} seeds "
            f"({', '.join(map(str, p.seeds))}) from space {p.space.name}, {p.epochs} epochs, "
            f"backbone {args.backbone}, monitor {p.metric}; data {p.label}: "
            f"{len(bundle.train)} train / {len(bundle.val)} val / {len(bundle.test)} test "
            f"rows; --cv {p.spec}: {len(folds)} folds ({' | '.join(folds.held_out)}); "
            f"device {resolve_device(first.device)}, {p.threads} threads")
        record: dict[str, Any] = {
            "space": p.space.name, "cv": p.spec, "held_out": list(folds.held_out),
            "data": [str(f) for f in p.files], "data_fields": p.fields,
            "backbone": args.backbone, "epochs": p.epochs, "trials": p.trials,
            "seeds": p.seeds, "metric": p.metric, "mode": p.mode, "test_metric": p.test_key,
            "threads": p.threads, "per_seed": [], "trial_results": [], "overall": None}
        summaries = []
        for s in p.seeds:
            shared.base_features(bases[s])
            say(f"seed {s}: {p.trials} configurations (RandomSampler seed {s})")
            trials, summary = run_seed(s, drawn[s], shared=shared, spec=p.spec,
                                       test_key=p.test_key, mode=p.mode, say=say,
                                       elapsed=elapsed)
            summaries.append(summary)
            for line in seed_lines(summary, p.metric, p.test_key):
                say(line)
            record["per_seed"].append(summary)
            record["trial_results"] += [asdict(t) for t in trials]
            record["elapsed_s"] = elapsed()
            write_out(args.out, record)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = overall(summaries, p.mode)
    record["overall"], record["elapsed_s"] = result, elapsed()
    write_out(args.out, record)
    for line in overall_lines(result, summaries, p.metric, p.test_key):
        say(line)
    say(f"elapsed {_clock(elapsed())} ({elapsed():.0f} s)")
    if args.out is not None:
        say(f"wrote {args.out}")
    say(headline(result, p.spec, p.test_key, p.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DEFAULTS", "QUICK", "STAGES", "Plan", "Shared", "TrialResult", "base_config",
           "best_of", "build_parser", "data_fields", "data_files", "draw", "headline",
           "main", "overall", "plan", "retrain_test", "run_seed", "run_trial", "seed_summary",
           "select", "spearman"]
