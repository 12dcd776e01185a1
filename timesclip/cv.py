"""Cross-validated training of one configuration, and the retrain of the selected one.

`fit_folds` trains one model per fold (`timesclip.data.folds.cv_folds`) of one
configuration, epoch by epoch in lockstep: after each epoch it reports the MEAN over the
folds of every metric fit() reports (same names, so a search's scheduler decides on the
mean per epoch exactly as it decides on a single run), plus each fold's validation values
as `fold<k>_<metric>`. One patience for the whole run: early stopping follows the mean of
the monitored metric. Each fold is a `timesclip.train.Training` with its own random state,
so fold k's numbers are those of `fit()` run on fold k alone.

Why lockstep and not one fold after another: a search stops weak configurations after a
few epochs (ASHA) on the reported metric, so every epoch must report the mean of all folds;
running the folds one after another would report nothing comparable until the last fold.

`retrain` trains the configuration a cross-validated search selected on every training
row (`timesclip.data.folds.all_training`) for the number of epochs the folds selected, and
scores the test split once.

Checkpoints (`checkpoint_dir`): `fold_<k>/last.pt` and `fold_<k>/best.pt` per fold (each
fit()'s format; a fold's best.pt is that fold's own best epoch, not used for selection),
and `folds.json` naming the folds (spec, fingerprints, held-out years), checked on resume.
The mean's monitor state is not stored: it is replayed from the folds' histories.

The frozen vision features are a pure function of the rows, so they are computed once for
the bundle the folds were cut from (or handed in, as a search shares them) and every fold
indexes its rows out of them (`fold_features`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from timesclip.atomic import write_text
from timesclip.checkpoint import MonitorState
from timesclip.config import TrainConfig
from timesclip.data import DataBundle
from timesclip.data.folds import Folds, all_training
from timesclip.errors import ConfigError
from timesclip.features import SPLITS, compute_features
from timesclip.metrics import CV_FOLDS_KEY, TASK_EPOCH_METRICS, fold_key
from timesclip.model import Backbone, load_backbone
from timesclip.runtime import apply_threads, resolve_device, seed_everything
from timesclip.tensorboard import SCALAR_TAGS, log_epoch, summary_writer
from timesclip.train import FitResult, ReportFn, Training

#: checkpoint_dir/FOLD_DIR.format(k=k): fold k's last.pt / best.pt.
FOLD_DIR = "fold_{k}"
#: checkpoint_dir/FOLDS_FILE: which folds the checkpoints belong to (spec, fingerprints).
FOLDS_FILE = "folds.json"
#: Each fold's own value of these goes into every report as fold<k>_<name>.
FOLD_REPORTED = ("train_loss", "val_loss", "val_rmse", "val_mae", "val_r2", "val_mape")


def fold_dir(root: str | Path, k: int) -> Path:
    """Fold k's checkpoint folder inside a CV run's checkpoint folder."""
    return Path(root) / FOLD_DIR.format(k=k)


@dataclass
class FoldsResult:
    """What one cross-validated run produced (yield metrics in the target's own units).

    best_epoch is the epoch with the best MEAN `monitor` value (`best_value`), the epoch a
    search selects from the same reports and the number of epochs `retrain` trains;
    `val` holds the mean validation metrics of that epoch, `fold_values` / `fold_val` each
    fold's. `train_seconds` is summed over the folds (the run's compute)."""

    monitor: str
    best_epoch: int
    best_value: float
    fold_values: list[float]
    val: dict[str, float]
    fold_val: list[dict[str, float]]
    epochs_run: int
    stopped_early: bool
    params: dict[str, int]
    train_seconds: float
    backbone: str
    spec: int | str
    held_out: list[str]
    checkpoint_dir: str | None
    history: list[dict[str, float]] = field(default_factory=list)  # the mean rows reported

    @property
    def test(self) -> None:
        """Always None, as FitResult.test of a run that did not score test: a
        cross-validated run never touches the test split (`retrain` scores it, once)."""
        return None

    def metrics_json(self) -> dict[str, Any]:
        """The run's record as plain JSON (metrics.json / a trial's final record)."""
        return {"cv": self.spec, "folds": len(self.fold_values), "held_out": self.held_out,
                "monitor": self.monitor, "best_epoch": self.best_epoch,
                "best_value": self.best_value, "fold_values": self.fold_values,
                "val": self.val, "fold_val": self.fold_val, "test": None,
                "params": self.params, "train_seconds": self.train_seconds,
                "backbone": self.backbone, "epochs_run": self.epochs_run,
                "stopped_early": self.stopped_early}


# ----------------------------------------------------------------------------- features
def fold_features(features: dict[str, torch.Tensor], source: DataBundle,
                  derived: DataBundle) -> dict[str, torch.Tensor]:
    """The vision features of `derived`'s rows ({split: [n, V, Hv]}), indexed out of the
    features `compute_features` computed for `source` (a fold or the pooled retrain set
    holds the same rows as its source, split differently; rows are matched by their table
    index, so no row is encoded twice)."""
    order = np.concatenate([getattr(source, s).index for s in SPLITS])  # [N] table rows
    for s in SPLITS:
        if features[s].shape[0] != len(getattr(source, s)):
            raise ConfigError(f"vision features of {s} hold {features[s].shape[0]} rows but "
                              f"the data's {s} split has {len(getattr(source, s))}; pass the "
                              "features of the bundle the folds were cut from")
    every = torch.cat([features[s] for s in SPLITS])  # [N, V, Hv]
    sorter = np.argsort(order, kind="stable")
    out = {}
    for s in SPLITS:
        want = getattr(derived, s).index  # [n]
        at = np.minimum(np.searchsorted(order, want, sorter=sorter), len(order) - 1)
        pos = sorter[at]
        if not np.array_equal(order[pos], want):
            raise ConfigError(f"the {s} split holds rows its source does not; cut folds "
                              "from the bundle whose features are passed")
        out[s] = every[torch.from_numpy(pos)]  # [n, V, Hv]
    return out


def _shared_inputs(config: TrainConfig, source: DataBundle, backbone: Backbone | None,
                   features: dict[str, torch.Tensor] | None,
                   log: Callable[[str], None] | None
                   ) -> tuple[Backbone, dict[str, torch.Tensor] | None]:
    """The backbone and the source's features, loaded / computed once for every run cut
    from `source`, drawing random numbers in the order fit() does (seed, backbone,
    features), so a fold trains as fit() on that fold with the same backbone."""
    apply_threads(config)
    need = config.use_vision and features is None
    if backbone is None or need:
        seed_everything(config.seed)
    if backbone is None:
        backbone = load_backbone(config.backbone, need_vision=need)
    if need:
        features = compute_features(config, source, backbone,
                                    device=resolve_device(config.device), log=log)
    return backbone, features


# ----------------------------------------------------------------------------- fit_folds
def _manifest(folds: Folds) -> dict[str, Any]:
    return {"cv": folds.spec, "folds": len(folds), "fingerprints": folds.fingerprints,
            "held_out": list(folds.held_out)}


def _check_resume(resume_from: Path, folds: Folds) -> None:
    """The checkpoint folder must hold these very folds (same spec, same rows)."""
    path = resume_from / FOLDS_FILE
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"no readable {FOLDS_FILE} in {resume_from}: pass the checkpoint "
                          "folder of a cross-validated run, or start again without "
                          "resuming") from None
    if not isinstance(stored, dict) or stored.get("fingerprints") != folds.fingerprints:
        was = stored.get("cv") if isinstance(stored, dict) else None
        raise ConfigError(f"{resume_from} holds the folds of --cv {was} on other data or "
                          f"another split, not these ({len(folds)} folds of --cv "
                          f"{folds.spec}); resume with the run's own --cv and data, or "
                          "start again without resuming")


def _mean_row(rows: list[dict[str, float]], epoch: int) -> dict[str, float]:
    """The mean over folds of every per-epoch metric (each fold counts once)."""
    names = [n for n in TASK_EPOCH_METRICS["yield"] if n != "epoch"]
    return {"epoch": epoch, **{n: float(np.mean([r[n] for r in rows])) for n in names}}


def fit_folds(config: TrainConfig, folds: Folds, *, report: ReportFn | None = None,
              checkpoint_dir: str | Path | None = None,
              resume_from: str | Path | None = None,
              vision_features: dict[str, torch.Tensor] | None = None,
              backbone: Backbone | None = None, tb_dir: str | Path | None = None,
              hparams: dict[str, Any] | None = None,
              log: Callable[[str], None] | None = None) -> FoldsResult:
    """Train `config` on every fold of `folds` in lockstep; see the module docstring.

    report(epoch, metrics, checkpoint_dir): once per epoch, after every fold's checkpoint
    of that epoch is on disk, with the mean over folds under fit()'s names (epoch,
    train_loss, ..., val_loss, val_rmse, val_mae, val_r2, val_mape, lr), epoch_seconds
    (summed over the folds), params_*, `cv_folds` (K), fold<k>_<name> for FOLD_REPORTED,
    and fit_ends (nothing follows: the budget is spent or the mean stopped improving).
    vision_features: those of `folds.source` (None: computed here, once).
    resume_from: a checkpoint folder of this run (fold_<k>/ + folds.json); every fold
    continues exactly, and folds a crash left one epoch behind the others are brought level
    first (that epoch is then reported). tb_dir: the mean curves under fit()'s tags, each
    fold's under `fold<k>/<tag>`.
    """
    if config.task != "yield":
        raise ConfigError("cross-validation is for the yield task; drop --cv for --task "
                          "forecast")
    backbone, features = _shared_inputs(config, folds.source, backbone, vision_features, log)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resumed = Path(resume_from) if resume_from is not None else None
    if resumed is not None:
        _check_resume(resumed, folds)
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
        write_text(ckdir / FOLDS_FILE, json.dumps(_manifest(folds), indent=2) + "\n")

    trainings: list[Training] = []
    writer = None
    try:
        for k, data in enumerate(folds):
            trainings.append(Training(
                config, data, checkpoint_dir=None if ckdir is None else fold_dir(ckdir, k),
                resume_from=None if resumed is None else fold_dir(resumed, k),
                vision_features=None if features is None else fold_features(
                    features, folds.source, data),
                backbone=backbone, early_stopping=False))
        # Folds a crash left behind (it came between two folds' checkpoints) catch up.
        level = max(t.epochs_run for t in trainings)
        behind = [t for t in trainings if t.epochs_run < level]
        for t in behind:
            while t.epochs_run < level:
                t.epoch()
        run = _MeanRun(config, folds, trainings, report, ckdir, log)
        if resumed is not None and log:
            log(f"resumed {len(folds)} folds at epoch {level} (best "
                f"{run.monitor.describe()})")
        if not run.done:
            writer = summary_writer(tb_dir, config, hparams)
        if behind:  # the catch-up epoch was never reported
            run.publish(level, [t.history[level - 1] for t in trainings], writer,
                        seconds=0.0)
        if run.done and ckdir is not None:  # a finished run resumed into a new folder
            for t in trainings:
                if not t.done:
                    t.write_checkpoint()
        while not run.done:
            rows = [t.epoch() for t in trainings]
            run.publish(int(rows[0]["epoch"]), rows, writer,
                        seconds=sum(r["epoch_seconds"] for r in rows))
    finally:
        for t in trainings:
            t.close()
        if writer is not None:
            writer.close()
    return run.result()


class _MeanRun:
    """The mean over folds, epoch by epoch: its history, its monitor (best epoch and early
    stopping), its reports. Built from the folds' histories, so a resumed run replays it."""

    def __init__(self, config: TrainConfig, folds: Folds, trainings: list[Training],
                 report: ReportFn | None, ckdir: Path | None,
                 log: Callable[[str], None] | None) -> None:
        self.config, self.folds, self.trainings = config, folds, trainings
        self.report, self.ckdir, self.log = report, ckdir, log
        self.monitor = MonitorState(config.monitor_metric)
        self.history: list[dict[str, float]] = []
        self.stopped_early = False
        level = trainings[0].epochs_run
        for epoch in range(1, level + 1):
            self._take(epoch, [t.history[epoch - 1] for t in trainings])
        self.epochs_run = level
        self.done = self.stopped_early or level >= config.epochs

    def _take(self, epoch: int, rows: list[dict[str, float]]) -> tuple[dict[str, float], bool]:
        mean = _mean_row(rows, epoch)
        self.history.append(mean)
        improved = self.monitor.update(epoch, mean)
        self.stopped_early = self.monitor.bad_epochs >= self.config.patience
        return mean, improved

    def publish(self, epoch: int, rows: list[dict[str, float]], writer: Any,
                seconds: float) -> None:
        """Take epoch `epoch` (each fold's row), log it and report it."""
        if epoch > len(self.history):
            mean, improved = self._take(epoch, rows)
        else:  # a catch-up epoch: its mean was already replayed from the histories
            mean, improved = self.history[epoch - 1], self.monitor.best_epoch == epoch
        self.epochs_run = epoch
        self.done = self.stopped_early or epoch >= self.config.epochs
        if writer is not None:
            for k, row in enumerate(rows):
                for key, tag in SCALAR_TAGS.items():
                    if key in row:
                        writer.add_scalar(f"fold{k}/{tag}", row[key], epoch)
            temps = [t.temperature() for t in self.trainings]
            log_epoch(writer, mean, epoch,
                      None if temps[0] is None else float(np.mean(temps)))
        metric = self.monitor.metric
        if self.log:
            each = " ".join(f"{r[metric]:.4f}" for r in rows)
            self.log(f"epoch {epoch:3d}/{self.config.epochs}  cv mean {metric} "
                     f"{mean[metric]:.4f} (folds {each})  train {mean['train_loss']:.4f}"
                     f"{'  *' if improved else ''}")
        if self.report is not None:
            t0 = self.trainings[0]
            reported = {**mean, "epoch_seconds": seconds,
                        **{f"params_{k}": v for k, v in t0.params.items()},
                        CV_FOLDS_KEY: len(rows),
                        **{fold_key(k, n): float(r[n]) for k, r in enumerate(rows)
                           for n in FOLD_REPORTED},
                        "fit_ends": self.done}
            self.report(epoch, reported, None if self.ckdir is None else str(self.ckdir))
        if self.stopped_early and self.log:
            self.log(f"early stopping: the mean {metric} over {len(rows)} folds has not "
                     f"improved for {self.config.patience} epochs (best "
                     f"{self.monitor.describe()})")

    def result(self) -> FoldsResult:
        best = self.monitor.best_epoch
        rows = [t.history[best - 1] for t in self.trainings] if best else []
        metric = self.monitor.metric

        def val_of(row: dict[str, float]) -> dict[str, float]:
            return {k.removeprefix("val_"): float(v) for k, v in row.items()
                    if k.startswith("val_") and k != "val_loss"}

        t0 = self.trainings[0]
        return FoldsResult(
            monitor=metric, best_epoch=best,
            best_value=math.nan if self.monitor.best_value is None else self.monitor.best_value,
            fold_values=[float(r[metric]) for r in rows],
            val=val_of(self.history[best - 1]) if best else {},
            fold_val=[val_of(r) for r in rows], epochs_run=self.epochs_run,
            stopped_early=self.stopped_early, params=t0.params,
            train_seconds=round(sum(t.train_seconds for t in self.trainings), 3),
            backbone=self.config.backbone, spec=self.folds.spec,
            held_out=list(self.folds.held_out),
            checkpoint_dir=None if self.ckdir is None else str(self.ckdir),
            history=self.history)


