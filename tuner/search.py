"""`python -m tuner.search`: Ray Tune + Optuna (TPE) + ASHA over the TimesCLIP trainer.

The CLI only: parse the flags, build the plan (`tuner.plan`: every pre-flight check, before
Ray starts), hand it to one driver run (`tuner.driver`), and turn what happened into an
exit code: 0 finished, 2 bad input or configuration (one line), 130 / 143 interrupted by
SIGINT / SIGTERM (resumable with --resume), 1 an internal failure.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from timesclip.cli_args import OneLineErrorParser, add_data_flags
from timesclip.errors import UserError
from tuner import faults
from tuner.cluster import (
    GracefulStop,
    SearchInterrupted,
    cluster_client_env,
    exit_code,
    private_local_instance_env,
)
from tuner.layout import StorageFull
from tuner.plan import DEFAULT_MAX_FAILURES, make_plan, resume_command
from tuner.spaces import list_spaces


def _print(msg: str) -> None:
    print(msg, flush=True)


def build_parser() -> argparse.ArgumentParser:
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
    b.add_argument("--cv", metavar="K|years",
                   help="yield task: select by cross-validation instead of the one validation "
                        "split. Every non-test row is cut into K folds (whole training years "
                        "with --split year, rows with --split random; 'years' leaves one year "
                        "out at a time); a trial trains one model per fold, in lockstep, and "
                        "reports the mean over folds each epoch, which ASHA and the sampler "
                        "use. The selected configuration is retrained on all training rows "
                        "for its selected epochs and scored on test once. Costs K times the "
                        "compute of a trial; see benchmarks/RESULTS.md for what it buys")
    r = p.add_argument_group("resources and cluster")
    r.add_argument("--gpus-per-trial", type=float, metavar="F",
                   help="GPUs per trial; fractions share a GPU (0.25 = four trials per GPU)")
    r.add_argument("--cpus-per-trial", type=float, metavar="C", help="CPUs per trial")
    r.add_argument("--address", metavar="auto|HOST:PORT",
                   help="join an existing Ray cluster; omitted: start a local Ray instance "
                        "(dashboard on 127.0.0.1)")
    r.add_argument("--num-cpus", type=int, metavar="N",
                   help="CPUs of the local Ray instance (default: all)")
    r.add_argument("--no-dashboard", action="store_true",
                   help="start the local Ray instance without its dashboard (no web "
                        "frontend): a quicker start (with --address the cluster's own "
                        "settings decide)")
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


def run(args: argparse.Namespace, argv: Sequence[str], stop: GracefulStop) -> int:
    """Plan, then one driver run."""
    plan = make_plan(args, argv, _print)
    if plan.address:
        _print(f"note: --storage {plan.layout.root.parent} must be a filesystem every node "
               "mounts at the same path, or checkpoints stay on the workers' disks")
    for line in plan.describe():
        _print(line)
    # Ray is imported here, after the environment of its instance was set (main)
    from tuner.driver import Driver

    return Driver(plan, stop, _print).run()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.address:
        cluster_client_env()
    else:
        private_local_instance_env()
    stop = GracefulStop()
    stop.install()
    try:
        faults.arm_from_env()
        return run(args, argv, stop)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StorageFull as exc:  # outside the trial loop, e.g. search_meta.json
        print(f"error: the storage is full ({exc}): free space under --storage "
              f"{args.storage}, then run the same command again (with --resume if the "
              "experiment folder exists)", file=sys.stderr)
        return 1
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
