"""SearchPlan: everything one driver run will do, built once from the space file, the flags
and `--config`, with every pre-flight check, before Ray starts.

What a user can get wrong (space file, data files, backbone weights, cluster address,
storage, a budget or resource value) is found here and reported as one line (a
`UserError`, exit code 2). A budget or resource value is checked by the same rule whether
it came from the space file or from a flag (`tuner.spaces.check_budget` /
`check_resources`); the error names where it came from.

The plan is frozen: the driver, the trainable set-up and search_meta.json all read the same
values, and nothing merges the base configuration a second time. The engine never sees
argparse: `make_plan` is the only place that reads the parsed flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from timesclip.cli_args import DATA_FIELDS
from timesclip.config import TrainConfig
from timesclip.data import Bundle, load_bundle
from timesclip.data.folds import CvSpec, Folds, cv_folds, parse_cv
from timesclip.errors import UserError
from timesclip.feature_cache import default_cache_dir
from timesclip.metrics import TASK_EPOCH_METRICS
from timesclip.model import check_backbone
from tuner.cluster import check_address
from tuner.journal import load_state
from tuner.layout import ExperimentLayout
from tuner.lock import DriverLock
from tuner.spaces import Budget, Resources, SearchSpace, check_budget, check_resources, load_space

#: Retries of an infrastructure failure: one lost node kills every trial on it once, and a
#: retried trial may land on a second failing node before the cluster settles.
DEFAULT_MAX_FAILURES = 2
#: Budget keys a flag of the same name (kebab-case) can set.
BUDGET_FLAGS = ("num_samples", "max_epochs", "grace_period", "reduction_factor",
                "max_concurrent")
RESOURCE_FLAGS = ("cpus_per_trial", "gpus_per_trial")
#: Budget flags that mean nothing for an ablation grid (every arm x seed to max_epochs).
_NOT_FOR_ABLATION = ("num_samples", "grace_period", "reduction_factor")
#: What must not change between the first run and a --resume of an experiment.
RESUME_KEYS = ("space", "kind", "metric", "mode", "backbone", "base_config", "budget",
               "searcher", "scheduler", "seed", "sampled_names", "cv")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class SearchPlan:
    """One validated search: what runs, where, with which budget and resources."""

    space: SearchSpace
    #: the complete base TrainConfig of every trial: --config <- the space's `base:` <- the
    #: data flags, --backbone and --seed; epochs = budget.max_epochs, monitor = the metric
    base: TrainConfig
    budget: Budget
    resources: Resources  # as requested (a local instance may have fewer; see the driver)
    searcher: str  # tpe | random | grid (the ablation space)
    scheduler: str  # asha | fifo
    layout: ExperimentLayout
    name: str
    data: Bundle
    data_paths: tuple[str, ...] | None
    resume: bool
    address: str | None
    num_cpus: int | None
    dashboard: bool  # the private local instance's Ray dashboard (--no-dashboard: off)
    max_failures: int
    feature_cache: Path | None  # None: --no-feature-cache
    argv: tuple[str, ...]
    #: the Optuna study's name: the experiment's name when it was started (a copied and
    #: renamed experiment folder keeps its study)
    study_name: str = ""
    #: --cv: each trial trains one model per fold and reports the mean (None: the single
    #: validation split); `folds` are the folds it cut, checked before Ray starts
    cv: CvSpec | None = None
    folds: Folds | None = None

    @property
    def metric(self) -> str:
        return self.budget.metric

    @property
    def mode(self) -> str:
        return self.budget.mode

    @property
    def kind(self) -> str:
        return self.space.kind

    def resume_command(self) -> str:
        """The command that continues this experiment: the same flags, the name, --resume."""
        return resume_command(self.argv, self.name)

    def describe(self) -> list[str]:
        """The lines a driver prints before it starts."""
        b = self.budget
        if self.kind == "ablation":
            what = (f"{len(self.space.arms)} arms x {len(self.space.seeds)} seeds, "
                    f"{b.max_epochs} epochs each (no early stopping by ASHA)")
        else:
            sampler = (f"TPE ({b.startup_trials} random start-up trial(s), then its model)"
                       if self.searcher == "tpe" else self.searcher.upper())
            what = (f"{b.num_samples} trials, up to {b.max_epochs} epochs, {sampler} + " + (
                        f"ASHA grace {b.grace_period} / factor {b.reduction_factor:g}"
                        if self.scheduler == "asha" else "FIFO"))
        toy = " (random toy towers: numbers say nothing about pretrained CLIP)"
        d = self.data
        lines = [f"experiment {self.name} -> {self.layout.root}",
                 f"space {self.space.name} ({self.kind}): {what}",
                 f"data: {d.description}; train {len(d.train)}, val {len(d.val)}, "
                 f"test {len(d.test)}",
                 f"backbone: {self.base.backbone}"
                 f"{toy if self.base.backbone == 'tiny' else ''}"]
        if self.folds is not None:
            pool = len(d.train) + len(d.val)
            lines.append(f"selection: --cv {self.cv}, {self.metric} is the mean over "
                         f"{len(self.folds)} folds of the {pool} training rows ("
                         + "; ".join(self.folds.held_out) + " held out in turn); the "
                         "selected configuration is retrained on all of them and scored on "
                         "test once")
        return lines

    def meta(self) -> dict[str, Any]:
        """search_meta.json: what this experiment is (read by --resume and tuner.results)."""
        d = self.data
        budget = dataclasses.asdict(self.budget)
        meta = {
            "name": self.name, "space": self.space.name, "space_path": str(self.space.path),
            "kind": self.kind, "task": self.base.task, "metric": self.metric,
            "mode": self.mode,
            "backbone": self.base.backbone,
            "data": {"paths": [str(Path(p).resolve()) for p in self.data_paths]
                     if self.data_paths else None,
                     "description": d.description, "fingerprint": d.fingerprint,
                     "synthetic": d.synthetic, "bands": list(d.bands),
                     "years": sorted({int(y) for s in ("train", "val", "test")
                                      for y in getattr(getattr(d, s), "years", ())})},
            "base_config": self.base.to_dict(),
            "sampled_names": (["ablation", "seed"] if self.kind == "ablation"
                              else self.space.sampled_names()),
            "budget": {k: budget[k] for k in ("num_samples", "max_epochs", "grace_period",
                                              "reduction_factor", "max_concurrent",
                                              "startup_trials", "constant_liar")},
            "searcher": self.searcher, "scheduler": self.scheduler,
            "cv": self.cv,
            "folds": None if self.folds is None else list(self.folds.held_out),
            "seed": self.base.seed, "resources": dataclasses.asdict(self.resources),
            "versions": versions(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if self.kind == "ablation":
            meta["grid"] = self.space.ablation_grid()
        return meta


# ----------------------------------------------------------------------------- building
def make_plan(args: argparse.Namespace, argv: Sequence[str],
              echo: Callable[[str], None]) -> SearchPlan:
    """Every pre-flight check, in the order a user would fix them; raises UserError."""
    space = load_space(args.space)
    if args.seeds:
        space = _with_seeds(space, args.seeds)
    if space.kind == "ablation":
        if args.searcher != "tpe" or args.scheduler != "asha":
            raise UserError("--searcher/--scheduler do not apply to an ablation space (a "
                            "fixed grid, every arm to --max-epochs); drop them")
        for key in _NOT_FOR_ABLATION:
            if getattr(args, key) is not None:
                raise UserError(f"{_flag(key)} does not apply to an ablation space (every "
                                "arm x seed runs to --max-epochs); drop it or use --seeds")
    budget = _budget(space, args)
    if space.kind == "search" and args.searcher == "tpe" and \
            budget.startup_trials >= budget.num_samples:
        echo(f"note: startup_trials {budget.startup_trials} >= --num-samples "
             f"{budget.num_samples}: every trial is random start-up, TPE never models the "
             "results (lower startup_trials in the space, or raise --num-samples)")
    resources = _resources(space, args)
    base = _base_config(space, args, budget, echo)
    if args.address and args.num_cpus is not None:
        raise UserError("--num-cpus sizes the private local instance; with --address the "
                        "cluster's nodes decide: drop --num-cpus")
    if args.address and args.no_dashboard:
        raise UserError("--no-dashboard applies to the private local instance; with "
                        "--address the cluster's own settings decide: drop --no-dashboard")
    if args.max_failures < 0:
        raise UserError(f"--max-failures must be >= 0, got {args.max_failures}")
    storage = resolve_storage(args.storage)
    name = check_name(args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    layout = ExperimentLayout.at(storage / name)
    if layout.root.exists():  # a driver that runs it now: named, before anything else
        DriverLock.check_free(layout.lock)
    if args.resume and not layout.meta.exists():
        raise UserError(f"--resume: {layout.root} is not an experiment of this tool; check "
                        "--storage and --name")
    if not args.resume and layout.root.exists() and any(layout.root.iterdir()):
        raise UserError(f"experiment {layout.root} already exists; pass --resume to continue "
                        "it or choose another --name")
    if args.resume:  # a damaged journal stops the resume here, before anything is written
        load_state(layout.root)
    cv = _cv_spec(space, base, args.cv)
    data = load_bundle(base, args.data)
    folds = None if cv is None else cv_folds(base, data, cv)  # a data short of folds: here
    plan = SearchPlan(
        space=space, base=base, budget=budget, resources=resources,
        searcher="grid" if space.kind == "ablation" else args.searcher,
        scheduler="fifo" if space.kind == "ablation" else args.scheduler,
        layout=layout, name=name, data=data,
        data_paths=tuple(args.data) if args.data else None, resume=bool(args.resume),
        address=args.address, num_cpus=args.num_cpus, dashboard=not args.no_dashboard,
        max_failures=args.max_failures,
        feature_cache=None if args.no_feature_cache else (
            Path(args.feature_cache).expanduser() if args.feature_cache
            else default_cache_dir()),
        argv=tuple(argv), study_name=name, cv=cv, folds=folds)
    if plan.resume:
        stored = check_resume_meta(layout, plan.meta())
        plan = dataclasses.replace(plan, study_name=str(stored.get("name") or name))
    check_backbone(base.backbone)
    check_address(args.address)
    return plan


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _namer(flags: Mapping[str, Any], path: Path, section: str) -> Callable[[str], str]:
    """Names a budget/resources key in an error: the flag when the value came from one."""
    def where(key: str) -> str:
        return _flag(key) if key in flags else f"{path}: {section}.{key}"
    return where


def _budget(space: SearchSpace, args: argparse.Namespace) -> Budget:
    flags = {k: getattr(args, k) for k in BUDGET_FLAGS if getattr(args, k) is not None}
    raw = {**dataclasses.asdict(space.budget), **flags}
    grid = len(space.arms) * len(space.seeds)
    if space.kind == "ablation":  # every arm to the end: the grace period follows
        raw.pop("grace_period", None)
        raw["num_samples"] = grid
    budget = check_budget(raw, kind=space.kind, grid_size=grid,
                          where=_namer(flags, space.path, "budget")).resolved()
    return budget


def _resources(space: SearchSpace, args: argparse.Namespace) -> Resources:
    flags = {k: getattr(args, k) for k in RESOURCE_FLAGS if getattr(args, k) is not None}
    raw = {**dataclasses.asdict(space.resources), **flags}
    return check_resources(raw, where=_namer(flags, space.path, "resources"))


def _cv_spec(space: SearchSpace, base: TrainConfig, value: str | None) -> CvSpec | None:
    """--cv checked against the space and the task before any data is read (cutting the
    folds, after the data, finds a value the data cannot fill: more folds than training
    years, one training year)."""
    if value is None:
        return None
    spec = parse_cv(value)
    if space.kind == "ablation":
        raise UserError(f"--cv {spec} applies to a search: an ablation trains every arm to "
                        "--max-epochs and scores each on test, nothing is selected; drop --cv")
    if base.task != "yield":
        raise UserError(f"--cv {spec} is for the yield task: a forecasting file's validation "
                        "split holds thousands of windows, so selecting on it is not "
                        "small-sample noise (and its splits are contiguous in time); drop --cv")
    return spec


def _with_seeds(space: SearchSpace, text: str) -> SearchSpace:
    if space.kind != "ablation":
        raise UserError("--seeds applies to an ablation space; a search varies --seed")
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise UserError(f"--seeds must name at least one seed, got {text!r}")
    return dataclasses.replace(space, seeds=seeds)


def _base_config(space: SearchSpace, args: argparse.Namespace, budget: Budget,
                 echo: Callable[[str], None]) -> TrainConfig:
    """--config (or defaults) <- the space's base <- data flags / --backbone / --seed, with
    the epochs of the budget and the search metric as the trainer's monitor."""
    config = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    overrides: dict[str, Any] = dict(space.base)
    for name in DATA_FIELDS:
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    if args.backbone:
        overrides["backbone"] = args.backbone
    if args.seed is not None:
        overrides["seed"] = args.seed
    search = {"epochs": budget.max_epochs, "monitor": budget.metric}
    if args.config:  # say it when the search changes what the --config file holds
        for key, value in search.items():
            held = getattr(config, key)
            if held is not None and held != value:
                echo(f"note: {key} {held} of --config -> {value} (the search's "
                     f"{'--max-epochs' if key == 'epochs' else 'metric'})")
    task = overrides.get("task", config.task)
    if budget.metric not in TASK_EPOCH_METRICS[task]:
        raise UserError(f"{space.path}: budget.metric {budget.metric} is not reported by a "
                        f"{task} run (it reports "
                        f"{', '.join(m for m in TASK_EPOCH_METRICS[task] if m.startswith('val_'))}"
                        "): use a space for this task (e.g. --space forecast for --task "
                        "forecast) or set budget.metric")
    return TrainConfig.from_dict({**config.to_dict(), **overrides, **search},
                                 source="search flags")


