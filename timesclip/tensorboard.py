"""TensorBoard output of a training run: the per-epoch scalars and the HParams session.

The scalar tags are the ones the user already reads (`Loss/train`, `Metrics/RMSE`, ...);
`HPARAM_METRICS` names those the HParams tab shows as each run's metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from timesclip.config import TrainConfig

#: Per-epoch metric name -> its TensorBoard scalar tag.
SCALAR_TAGS = {"train_loss": "Loss/train", "train_regression_loss": "Loss/train_regression",
               "train_contrastive_loss": "Loss/train_contrastive", "val_loss": "Loss/val",
               "val_rmse": "Metrics/RMSE", "val_r2": "Metrics/R2", "val_mae": "Metrics/MAE",
               "val_mape": "Metrics/MAPE", "val_mse": "Metrics/MSE", "lr": "LR"}
#: The scalars fit() logs that TensorBoard's HParams tab shows as this run's metrics.
HPARAM_METRICS = ("Metrics/RMSE", "Metrics/R2", "Loss/val")
#: The same for a forecasting run (TrainConfig.task "forecast").
FORECAST_HPARAM_METRICS = ("Metrics/MSE", "Metrics/MAE", "Loss/val")


def summary_writer(tb_dir: str | Path | None, config: TrainConfig,
                   hparams: dict[str, Any] | None = None) -> Any:
    """A SummaryWriter on `tb_dir` with this run's HParams session declared (None: no dir).

    torch.utils.tensorboard is imported here, not at module level: it loads the
    tensorboard package, which a run without a tb_dir (a caller that logs elsewhere, most
    unit tests) never needs."""
    if tb_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tb_dir))
    log_hparams(writer, config, hparams)
    return writer


def log_epoch(writer: Any, metrics: dict[str, float], epoch: int,
              temperature: float | None = None) -> None:
    """One epoch's scalars (and the learned InfoNCE temperature when there is one), flushed
    so a run stopped by the search still shows every epoch it finished."""
    for key, tag in SCALAR_TAGS.items():
        if key in metrics:  # each task reports its own metrics
            writer.add_scalar(tag, metrics[key], epoch)
    if temperature is not None:
        writer.add_scalar("Temperature", temperature, epoch)
    writer.flush()


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
    tags = FORECAST_HPARAM_METRICS if config.task == "forecast" else HPARAM_METRICS
    metrics = {tag: 0.0 for tag in tags}  # names only: no value is written
    experiment, _, _ = hparams_summaries({k: v for k, v in typed.items() if v is not None},
                                         metrics)
    _, session_start, _ = hparams_summaries(active, metrics)
    file_writer = writer.file_writer  # this run's own event file
    file_writer.add_summary(experiment)
    file_writer.add_summary(session_start)
    file_writer.flush()


__all__ = ["FORECAST_HPARAM_METRICS", "HPARAM_METRICS", "SCALAR_TAGS", "log_epoch",
           "log_hparams", "summary_writer"]
