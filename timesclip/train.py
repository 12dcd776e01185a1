"""fit(): the TimesCLIP training loop.

One call trains one configuration on one DataBundle. It reports every epoch through a
callback (the tuner turns that into `tune.report`), writes resumable checkpoints, and
returns validation/test metrics in the target's own units.

The frozen vision features are a pure function of (data, render settings, backbone), so
they are computed once before the loop (or handed in by the caller, who may share them
between many runs) and never inside the training step.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from timesclip import atomic
from timesclip.config import TrainConfig
from timesclip.data import DataBundle, Scaler
from timesclip.errors import ConfigError, NonFiniteLossError
from timesclip.feature_cache import feature_settings
from timesclip.metrics import regression_metrics
from timesclip.model import (
    Backbone,
    TimesCLIP,
    compute_vision_features,
    count_parameters,
    load_backbone,
)
from timesclip.model.vision import default_image_batch
from timesclip.progress import QUIET_SECONDS, progress_bar

#: report(epoch, metrics, checkpoint_dir_or_None) — called after each epoch's checkpoint is on disk.
ReportFn = Callable[[int, dict[str, float], "str | None"], None]
SPLITS = ("train", "val", "test")
LAST, BEST = "last.pt", "best.pt"
#: Metric names of the per-epoch report (CONTRACT).
EPOCH_METRICS = ("epoch", "train_loss", "train_regression_loss", "train_contrastive_loss",
                 "val_loss", "val_rmse", "val_mae", "val_r2", "val_mape", "lr")
_TB_TAGS = {"train_loss": "Loss/train", "train_regression_loss": "Loss/train_regression",
            "train_contrastive_loss": "Loss/train_contrastive", "val_loss": "Loss/val",
            "val_rmse": "Metrics/RMSE", "val_r2": "Metrics/R2", "val_mae": "Metrics/MAE",
            "val_mape": "Metrics/MAPE", "lr": "LR"}


@dataclass
class FitResult:
    """What one training run produced. Metrics are in the target's own units."""

    best_epoch: int
    epochs_run: int
    best_val_loss: float
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
                "stopped_early": self.stopped_early}


# ---------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA on a machine without it is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def apply_threads(config: TrainConfig) -> None:
    """Use `config.threads` CPU threads (0: leave torch's setting). Float reductions depend
    on the thread count: the same count is what makes a re-run repeat a run exactly."""
    if config.threads > 0 and torch.get_num_threads() != config.threads:
        torch.set_num_threads(config.threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def feature_key(config: TrainConfig, data: DataBundle) -> str:
    """Identifies a set of frozen vision features: same key, same features.

    Made of `timesclip.feature_cache.feature_settings`, which the on-disk cache key also
    contains (the cache adds the weights' and the data's content)."""
    return "|".join(str(v) for v in feature_settings(config, data).values())


def compute_features(config: TrainConfig, data: DataBundle, backbone: Backbone | None = None,
                     *, device: torch.device | None = None,
                     log: Callable[[str], None] | None = None, image_batch: int | None = None,
                     progress: str | None = "vision features",
                     progress_file: TextIO | None = None) -> dict[str, torch.Tensor] | None:
    """Frozen CLIP-vision features for every split: {"train"|"val"|"test": [N, V, Hv]}.

    None when the configuration has no vision branch. Run once per data set and share.
    All splits go through the tower in one pass, `image_batch` images per call (default:
    `default_image_batch`, bounded memory whatever the band count). `progress` labels the
    progress output (a bar on a terminal, a line per ~10 % elsewhere, nothing for a pass
    shorter than QUIET_SECONDS; None: no progress output) written to
    `progress_file` (default stdout).
    """
    if not config.use_vision:
        return None
    apply_threads(config)
    if backbone is None or backbone.vision is None:
        backbone = load_backbone(config.backbone, need_vision=True)
    assert backbone.vision is not None
    device = device or resolve_device(config.device)
    image_size = config.image_size or backbone.image_size
    batch = image_batch or default_image_batch(device, backbone.vision.config, image_size)
    x = np.concatenate([getattr(data, s).x_raw for s in SPLITS])  # [N, T, V] all splits
    n, v = len(x), len(data.bands)
    if log:
        log(f"vision features: {n} samples x {v} bands = {n * v} images at {image_size}px, "
            f"{batch} per tower call on {device}")
    start = time.perf_counter()
    with progress_bar(n * v, progress, unit="img", file=progress_file,
                      delay=QUIET_SECONDS) as bar:
        feats = compute_vision_features(x, backbone.vision, image_size=image_size,
                                        line_width=config.line_width, image_batch=batch,
                                        device=device, progress=bar.update,
                                        precision=config.precision)  # [N, V, Hv]
    seconds = time.perf_counter() - start
    sizes = [len(getattr(data, s)) for s in SPLITS]
    # clone: views would each carry (and pickle, e.g. into Ray) the whole [N, V, Hv] storage
    out = {s: part.clone() for s, part in zip(SPLITS, torch.split(feats, sizes))}
    if log:
        log(f"vision features: {n} samples x {v} bands rendered at {image_size}px and encoded "
            f"once in {seconds:.1f}s ({n * v / max(seconds, 1e-9):.1f} images/s)")
    return out


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict without frozen parameters: they are a function of the backbone id,
    so checkpoints stay small even with a frozen ViT-B text tower inside."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items() if k not in frozen}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's trainable weights; a checkpoint of another configuration (other
    shapes or names) is a user error, not a crash."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatch
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln),
                     str(exc).splitlines()[0])
        raise ConfigError(f"checkpoint does not match the model ({first}); pass the "
                          "checkpoint of this configuration") from None
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    bad = [k for k in missing if k not in frozen]
    if bad or unexpected:
        raise ConfigError(f"checkpoint does not match the model: missing {bad[:3]}, "
                          f"unexpected {list(unexpected)[:3]}; pass the checkpoint of this "
                          "configuration")


