"""`python -m tuner.search`: Ray Tune + Optuna (TPE) + ASHA over the TimesCLIP trainer.

Everything a user can get wrong (space file, data files, backbone weights, cluster address,
storage) is checked before Ray starts, and reported as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from timesclip.cli_args import DATA_FIELDS, OneLineErrorParser, add_data_flags
from timesclip.config import TrainConfig
from timesclip.errors import ConfigError, UserError

META_FILE = "search_meta.json"
BEST_TEST_FILE = "best_test.json"
REUSE_ACTORS = os.environ.get("TIMESCLIP_REUSE_ACTORS", "1") == "1"


def _print(msg: str) -> None:
    print(msg, flush=True)


def build_parser() -> argparse.ArgumentParser:
    from tuner.spaces import list_spaces

    p = OneLineErrorParser(
        prog="python -m tuner.search",
        description="Hyperparameter search for TimesCLIP: Ray Tune schedules trials, Optuna "
                    "(TPE) samples the space, ASHA stops weak trials early. Writes "
                    "STORAGE/NAME/report/ (trials.csv, trials.parquet, summary.md, "
                    "best_config.yaml; the ablation space adds ablation.csv/.md). Budget "
                    "and resource flags default to the values in the space file.")
    p.add_argument("--space", required=True, metavar="NAME|YAML",
                   help=f"bundled space ({', '.join(list_spaces())}) or a path to a YAML file")
    p.add_argument("--config", metavar="YAML",
                   help="base TrainConfig (e.g. a best_config.yaml) under the space's "
                        "parameters; the ablation space runs its arms on it")
    p.add_argument("--backbone", metavar="ID|PATH|tiny",
                   help="CLIP checkpoint for every trial (default: the space's base, else "
                        "openai/clip-vit-base-patch16); 'tiny' = small random towers for CPU")
    add_data_flags(p)
    b = p.add_argument_group("budget (defaults from the space file)")
    b.add_argument("--num-samples", type=int, metavar="N", help="number of trials")
    b.add_argument("--max-epochs", type=int, metavar="E", help="epochs of a trial that is "
                   "never stopped (ASHA max_t)")
    b.add_argument("--grace-period", type=int, metavar="G",
                   help="epochs every trial runs before ASHA may stop it")
    b.add_argument("--reduction-factor", type=float, metavar="R",
                   help="ASHA keeps the top 1/R of trials at each rung")
    b.add_argument("--max-concurrent", type=int, metavar="K",
                   help="trials running at once (Optuna suggests from K completed/running)")
    b.add_argument("--max-failures", type=int, default=0, metavar="N",
                   help="retries of a failed trial, resumed from its last checkpoint "
                        "(useful with preemptible nodes)")
    r = p.add_argument_group("resources and cluster")
    r.add_argument("--gpus-per-trial", type=float, metavar="F",
                   help="GPUs per trial; fractions share a GPU (0.25 = four trials per GPU)")
    r.add_argument("--cpus-per-trial", type=float, metavar="C", help="CPUs per trial")
    r.add_argument("--address", metavar="auto|HOST:PORT",
                   help="join an existing Ray cluster; omitted: start a local Ray instance "
                        "(dashboard on 127.0.0.1)")
    r.add_argument("--num-cpus", type=int, metavar="N",
                   help="CPUs of the local Ray instance (default: all)")
    o = p.add_argument_group("output")
    o.add_argument("--storage", default="runs", metavar="DIR|URI",
                   help="where experiments are stored (a directory, or a URI such as "
                        "s3://bucket/path that every node can reach)")
    o.add_argument("--name", metavar="NAME", help="experiment name (default: SPACE-<time>)")
    o.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the Optuna sampler and of every trial's training")
    o.add_argument("--seeds", metavar="S,S,...",
                   help="ablation space only: training seeds of every arm (default: the "
                        "space's seeds)")
    o.add_argument("--resume", action="store_true",
                   help="continue the interrupted experiment STORAGE/NAME")
    return p


# ---------------------------------------------------------------------------- pre-flight
def resolve_base_config(args: argparse.Namespace, space: Any) -> TrainConfig:
    """--config (or defaults) <- space base <- data flags / --backbone / --seed."""
    config = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    overrides: dict[str, Any] = dict(space.base)
    for name in DATA_FIELDS:
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    if args.backbone:
        overrides["backbone"] = args.backbone
    overrides["seed"] = args.seed
    return TrainConfig.from_dict({**config.to_dict(), **overrides}, source="search flags")


def resolve_budget(args: argparse.Namespace, space: Any) -> dict[str, Any]:
    bud = space.budget
    budget = {
        "num_samples": args.num_samples or bud.num_samples,
        "max_epochs": args.max_epochs or bud.max_epochs,
        "grace_period": args.grace_period or bud.grace_period,
        "reduction_factor": args.reduction_factor or bud.reduction_factor,
        "max_concurrent": args.max_concurrent or bud.max_concurrent,
        "metric": bud.metric, "mode": bud.mode,
    }
    if space.kind == "ablation":
        budget["grace_period"] = budget["max_epochs"]  # every arm to full budget
    for key in ("num_samples", "max_epochs", "grace_period", "max_concurrent"):
        if budget[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {budget[key]}")
    if budget["grace_period"] > budget["max_epochs"]:
        raise ConfigError(f"--grace-period ({budget['grace_period']}) must be <= --max-epochs "
                          f"({budget['max_epochs']})")
    if budget["reduction_factor"] <= 1:
        raise ConfigError(f"--reduction-factor must be > 1, got {budget['reduction_factor']}")
    return budget


def resolve_resources(args: argparse.Namespace, space: Any) -> dict[str, float]:
    res = {"cpus_per_trial": space.resources.cpus_per_trial
           if args.cpus_per_trial is None else args.cpus_per_trial,
           "gpus_per_trial": space.resources.gpus_per_trial
           if args.gpus_per_trial is None else args.gpus_per_trial}
    if res["cpus_per_trial"] <= 0:
        raise ConfigError(f"--cpus-per-trial must be > 0, got {res['cpus_per_trial']}")
    if res["gpus_per_trial"] < 0:
        raise ConfigError(f"--gpus-per-trial must be >= 0, got {res['gpus_per_trial']}")
    return res


def check_address(address: str | None) -> None:
    """An unreachable cluster is a user error, found before Ray is touched."""
    if address is None or address == "auto":
        if address == "auto" and not (os.environ.get("RAY_ADDRESS") or _local_cluster_file()):
            raise UserError("--address auto: no running Ray cluster found on this machine; "
                            "start one with `ray start --head` or omit --address for a local "
                            "instance")
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379) or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise UserError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); "
                        "check the head node address and port, or omit --address for a "
                        "local instance") from None


def _local_cluster_file() -> bool:
    """Whether `ray start` left its address file here (Ray's own path: honours RAY_TMPDIR)."""
    try:
        from ray._common.utils import get_ray_address_file

        return Path(get_ray_address_file(None)).exists()
    except ImportError:  # a Ray without that helper: let ray.init(address="auto") decide
        return True


def resolve_storage(storage: str) -> tuple[str, Path | None]:
    """(storage path for Ray, local directory or None for a remote URI)."""
    if "://" in storage and not storage.startswith("file://"):
        return storage, None
    local = Path(storage.removeprefix("file://")).expanduser().resolve()
    try:
        local.mkdir(parents=True, exist_ok=True)
        probe = local / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--storage {storage}: cannot write there ({exc.strerror or exc}); "
                        "pass a writable directory") from None
    return str(local), local


