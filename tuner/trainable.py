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
import shutil
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from timesclip.atomic import TMP_SUFFIX, write_text
from timesclip.config import TrainConfig
from timesclip.cv import FoldsResult, fit_folds
from timesclip.data import DataBundle
from timesclip.data.folds import CvSpec, cv_folds
from timesclip.errors import NonFiniteLossError
from timesclip.features import feature_key
from timesclip.model import Backbone, load_backbone
from timesclip.train import FitResult, fit
from tuner.journal import clip_line, load_state
from tuner.layout import (
    CHECKPOINT_PREFIX,
    FINAL_FILE,
    TRAIN_CONFIG_FILE,
    TRIAL_ID,
    WORK_PREFIX,
    ExperimentLayout,
    is_storage_full,
    trial_dirname,
)
from tuner.outcomes import CKPT_KEY, DIVERGED_KEY, FIT_ENDS_KEY, REPEAT_KEY, STORAGE_FULL_KEY
from tuner.spaces import SearchSpace

#: Checkpoint folders a trial keeps: its newest ones (always with the journal's among them).
KEEP_CHECKPOINTS = 3


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one driver run shares (built by the driver from its plan)."""

    kind: str  # "search" | "ablation"
    space: SearchSpace
    base_config: dict[str, Any]  # the plan's complete base TrainConfig (epochs, monitor set)
    metric: str  # the search metric (the trainer's monitor); a diverged trial reports it NaN
    cpus_per_trial: float
    feature_key: str  # the features behind features_ref are valid for trials with this key
    experiment: str  # the experiment folder (absolute; on a cluster, shared by every node)
    features_ref: Any = None  # ObjectRef of the shared vision features, or None
    cv: CvSpec | None = None  # --cv: each trial is fit_folds over these folds of its data

    @property
    def layout(self) -> ExperimentLayout:
        return ExperimentLayout(Path(self.experiment))

#: The last backbone this worker process loaded. Workers are reused between trials
#: (reuse_actors), and reloading CLIP from disk for every trial is wasted set-up; sharing is
#: safe because fit() copies the text encoder into each model and never alters the backbone.
_BACKBONE_CACHE: dict[tuple[str, bool], Backbone] = {}

#: The vision features this worker process fetched, by their ObjectRef's id. Copying them
#: out of the object store took ~4.5 ms per trial at the quick scale (a one-epoch trial
#: trains ~0.5 s); fit() only reads them, so the trials of one process can share them.
_FEATURES_CACHE: dict[str, dict[str, torch.Tensor]] = {}

def _cached_backbone(name: str, need_vision: bool) -> Backbone:
    key = (name, need_vision)
    if key not in _BACKBONE_CACHE:
        _BACKBONE_CACHE.clear()  # one backbone per process: never hold two CLIP copies
        _BACKBONE_CACHE[key] = load_backbone(name, need_vision=need_vision)
    return _BACKBONE_CACHE[key]


def _shared_features(ref: Any) -> dict[str, torch.Tensor]:
    """The features behind `ref`, fetched once per worker process (the driver started the
    trials only once the task computing them had finished)."""
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


def resolve_trial_config(trial_params: dict[str, Any], setup: TrialSetup) -> TrainConfig:
    """The complete TrainConfig of one trial: the plan's base with the sampled values (an
    ablation arm's switches and seed) applied once."""
    params = {k: v for k, v in trial_params.items() if k != TRIAL_ID}
    base = TrainConfig.from_dict(setup.base_config, source="base config")
    return setup.space.trial_config(base, params)


def _trial_folder(tid: str | None, trial_params: dict[str, Any], setup: TrialSetup) -> Path:
    """The trial's folder on the experiment storage, written directly: the storage is a
    filesystem every node mounts, so nothing has to be synced after each epoch. (Outside a
    search, e.g. a bare Tune run: Ray's trial directory.)"""
    if tid is not None:
        return setup.layout.trial_dir(trial_dirname(tid, trial_params), "trial config")
    return Path(tune.get_context().get_trial_dir())


def journal_checkpoint(setup: TrialSetup, tid: str | None, trial_dir: Path) -> str | None:
    """The checkpoint directory of `tid`'s last journaled epoch, or None.

    The journal lives on the experiment storage, which every node mounts; the driver wrote
    this trial's `trial` line before Ray started it. A trial that cannot see the journal
    runs on a node that does not share the storage: it fails at once, naming the fix,
    rather than training again from epoch 0 in a folder the driver never reads (a retry on
    such a node finds its folder empty). A trial folder without checkpoint folders has
    nothing to resume, whatever the journal says (it only names folders the trial
    published), so a fresh trial does not replay the journal."""
    if tid is None:
        return None
    layout = setup.layout
    if not layout.journal.is_file():  # first: a retry's empty folder must not hide this
        raise RuntimeError(
            f"trial {tid} cannot see the search journal {layout.journal} on node "
            f"{socket.gethostname()}: --storage must be a filesystem every node mounts at the "
            "same path (a retry here would silently train again from epoch 0)")
    if not any(trial_dir.glob(f"{CHECKPOINT_PREFIX}*")):
        return None
    trial = load_state(layout.root).trials.get(tid)
    if trial is None or trial.checkpoint is None:
        return None
    return str(layout.checkpoint_dir(trial.dirname, trial.checkpoint))


def train_trial(trial_params: dict[str, Any], *, data: DataBundle, setup: TrialSetup
                ) -> None:
    """Ray Tune function trainable (wrapped with tune.with_parameters by the driver).

    A full disk (ENOSPC, wherever it is raised) is the storage's fault, not the
    configuration's: the trial reports it instead of failing, so it is neither retried nor
    recorded as ERROR; the driver stops the search and --resume continues the trial from
    its last journaled epoch."""
    quiet_sigterm_exit()
    try:
        _train_trial(trial_params, data, setup)
    except Exception as exc:
        if not is_storage_full(exc):
            raise
        tune.report({STORAGE_FULL_KEY: clip_line(f"{exc} (on node {socket.gethostname()})"),
                     setup.metric: math.nan, "epoch": 0})