def _rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, as tensors and plain Python values only.

    The checkpoint is loaded with `torch.load(weights_only=True)`, whose unpickler accepts
    tensors, numbers, strings and containers but no numpy arrays or arbitrary objects; so
    numpy's MT19937 key array and Python's 625 state words become int64 tensors (one
    tensor, not 625 pickled ints: torch.save pays per pickled object, every epoch).
    """
    py_version, py_internal, py_gauss = random.getstate()  # (int, 625 ints, float | None)
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(py_version),
                   "state": torch.tensor(py_internal, dtype=torch.int64),  # [625]
                   "gauss": None if py_gauss is None else float(py_gauss)},
        "numpy": {"kind": str(np_kind),
                  "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),  # [624]
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                  "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    words = py["state"]  # a tensor; a plain list in checkpoints of earlier versions
    words = words.tolist() if isinstance(words, torch.Tensor) else words
    random.setstate((py["version"], tuple(int(w) for w in words), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save under a temporary name, then renamed (a new inode per save: checkpoint
    folders published by hard link never change afterwards).

    Written through a 1 MiB file buffer: torch.save given a path issues a small write per
    record, which cost ~0.4 ms more per quick-scale checkpoint; the buffer removes that
    without holding a whole (at real size, GB-sized) checkpoint in memory."""
    with atomic.replacing(path) as tmp, open(tmp, "wb", buffering=1 << 20) as fh:
        torch.save(obj, fh)