def fit_local_resources(resources: dict[str, float],
                        available: dict[str, float]) -> dict[str, float]:
    """On a local instance, never ask for more than the machine has: a trial that asks for a
    GPU on a machine without one would wait forever. (A cluster may still grow, so requests
    to a cluster are left as given.)"""
    out = dict(resources)
    gpus, cpus = available.get("GPU", 0.0), available.get("CPU", 1.0)
    if out["gpus_per_trial"] > 0 and gpus == 0:
        _print(f"no GPU on this machine: trials run on the CPU (gpus_per_trial "
               f"{out['gpus_per_trial']:g} -> 0)")
        out["gpus_per_trial"] = 0.0
    elif out["gpus_per_trial"] > gpus:
        _print(f"gpus_per_trial {out['gpus_per_trial']:g} > {gpus:g} GPUs here: using {gpus:g}")
        out["gpus_per_trial"] = gpus
    if out["cpus_per_trial"] > cpus:
        _print(f"cpus_per_trial {out['cpus_per_trial']:g} > {cpus:g} CPUs here: using {cpus:g}")
        out["cpus_per_trial"] = cpus
    return out


def versions() -> dict[str, str]:
    import optuna
    import ray
    import torch
    import transformers

    import timesclip

    return {"timesclip": timesclip.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "ray": ray.__version__,
            "optuna": optuna.__version__, "python": sys.version.split()[0]}