def _train_trial(trial_params: dict[str, Any], data: DataBundle, setup: TrialSetup) -> None:
    config = resolve_trial_config(trial_params, setup)
    if config.threads == 0:  # the trial's CPUs, recorded so a re-run uses them too
        config = config.replace(threads=max(1, int(setup.cpus_per_trial)))
    tid = trial_params.get(TRIAL_ID)
    trial_dir = _trial_folder(tid, trial_params, setup)
    trial_dir.mkdir(parents=True, exist_ok=True)
    config.to_yaml(trial_dir / TRAIN_CONFIG_FILE)

    # Shared features are valid only if this trial renders and encodes exactly like the base.
    shared = feature_key(config, data) == setup.feature_key
    features = None
    if shared and setup.features_ref is not None:
        features = _shared_features(setup.features_ref)

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
            if metrics.get(FIT_ENDS_KEY):
                # The last epoch is held back until final.json is written: ASHA stops a
                # trial at the report that reaches max_t, before fit() returns, and a
                # driver that journals this report may close the trial at a resume
                # without running it again.
                held.append((epoch, metrics, checkpoint_dir))
                return
            send(epoch, metrics, checkpoint_dir)

        backbone = _cached_backbone(config.backbone, config.use_vision and features is None)
        try:
            result: FitResult | FoldsResult
            if setup.cv is not None:  # one model per fold, the mean reported (timesclip.cv)
                result = fit_folds(config, cv_folds(config, data, setup.cv), report=report,
                                   checkpoint_dir=work / "ckpt", resume_from=resume_from,
                                   vision_features=features, backbone=backbone,
                                   tb_dir=trial_dir, hparams=trial_hparams(trial_params, setup))
            else:
                result = fit(config, data, report=report, checkpoint_dir=work / "ckpt",
                             resume_from=resume_from, vision_features=features,
                             backbone=backbone, evaluate_test=setup.kind == "ablation",
                             tb_dir=trial_dir, hparams=trial_hparams(trial_params, setup))
        except NonFiniteLossError as exc:
            tune.report({**{k: math.nan for k in (setup.metric, "val_loss")}, **last,
                         "epoch": exc.epoch, DIVERGED_KEY: True, "diverged_epoch": exc.epoch,
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


def prune_trial_folder(trial_dir: Path, keep_name: str | None) -> None:
    """After a trial ended: keep its newest checkpoints (always the one the journal names),
    and drop the working folders a killed run left (a trial closed at resume never runs
    again to remove them)."""
    for path in old_checkpoints(trial_dir):
        if path.name != keep_name:
            shutil.rmtree(path, ignore_errors=True)
    for path in [*trial_dir.glob(f"{WORK_PREFIX}*"), *trial_dir.glob(f".{CHECKPOINT_PREFIX}*")]:
        shutil.rmtree(path, ignore_errors=True)


def publish_checkpoint(source: Path, trial_dir: Path, epoch: int,
                       keep: int = KEEP_CHECKPOINTS) -> str:
    """Publish fit()'s checkpoint files of `epoch` as `trial_dir/checkpoint_<epoch>`; returns
    that folder's name (the result's `ckpt`, which the journal records).

    The files are hard-linked (sub-folders too: a cross-validated trial's fold_<k>/ and
    its folds.json): fit() replaces its files atomically (a new inode per save),
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
    for path in sorted(source.rglob("*")):
        if path.is_file() and not path.name.endswith(TMP_SUFFIX):
            target = tmp / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:  # a filesystem without hard links
                shutil.copy2(path, target)
    tmp.replace(dest)
    for old in old_checkpoints(trial_dir, keep):
        if old.name < name:  # never a newer folder (left by a run whose result was lost)
            shutil.rmtree(old, ignore_errors=True)
    return name


def trial_hparams(trial_params: dict[str, Any], setup: TrialSetup) -> dict[str, Any]:
    """What TensorBoard's HParams tab lists for a trial: its id and every parameter the
    search can sample, None where this trial did not sample it (a conditional parameter
    whose condition did not hold), so all trials describe the same columns."""
    if setup.kind == "ablation":
        names = ["ablation", "seed"]
    else:
        names = list(setup.space.sampled_names())
    return {TRIAL_ID: trial_params.get(TRIAL_ID),
            **{name: trial_params.get(name) for name in names}}


def _node_id() -> str:
    """Ray's id of the node this trial runs on (several nodes can share one IP)."""
    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # outside a Ray worker (unit tests): no node
        return ""


def _write_final(path: Path, result: FitResult | FoldsResult, config: TrainConfig,
                 trial_params: dict[str, Any]) -> None:
    """final.json marks a trial that ran to its end (ASHA-stopped trials never write it).
    A cross-validated trial's values are the means over its folds (`cv`, `fold_values`)."""
    payload: dict[str, Any] = {
        "epochs_run": result.epochs_run, "monitor": result.monitor,
        "best_epoch": result.best_epoch, "best_value": result.best_value,
        "stopped_early": result.stopped_early,
        "val": result.val, "test": result.test, "params": result.params,
        "train_seconds": result.train_seconds, "backbone": result.backbone,
        "ablation": trial_params.get("ablation"), "seed": config.seed,
    }
    if isinstance(result, FoldsResult):
        payload.update(cv=result.spec, held_out=result.held_out,
                       fold_values=result.fold_values)
    write_text(path, json.dumps(payload, indent=2) + "\n")
