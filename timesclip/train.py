"""fit(): the TimesCLIP training loop.

One call trains one configuration on one data bundle, of either task: a yield data set
(metrics in the target's own units) or a forecasting file (MSE / MAE on the standardised
scale over every window). The loop is the same; what differs -- how training batches are
cut and how a split is scored -- is `timesclip.task_data`. It reports every epoch through a
callback (the tuner turns that into `tune.report`), writes resumable checkpoints
(`timesclip.checkpoint`), and returns the validation/test metrics.

Best checkpoint and early stopping follow one metric, `config.monitor_metric` (the task's
own error metric, val_rmse or val_mse, unless `monitor` names another): `best.pt` holds
the epoch a search would select from the same reports. The learning-rate plateau still follows
val_loss, the quantity the optimiser minimises.

The frozen vision features are a pure function of (data, render settings, backbone), so
they are computed once before the loop (`timesclip.features`, or handed in by the caller,
who may share them between many runs) and never inside the training step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from timesclip.checkpoint import (
    BEST,
    MonitorState,
    Resumed,
    load_trainable_state,
    resume,
    rng_state,
    save_checkpoints,
    set_rng_state,
    trainable_state,
)
from timesclip.config import TrainConfig
from timesclip.data import Bundle
from timesclip.errors import ConfigError, NonFiniteLossError
from timesclip.features import compute_features
from timesclip.model import Backbone, TimesCLIP, count_parameters, load_backbone
from timesclip.runtime import apply_threads, resolve_device, seed_everything
from timesclip.task_data import Batch, check_data, predict, score, task_data
from timesclip.tensorboard import log_epoch, summary_writer

#: report(epoch, metrics, checkpoint_dir_or_None) — called after each epoch's checkpoint is on disk.
ReportFn = Callable[[int, dict[str, float], "str | None"], None]


@dataclass
class FitResult:
    """What one training run produced: the task's metrics (yield: the target's own units;
    forecast: MSE / MAE on the standardised scale).

    best_epoch is the epoch with the best `monitor` value (`best_value`); `val` holds that
    epoch's validation metrics and `test` the test metrics of its weights."""

    best_epoch: int
    epochs_run: int
    monitor: str
    best_value: float
    val: dict[str, float]
    test: dict[str, float] | None
    params: dict[str, int]
    train_seconds: float
    backbone: str
    checkpoint_path: str | None
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)

    def metrics_json(self) -> dict[str, Any]:
        """The nested metrics.json layout of the training CLI (CONTRACT keys)."""
        return {"val": self.val, "test": self.test, "params": self.params,
                "train_seconds": self.train_seconds, "backbone": self.backbone,
                "epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
                "monitor": self.monitor, "best_value": self.best_value,
                "stopped_early": self.stopped_early}


