"""Experiment folders written the way `python -m tuner.search` writes them, without Ray.

`ExperimentWriter` writes `search_meta.json`, appends the journal through the real writer
(`tuner.journal.Journal.append`, with explicit timestamps so wall times are exact), and puts
each trial's own files (`train_config.yaml` through `TrainConfig.to_yaml`, `final.json`)
into `trials/<trial_dirname>/`, where tuner.trainable puts them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from timesclip.config import TrainConfig
from tuner.journal import Journal
from tuner.layout import JOURNAL_FILE, TRIALS_DIR, trial_dirname


def rmse_metrics(value: float, epoch: int, *, seconds: float = 0.5) -> dict[str, Any]:
    """The per-epoch metrics the journal keeps, all derived from one val_rmse value."""
    return {"epoch": epoch, "train_loss": value ** 2 + 0.1, "train_regression_loss": value ** 2,
            "train_contrastive_loss": 0.1, "val_loss": value ** 2, "val_rmse": value,
            "val_mae": 0.8 * value, "val_r2": 1.0 - value / 10.0, "val_mape": 10.0 * value,
            "lr": 1e-3, "time_this_iter_s": seconds}


class ExperimentWriter:
    """One experiment folder, written event by event as the search driver would."""

    def __init__(self, exp_dir: Path, meta: dict[str, Any]) -> None:
        self.exp_dir = exp_dir
        (exp_dir / TRIALS_DIR).mkdir(parents=True, exist_ok=True)
        (exp_dir / "search_meta.json").write_text(json.dumps(meta, indent=2))
        self.journal: Journal | None = None
        self.dirs: dict[str, str] = {}
        self._index = 0

    # -- driver runs ---------------------------------------------------------------
    def driver_start(self, seg: int, t: float) -> None:
        if self.journal is not None:
            self.journal.close()
        self.journal = Journal(self.exp_dir / JOURNAL_FILE, seg)
        self.emit("driver_start", t, argv=["--space", "test"], resume=seg > 1, pid=1000 + seg,
                  host="testhost")

    def driver_end(self, t: float, how: str = "finished", signal: str | None = None) -> None:
        fields: dict[str, Any] = {"how": how}
        if signal is not None:
            fields["signal"] = signal
        self.emit("driver_end", t, **fields)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def emit(self, event: str, t: float, **fields: Any) -> dict[str, Any]:
        assert self.journal is not None, "driver_start first"
        return self.journal.append(event, t=t, **fields)

    # -- trials --------------------------------------------------------------------
    def trial(self, t: float, params: dict[str, Any], *, ray_id: str | None = None) -> str:
        tid = f"t{self._index:04d}"
        self._index += 1
        self.dirs[tid] = trial_dirname(tid, params)
        self.emit("trial", t, tid=tid, index=int(tid[1:]), ray_id=ray_id or f"ray-{tid}",
                  params=params, dir=self.dirs[tid], optuna=None)
        return tid

    def start(self, tid: str, t: float, *, ray_id: str | None = None) -> None:
        self.emit("start", t, tid=tid, ray_id=ray_id or f"ray-{tid}")

    def attach(self, tid: str, t: float, ray_id: str) -> None:
        self.emit("attach", t, tid=tid, ray_id=ray_id)

    def result(self, tid: str, t: float, epoch: int, metrics: dict[str, Any], *,
               node: str | None = "10.0.0.1/aaaaaaaa", decision: str = "continue",
               rung: tuple[float, float] | None = None) -> None:
        fields: dict[str, Any] = {"tid": tid, "epoch": epoch, "node": node,
                                  "decision": decision, "metrics": metrics,
                                  "ckpt": f"checkpoint_{epoch - 1:06d}"}
        if rung is not None:
            fields["rung"] = list(rung)
        self.emit("result", t, **fields)

    def diverged(self, tid: str, t: float, epoch: int, *, step: int = 3,
                 node: str | None = "10.0.0.1/aaaaaaaa") -> None:
        self.emit("result", t, tid=tid, epoch=epoch, node=node, decision="stop",
                  diverged={"epoch": epoch, "step": step, "loss": float("nan"),
                            "message": f"non-finite loss at epoch {epoch}"})

    def retry(self, tid: str, t: float, error: str, node: str | None = None) -> None:
        self.emit("retry", t, tid=tid, error=error, node=node)

    def end(self, tid: str, t: float, status: str, stopped_by: str, *,
            value: float | None = None, best_epoch: int | None = None, epochs_run: int = 0,
            error: str | None = None) -> None:
        fields: dict[str, Any] = {"tid": tid, "status": status, "stopped_by": stopped_by,
                                  "value": value, "best_epoch": best_epoch,
                                  "epochs_run": epochs_run}
        if error is not None:
            fields["error"] = error
        self.emit("end", t, **fields)

    # -- the trial's own files -----------------------------------------------------
    def trial_dir(self, tid: str) -> Path:
        path = self.exp_dir / TRIALS_DIR / self.dirs[tid]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def train_config(self, tid: str, config: TrainConfig) -> None:
        config.to_yaml(self.trial_dir(tid) / "train_config.yaml")

    def final(self, tid: str, payload: dict[str, Any]) -> None:
        (self.trial_dir(tid) / "final.json").write_text(json.dumps(payload, indent=2) + "\n")