def build_optimizer(model: TimesCLIP, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with a separate, smaller learning rate for unfrozen pretrained CLIP-Text weights."""
    groups = [{"params": model.other_trainable_parameters(), "lr": config.lr, "name": "model"}]
    pretrained = model.pretrained_trainable_parameters()
    if pretrained:
        groups.append({"params": pretrained, "lr": config.backbone_lr, "name": "backbone"})
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience)


@torch.no_grad()
def predict(model: TimesCLIP, x: torch.Tensor, feats: torch.Tensor | None,
            batch_size: int) -> tuple[np.ndarray, float]:
    """Scaled predictions [N] and the mean contrastive loss over the batches."""
    model.eval()
    preds, closs = [], []
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size], None if feats is None else feats[i:i + batch_size])
        preds.append(out.y_pred.float().cpu())
        closs.append(float(out.contrastive_loss))
    return torch.cat(preds).numpy(), float(np.mean(closs)) if closs else 0.0


def score(y_pred_scaled: np.ndarray, y_raw: np.ndarray, scaler: Scaler) -> dict[str, float]:
    return regression_metrics(y_raw, scaler.inverse_y(y_pred_scaled))


# ---------------------------------------------------------------------------- fit
def fit(config: TrainConfig, data: DataBundle, *, report: ReportFn | None = None,
        checkpoint_dir: str | Path | None = None, resume_from: str | Path | None = None,
        vision_features: dict[str, torch.Tensor] | None = None, evaluate_test: bool = True,
        tb_dir: str | Path | None = None, backbone: Backbone | None = None,
        log: Callable[[str], None] | None = None,
        hparams: dict[str, Any] | None = None) -> FitResult:
    """Train `config` on `data`; see the module docstring.

    checkpoint_dir: where `last.pt` (full resumable state) and `best.pt` (best weights +
    what `evaluate` needs) are written each epoch. resume_from: a directory holding a
    `last.pt` (or the file itself); training continues as if it had never stopped.
    hparams: what TensorBoard's HParams tab lists for this run (default: every field of
    `config`); None values mark parameters inactive in this run (see `log_hparams`).
    """
    if data.input_steps != config.input_steps:
        raise ConfigError(f"data window has {data.input_steps} steps but input_steps is "
                          f"{config.input_steps}; load the data with the same config")
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
    model = TimesCLIP(config, n_variates=len(data.bands), backbone=backbone).to(device)
    params = count_parameters(model)
    if config.use_vision:  # the frozen vision tower belongs in every parameter count
        vis = backbone.vision_tower_size
        params = {"total": params["total"] + vis, "trainable": params["trainable"],
                  "frozen": params["frozen"] + vis}

    # torch.tensor copies: arrays shared through Ray's object store are read-only
    tensors = {s: (torch.tensor(getattr(data, s).x, device=device),
                   torch.tensor(getattr(data, s).y, device=device),
                   None if vision_features is None else vision_features[s].to(device))
               for s in SPLITS}
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)

    start_epoch, best_val, best_epoch, bad_epochs = 0, math.inf, 0, 0
    # No copy of the initial weights: a fresh run's first epoch always improves on inf (a
    # non-finite val_loss raises), so they could never be the best state.
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    elapsed_before = 0.0
    if resume_from is not None:
        ck, ck_path = _load_checkpoint(resume_from)
        try:
            load_trainable_state(model, ck["model"])
            optimizer.load_state_dict(unpack_optimizer_state(ck["optimizer"]))
            scheduler.load_state_dict(ck["scheduler"])
            start_epoch, best_val = int(ck["epoch"]), float(ck["best_val_loss"])
            best_epoch, bad_epochs = int(ck["best_epoch"]), int(ck["bad_epochs"])
            best_state, history = ck["best_state"], list(ck["history"])
            elapsed_before = float(ck.get("train_seconds", 0.0))
            _set_rng_state(ck["rng"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ConfigError(f"{ck_path} is not a resumable {LAST} of this version "
                              f"({type(exc).__name__}: {_first_line(exc)}); start the run "
                              "again without resuming") from None
        if log:
            log(f"resumed from epoch {start_epoch} (best val_loss {best_val:.4f} "
                f"at epoch {best_epoch})")

    # A checkpoint written at the last epoch, or after early stopping triggered, is a finished
    # run: resuming it (e.g. a search restarted after a driver crash) must train nothing and
    # return what that run returned, not squeeze in one more epoch.
    stopped_early = bad_epochs >= config.patience
    finished = stopped_early or start_epoch >= config.epochs
    if finished and resume_from is not None and log:
        log(f"nothing to train: the checkpoint's run already ended at epoch {start_epoch} "
            f"({'early stopping' if stopped_early else 'last epoch'})")

    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
    if finished and ckdir is not None:  # so checkpoint_path names a file here, too
        _save_checkpoints(ckdir, model, optimizer, scheduler, config, data, start_epoch,
                          best_val, best_epoch, bad_epochs, best_state, history,
                          elapsed_before, improved=True)
    writer = None if finished else _summary_writer(tb_dir, config, hparams)
    last_epoch = start_epoch if finished else config.epochs
    epoch = start_epoch
    loop_start = time.perf_counter()
    try:
        for epoch in range(start_epoch + 1, last_epoch + 1):
            epoch_start = time.perf_counter()
            train_m = _train_epoch(model, optimizer, tensors["train"], config, epoch)
            val_x, _, val_feats = tensors["val"]
            val_pred, val_closs = predict(model, val_x, val_feats, batch_size=256)
            val_reg = float(np.mean((val_pred - data.val.y) ** 2))
            val_loss = val_reg + (config.contrastive_weight * val_closs
                                  if config.use_contrastive else 0.0)
            if not math.isfinite(val_loss):
                raise NonFiniteLossError(epoch, -1, val_loss)
            val_m = score(val_pred, data.val.y_raw, scaler=data.scaler)
            lr = optimizer.param_groups[0]["lr"]
            if config.scheduler == "cosine":
                scheduler.step()
            else:
                scheduler.step(val_loss)
            metrics = {"epoch": epoch, **train_m, "val_loss": val_loss,
                       **{f"val_{k}": v for k, v in val_m.items()}, "lr": lr}
            epoch_seconds = time.perf_counter() - epoch_start  # training + validation
            history.append(metrics)
            improved = val_loss < best_val
            if improved:
                best_val, best_epoch, bad_epochs = val_loss, epoch, 0
                best_state = trainable_state(model)
            else:
                bad_epochs += 1
            if writer is not None:
                for key, tag in _TB_TAGS.items():
                    writer.add_scalar(tag, metrics[key], epoch)
                if config.use_contrastive:
                    temperature = float(model.contrastive.temperature.detach())
                    writer.add_scalar("Temperature", temperature, epoch)
                writer.flush()
            seconds = elapsed_before + time.perf_counter() - loop_start
            if ckdir is not None:
                _save_checkpoints(ckdir, model, optimizer, scheduler, config, data, epoch,
                                  best_val, best_epoch, bad_epochs, best_state, history,
                                  seconds, improved)
            if log:
                log(_epoch_line(metrics, config.epochs, improved))
            stop_early = bad_epochs >= config.patience
            if report is not None:
                # beside the CONTRACT names: the epoch's compute time and the model size,
                # so a trial stopped early still has both in the search's records
                # fit_ends: nothing follows this epoch (the budget is spent or early
                # stopping is about to end the run), so a search that loses the run's
                # completion can close it from this report rather than resume it
                extra = {"epoch_seconds": epoch_seconds,
                         **{f"params_{k}": v for k, v in params.items()},
                         "fit_ends": stop_early or epoch >= config.epochs}
                report(epoch, {**metrics, **extra},
                       str(ckdir) if ckdir is not None else None)
            if stop_early:
                stopped_early = True
                if log:
                    log(f"early stopping: val_loss has not improved for {config.patience} "
                        f"epochs (best at epoch {best_epoch})")
                break
    finally:
        if writer is not None:
            writer.close()
    train_seconds = elapsed_before + time.perf_counter() - loop_start

    if best_state is not None:
        load_trainable_state(model, best_state)
    # The best epoch's validation metrics were computed from these very weights (same
    # batches, eval mode): reuse them rather than a second pass over the val split.
    best_row = next((h for h in history if int(h["epoch"]) == best_epoch), None)
    if best_row is not None:
        val_final = {k.removeprefix("val_"): float(v) for k, v in best_row.items()
                     if k.startswith("val_") and k != "val_loss"}
    else:
        val_pred, _ = predict(model, tensors["val"][0], tensors["val"][2], batch_size=256)
        val_final = score(val_pred, data.val.y_raw, data.scaler)
    test_final = None
    if evaluate_test:
        test_pred, _ = predict(model, tensors["test"][0], tensors["test"][2], batch_size=256)
        test_final = score(test_pred, data.test.y_raw, data.scaler)
    return FitResult(best_epoch=best_epoch, epochs_run=epoch, best_val_loss=best_val,
                     val=val_final, test=test_final, params=params,
                     train_seconds=round(train_seconds, 3), backbone=config.backbone,
                     checkpoint_path=str(ckdir / BEST) if ckdir is not None else None,
                     stopped_early=stopped_early, history=history)


def _train_epoch(model: TimesCLIP, optimizer: torch.optim.Optimizer,
                 split: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
                 config: TrainConfig, epoch: int) -> dict[str, float]:
    x, y, feats = split
    model.train()
    # Shuffling order depends on (seed, epoch) only, so a resumed run sees the same batches.
    gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    order = torch.randperm(len(x), generator=gen).to(x.device)
    sums = {"train_loss": 0.0, "train_regression_loss": 0.0, "train_contrastive_loss": 0.0}
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    for step, i in enumerate(range(0, len(x), config.batch_size)):
        idx = order[i:i + config.batch_size]
        out = model(x[idx], None if feats is None else feats[idx])
        reg = nn.functional.mse_loss(out.y_pred, y[idx])
        closs = out.contrastive_loss
        loss = reg + config.contrastive_weight * closs if config.use_contrastive else reg
        if not torch.isfinite(loss):
            raise NonFiniteLossError(epoch, step, float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        n = len(idx)
        sums["train_loss"] += float(loss.detach()) * n
        sums["train_regression_loss"] += float(reg.detach()) * n
        sums["train_contrastive_loss"] += float(closs.detach()) * n
    return {k: v / len(x) for k, v in sums.items()}


def _epoch_line(m: dict[str, float], epochs: int, improved: bool) -> str:
    return (f"epoch {int(m['epoch']):3d}/{epochs}  train {m['train_loss']:.4f} "
            f"(reg {m['train_regression_loss']:.4f}, con {m['train_contrastive_loss']:.4f})  "
            f"val {m['val_loss']:.4f}  RMSE {m['val_rmse']:.3f}  R2 {m['val_r2']:+.3f}  "
            f"lr {m['lr']:.2e}{'  *' if improved else ''}")


def _summary_writer(tb_dir: str | Path | None, config: TrainConfig,
                    hparams: dict[str, Any] | None = None):
    if tb_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tb_dir))
    log_hparams(writer, config, hparams)
    return writer


#: The scalars fit() logs that TensorBoard's HParams tab shows as this run's metrics.
HPARAM_METRICS = ("Metrics/RMSE", "Metrics/R2", "Loss/val")


def _tb_value(value: Any) -> bool | int | float | str | None:
    """A value the HParams plugin can hold: numbers and strings as they are; booleans as
    "True"/"False" (torch would store them as 1.0/0.0); lists and others as text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return value
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def log_hparams(writer: Any, config: TrainConfig, hparams: dict[str, Any] | None) -> None:
    """Write this run's HParams session info when training starts.

    A search stops most trials early (ASHA), so they never reach the end of fit(): the
    session must be declared up front. Torch's `add_hparams` does it at the end, writes its
    metric values as extra scalar points and into a second run directory; here the summaries
    of `torch.utils.tensorboard.summary.hparams` go into this run's own event file instead,
    with the metrics pointing at scalars fit() logs anyway (HPARAM_METRICS). Every trial of a
    search writes the same experiment description (all parameter names, typed from the
    value or, when inactive in this trial, from the TrainConfig field), so whichever run
    TensorBoard reads it from, the table has a column for every parameter.
    """
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    given = config.to_dict() if hparams is None else dict(hparams)
    active = {k: _tb_value(v) for k, v in given.items()}
    typed = {k: v if v is not None else _tb_value(getattr(config, k, None))
             for k, v in active.items()}
    metrics = {tag: 0.0 for tag in HPARAM_METRICS}  # names only: no value is written
    experiment, _, _ = hparams_summaries({k: v for k, v in typed.items() if v is not None},
                                         metrics)
    _, session_start, _ = hparams_summaries(active, metrics)
    file_writer = writer.file_writer  # this run's own event file
    file_writer.add_summary(experiment)
    file_writer.add_summary(session_start)
    file_writer.flush()


