"""The Ray Tune function trainable: one trial = one `timesclip.train.fit` call.

The trainable never re-implements training. It turns the trial's sampled parameters into a
TrainConfig, hands fit() a report callback that forwards each epoch to `tune.report` with
the epoch's checkpoint, and resumes from a checkpoint when there is one: Ray's own (a retry
after a lost node) or the one the journal names (a trial continued by a later driver).
The data set arrives through `tune.with_parameters` and the frozen vision features through
an ObjectRef in `setup`, both from Ray's object store, so they are read and encoded once for
the whole search; a worker process fetches the features once for all the trials it runs.

A non-finite loss is a property of the sampled configuration, not a failure of the cluster:
it is reported as a `diverged` result (and the trial ends normally), so `--max-failures`
never retries it and the sampler learns from it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from ray import tune

from timesclip.atomic import TMP_SUFFIX, write_text
from timesclip.config import TrainConfig, apply_ablation
from timesclip.data import DataBundle
from timesclip.errors import NonFiniteLossError
from timesclip.model import Backbone, load_backbone
from timesclip.train import FitResult, feature_key, fit
from tuner.journal import FINAL_FILE, REPEAT_KEY, TRAIN_CONFIG_FILE

TID_KEY = "trial_id"  # same as tuner.tracking.TID_KEY (kept here: no driver imports)
#: The result key naming the checkpoint folder of a reported epoch (journaled as `ckpt`).
CKPT_KEY = "ckpt"
CHECKPOINT_PREFIX = "checkpoint_"
#: Checkpoint folders a trial keeps: its newest ones (always with the journal's among them).
KEEP_CHECKPOINTS = 3
#: fit()'s working checkpoint folder inside the trial folder (removed when the trial ends).
WORK_PREFIX = ".fit-"

#: The last backbone this worker process loaded. Workers are reused between trials
#: (reuse_actors), and reloading CLIP from disk for every trial is wasted set-up; sharing is
#: safe because fit() copies the text encoder into each model and never alters the backbone.
_BACKBONE_CACHE: dict[tuple[str, bool], Backbone] = {}

#: The vision features this worker process fetched, by their ObjectRef's id. Copying them
#: out of the object store took ~4.5 ms per trial at the quick scale (a one-epoch trial
#: trains ~0.5 s); fit() only reads them, so the trials of one process can share them.
_FEATURES_CACHE: dict[str, dict[str, torch.Tensor]] = {}

#: Short names for trial folder names (TensorBoard shows one run per trial under them).
_SHORT = {"ablation": "", "seed": "seed", "contrastive_weight": "cw", "temperature": "temp",
          "hybrid_alpha": "alpha", "lr": "lr", "backbone_lr": "blr", "weight_decay": "wd",
          "batch_size": "bs", "dropout": "drop", "d_model": "d", "use_contrastive": "con",
          "patch": "patch", "learnable_temperature": "learnT", "freeze_text": "frz"}
_PRIORITY = ("ablation", "seed", "contrastive_weight", "temperature", "hybrid_alpha", "lr")


def _cached_backbone(name: str, need_vision: bool) -> Backbone:
    key = (name, need_vision)
    if key not in _BACKBONE_CACHE:
        _BACKBONE_CACHE.clear()  # one backbone per process: never hold two CLIP copies
        _BACKBONE_CACHE[key] = load_backbone(name, need_vision=need_vision)
    return _BACKBONE_CACHE[key]


def _shared_features(ref: Any) -> dict[str, torch.Tensor]:
    """The features behind `ref`, fetched once per worker process (the driver started the
    trials only once the task computing them had finished)."""
    import ray

    key = ref.hex()
    if key not in _FEATURES_CACHE:
        features = ray.get(ref)
        _FEATURES_CACHE.clear()  # one search's features per process
        _FEATURES_CACHE[key] = features
    return _FEATURES_CACHE[key]


def quiet_sigterm_exit() -> None:
    """Install (once per process) an unraisable-exception hook for Ray's worker SIGTERM.

    When Tune ends a trial's actor, its raylet sends the worker SIGTERM, and Ray's handler
    raises SystemExit wherever the main thread is. If that is inside a finalizer (a weakref
    callback during garbage collection), Python cannot raise it: it prints an
    "Exception ignored in ... SystemExit" traceback, which Ray forwards to the search's
    output, and the worker does not exit. This hook takes only that case: it prints
    nothing and delivers SIGTERM again a moment later, from another thread, so that Ray's
    handler runs once the finalizer (and this hook) have returned and exits the worker the
    way Ray meant to. (Raising it here would land inside this hook: Python checks for
    signals right after `raise_signal`.) Every other unraisable exception goes to the
    previous hook.
    """
    if getattr(sys.unraisablehook, "_sigterm_exit", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, SystemExit) and \
                _from_sigterm_handler(unraisable.exc_traceback):
            again = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM))
            again.daemon = True
            again.start()
            return
        previous(unraisable)

    hook._sigterm_exit = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _from_sigterm_handler(tb: Any) -> bool:
    """Whether a traceback passes through a SIGTERM handler (Ray's is `sigterm_handler`)."""
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "sigterm_handler":
            return True
        tb = tb.tb_next
    return False


def trial_dirname(tid: str, params: dict[str, Any], limit: int = 64) -> str:
    """`t0003-cw0.12-temp0.051-alpha0.5`: the trial id and up to four key parameters.

    It is the trial's folder name and so its run name in TensorBoard."""
    names = [n for n in _PRIORITY if n in params]
    names += [n for n in params if n not in names and n != TID_KEY]
    parts = [tid]
    for name in names[:4]:
        value = params[name]
        if isinstance(value, bool):
            text = str(int(value))
        elif isinstance(value, float):
            text = f"{value:.2g}"
        else:
            text = str(value)
        parts.append(re.sub(r"[^A-Za-z0-9.+]", "", f"{_SHORT.get(name, name[:6])}{text}"))
    name = "-".join(p for p in parts if p)
    return name[:limit].rstrip("-")


def resolve_trial_config(trial_params: dict[str, Any], setup: dict[str, Any]) -> TrainConfig:
    """The complete TrainConfig of one trial: base <- space base <- sampled values."""
    params = {k: v for k, v in trial_params.items() if k != TID_KEY}
    base = TrainConfig.from_dict(setup["base_config"], source="base config")
    if setup["kind"] == "ablation":
        config = apply_ablation(base, params["ablation"]).replace(seed=int(params["seed"]))
    else:
        # `base` already holds the space's base and the command-line overrides; passing it as
        # overrides too keeps the flags above the space's base (e.g. --backbone).
        config = setup["space"].trial_config(base, params, overrides=base.to_dict())
    return config.replace(epochs=int(setup["max_epochs"]))


def _trial_folder(tid: str | None, trial_params: dict[str, Any], setup: dict[str, Any]
                  ) -> Path:
    """The trial's folder on the experiment storage, written directly: the storage is a
    filesystem every node mounts, so nothing has to be synced after each epoch. (Outside a
    search, e.g. a bare Tune run: Ray's trial directory.)"""
    root = setup.get("trials_root")
    if root and tid is not None:
        return Path(root) / trial_dirname(tid, trial_params)
    return Path(tune.get_context().get_trial_dir())


def journal_checkpoint(setup: dict[str, Any], tid: str | None, trial_dir: Path
                       ) -> str | None:
    """The checkpoint directory of `tid`'s last journaled epoch (the journal is on the
    experiment storage, which every node mounts), or None.

    A trial folder without checkpoint folders has nothing to resume, whatever the journal
    says (the journal only names folders the trial published), so a fresh trial starts
    without reading the journal. A trial that has checkpoints but cannot see the journal
    runs on a node that does not share the storage: it fails, naming the fix, rather than
    silently training again from epoch 0."""
    journal, root = setup.get("journal"), setup.get("trials_root")
    if not journal or not root or tid is None:
        return None
    if not any(trial_dir.glob(f"{CHECKPOINT_PREFIX}*")):
        return None
    if not Path(journal).is_file():
        raise RuntimeError(
            f"trial {tid} has checkpoints in {trial_dir} but the search journal {journal} "
            "is not visible on this node: --storage must be a filesystem every node mounts "
            "at the same path")
    from tuner.journal import read_events

    state_dir, ckpt = None, None
    for ev in read_events(journal):
        if ev.get("tid") != tid:
            continue
        if ev["ev"] == "trial":
            state_dir = ev.get("dir") or tid
        elif ev["ev"] == "result" and ev.get("ckpt"):
            ckpt = ev["ckpt"]
    if state_dir is None or ckpt is None:
        return None
    return str(Path(root) / state_dir / ckpt)


def train_trial(trial_params: dict[str, Any], *, data: DataBundle, setup: dict[str, Any]
                ) -> None:
    """Ray Tune function trainable (wrapped with tune.with_parameters by tuner.search)."""
    quiet_sigterm_exit()
    config = resolve_trial_config(trial_params, setup)
    if config.threads == 0:  # the trial's CPUs, recorded so a re-run uses them too
        config = config.replace(threads=max(1, int(setup.get("cpus_per_trial", 1))))
    tid = trial_params.get(TID_KEY)
    trial_dir = _trial_folder(tid, trial_params, setup)
    trial_dir.mkdir(parents=True, exist_ok=True)
    config.to_yaml(trial_dir / TRAIN_CONFIG_FILE)

    # Shared features are valid only if this trial renders and encodes exactly like the base.
    shared = feature_key(config, data) == setup.get("feature_key")
    features = None
    if shared and setup.get("features_ref") is not None:
        features = _shared_features(setup["features_ref"])

    # fit()'s working checkpoint folder sits in the trial folder, on the same filesystem
    # as the per-epoch checkpoints, so publishing an epoch is a hard link, not a copy
    for stale in trial_dir.glob(f"{WORK_PREFIX}*"):  # left by a killed earlier run
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=trial_dir))
    try:
        # the last checkpoint the journal recorded: a trial continued by a later driver
        # and a retry after a lost worker alike (Ray holds no checkpoints here)
        resume_from = journal_checkpoint(setup, tid, trial_dir)
        held: list[tuple[int, dict[str, float], str | None]] = []
        last: dict[str, float] = {}
        node = _node_id()

        sent: list[int] = []

        def send(epoch: int, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
            sent.append(epoch)
            if checkpoint_dir:
                metrics = {**metrics, CKPT_KEY: publish_checkpoint(Path(checkpoint_dir),
                                                                   trial_dir, epoch)}
            tune.report(metrics)

        def report(epoch: int, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
            metrics = {**metrics, "node_id": node}
            last.clear()
            last.update(metrics)
            if metrics.get("fit_ends"):
                # The last epoch is held back until final.json is written: ASHA stops a
                # trial at the report that reaches max_t, before fit() returns, and a
                # driver that journals this report may close the trial at a resume
                # without running it again.
                held.append((epoch, metrics, checkpoint_dir))
                return
            send(epoch, metrics, checkpoint_dir)

        try:
            result = fit(config, data, report=report, checkpoint_dir=work / "ckpt",
                         resume_from=resume_from, vision_features=features,
                         backbone=_cached_backbone(config.backbone,
                                                   config.use_vision and features is None),
                         evaluate_test=setup["kind"] == "ablation", tb_dir=trial_dir,
                         hparams=trial_hparams(trial_params, setup))
        except NonFiniteLossError as exc:
            tune.report({**{k: math.nan for k in ("val_rmse", "val_loss")}, **last,
                         "epoch": exc.epoch, "diverged": True, "diverged_epoch": exc.epoch,
                         "diverged_step": exc.step, "diverged_loss": exc.value,
                         "diverged_message": str(exc)})
            return
        _write_final(trial_dir / FINAL_FILE, result, config, trial_params)
        for epoch, metrics, checkpoint_dir in held:
            send(epoch, metrics, checkpoint_dir)
        if not sent and result.history:
            # A retry of a trial whose last epoch was already journaled (its worker was
            # lost after that report): fit() had nothing left to train. Ray needs one
            # result to close the trial; the schedulers ignore a repeat.
            tune.report({**result.history[-1], "node_id": node, REPEAT_KEY: True})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def old_checkpoints(trial_dir: Path, keep: int = KEEP_CHECKPOINTS) -> list[Path]:
    """The trial's checkpoint folders beyond its newest `keep`, oldest first."""
    found = sorted(p for p in trial_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())
    return found[:-keep]


def publish_checkpoint(source: Path, trial_dir: Path, epoch: int,
                       keep: int = KEEP_CHECKPOINTS) -> str:
    """Publish fit()'s checkpoint files of `epoch` as `trial_dir/checkpoint_<epoch>`; returns
    that folder's name (the result's `ckpt`, which the journal records).

    The files are hard-linked: fit() replaces its files atomically (a new inode per save),
    so a published folder never changes afterwards, and an unchanged best.pt is shared by
    consecutive epochs. (A copy where links are not possible.) This replaces Ray's
    checkpoint persistence, which copied every file again on each report; resume and
    retries read the journal's checkpoint, never Ray's. Only the newest `keep` folders
    stay while the trial runs: the driver journals a result before the trial's next
    report returns, so the folder the journal names is always among them."""
    name = f"{CHECKPOINT_PREFIX}{epoch:06d}"
    dest = trial_dir / name
    if dest.exists():  # the same epoch trained again after its result was lost
        shutil.rmtree(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=trial_dir))
    for path in source.iterdir():
        if path.is_file() and not path.name.endswith(TMP_SUFFIX):
            try:
                os.link(path, tmp / path.name)
            except OSError:  # a filesystem without hard links
                shutil.copy2(path, tmp / path.name)
    tmp.replace(dest)
    for old in old_checkpoints(trial_dir, keep):
        if old.name < name:  # never a newer folder (left by a run whose result was lost)
            shutil.rmtree(old, ignore_errors=True)
    return name


def trial_hparams(trial_params: dict[str, Any], setup: dict[str, Any]) -> dict[str, Any]:
    """What TensorBoard's HParams tab lists for a trial: its id and every parameter the
    search can sample, None where this trial did not sample it (a conditional parameter
    whose condition did not hold), so all trials describe the same columns."""
    if setup["kind"] == "ablation":
        names = ["ablation", "seed"]
    else:
        names = list(setup["space"].sampled_names())
    return {TID_KEY: trial_params.get(TID_KEY),
            **{name: trial_params.get(name) for name in names}}


def _node_id() -> str:
    """Ray's id of the node this trial runs on (several nodes can share one IP)."""
    import ray

    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # outside a Ray worker (unit tests): no node
        return ""


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
    write_text(path, json.dumps(payload, indent=2) + "\n")