def resolve_storage(storage: str) -> Path:
    """The local (or shared, mounted) directory that holds experiments.

    The journal needs appends that reach the disk (fsync) for crash consistency, which
    object stores do not offer: a bucket is used through a mount (s3fs, gcsfuse)."""
    if "://" in storage and not storage.startswith("file://"):
        raise UserError(f"--storage {storage}: object-store URIs are not supported (the "
                        "experiment journal needs a filesystem); pass a shared filesystem "
                        "path, or mount the bucket (e.g. s3fs, gcsfuse) and pass the mount")
    local = Path(storage.removeprefix("file://")).expanduser().resolve()
    try:
        local.mkdir(parents=True, exist_ok=True)
        probe = local / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--storage {storage}: cannot write there ({exc.strerror or exc}); "
                        "pass a writable directory") from None
    return local


def check_name(name: str) -> str:
    """An experiment name is one path component: it may never leave --storage."""
    if not _NAME.match(name) or name in (".", ".."):
        raise UserError(f"--name {name!r}: use one path component of letters, digits, '.', "
                        "'_' or '-' (no '/', no leading '.'), e.g. --name full-v1")
    return name


def check_resume_meta(layout: ExperimentLayout, meta: dict[str, Any]) -> dict[str, Any]:
    """--resume continues the experiment it was started as: same data, space, budget ...
    Returns the stored search_meta.json."""
    try:
        stored = json.loads(layout.meta.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--resume: {layout.meta} is unreadable ({exc}); the experiment "
                        "cannot be continued") from None
    old_fp = (stored.get("data") or {}).get("fingerprint")
    if old_fp != meta["data"]["fingerprint"]:
        raise UserError(f"--resume: the data differ from the experiment's (fingerprint "
                        f"{meta['data']['fingerprint']} now, {old_fp} stored); pass the same "
                        "--data and data flags")
    for key in RESUME_KEYS:
        if key in stored and stored[key] != meta[key]:
            detail = key
            if isinstance(stored[key], dict):
                diff = sorted(k for k in set(stored[key]) | set(meta[key])
                              if stored[key].get(k) != meta[key].get(k))
                detail = f"{key} ({', '.join(diff[:4])})"
            raise UserError(f"--resume: {detail} differs from the stored experiment; resume "
                            f"with the flags it was started with (see {layout.meta})")
    return stored


def resume_command(argv: Sequence[str], name: str) -> str:
    """The command that continues an experiment: the same flags, the name, --resume."""
    args = list(argv)
    if not any(a == "--name" or a.startswith("--name=") for a in args):
        args += ["--name", name]
    if "--resume" not in args:
        args.append("--resume")
    return "python -m tuner.search " + " ".join(shlex.quote(a) for a in args)


def versions() -> dict[str, str]:
    """The versions that produced an experiment (search_meta.json, best_config.yaml)."""
    import optuna
    import ray
    import torch
    import transformers

    import timesclip

    return {"timesclip": timesclip.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "ray": ray.__version__,
            "optuna": optuna.__version__, "python": sys.version.split()[0]}


__all__ = ["DEFAULT_MAX_FAILURES", "SearchPlan", "check_name", "check_resume_meta",
           "make_plan", "resolve_storage", "resume_command", "versions"]
