"""The Ray Tune function trainable: one trial = one `timesclip.train.fit` call.

The trainable never re-implements training. It turns the trial's sampled parameters into a
TrainConfig, hands fit() a report callback that forwards each epoch to `tune.report` with
the epoch's checkpoint, and resumes from Ray's checkpoint when Ray restarts the trial.
The data set and the frozen vision features arrive through `tune.with_parameters`, i.e.
from Ray's object store, so they are read and encoded once for the whole search.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from timesclip.config import TrainConfig, apply_ablation
from timesclip.data import DataBundle
from timesclip.model import Backbone, load_backbone
from timesclip.train import FitResult, feature_key, fit

#: Names of the files a trial writes next to Ray's own (read by tuner.results).
TRAIN_CONFIG_FILE = "train_config.yaml"
FINAL_FILE = "final.json"

#: The last backbone this worker process loaded. Workers are reused between trials
#: (reuse_actors), and reloading CLIP from disk for every trial is wasted set-up; sharing is
#: safe because fit() copies the text encoder into each model and never alters the backbone.
_BACKBONE_CACHE: dict[tuple[str, bool], Backbone] = {}


def _cached_backbone(name: str, need_vision: bool) -> Backbone:
    key = (name, need_vision)
    if key not in _BACKBONE_CACHE:
        _BACKBONE_CACHE.clear()  # one backbone per process: never hold two CLIP copies
        _BACKBONE_CACHE[key] = load_backbone(name, need_vision=need_vision)
    return _BACKBONE_CACHE[key]


def resolve_trial_config(trial_params: dict[str, Any], setup: dict[str, Any]) -> TrainConfig:
    """The complete TrainConfig of one trial: base <- space base <- sampled values."""
    base = TrainConfig.from_dict(setup["base_config"], source="base config")
    if setup["kind"] == "ablation":
        config = apply_ablation(base, trial_params["ablation"]).replace(
            seed=int(trial_params["seed"]))
    else:
        # `base` already holds the space's base and the command-line overrides; passing it as
        # overrides too keeps the flags above the space's base (e.g. --backbone).
        config = setup["space"].trial_config(base, trial_params, overrides=base.to_dict())
    return config.replace(epochs=int(setup["max_epochs"]))


def train_trial(trial_params: dict[str, Any], *, data: DataBundle,
                features: dict[str, torch.Tensor] | None, setup: dict[str, Any]) -> None:
    """Ray Tune function trainable (wrapped with tune.with_parameters by tuner.search)."""
    config = resolve_trial_config(trial_params, setup)
    # one "checkpoint created" INFO line per epoch per trial drowns the progress lines
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    torch.set_num_threads(max(1, int(setup.get("cpus_per_trial", 1))))
    trial_dir = Path(tune.get_context().get_trial_dir())
    trial_dir.mkdir(parents=True, exist_ok=True)
    config.to_yaml(trial_dir / TRAIN_CONFIG_FILE)

    # Shared features are valid only if this trial renders and encodes exactly like the base.
    if features is not None and feature_key(config, data) != setup.get("feature_key"):
        features = None

    work = Path(tempfile.mkdtemp(prefix="timesclip-trial-"))
    try:
        resume_from = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            resume_from = Path(checkpoint.to_directory(str(work / "restore")))

        held: list[tuple[dict[str, float], str | None]] = []

        def report(epoch: int, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
            if epoch >= config.epochs:
                # ASHA stops a trial at the report that reaches max_t, before fit() returns;
                # hold the last epoch back so final.json is written first.
                held.append((metrics, checkpoint_dir))
                return
            ck = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
            tune.report(metrics, checkpoint=ck)

        result = fit(config, data, report=report, checkpoint_dir=work / "ckpt",
                     resume_from=resume_from, vision_features=features,
                     backbone=_cached_backbone(config.backbone,
                                               config.use_vision and features is None),
                     evaluate_test=setup["kind"] == "ablation", tb_dir=trial_dir / "tb")
        _write_final(trial_dir / FINAL_FILE, result, config, trial_params)
        for metrics, checkpoint_dir in held:
            ck = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
            tune.report(metrics, checkpoint=ck)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_final(path: Path, result: FitResult, config: TrainConfig,
                 trial_params: dict[str, Any]) -> None:
    """final.json marks a trial that ran to its end (ASHA-stopped trials never write it)."""
    rmses = [h["val_rmse"] for h in result.history]
    payload = {
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "best_val_rmse": min(rmses) if rmses else None,
        "val": result.val, "test": result.test, "params": result.params,
        "train_seconds": result.train_seconds, "backbone": result.backbone,
        "ablation": trial_params.get("ablation"), "seed": config.seed,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
