"""Each task's data as the training loop reads it: training batches and the scoring of a split.

fit() is one loop for both tasks; what differs is only here:
- yield: a few hundred samples, held as tensors on the device; predictions are scored in
  the yield's own units (RMSE, MAE, R², MAPE) after the whole split is predicted;
- forecast: tens of thousands of windows, never materialised: every batch is cut from the
  split's rows on demand (`ForecastSplit.x/y`), its frozen vision features (fp16, on the
  CPU) indexed and moved to the device with it, and a split is scored as it streams by
  (MSE / MAE on the standardised scale over every window, as Time-Series-Library scores).
Both shuffle the training batches by (seed, epoch) only, so a resumed run sees the same
batches as one that never stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from timesclip.config import TrainConfig
from timesclip.data import Bundle, DataBundle, ForecastBundle, Scaler
from timesclip.errors import ConfigError
from timesclip.features import SPLITS
from timesclip.metrics import ForecastErrors, regression_metrics
from timesclip.model import TimesCLIP

#: Windows / samples per forward pass when a split is scored (no effect on the numbers).
EVAL_BATCH = 256
#: A training batch: x [B, T, V], y ([B] or [B, H, V]), vision features [B, V, Hv] or None.
Batch = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


@dataclass
class SplitScore:
    """One split scored by a model: the regression loss the optimiser minimises (scaled
    MSE), the mean contrastive loss, and the task's metrics (without the `val_` prefix)."""

    regression: float
    contrastive: float
    metrics: dict[str, float]


class TaskData(Protocol):
    """What fit() reads from a task's data."""

    n_train: int  # training samples / windows per epoch

    def train_batches(self, epoch: int) -> Iterator[Batch]: ...

    def score(self, model: TimesCLIP, split: str) -> SplitScore: ...

    def epoch_text(self, metrics: dict[str, float]) -> str: ...


def task_data(config: TrainConfig, data: Bundle,
              features: dict[str, torch.Tensor] | None, device: torch.device) -> TaskData:
    """The TaskData of `config.task` over `data` (checked to be what the config describes)."""
    check_data(config, data)
    if isinstance(data, ForecastBundle):
        return ForecastData(config, data, features, device)
    return YieldData(config, data, features, device)


def check_data(config: TrainConfig, data: Bundle) -> None:
    """ConfigError unless `data` was loaded for `config`: its task and its window."""
    if config.task == "forecast":
        if not isinstance(data, ForecastBundle):
            raise ConfigError("task is 'forecast' but the data is a yield data set; load it "
                              "with timesclip.data.load_bundle(config, ...)")
        for name, held in (("lookback", data.lookback), ("horizon", data.horizon),
                           ("train_stride", data.train.stride)):
            if held != getattr(config, name):
                raise ConfigError(f"the data has {name} {held} but the config says "
                                  f"{getattr(config, name)}; load the data with the same config")
        return
    if not isinstance(data, DataBundle):
        raise ConfigError("task is 'yield' but the data is a forecasting file; pass --task "
                          "forecast (or load the yield CSVs)")
    if data.input_steps != config.input_steps:
        raise ConfigError(f"data window has {data.input_steps} steps but input_steps is "
                          f"{config.input_steps}; load the data with the same config")


# ----------------------------------------------------------------------------- yield
@torch.no_grad()
def predict(model: TimesCLIP, x: torch.Tensor, feats: torch.Tensor | None,
            batch_size: int) -> tuple[np.ndarray, float]:
    """Scaled predictions [N] and the mean contrastive loss over the batches (yield)."""
    model.eval()
    preds, closs = [], []
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size], None if feats is None else feats[i:i + batch_size])
        preds.append(out.y_pred.float().cpu())
        closs.append(float(out.contrastive_loss))
    return torch.cat(preds).numpy(), float(np.mean(closs)) if closs else 0.0


def score(y_pred_scaled: np.ndarray, y_raw: np.ndarray, scaler: Scaler) -> dict[str, float]:
    """Metrics of scaled predictions [N] against raw targets [N], in the target's own units."""
    return regression_metrics(y_raw, scaler.inverse_y(y_pred_scaled))


