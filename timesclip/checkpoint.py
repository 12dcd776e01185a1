"""The checkpoint format of a training run: `last.pt` to resume, `best.pt` to use.

- `last.pt`: everything the epoch loop needs to continue exactly as if it had never
  stopped: weights, optimiser, scheduler, the monitor's state (metric, best value and
  epoch, epochs without improvement), the best weights so far, the history and every RNG.
- `best.pt`: the weights of the epoch with the best monitored value, plus what
  `timesclip.inference` needs to use them (config, scaler, bands) and which epoch and
  value they are.

Both hold tensors and plain Python data only, so `torch.load(weights_only=True)` reads
them (see `safe_load`): a checkpoint may come from anywhere, and loading one never runs
code. Checkpoints of earlier versions (no `monitor` key; `best_val_loss`) monitored
val_loss and are read as such.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from timesclip import atomic
from timesclip.config import TrainConfig
from timesclip.data import Bundle
from timesclip.errors import ConfigError
from timesclip.metrics import METRIC_MODES, better

LAST, BEST = "last.pt", "best.pt"
#: What checkpoints written before `monitor` existed kept their best weights by.
LEGACY_MONITOR = "val_loss"
#: Optimizer state up to this size is stored packed (see pack_optimizer_state).
PACK_LIMIT_BYTES = 64 * 2**20


# ----------------------------------------------------------------------------- the monitor
@dataclass
class MonitorState:
    """Best checkpoint and early stopping of one run: both follow one metric.

    `update` compares with `timesclip.metrics.better` (strictly better; the earliest epoch
    keeps a tie), the comparison a search uses to pick a trial's best epoch, so the epoch
    a search selects is the epoch whose weights `best.pt` holds."""

    metric: str
    best_value: float | None = None  # None: no epoch finished yet
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the last improvement

    @property
    def mode(self) -> str:
        return METRIC_MODES[self.metric]

    def update(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Take one epoch's metrics; True when the monitored value improved."""
        value = float(metrics[self.metric])
        if not math.isfinite(value):
            # e.g. val_r2 of a validation split whose targets are all equal: nothing could
            # ever be "best", and a run without best weights has nothing to export
            raise ConfigError(f"the monitored metric {self.metric} is {value} at epoch "
                              f"{epoch}; choose another --monitor (e.g. val_rmse)")
        if better(value, self.best_value, self.mode):
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def describe(self) -> str:
        """'val_rmse 0.4123 at epoch 7' (or 'val_rmse: no epoch yet')."""
        if self.best_value is None:
            return f"{self.metric}: no epoch yet"
        return f"{self.metric} {self.best_value:.4f} at epoch {self.best_epoch}"


# ----------------------------------------------------------------------------- weights
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


# ----------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
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


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (or the plain-list form of earlier versions)."""
    py, npy = state["python"], state["numpy"]
    words = py["state"]  # a tensor; a plain list in checkpoints of earlier versions
    words = words.tolist() if isinstance(words, torch.Tensor) else words
    random.setstate((py["version"], tuple(int(w) for w in words), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- optimizer state
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


# ----------------------------------------------------------------------------- writing
def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save under a temporary name, then renamed (a new inode per save: checkpoint
    folders published by hard link never change afterwards).

    Written through a 1 MiB file buffer: torch.save given a path issues a small write per
    record, which cost ~0.4 ms more per quick-scale checkpoint; the buffer removes that
    without holding a whole (at real size, GB-sized) checkpoint in memory."""
    with atomic.replacing(path) as tmp, open(tmp, "wb", buffering=1 << 20) as fh:
        torch.save(obj, fh)