def _save_checkpoints(ckdir: Path, model: TimesCLIP, optimizer, scheduler, config: TrainConfig,
                      data: DataBundle, epoch: int, best_val: float, best_epoch: int,
                      bad_epochs: int, best_state: dict, history: list, seconds: float,
                      improved: bool) -> None:
    """Write last.pt (everything resume needs) and, on improvement, best.pt.

    Both hold tensors and plain Python data only, so `torch.load(weights_only=True)` reads
    them (see `safe_load`); numpy scalars or arrays would make that load refuse the file.
    """
    meta = {"config": config.to_dict(), "scaler": data.scaler.to_dict(),
            "bands": [str(b) for b in data.bands], "data_fingerprint": str(data.fingerprint),
            "backbone": config.backbone}
    plain_history = [{k: int(v) if k == "epoch" else float(v) for k, v in h.items()}
                     for h in history]
    # at the best epoch the weights are best_state itself: the same tensors twice in one
    # file are stored once (and not cloned again)
    weights = best_state if best_epoch == epoch else trainable_state(model)
    _atomic_save({**meta, "model": weights,
                  "optimizer": pack_optimizer_state(optimizer.state_dict()),
                  "scheduler": scheduler.state_dict(), "epoch": int(epoch),
                  "best_val_loss": float(best_val), "best_epoch": int(best_epoch),
                  "bad_epochs": int(bad_epochs), "best_state": best_state,
                  "history": plain_history, "train_seconds": float(seconds),
                  "rng": _rng_state()}, ckdir / LAST)
    if improved or not (ckdir / BEST).exists():
        _atomic_save({**meta, "model": best_state, "epoch": int(best_epoch),
                      "val_loss": float(best_val)}, ckdir / BEST)