# ---------------------------------------------------------------------------- helpers
def build_optimizer(model: TimesCLIP, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with a separate, smaller learning rate for unfrozen pretrained CLIP-Text weights."""
    groups = [{"params": model.other_trainable_parameters(), "lr": config.lr, "name": "model"}]
    pretrained = model.pretrained_trainable_parameters()
    if pretrained:
        groups.append({"params": pretrained, "lr": config.backbone_lr, "name": "backbone"})
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> Any:
    """Cosine decay over `epochs`, or ReduceLROnPlateau stepped on val_loss (see fit)."""
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience)


# ---------------------------------------------------------------------------- one run
class Training:
    """One training run that advances one epoch per `epoch()` call.

    fit() is the loop over it; `timesclip.cv.fit_folds` advances several of them (one per
    cross-validation fold) in lockstep inside one trial. Each run keeps its own random
    state: the global RNGs (dropout draws from them) are restored before and captured after
    every epoch, so runs stepped alternately train exactly as each would alone, and a run
    resumed from its checkpoint as one that never stopped.

    Arguments as fit()'s, plus three that only other loops than fit() set:
    early_stopping (False: the run never stops on its own monitor; a caller that stops it
    by another rule, e.g. the mean over folds, just stops calling `epoch()`), keep_last
    (True: every epoch replaces the kept weights, so best.pt is the last epoch's: a run of
    a fixed number of epochs with nothing held out to select by), stop_after (end after
    this many epochs; the schedule still spans `config.epochs`, so the first epochs train
    exactly as in a run of `config.epochs`).
    """

    def __init__(self, config: TrainConfig, data: Bundle, *,
                 checkpoint_dir: str | Path | None = None,
                 resume_from: str | Path | None = None,
                 vision_features: dict[str, torch.Tensor] | None = None,
                 tb_dir: str | Path | None = None, backbone: Backbone | None = None,
                 log: Callable[[str], None] | None = None,
                 hparams: dict[str, Any] | None = None, early_stopping: bool = True,
                 keep_last: bool = False, stop_after: int | None = None) -> None:
        check_data(config, data)
        if stop_after is not None and not 1 <= stop_after <= config.epochs:
            raise ConfigError(f"stop_after must be an epoch in 1..{config.epochs} (the "
                              f"config's epochs), got {stop_after}")
        self.config, self.data, self.log = config, data, log
        self.early_stopping, self.keep_last = early_stopping, keep_last
        self.last_epoch = config.epochs if stop_after is None else int(stop_after)
        apply_threads(config)
        device = resolve_device(config.device)
        if log and config.precision == "bf16" and device.type == "cpu":
            # measured (benchmarks/real_size.py, a 2-core CPU without bf16 units): bf16
            # autocast made the ViT-B/16 pass 5.6x and a CLIP-Text epoch ~80x slower
            log("note: precision bf16 on a CPU: without bf16 hardware autocast is far slower "
                "than fp32 (it is meant for GPUs); use --precision fp32 here")
        if backbone is None or (config.use_vision and vision_features is None):
            seed_everything(config.seed)  # backbone and feature work below draw random numbers
        if backbone is None:
            # The vision tower is only needed to compute features; handed-in features skip it.
            backbone = load_backbone(config.backbone,
                                     need_vision=config.use_vision and vision_features is None)
        if config.use_vision and vision_features is None:
            vision_features = compute_features(config, data, backbone, device=device, log=log)
        # torch RNG is reseeded after backbone/feature work so model init depends on the seed only
        seed_everything(config.seed)
        self.model = TimesCLIP(config, n_variates=len(data.bands), backbone=backbone).to(device)
        params = count_parameters(self.model)
        if config.use_vision:  # the frozen vision tower belongs in every parameter count
            vis = backbone.vision_tower_size
            params = {"total": params["total"] + vis, "trainable": params["trainable"],
                      "frozen": params["frozen"] + vis}
        self.params = params

        self.run = task_data(config, data, vision_features, device)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config)

        # No copy of the initial weights (best_state None): a fresh run's first epoch always
        # improves on "nothing yet" (a non-finite monitored value raises), so they could never
        # be the best state.
        state = Resumed(epoch=0, monitor=MonitorState(config.monitor_metric), best_state=None,
                        history=[], train_seconds=0.0)
        if resume_from is not None:
            state = resume(resume_from, self.model, self.optimizer, self.scheduler,
                           config.monitor_metric)
            if log:
                log(f"resumed from epoch {state.epoch} (best {state.monitor.describe()})")
        self.state = state
        self.monitor, self.history = state.monitor, state.history
        self.epochs_run = state.epoch
        self.train_seconds = state.train_seconds  # seconds spent in epochs, all runs together

        # A checkpoint written at the last epoch, or after early stopping triggered, is a
        # finished run: resuming it (e.g. a search restarted after a driver crash) must train
        # nothing and return what that run returned, not squeeze in one more epoch.
        self.stopped_early = early_stopping and self.monitor.bad_epochs >= config.patience
        self.done = self.stopped_early or state.epoch >= self.last_epoch
        if self.done and resume_from is not None and log:
            log(f"nothing to train: the checkpoint's run already ended at epoch {state.epoch} "
                f"({'early stopping' if self.stopped_early else 'last epoch'})")

        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if self.done:  # so checkpoint_path names a file here, too
            self.write_checkpoint()
        self.writer = None if self.done else summary_writer(tb_dir, config, hparams)
        self._rng = rng_state()  # this run's random state between its epochs

    def write_checkpoint(self) -> None:
        """Write the current state into checkpoint_dir (nothing without one): what a
        finished run resumed into a new folder leaves there, so the folder is complete."""
        if self.checkpoint_dir is not None:
            self._save(self.epochs_run, self.train_seconds, improved=True)

    def _save(self, epoch: int, seconds: float, improved: bool) -> None:
        assert self.checkpoint_dir is not None
        save_checkpoints(self.checkpoint_dir, self.model, self.optimizer, self.scheduler,
                         self.config, self.data, epoch=epoch, monitor=self.monitor,
                         best_state=self.state.best_state, history=self.history,
                         seconds=seconds, improved=improved)

    def epoch(self, report: ReportFn | None = None) -> dict[str, float]:
        """Train and validate one epoch, checkpoint it, then `report` it; returns what was
        reported: the epoch's metrics (the CONTRACT names) plus epoch_seconds, params_* and
        fit_ends."""
        if self.done:
            raise RuntimeError(f"the run already ended at epoch {self.epochs_run}")
        config, model, optimizer = self.config, self.model, self.optimizer
        set_rng_state(self._rng)
        epoch = self.epochs_run + 1
        epoch_start = time.perf_counter()
        train_m = _train_epoch(model, optimizer, self.run.train_batches(epoch),
                               self.run.n_train, config, epoch)
        val = self.run.score(model, "val")
        val_loss = val.regression + (config.contrastive_weight * val.contrastive
                                     if config.use_contrastive else 0.0)
        if not math.isfinite(val_loss):
            raise NonFiniteLossError(epoch, -1, val_loss)
        lr = optimizer.param_groups[0]["lr"]
        if config.scheduler == "cosine":
            self.scheduler.step()
        else:
            # the plateau follows the loss the optimiser minimises (contrastive term
            # included), not the monitor: it drives optimisation, not model selection
            self.scheduler.step(val_loss)
        metrics = {"epoch": epoch, **train_m, "val_loss": val_loss,
                   **{f"val_{k}": v for k, v in val.metrics.items()}, "lr": lr}
        epoch_seconds = time.perf_counter() - epoch_start  # training + validation
        self.history.append(metrics)
        if self.keep_last:  # every epoch is the one kept: forget the previous "best"
            self.monitor.best_value = None
        improved = self.monitor.update(epoch, metrics)
        if improved:
            self.state.best_state = trainable_state(model)
        if self.writer is not None:
            log_epoch(self.writer, metrics, epoch, self.temperature())
        self._rng = rng_state()
        if self.checkpoint_dir is not None:
            self._save(epoch, self.train_seconds + time.perf_counter() - epoch_start, improved)
        if self.log:
            self.log(_epoch_line(metrics, config.epochs, improved,
                                 self.run.epoch_text(metrics)))
        self.epochs_run = epoch
        stop_early = self.early_stopping and self.monitor.bad_epochs >= config.patience
        self.done = stop_early or epoch >= self.last_epoch
        # beside the CONTRACT names: the epoch's compute time and the model size, so a
        # trial stopped early still has both in the search's records. fit_ends: nothing
        # follows this epoch (the budget is spent or early stopping is about to end the
        # run), so a search that loses the run's completion can close it from this report
        # rather than resume it
        reported = {**metrics, "epoch_seconds": epoch_seconds,
                    **{f"params_{k}": v for k, v in self.params.items()},
                    "fit_ends": self.done}
        try:
            if report is not None:
                report(epoch, reported,
                       str(self.checkpoint_dir) if self.checkpoint_dir is not None else None)
        finally:
            self.train_seconds += time.perf_counter() - epoch_start
        if stop_early:
            self.stopped_early = True
            if self.log:
                self.log(f"early stopping: {self.monitor.metric} has not improved for "
                         f"{config.patience} epochs (best {self.monitor.describe()})")
        return reported

    def temperature(self) -> float | None:
        """The InfoNCE temperature now (None without the contrastive loss)."""
        if not self.config.use_contrastive:
            return None
        return float(self.model.contrastive.temperature.detach())

    def close(self) -> None:
        """Close the TensorBoard writer (idempotent); fit() calls it however the loop ends."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self, evaluate_test: bool = True) -> FitResult:
        """The run's result: the kept epoch's weights loaded into the model, its
        validation metrics and (evaluate_test) the test metrics of those weights."""
        self.close()
        monitor, history = self.monitor, self.history
        if self.state.best_state is not None:
            load_trainable_state(self.model, self.state.best_state)
        # The best epoch's validation metrics were computed from these very weights (same
        # batches, eval mode): reuse them rather than a second pass over the val split.
        best_row = next((h for h in history if int(h["epoch"]) == monitor.best_epoch), None)
        if best_row is not None:
            val_final = {k.removeprefix("val_"): float(v) for k, v in best_row.items()
                         if k.startswith("val_") and k != "val_loss"}
        else:
            val_final = self.run.score(self.model, "val").metrics
        test_final = self.run.score(self.model, "test").metrics if evaluate_test else None
        best_value = math.nan if monitor.best_value is None else monitor.best_value
        ckdir = self.checkpoint_dir
        return FitResult(best_epoch=monitor.best_epoch, epochs_run=self.epochs_run,
                         monitor=monitor.metric, best_value=best_value, val=val_final,
                         test=test_final, params=self.params,
                         train_seconds=round(self.train_seconds, 3),
                         backbone=self.config.backbone,
                         checkpoint_path=str(ckdir / BEST) if ckdir is not None else None,
                         stopped_early=self.stopped_early, history=history)


# ---------------------------------------------------------------------------- fit
def fit(config: TrainConfig, data: Bundle, *, report: ReportFn | None = None,
        checkpoint_dir: str | Path | None = None, resume_from: str | Path | None = None,
        vision_features: dict[str, torch.Tensor] | None = None, evaluate_test: bool = True,
        tb_dir: str | Path | None = None, backbone: Backbone | None = None,
        log: Callable[[str], None] | None = None,
        hparams: dict[str, Any] | None = None) -> FitResult:
    """Train `config` on `data`; see the module docstring.

    checkpoint_dir: where `last.pt` (full resumable state) and `best.pt` (the weights of
    the best epoch of `config.monitor_metric` + what `evaluate` needs) are written each
    epoch. resume_from: a directory holding a `last.pt` (or the file itself); training
    continues as if it had never stopped (a checkpoint that monitored another metric is a
    ConfigError). hparams: what TensorBoard's HParams tab lists for this run (default:
    every field of `config`); None values mark parameters inactive in this run (see
    `timesclip.tensorboard.log_hparams`). report(epoch, metrics, checkpoint_dir) is called
    after each epoch's checkpoint is on disk.
    """
    training = Training(config, data, checkpoint_dir=checkpoint_dir, resume_from=resume_from,
                        vision_features=vision_features, tb_dir=tb_dir, backbone=backbone,
                        log=log, hparams=hparams)
    try:
        while not training.done:
            training.epoch(report)
    finally:
        training.close()
    return training.finish(evaluate_test=evaluate_test)


def _train_epoch(model: TimesCLIP, optimizer: torch.optim.Optimizer,
                 batches: Iterator[Batch], n_train: int, config: TrainConfig,
                 epoch: int) -> dict[str, float]:
    """One pass over the training batches (shuffled by (seed, epoch) only, so a resumed run
    sees the same batches); the epoch's mean losses."""
    model.train()
    sums = {"train_loss": 0.0, "train_regression_loss": 0.0, "train_contrastive_loss": 0.0}
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    for step, (x, y, feats) in enumerate(batches):
        out = model(x, feats)
        reg = nn.functional.mse_loss(out.y_pred, y)
        closs = out.contrastive_loss
        loss = reg + config.contrastive_weight * closs if config.use_contrastive else reg
        if not torch.isfinite(loss):
            raise NonFiniteLossError(epoch, step, float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        n = len(x)
        sums["train_loss"] += float(loss.detach()) * n
        sums["train_regression_loss"] += float(reg.detach()) * n
        sums["train_contrastive_loss"] += float(closs.detach()) * n
    return {k: v / n_train for k, v in sums.items()}


def _epoch_line(m: dict[str, float], epochs: int, improved: bool, scores: str) -> str:
    """One line per epoch (`scores`: the task's validation metrics); `*` marks an
    improvement of the monitored metric."""
    return (f"epoch {int(m['epoch']):3d}/{epochs}  train {m['train_loss']:.4f} "
            f"(reg {m['train_regression_loss']:.4f}, con {m['train_contrastive_loss']:.4f})  "
            f"val {m['val_loss']:.4f}  {scores}  "
            f"lr {m['lr']:.2e}{'  *' if improved else ''}")


__all__ = ["FitResult", "ReportFn", "Training", "build_optimizer", "build_scheduler", "fit",
           "predict", "score"]