# ---------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> int:
    from timesclip.data import load_bundle
    from timesclip.model import check_backbone
    from tuner.spaces import load_space

    space = load_space(args.space)
    if args.seeds:
        if space.kind != "ablation":
            raise UserError("--seeds applies to an ablation space; a search varies --seed")
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}"
                            ) from None
        space = dataclasses.replace(space, seeds=seeds, budget=dataclasses.replace(
            space.budget, num_samples=len(space.arms) * len(seeds)))
    base = resolve_base_config(args, space)
    budget = resolve_budget(args, space)
    resources = resolve_resources(args, space)
    storage_path, local_storage = resolve_storage(args.storage)
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    exp_dir = local_storage / name if local_storage is not None else None
    if exp_dir is not None:
        if args.resume and not (exp_dir / META_FILE).exists():
            raise UserError(f"--resume: {exp_dir} is not an experiment of this tool; check "
                            "--storage and --name")
        if not args.resume and exp_dir.exists() and any(exp_dir.iterdir()):
            raise UserError(f"experiment {exp_dir} already exists; pass --resume to continue "
                            "it or choose another --name")
    data = load_bundle(base, args.data)
    check_backbone(base.backbone)
    check_address(args.address)
    if args.address and local_storage is not None:
        _print(f"note: --storage {local_storage} must be a filesystem every node mounts at "
               "the same path (or use s3://...), or checkpoints stay on the workers' disks")
    kind_line = (f"{len(space.arms)} arms x {len(space.seeds)} seeds, {budget['max_epochs']} "
                 "epochs each (no early stopping by ASHA)" if space.kind == "ablation" else
                 f"{budget['num_samples']} trials, up to {budget['max_epochs']} epochs, ASHA "
                 f"grace {budget['grace_period']} / factor {budget['reduction_factor']:g}")
    _print(f"experiment {name} -> {exp_dir or storage_path.rstrip('/') + '/' + name}")
    _print(f"space {space.name} ({space.kind}): {kind_line}")
    _print(f"data: {data.description}; train {len(data.train)}, val {len(data.val)}, "
           f"test {len(data.test)}")
    toy = " (random toy towers: numbers say nothing about pretrained CLIP)"
    _print(f"backbone: {base.backbone}{toy if base.backbone == 'tiny' else ''}")

    import ray

    ray_start = time.perf_counter()
    _init_ray(args)
    _print(f"ray: ready in {time.perf_counter() - ray_start:.1f}s")
    if not args.address:
        resources = fit_local_resources(resources, ray.cluster_resources())
    try:
        return _search(args, space, base, budget, resources, data, storage_path, exp_dir, name)
    finally:
        ray.shutdown()


def _init_ray(args: argparse.Namespace) -> None:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Checkpointing every epoch is intended (resume + ASHA); silence the "snapshotting too
    # often" advice it triggers on short CPU epochs.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if args.address:
        try:
            ray.init(address=args.address, log_to_driver=True)
        except (ConnectionError, RuntimeError) as exc:
            raise UserError(f"cannot join the Ray cluster at {args.address}: "
                            f"{str(exc).splitlines()[0]}") from None
        _print(f"ray: joined cluster {args.address}; resources {ray.cluster_resources()}")
        return
    context = ray.init(num_cpus=args.num_cpus, include_dashboard=True,
                       dashboard_host="127.0.0.1", log_to_driver=True,
                       configure_logging=True, logging_level="warning")
    url = getattr(context, "dashboard_url", None)
    _print(f"ray: local instance, dashboard at http://{url}" if url else
           "ray: local instance (dashboard not available: install ray[default])")