# ----------------------------------------------------------------------------- retrain
def retrain(config: TrainConfig, bundle: DataBundle, epochs: int, *,
            checkpoint_dir: str | Path, resume_from: str | Path | None = None,
            vision_features: dict[str, torch.Tensor] | None = None,
            backbone: Backbone | None = None, tb_dir: str | Path | None = None,
            hparams: dict[str, Any] | None = None,
            log: Callable[[str], None] | None = None,
            evaluate_test: bool = True) -> FitResult:
    """Train `config` on every training row of `bundle` (`all_training`) for `epochs`
    epochs and score the test split once; the run of the configuration a cross-validated
    search exports. evaluate_test=False leaves the scoring to the caller (a search scores
    the saved best.pt itself, with its predictions and attention, in one pass).

    epochs: the CV-selected best epoch (FoldsResult.best_epoch, <= config.epochs). The
    learning-rate schedule is the configuration's own (a cosine schedule still spans
    config.epochs), so these epochs train as the folds' first `epochs` did; a plateau
    schedule follows the training rows' loss here, as nothing is held out. With nothing
    held out there is nothing to select by: no early stopping, and best.pt holds the LAST
    epoch's weights. The result's `val` is the fit to the training rows at that epoch (not
    a held-out score), `test` the test metrics of those weights, `checkpoint_path` the
    best.pt in checkpoint_dir. vision_features: those of `bundle` (None: computed here).
    """
    data = all_training(config, bundle)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)):
        raise ConfigError(f"retrain needs a whole number of epochs, got {epochs!r}")
    backbone, features = _shared_inputs(config, bundle, backbone, vision_features, log)
    training = Training(config, data, checkpoint_dir=checkpoint_dir, resume_from=resume_from,
                        vision_features=None if features is None else fold_features(
                            features, bundle, data),
                        tb_dir=tb_dir, backbone=backbone, log=log, hparams=hparams,
                        early_stopping=False, keep_last=True, stop_after=int(epochs))
    try:
        while not training.done:
            training.epoch()
    finally:
        training.close()
    return training.finish(evaluate_test=evaluate_test)


__all__ = ["FOLDS_FILE", "FOLD_DIR", "FOLD_REPORTED", "FoldsResult", "fit_folds", "fold_dir",
           "fold_features", "retrain"]
