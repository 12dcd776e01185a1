"""best_config.yaml: the search's choice as a complete TrainConfig plus its provenance.

The trial is `tuner.outcomes.select_best`'s (ended normally, best validation value over its
epochs; never an errored, diverged or unfinished trial, never a test metric), exported only
when its train_config.yaml is stored. The file is what `python -m timesclip train --config`
reads: the config at the top level, and a `provenance:` mapping (experiment, trial, the
validation value and epoch, data fingerprint, backbone, versions, and the test score when
best_test.json holds this trial) that `--config` ignores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from timesclip.config import TrainConfig
from tuner.journal import TrialState
from tuner.layout import BEST_TEST_FILE, TRAIN_CONFIG_FILE, TRIAL_ID
from tuner.outcomes import best_value
from tuner.report.read import TrialRecord


@dataclass(frozen=True)
class BestTrial:
    """The trial a finished search exports, and its validation value and epoch."""

    trial_id: str
    metric: str
    value: float
    epoch: int | None
    record: TrialRecord


def exportable(trial: TrialState | None, records: dict[str, TrialRecord],
               metric: str, mode: str) -> BestTrial | None:
    """`trial` (the experiment's `select_best`) as a BestTrial, or None when there is none
    or its train_config.yaml is not stored (nothing complete to export)."""
    if trial is None:
        return None
    record = records.get(trial.tid)
    if record is None or record.train_config is None:
        return None
    value, epoch = best_value(trial.history, metric, mode)
    return BestTrial(trial_id=trial.tid, metric=metric, value=value, epoch=epoch,
                     record=record)


def _plain(value: Any) -> Any:
    """YAML-safe Python values (numpy scalars and NaN would not round-trip)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def export_best_config(path: Path, best: BestTrial, meta: dict[str, Any],
                       best_test: dict[str, Any] | None) -> None:
    """Write best_config.yaml; ConfigError when the stored train_config.yaml is not a valid
    TrainConfig (the caller notes it and writes no best config)."""
    rec = best.record
    config = TrainConfig.from_dict(rec.train_config or {},
                                   source=str(rec.trial_dir / TRAIN_CONFIG_FILE))
    data = meta.get("data") or {}
    provenance: dict[str, Any] = {
        "experiment": meta.get("name"),
        "space": meta.get("space"),
        TRIAL_ID: best.trial_id,
        "metric": {"name": best.metric, "mode": meta.get("mode", "min"),
                   "value": best.value, "epoch": best.epoch,
                   "split": "validation" if meta.get("cv") is None else
                   f"mean over the folds of --cv {meta['cv']}"},
        "data": {"description": data.get("description"), "fingerprint": data.get("fingerprint"),
                 "synthetic": data.get("synthetic"), "paths": data.get("paths")},
        "backbone": config.backbone,
        "versions": meta.get("versions") or {},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if best_test is not None:
        if str(best_test.get(TRIAL_ID)) == best.trial_id:
            provenance["test"] = {"split": "test", "evaluated": "once, for this configuration",
                                  **(best_test.get("test") or {})}
            if "retrain_rows" in best_test:  # --cv: the score of the retrain, not a fold
                provenance["test"]["model"] = (
                    f"retrained on all {best_test['retrain_rows']} training rows (train + "
                    f"val) for {best_test.get('retrain_epochs')} epochs, last epoch kept "
                    f"({best_test.get('checkpoint')}); `timesclip train --config` on this "
                    "file trains on the train split alone")
        else:
            provenance["test_note"] = (f"{BEST_TEST_FILE} holds trial "
                                       f"{best_test.get('trial_id')}, not this one")
    config.to_yaml(path, provenance=_plain(provenance))


__all__ = ["BestTrial", "export_best_config", "exportable"]