def _search(args: argparse.Namespace, space: Any, base: TrainConfig, budget: dict[str, Any],
            resources: dict[str, float], data: Any, storage_path: str, exp_dir: Path | None,
            name: str) -> int:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from timesclip.train import feature_key
    from tuner.progress import TrialProgress
    from tuner.trainable import train_trial

    if not args.resume:
        meta = {
            "name": name, "space": space.name, "space_path": str(space.path), "kind": space.kind,
            "metric": budget["metric"], "mode": budget["mode"], "backbone": base.backbone,
            "data": {"paths": [str(Path(p).resolve()) for p in args.data] if args.data else None,
                     "description": data.description, "fingerprint": data.fingerprint,
                     "synthetic": data.synthetic},
            "base_config": base.to_dict(), "sampled_names": space.sampled_names(),
            "budget": {k: budget[k] for k in ("num_samples", "max_epochs", "grace_period",
                                              "reduction_factor", "max_concurrent")},
            "resources": resources, "versions": versions(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if space.kind == "ablation":
            meta["sampled_names"] = ["ablation", "seed"]
        if exp_dir is not None:
            exp_dir.mkdir(parents=True, exist_ok=True)
            _write_json(exp_dir / META_FILE, meta)
        else:
            _write_remote_json(f"{storage_path.rstrip('/')}/{name}/{META_FILE}", meta)

    features = _shared_features(base, data, resources)
    setup = {"kind": space.kind, "space": space, "base_config": base.to_dict(),
             "max_epochs": budget["max_epochs"], "cpus_per_trial": resources["cpus_per_trial"],
             "feature_key": feature_key(base, data)}
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data, features=features, setup=setup),
        {"cpu": resources["cpus_per_trial"], "gpu": resources["gpus_per_trial"]})
    run_config = tune.RunConfig(
        name=name, storage_path=storage_path, verbose=0,
        failure_config=tune.FailureConfig(max_failures=args.max_failures),
        # Keep 3, not 1: after a crash the experiment snapshot may name a checkpoint one or
        # two epochs older than the newest, and --resume restores from that one.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
        # Trials write train_config.yaml, final.json and tb/ into their trial directory; on a
        # multi-node cluster only artifact syncing brings those from the worker to storage.
        sync_config=tune.SyncConfig(sync_artifacts=True),
        callbacks=[TrialProgress(budget["metric"], budget["max_epochs"])])

    started = time.perf_counter()
    if args.resume:
        path = str(exp_dir) if exp_dir is not None else f"{storage_path.rstrip('/')}/{name}"
        _print(f"resuming {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False)
    elif space.kind == "ablation":
        tuner = tune.Tuner(
            trainable,
            param_space={"ablation": tune.grid_search(list(space.arms)),
                         "seed": tune.grid_search(list(space.seeds))},
            tune_config=tune.TuneConfig(metric=budget["metric"], mode=budget["mode"],
                                        scheduler=FIFOScheduler(),
                                        max_concurrent_trials=budget["max_concurrent"],
                                        reuse_actors=REUSE_ACTORS),
            run_config=run_config)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=budget["metric"], mode=budget["mode"],
                search_alg=_searcher(space, budget, args.seed, exp_dir, name),
                scheduler=ASHAScheduler(time_attr="epoch", max_t=budget["max_epochs"],
                                        grace_period=budget["grace_period"],
                                        reduction_factor=budget["reduction_factor"]),
                num_samples=budget["num_samples"], reuse_actors=REUSE_ACTORS),
            run_config=run_config)
    grid = tuner.fit()
    _print(f"search finished in {time.perf_counter() - started:.1f}s: {len(grid)} trials, "
           f"{grid.num_errors} errored")

    if exp_dir is None:
        _print("remote storage: copy STORAGE/NAME to local disk, then rebuild the report "
               "with `python -m tuner.results <local copy>`")
        return 0
    if space.kind != "ablation":
        _evaluate_best(grid, budget, data, exp_dir)
    from tuner.results import build_report

    build_report(exp_dir, data_bundle=data, echo=_print)
    _print(f"tensorboard: tensorboard --logdir {exp_dir}")
    return 0