def save_checkpoints(ckdir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, config: TrainConfig, data: Bundle, *, epoch: int,
                     monitor: MonitorState, best_state: dict[str, torch.Tensor] | None,
                     history: list[dict[str, float]], seconds: float,
                     improved: bool) -> None:
    """Write last.pt (everything resume needs) and, on improvement, best.pt.

    Both hold tensors and plain Python data only (numpy scalars or arrays would make
    `safe_load` refuse the file).
    """
    meta = {"config": config.to_dict(), "scaler": data.scaler.to_dict(),
            "bands": [str(b) for b in data.bands], "data_fingerprint": str(data.fingerprint),
            "backbone": config.backbone}
    plain_history = [{k: int(v) if k == "epoch" else float(v) for k, v in h.items()}
                     for h in history]
    best_value = None if monitor.best_value is None else float(monitor.best_value)
    # at the best epoch the weights are best_state itself: the same tensors twice in one
    # file are stored once (and not cloned again)
    weights = best_state if (best_state is not None and monitor.best_epoch == epoch
                             ) else trainable_state(model)
    _atomic_save({**meta, "model": weights,
                  "optimizer": pack_optimizer_state(optimizer.state_dict()),
                  "scheduler": scheduler.state_dict(), "epoch": int(epoch),
                  "monitor": monitor.metric, "best_value": best_value,
                  "best_epoch": int(monitor.best_epoch), "bad_epochs": int(monitor.bad_epochs),
                  "best_state": best_state, "history": plain_history,
                  "train_seconds": float(seconds), "rng": rng_state()}, ckdir / LAST)
    if best_state is not None and (improved or not (ckdir / BEST).exists()):
        row = next((h for h in plain_history if h["epoch"] == monitor.best_epoch), None)
        _atomic_save({**meta, "model": best_state, "epoch": int(monitor.best_epoch),
                      "monitor": monitor.metric, "best_value": best_value,
                      "metrics": row}, ckdir / BEST)


# ----------------------------------------------------------------------------- reading
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


def load_last(path: str | Path) -> tuple[dict[str, Any], Path]:
    """last.pt (or the directory holding it) -> (its contents, the file's path)."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.exists():
        raise ConfigError(f"no checkpoint at {path}: pass the directory that holds {LAST}")
    return safe_load(path, f"pass the directory of a run that holds its {LAST}"), path


@dataclass
class Resumed:
    """Where a run read back from last.pt continues."""

    epoch: int  # the last finished epoch
    monitor: MonitorState
    best_state: dict[str, torch.Tensor] | None
    history: list[dict[str, float]]
    train_seconds: float


def resume(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
           scheduler: Any, monitor: str) -> Resumed:
    """Load last.pt at `path` into model, optimizer, scheduler and the RNGs.

    `monitor` is the metric this run follows; a checkpoint that followed another one is a
    ConfigError (continuing would silently change which epoch counts as best)."""
    ck, ck_path = load_last(path)
    # earlier versions kept the best weights by val_loss and stored it as best_val_loss
    stored = ck.get("monitor", LEGACY_MONITOR)
    if stored != monitor:
        raise ConfigError(f"{ck_path} was trained with monitor {stored} but this run "
                          f"monitors {monitor}; resume with --monitor {stored} or start "
                          "again without resuming")
    try:
        load_trainable_state(model, ck["model"])
        optimizer.load_state_dict(unpack_optimizer_state(ck["optimizer"]))
        scheduler.load_state_dict(ck["scheduler"])
        best = ck["best_value"] if "monitor" in ck else ck["best_val_loss"]
        state = MonitorState(stored, None if best is None else float(best),
                             int(ck["best_epoch"]), int(ck["bad_epochs"]))
        resumed = Resumed(int(ck["epoch"]), state, ck["best_state"], list(ck["history"]),
                          float(ck.get("train_seconds", 0.0)))
        set_rng_state(ck["rng"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ConfigError(f"{ck_path} is not a resumable {LAST} of this version "
                          f"({type(exc).__name__}: {_first_line(exc)}); start the run "
                          "again without resuming") from None
    return resumed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["BEST", "LAST", "LEGACY_MONITOR", "MonitorState", "Resumed", "load_last",
           "load_trainable_state", "pack_optimizer_state", "resume", "rng_state",
           "safe_load", "save_checkpoints", "set_rng_state", "trainable_state",
           "unpack_optimizer_state"]