#: Optimizer state up to this size is stored packed (see pack_optimizer_state).
PACK_LIMIT_BYTES = 64 * 2**20


def pack_optimizer_state(state_dict: dict[str, Any]) -> dict[str, Any]:
    """`optimizer.state_dict()` with its per-parameter tensors joined: one flat tensor per
    state name (Adam's step, exp_avg, exp_avg_sq) and the shapes to cut them apart again.

    Why: torch.save pickles ~15 objects per tensor, each through a Python hook. At the
    quick scale the optimizer's 66 small tensors took 2 of the ~3 ms that last.pt costs,
    and last.pt is written after every epoch of every trial. State larger than
    PACK_LIMIT_BYTES (real-size models, where per-tensor costs vanish) is stored as it
    is: joining it would only copy hundreds of MB. `unpack_optimizer_state` reverses it.
    """
    state = state_dict["state"]
    ids = list(state)
    names = list(state[ids[0]]) if ids else []
    columns: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for i in ids:
        if list(state[i]) != names:
            return state_dict
        for name in names:
            value = state[i][name]
            if not isinstance(value, torch.Tensor) or value.device.type != "cpu":
                return state_dict
            columns[name].append(value)
    if not ids or any(len({t.dtype for t in col}) != 1 for col in columns.values()):
        return state_dict
    if sum(t.numel() * t.element_size() for col in columns.values() for t in col
           ) > PACK_LIMIT_BYTES:
        return state_dict
    return {"packed": {name: torch.cat([t.reshape(-1) for t in col])
                       for name, col in columns.items()},
            "ids": ids, "names": names,
            "shapes": {name: [list(t.shape) for t in col] for name, col in columns.items()},
            "param_groups": state_dict["param_groups"]}