class YieldData:
    """A yield data set: every split as tensors on the device (it is small)."""

    def __init__(self, config: TrainConfig, data: DataBundle,
                 features: dict[str, torch.Tensor] | None, device: torch.device) -> None:
        self.config, self.data = config, data
        # torch.tensor copies: arrays shared through Ray's object store are read-only
        self.tensors = {s: (torch.tensor(getattr(data, s).x, device=device),
                            torch.tensor(getattr(data, s).y, device=device),
                            None if features is None else features[s].to(device))
                        for s in SPLITS}
        self.n_train = len(data.train)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        x, y, feats = self.tensors["train"]
        gen = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        order = torch.randperm(len(x), generator=gen).to(x.device)
        for i in range(0, len(x), self.config.batch_size):
            idx = order[i:i + self.config.batch_size]
            yield x[idx], y[idx], None if feats is None else feats[idx]

    def score(self, model: TimesCLIP, split: str) -> SplitScore:
        x, _, feats = self.tensors[split]
        pred, closs = predict(model, x, feats, batch_size=EVAL_BATCH)
        part = getattr(self.data, split)
        regression = float(np.mean((pred - part.y) ** 2))
        return SplitScore(regression, closs, score(pred, part.y_raw, scaler=self.data.scaler))

    def epoch_text(self, m: dict[str, float]) -> str:
        return f"RMSE {m['val_rmse']:.3f}  R2 {m['val_r2']:+.3f}"


# ----------------------------------------------------------------------------- forecast
class ForecastData:
    """A forecasting file: windows cut from the split rows batch by batch; the vision
    features ({split: [N, V, Hv]}, fp16) stay on the CPU and travel per batch."""

    def __init__(self, config: TrainConfig, data: ForecastBundle,
                 features: dict[str, torch.Tensor] | None, device: torch.device) -> None:
        self.config, self.data, self.features, self.device = config, data, features, device
        if features is not None:
            for s in SPLITS:
                want = (len(data.split(s)), len(data.columns))
                if tuple(features[s].shape[:2]) != want:
                    raise ConfigError(f"vision features of {s} have shape "
                                      f"{tuple(features[s].shape)}, expected {list(want)} + "
                                      "[width]; compute them for this data and config")
        self.n_train = len(data.train)

    def batches(self, split: str, idx_batches: Iterator[np.ndarray]) -> Iterator[Batch]:
        part = self.data.split(split)
        feats = None if self.features is None else self.features[split]
        for idx in idx_batches:
            x = torch.from_numpy(part.x(idx)).to(self.device)  # [B, L, V]
            y = torch.from_numpy(part.y(idx)).to(self.device)  # [B, H, V]
            f = None if feats is None else feats[torch.from_numpy(idx)].to(self.device)
            yield x, y, f  # f: [B, V, Hv]

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        rng = np.random.default_rng(self.config.seed * 100_003 + epoch)
        order = rng.permutation(self.n_train)
        size = self.config.batch_size
        return self.batches("train", (order[i:i + size] for i in range(0, len(order), size)))

    @torch.no_grad()
    def score(self, model: TimesCLIP, split: str) -> SplitScore:
        model.eval()
        n = len(self.data.split(split))
        errors, closs = ForecastErrors(), 0.0
        chunks = (np.arange(i, min(i + EVAL_BATCH, n)) for i in range(0, n, EVAL_BATCH))
        for x, y, f in self.batches(split, chunks):
            out = model(x, f)
            errors.add(y.cpu().numpy(), out.y_pred.float().cpu().numpy())  # [B, H, V]
            closs += float(out.contrastive_loss) * len(x)
        metrics = errors.result()
        return SplitScore(metrics["mse"], closs / n, metrics)

    def epoch_text(self, m: dict[str, float]) -> str:
        return f"MSE {m['val_mse']:.4f}  MAE {m['val_mae']:.4f}"


__all__ = ["EVAL_BATCH", "Batch", "ForecastData", "SplitScore", "TaskData", "YieldData",
           "check_data", "predict", "score", "task_data"]
