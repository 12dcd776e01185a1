"""`python -m tuner.search`: Ray Tune + Optuna (TPE) + ASHA over the TimesCLIP trainer.

Everything a user can get wrong (space file, data files, backbone weights, cluster address,
storage) is checked before Ray starts, and reported as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shlex
import signal
import socket
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from timesclip.atomic import write_text
from timesclip.cli_args import DATA_FIELDS, OneLineErrorParser, add_data_flags
from timesclip.config import TrainConfig
from timesclip.errors import ConfigError, UserError

META_FILE = "search_meta.json"
REUSE_ACTORS = os.environ.get("TIMESCLIP_REUSE_ACTORS", "1") == "1"
#: Retries of an infrastructure failure: one lost node kills every trial on it once, and a
#: retried trial may land on a second failing node before the cluster settles.
DEFAULT_MAX_FAILURES = 2
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


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
    b.add_argument("--max-failures", type=int, default=DEFAULT_MAX_FAILURES, metavar="N",
                   help="retries of a trial whose worker failed (a lost node, an OOM-killed "
                        "process), each from its last checkpoint (default "
                        f"{DEFAULT_MAX_FAILURES}); a diverged trial (non-finite loss) is "
                        "never retried")
    b.add_argument("--searcher", choices=("tpe", "random"), default="tpe",
                   help="Optuna sampler: tpe (TPESampler, default) or random "
                        "(RandomSampler); both seeded by --seed, same space")
    b.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                   help="asha (stop weak trials early, default) or fifo (every trial runs "
                        "to --max-epochs or its own early stopping)")
    r = p.add_argument_group("resources and cluster")
    r.add_argument("--gpus-per-trial", type=float, metavar="F",
                   help="GPUs per trial; fractions share a GPU (0.25 = four trials per GPU)")
    r.add_argument("--cpus-per-trial", type=float, metavar="C", help="CPUs per trial")
    r.add_argument("--address", metavar="auto|HOST:PORT",
                   help="join an existing Ray cluster; omitted: start a local Ray instance "
                        "(dashboard on 127.0.0.1)")
    r.add_argument("--num-cpus", type=int, metavar="N",
                   help="CPUs of the local Ray instance (default: all)")
    cache = r.add_mutually_exclusive_group()
    cache.add_argument("--feature-cache", metavar="DIR",
                       help="where the frozen vision features are kept between searches "
                            "and training runs (default: $XDG_CACHE_HOME/timesclip/features "
                            "or ~/.cache/timesclip/features); a second search on the same "
                            "data and backbone spends no ViT time")
    cache.add_argument("--no-feature-cache", action="store_true",
                       help="compute the vision features for this search, keep nothing")
    o = p.add_argument_group("output")
    o.add_argument("--storage", default="runs", metavar="DIR",
                   help="where experiments are stored (default: runs); on a cluster a "
                        "filesystem every node mounts at the same path")
    o.add_argument("--name", metavar="NAME", help="experiment name, one path component "
                   "(default: SPACE-<time>)")
    o.add_argument("--seed", type=int, metavar="S",
                   help="seed of the Optuna sampler and of every trial's training (default: "
                        "the seed of --config or the space's base, else TrainConfig's)")
    o.add_argument("--seeds", metavar="S,S,...",
                   help="ablation space only: training seeds of every arm (default: the "
                        "space's seeds)")
    o.add_argument("--resume", action="store_true",
                   help="continue the interrupted experiment STORAGE/NAME with the flags it "
                        "was started with: finished trials are kept, unfinished ones "
                        "continue from their last checkpoint, ASHA keeps its records")
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
    if args.seed is not None:
        overrides["seed"] = args.seed
    return TrainConfig.from_dict({**config.to_dict(), **overrides}, source="search flags")


def resolve_budget(args: argparse.Namespace, space: Any) -> dict[str, Any]:
    bud = space.budget

    if space.kind == "ablation":
        for flag in ("num_samples", "grace_period", "reduction_factor"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} does not apply to an ablation "
                                  "space (every arm x seed runs to --max-epochs); drop it or "
                                  "use --seeds")

    def pick(flag: Any, default: Any) -> Any:  # 0 is a value (an error below), not "unset"
        return default if flag is None else flag

    budget = {
        "num_samples": pick(args.num_samples, bud.num_samples),
        "max_epochs": pick(args.max_epochs, bud.max_epochs),
        "grace_period": pick(args.grace_period, bud.grace_period),
        "reduction_factor": pick(args.reduction_factor, bud.reduction_factor),
        "max_concurrent": pick(args.max_concurrent, bud.max_concurrent),
        "metric": bud.metric, "mode": bud.mode,
        "startup_trials": bud.startup_trials,
    }
    for key in ("num_samples", "max_epochs", "grace_period", "max_concurrent"):
        if budget[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be >= 1, got {budget[key]}")
    if space.kind == "ablation":
        budget["grace_period"] = budget["max_epochs"]  # every arm to full budget
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
    if not address.startswith("ray://"):
        check_cluster_token(target)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (C/C++ logging, which Python's sys.stderr cannot catch)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _token_available() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def check_cluster_token(address: str) -> None:
    """A cluster with token authentication (Ray's default since 2.5x) refuses a client
    without its token; Ray itself then retries for ~20 s and says only "Failed to connect".
    Ask the GCS once, up front, and name the real cause and the fix."""
    if "RAY_AUTH_MODE" not in os.environ and _token_available():
        # a token was provided (env or ~/.ray/auth_token): present it when connecting
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # a Ray without these: ray.init reports what it can
        return
    try:
        with _quiet_stderr():  # Ray's C++ client logs each refused attempt on fd 2
            GcsClient(address=address, cluster_id=None).internal_kv_get(
                b"timesclip-probe", None, timeout=5)
    except AuthenticationError:
        have = "the token this process presents is not the cluster's" if \
            os.environ.get("RAY_AUTH_MODE") == "token" else "this process has no token"
        raise UserError(
            f"the Ray cluster at {address} requires token authentication and {have}: copy "
            "the cluster's token (`ray get-auth-token` on the head node) into "
            "~/.ray/auth_token or set RAY_AUTH_TOKEN, then run again") from None
    except Exception:  # anything else (timeouts, versions): let ray.init report it
        return


def _local_cluster_file() -> bool:
    """Whether `ray start` left its address file here (Ray's own path: honours RAY_TMPDIR)."""
    try:
        from ray._common.utils import get_ray_address_file

        return Path(get_ray_address_file(None)).exists()
    except ImportError:  # a Ray without that helper: let ray.init(address="auto") decide
        return True


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


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    """An experiment name is one path component: it may never leave --storage."""
    if not _NAME.match(name) or name in (".", ".."):
        raise UserError(f"--name {name!r}: use one path component of letters, digits, '.', "
                        "'_' or '-' (no '/', no leading '.'), e.g. --name full-v1")
    return name


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


# ---------------------------------------------------------------------------- signals
class SearchInterrupted(Exception):
    """SIGINT/SIGTERM arrived outside the trial loop (pre-flight, features, report)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class GracefulStop:
    """SIGINT (Ctrl-C) and SIGTERM (what SLURM and Kubernetes send on preemption) stop the
    search cleanly: inside the trial loop the first signal asks Tune to stop every trial
    (each keeps the checkpoint of its last finished epoch) and the driver then saves its
    bookkeeping; outside it, the signal unwinds the driver at once. A second signal exits
    immediately, which is safe too: the journal is always consistent."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.in_loop = False
        self.ledger: Any = None
        self.received_at: float | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            print(f"\n{name} again: exiting now (the journal is consistent; --resume "
                  "continues)", file=sys.stderr, flush=True)
            os._exit(exit_code(signum))
        self.signum, self.received_at = signum, time.perf_counter()
        if self.in_loop and self.ledger is not None:
            self.ledger.interrupt_signal = signum
            print(f"\n{name} received: stopping the trials (each keeps its last finished "
                  "epoch) and saving the experiment; send it again to exit at once",
                  file=sys.stderr, flush=True)
            return
        raise SearchInterrupted(signum)


def exit_code(signum: int) -> int:
    return EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT


def resume_command(argv: Sequence[str], name: str) -> str:
    """The command that continues this experiment: the same flags, the name, --resume."""
    args = list(argv)
    if not any(a == "--name" or a.startswith("--name=") for a in args):
        args += ["--name", name]
    if "--resume" not in args:
        args.append("--resume")
    return "python -m tuner.search " + " ".join(shlex.quote(a) for a in args)


# ---------------------------------------------------------------------------- main
def run(args: argparse.Namespace, argv: Sequence[str], stop: GracefulStop) -> int:
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
    if space.kind == "ablation" and (args.searcher != "tpe" or args.scheduler != "asha"):
        raise UserError("--searcher/--scheduler do not apply to an ablation space (a fixed "
                        "grid, every arm to --max-epochs); drop them")
    base = resolve_base_config(args, space)
    budget = resolve_budget(args, space)
    resources = resolve_resources(args, space)
    if args.address and args.num_cpus is not None:
        raise UserError("--num-cpus sizes the private local instance; with --address the "
                        "cluster's nodes decide: drop --num-cpus")
    if args.max_failures < 0:
        raise UserError(f"--max-failures must be >= 0, got {args.max_failures}")
    storage = resolve_storage(args.storage)
    name = check_name(args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    exp_dir = storage / name
    if args.resume and not (exp_dir / META_FILE).exists():
        raise UserError(f"--resume: {exp_dir} is not an experiment of this tool; check "
                        "--storage and --name")
    if not args.resume and exp_dir.exists() and any(exp_dir.iterdir()):
        raise UserError(f"experiment {exp_dir} already exists; pass --resume to continue "
                        "it or choose another --name")
    data = load_bundle(base, args.data)
    meta = search_meta(args, space, base, budget, resources, data, name)
    if args.resume:
        check_resume_meta(exp_dir, meta)
    check_backbone(base.backbone)
    check_address(args.address)
    if args.address:
        _print(f"note: --storage {storage} must be a filesystem every node mounts at the "
               "same path, or checkpoints stay on the workers' disks")
    kind_line = (f"{len(space.arms)} arms x {len(space.seeds)} seeds, {budget['max_epochs']} "
                 "epochs each (no early stopping by ASHA)" if space.kind == "ablation" else
                 f"{budget['num_samples']} trials, up to {budget['max_epochs']} epochs, "
                 f"{args.searcher.upper()} + " + (
                     f"ASHA grace {budget['grace_period']} / factor "
                     f"{budget['reduction_factor']:g}" if args.scheduler == "asha" else "FIFO"))
    _print(f"experiment {name} -> {exp_dir}")
    _print(f"space {space.name} ({space.kind}): {kind_line}")
    _print(f"data: {data.description}; train {len(data.train)}, val {len(data.val)}, "
           f"test {len(data.test)}")
    toy = " (random toy towers: numbers say nothing about pretrained CLIP)"
    _print(f"backbone: {base.backbone}{toy if base.backbone == 'tiny' else ''}")

    if not args.resume:
        exp_dir.mkdir(parents=True, exist_ok=True)
        _write_json(exp_dir / META_FILE, meta)
    from tuner.runner import Experiment

    experiment = Experiment(args=args, argv=argv, space=space, base=base, budget=budget,
                            resources=resources, data=data, exp_dir=exp_dir, name=name,
                            stop=stop, echo=_print)
    return experiment.run()


def search_meta(args: argparse.Namespace, space: Any, base: TrainConfig,
                budget: dict[str, Any], resources: dict[str, float], data: Any,
                name: str) -> dict[str, Any]:
    """search_meta.json: what this experiment is (read by --resume and tuner.results)."""
    meta = {
        "name": name, "space": space.name, "space_path": str(space.path), "kind": space.kind,
        "metric": budget["metric"], "mode": budget["mode"], "backbone": base.backbone,
        "data": {"paths": [str(Path(p).resolve()) for p in args.data] if args.data else None,
                 "description": data.description, "fingerprint": data.fingerprint,
                 "synthetic": data.synthetic, "bands": list(data.bands),
                 "years": sorted({int(y) for s in ("train", "val", "test")
                                  for y in getattr(getattr(data, s), "years", ())})},
        "base_config": base.to_dict(),
        "sampled_names": (["ablation", "seed"] if space.kind == "ablation"
                          else space.sampled_names()),
        "budget": {k: budget[k] for k in ("num_samples", "max_epochs", "grace_period",
                                          "reduction_factor", "max_concurrent",
                                          "startup_trials")},
        "searcher": "grid" if space.kind == "ablation" else args.searcher,
        "scheduler": "fifo" if space.kind == "ablation" else args.scheduler,
        "seed": base.seed, "resources": resources, "versions": versions(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if space.kind == "ablation":
        meta["grid"] = space.ablation_grid()
    return meta


#: What must not change between the first run and a --resume of an experiment.
_RESUME_KEYS = ("space", "kind", "metric", "mode", "backbone", "base_config", "budget",
                "searcher", "scheduler", "seed", "sampled_names")


def check_resume_meta(exp_dir: Path, meta: dict[str, Any]) -> None:
    try:
        stored = json.loads((exp_dir / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--resume: {exp_dir / META_FILE} is unreadable ({exc}); the "
                        "experiment cannot be continued") from None
    old_fp = (stored.get("data") or {}).get("fingerprint")
    if old_fp != meta["data"]["fingerprint"]:
        raise UserError(f"--resume: the data differ from the experiment's (fingerprint "
                        f"{meta['data']['fingerprint']} now, {old_fp} stored); pass the same "
                        "--data and data flags")
    for key in _RESUME_KEYS:
        if key in stored and stored[key] != meta[key]:
            detail = key
            if isinstance(stored[key], dict):
                diff = sorted(k for k in set(stored[key]) | set(meta[key])
                              if stored[key].get(k) != meta[key].get(k))
                detail = f"{key} ({', '.join(diff[:4])})"
            raise UserError(f"--resume: {detail} differs from the stored experiment; resume "
                            f"with the flags it was started with (see {exp_dir / META_FILE})")


def private_local_instance_env() -> None:
    """Settings of the private local Ray instance, made before Ray is imported.

    - Every Ray process binds 127.0.0.1 instead of all interfaces (Ray's single-machine
      mode; read when Ray is imported): nothing of the instance is reachable from the
      network, not even the metrics endpoints that answer without a token.
    - Token authentication stays on (Ray's default for a new local instance), said
      explicitly so Ray does not warn on every run. The token is ~/.ray/auth_token.
    - RAY_ADDRESS is dropped: it must not make the search join somebody's cluster.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.pop("RAY_ADDRESS", None)


def _init_ray(args: argparse.Namespace) -> None:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Our journal replaces Ray's result.json/progress.csv/TensorBoard loggers, and our own
    # SIGINT/SIGTERM handling replaces Tune's (whose hint points at Tuner.restore).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # no Ray status tables: tuner.progress prints
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
    # No --address: always a new private instance, whatever RAY_ADDRESS or an address file
    # of another cluster on this machine says (see private_local_instance_env).
    os.environ.pop("RAY_ADDRESS", None)
    context = ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=True,
                       dashboard_host="127.0.0.1", log_to_driver=True,
                       configure_logging=True, logging_level="warning",
                       _system_config={"enable_metrics_collection": False})
    url = getattr(context, "dashboard_url", None)
    token = ("$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
             os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
    _print(f"ray: private local instance on 127.0.0.1, dashboard at http://{url} (it asks "
           f"for the token in {token})" if url else
           "ray: private local instance on 127.0.0.1 (dashboard not available: install "
           "ray[default])")


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not args.address:
        private_local_instance_env()
    stop = GracefulStop()
    stop.install()
    try:
        return run(args, argv, stop)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (SearchInterrupted, KeyboardInterrupt) as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        name = args.name or "<the name printed above>"
        print(f"interrupted by {signal.Signals(signum).name} before the trials started; "
              f"continue with: {resume_command(argv, name)}", file=sys.stderr)
        return exit_code(signum)
    finally:
        stop.restore()


if __name__ == "__main__":
    sys.exit(main())