# reuse_actors=True (both Tuner calls): trials have equal resources, so a finished trial's
# worker process runs the next one instead of a fresh process re-importing torch and
# transformers (measured: the quick search's tuner.fit went from 23.5 s to 10.2 s).


def _searcher(space: Any, budget: dict[str, Any], seed: int, exp_dir: Path | None, name: str):
    """TPE (seeded, define-by-run) behind a ConcurrencyLimiter.

    The Optuna study lives in STORAGE/NAME/optuna.db so what Optuna recorded (including
    trials ASHA stopped, told with their last value) can be inspected after the search.
    """
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    storage = None
    if exp_dir is not None:
        storage = optuna.storages.RDBStorage(f"sqlite:///{exp_dir / 'optuna.db'}")
    class ResumableOptunaSearch(OptunaSearch):
        """After an interrupted run the sqlite study can be ahead of Ray's searcher snapshot,
        so a re-run trial reports to an Optuna trial that is already finished. Optuna refuses
        that update; the search must go on (the re-run's final value is told at the end)."""

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            try:
                super().on_trial_result(trial_id, result)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass

    searcher = ResumableOptunaSearch(space=space.define_by_run, metric=budget["metric"],
                            mode=budget["mode"], sampler=optuna.samplers.TPESampler(seed=seed),
                            study_name=name, storage=storage)
    return ConcurrencyLimiter(searcher, max_concurrent=budget["max_concurrent"])


def _shared_features(base: TrainConfig, data: Any, resources: dict[str, float]):
    """Render + encode the data set once, in a Ray task that gets a GPU when trials do."""
    import ray

    if not base.use_vision:
        return None
    from timesclip.train import compute_features

    started = time.perf_counter()
    gpus = min(1.0, resources["gpus_per_trial"]) if resources["gpus_per_trial"] > 0 else 0
    task = ray.remote(num_cpus=resources["cpus_per_trial"], num_gpus=gpus)(
        lambda cfg, bundle: compute_features(cfg, bundle))
    features = ray.get(task.remote(base, data))
    n = sum(len(getattr(data, s)) for s in ("train", "val", "test"))
    _print(f"vision features: {n} samples x {len(data.bands)} bands encoded once in "
           f"{time.perf_counter() - started:.1f}s and shared by all trials")
    return features


def _evaluate_best(grid: Any, budget: dict[str, Any], data: Any, exp_dir: Path) -> None:
    """Score the exported configuration on the test split, once (selection used val only)."""
    from timesclip.train import evaluate_arrays, load_for_inference

    try:
        best = grid.get_best_result(metric=budget["metric"], mode=budget["mode"], scope="all")
    except RuntimeError:
        _print("no trial produced a finite metric: nothing to evaluate")
        return
    if best.checkpoint is None:
        return
    with best.checkpoint.as_directory() as ckdir:
        model, config, scaler, _, backbone = load_for_inference(ckdir, device="cpu")
        test = evaluate_arrays(model, config, scaler, backbone, data.test.x_raw, data.test.y_raw)
    trial_id = Path(best.path).name
    value = float(best.metrics_dataframe[budget["metric"]].agg(
        "min" if budget["mode"] == "min" else "max"))
    _write_json(exp_dir / BEST_TEST_FILE, {"trial_id": best.metrics.get("trial_id", trial_id),
                                           budget["metric"]: value, "test": test})
    _print(f"best trial {best.metrics.get('trial_id', trial_id)}: {budget['metric']} "
           f"{value:.4f}; test (evaluated once) RMSE {test['rmse']:.3f}, R2 {test['r2']:+.3f}")


def _write_remote_json(uri: str, payload: dict[str, Any]) -> None:
    """search_meta.json next to Ray's files in remote storage (s3://, gs://, ...), so that
    `python -m tuner.results` can rebuild the report from a local copy."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write((json.dumps(payload, indent=2, default=str) + "\n").encode())


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: continue with the same --storage/--name and --resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