def unpack_optimizer_state(stored: dict[str, Any]) -> dict[str, Any]:
    """The `optimizer.state_dict()` that `pack_optimizer_state` packed (an unpacked one,
    e.g. from an earlier version, is returned as it is)."""
    if "packed" not in stored:
        return stored
    state: dict[Any, dict[str, torch.Tensor]] = {i: {} for i in stored["ids"]}
    for name in stored["names"]:
        flat, shapes = stored["packed"][name], stored["shapes"][name]
        sizes = [math.prod(shape) for shape in shapes]
        if len(shapes) != len(state) or sum(sizes) != flat.numel():
            raise ValueError(f"packed optimizer state {name!r} does not match its shapes")
        for i, shape, part in zip(stored["ids"], shapes, torch.split(flat, sizes)):
            state[i][name] = part.reshape(shape).clone()
    return {"state": state, "param_groups": stored["param_groups"]}


def _load_checkpoint(path: str | Path) -> tuple[dict[str, Any], Path]:
    """last.pt (or the directory holding it) -> (its contents, the file's path)."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.exists():
        raise ConfigError(f"no checkpoint at {path}: pass the directory that holds {LAST}")
    return safe_load(path, f"pass the directory of a run that holds its {LAST}"), path


def safe_load(path: Path, fix: str) -> dict[str, Any]:
    """torch.load restricted to tensors and plain data (weights_only=True).

    A checkpoint may come from anywhere (a copied experiment folder, a download); a full
    unpickler would run whatever code a crafted file names. Every checkpoint fit() writes is
    tensors, numbers, strings and containers, so nothing legitimate needs more.
    """
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # refused objects, truncation, not a torch file at all
        raise ConfigError(f"{path} is not a timesclip checkpoint ({type(exc).__name__}; "
                          "only tensors and plain data are loaded, never other pickled "
                          f"objects); {fix}") from None
    if not isinstance(ck, dict):
        raise ConfigError(f"{path} is not a timesclip checkpoint (holds a "
                          f"{type(ck).__name__}, not a mapping); {fix}")
    return ck


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["BEST", "EPOCH_METRICS", "FitResult", "LAST", "compute_features", "feature_key", "fit",
           "predict", "resolve_device", "safe_load"]
