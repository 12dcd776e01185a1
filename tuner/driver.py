"""One run of the search driver, given a SearchPlan: resume what the journal says, run the
trials, finish.

`Driver.run()` is what `python -m tuner.search` does once its plan is checked:

1. replay `journal.jsonl` (empty for a new experiment) and close the trials whose end was
   decided but not yet recorded;
2. rebuild the Optuna study from the journal, restore ASHA's rung records and the sampler's
   random state, and hand the unfinished trials out again (each continues from the last
   checkpoint the journal names) before asking Optuna for new ones;
3. compute (or load) the frozen vision features, then run the trials with Ray Tune until
   `num_samples` trials have ended, or until SIGINT/SIGTERM;
4. when every trial has ended: score the selected configuration on the test split once
   (best_test.json, never recomputed) and write the report; when interrupted: write the
   report without a best configuration and print the command that continues.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter

from timesclip.atomic import write_text
from timesclip.features import feature_key
from tuner.cluster import (
    GracefulStop,
    SearchInterrupted,
    end_own_processes,
    exit_code,
    fit_local_resources,
    init_ray,
    trials_that_fit,
)
from tuner.evaluation import score_best_once
from tuner.features import FeatureTaskFailed, SharedFeatures
from tuner.journal import (
    ExperimentState,
    Journal,
    TrialState,
    clip_line,
    driver_fields,
    load_state,
)
from tuner.layout import (
    CHECKPOINT_PREFIX,
    LEGACY_OPTUNA_DB,
    OPTUNA_JOURNAL,
    TRIAL_ID,
    TRIALS_DIR,
    StorageFull,
    is_storage_full,
    trial_dirname,
)
from tuner.lock import DriverLock
from tuner.outcomes import Status, end_decided
from tuner.plan import SearchPlan
from tuner.report import build_report
from tuner.study import make_sampler, rebuild_study, restore_sampler_state, study_storage
from tuner.tracking import (
    FixedTrialsSearcher,
    InterruptStopper,
    JournalCallback,
    JournaledASHA,
    JournaledFIFO,
    JournaledOptunaSearch,
    Ledger,
    Replay,
    TrialProgress,
)
from tuner.trainable import KEEP_CHECKPOINTS, TrialSetup, prune_trial_folder, train_trial

Echo = Callable[[str], None]


class Driver:
    """One driver run of the experiment `plan` describes."""

    def __init__(self, plan: SearchPlan, stop: GracefulStop, echo: Echo) -> None:
        self.plan, self.stop, self.echo = plan, stop, echo
        self.layout = plan.layout
        self.features = SharedFeatures(plan.base, plan.data, plan.feature_cache, echo)
        self.started = time.perf_counter()
        self.concurrency = plan.budget.max_concurrent  # trials at once (see _concurrency)

    # ------------------------------------------------------------------------- driver
    def run(self) -> int:
        """One driver run, holding the experiment's lock from before its first write to
        its last (a second driver stops in one line; see tuner.lock)."""
        plan, layout = self.plan, self.layout
        layout.root.mkdir(parents=True, exist_ok=True)
        lock = DriverLock(layout.lock, self.echo)
        lock.acquire()
        try:
            if not plan.resume:
                try:
                    write_json(layout.meta, plan.meta())
                except OSError as exc:
                    if is_storage_full(exc):
                        raise StorageFull(exc.errno, f"writing {layout.meta}") from None
                    raise
            return self._journaled_run()
        finally:
            lock.release()

    def _journaled_run(self) -> int:
        plan, layout = self.plan, self.layout
        state = load_state(layout.root)
        journal = Journal(layout.journal, 1 + max(state.segments, default=0))
        ledger = Ledger(journal, state, metric=plan.metric, mode=plan.mode,
                        max_epochs=plan.budget.max_epochs)
        # (Ray pickles the ledger with its searcher; the pickled copy drops this hook)
        ledger.on_end = lambda trial: prune_trial_folder(layout.trial_dir(trial.dirname),
                                                         trial.checkpoint)
        ledger.record("driver_start", argv=list(plan.argv), resume=plan.resume,
                      **driver_fields())
        try:
            return self._run(ledger)
        except (SearchInterrupted, KeyboardInterrupt) as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            ledger.record("driver_end", how="interrupted", signal=signal.Signals(signum).name)
            raise
        except FeatureTaskFailed as exc:
            ledger.record("driver_end", how="failed", error=str(exc))
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 1
        except Exception as exc:
            if not is_storage_full(exc):
                raise
            ledger.storage_full = ledger.storage_full or str(exc)
            return self._storage_full(ledger)
        finally:
            journal.close()

    def _run(self, ledger: Ledger) -> int:
        state: ExperimentState = ledger.state
        if self.plan.resume:
            self._print_resume_state(state)
            for trial in state.unfinished:
                if end_decided(trial):
                    ledger.record_end(trial, error=False)
        replays = state.unfinished
        to_create = max(0, self.plan.budget.num_samples - len(state.trials))
        if self.plan.resume and not (replays or to_create) and self.plan.kind != "ablation":
            # every trial had ended (some closed just now): no Tuner runs, so the study is
            # brought in line with the journal here
            self._rebuild_study(state, [])
        if replays or to_create:
            signum = self._run_trials(ledger, replays, to_create)
            if ledger.storage_full is not None:
                return self._storage_full(ledger)
            if signum is not None:
                return self._interrupted(ledger, signum)
        return self._finished(ledger)

    def _rebuild_study(self, state: ExperimentState, replays: Sequence[TrialState]
                       ) -> dict[str, int]:
        """optuna.journal written anew from the journal; an earlier version's optuna.db is
        superseded by it and removed."""
        ids = rebuild_study(self.layout.optuna_journal, study_name=self.plan.study_name,
                            mode=self.plan.mode, metric=self.plan.metric, state=state,
                            replays=replays)
        legacy = self.layout.legacy_optuna_db
        if legacy.exists():
            legacy.unlink()
            self.echo(f"optuna: the study moved from {LEGACY_OPTUNA_DB} (an earlier version's "
                      f"SQLite file, removed) to {OPTUNA_JOURNAL}")
        return ids

    def _print_resume_state(self, state: ExperimentState) -> None:
        earlier = [s for s in state.segments.values() if s.seg != max(state.segments)]
        self.echo(f"resuming: {len(state.ended)} trial(s) ended and kept, "
                  f"{len(state.unfinished)} unfinished continue from their last checkpoint, "
                  f"{max(0, self.plan.budget.num_samples - len(state.trials))} not started "
                  f"yet; {len(state.rungs)} ASHA rung record(s) restored; {len(earlier)} "
                  f"earlier driver run(s), {sum(1 for s in earlier if s.how != 'finished')} "
                  "interrupted")

    # ------------------------------------------------------------------------- trials
    def _run_trials(self, ledger: Ledger, replays: list[TrialState], to_create: int
                    ) -> int | None:
        """Run this driver's trials; returns the signal number if interrupted."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # we print what matters
        plan = self.plan
        ray_start = time.perf_counter()
        try:
            init_ray(plan.address, plan.num_cpus, self.echo, dashboard=plan.dashboard)
            if not plan.address:  # a second Ctrl-C ends the private instance too
                self.stop.on_exit = end_own_processes
            # Ray's core installs its own SIGTERM handler (it aborts the process): take
            # SIGINT/SIGTERM back so a preemption stops the search cleanly.
            self.stop.install()
            self.echo(f"ray: ready in {time.perf_counter() - ray_start:.1f}s")
            resources = {"cpus_per_trial": plan.resources.cpus_per_trial,
                         "gpus_per_trial": plan.resources.gpus_per_trial}
            available = ray.cluster_resources()
            if not plan.address:
                resources = fit_local_resources(resources, available, self.echo)
            self.concurrency = self._concurrency(resources, available)
            self._record_resources(resources)
            features_ref = self.features.start(resources["cpus_per_trial"],
                                               resources["gpus_per_trial"])
            tuner = self._tuner(ledger, replays, to_create, features_ref, resources)

            def on_signal(signum: int) -> None:
                ledger.interrupt_signal = signum

            self.stop.on_signal = on_signal
            self.stop.in_loop = True
            # Ray's result table reader complains that result.json is missing: the journal
            # replaces it, and fit()'s return value is not used.
            analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
            level = analysis_log.level
            analysis_log.setLevel(logging.ERROR)
            try:
                tuner.fit()
            finally:
                self.stop.in_loop = False
                analysis_log.setLevel(level)
        finally:
            ray.shutdown()
            if not plan.address:  # nothing of the private instance outlives the search
                end_own_processes()
                self.stop.on_exit = None
        return ledger.interrupt_signal

    def _concurrency(self, resources: dict[str, float], available: dict[str, float]) -> int:
        """Trials proposed and run at once. Tune's ConcurrencyLimiter counts trials that are
        proposed, not running: with room for fewer, the rest wait as PENDING, and every one
        of them was proposed before any trial finished, so TPE learns from none (8 trials on
        2 CPUs: all 8 at once). A local instance proposes only what it can run; a cluster
        (which may grow) keeps its number, with a note."""
        wanted = self.plan.budget.max_concurrent
        fits = trials_that_fit(resources, available)
        if wanted <= fits:
            return wanted
        why = (f"this instance runs {fits} trial(s) at a time "
               f"({available.get('CPU', 0):g} CPUs, {resources['cpus_per_trial']:g} per trial"
               + (f"; {available.get('GPU', 0):g} GPUs, {resources['gpus_per_trial']:g} per "
                  "trial" if resources["gpus_per_trial"] > 0 else "") + ")")
        if self.plan.address:
            self.echo(f"note: max_concurrent {wanted} > what the cluster runs now: {why}; "
                      "the others wait, proposed before any trial finished")
            return wanted
        self.echo(f"max_concurrent {wanted} -> {fits}: {why}; more would be proposed before "
                  "any trial finished, and TPE would learn from none of them")
        return fits

    def _record_resources(self, resources: dict[str, float]) -> None:
        """search_meta.json names the resources and the concurrency the trials ran with
        (the request is kept beside them when the local machine made them smaller)."""
        meta = json.loads(self.layout.meta.read_text())
        updated = dict(meta)
        if meta.get("resources") != resources:
            updated.setdefault("resources_requested", meta.get("resources"))
            updated["resources"] = resources
        updated["max_concurrent_run"] = self.concurrency
        if updated != meta:
            write_json(self.layout.meta, updated)

    def _tuner(self, ledger: Ledger, replays: list[TrialState], to_create: int,
               features_ref: Any, resources: dict[str, float]) -> tune.Tuner:
        plan, state = self.plan, ledger.state
        budget = plan.budget
        setup = TrialSetup(kind=plan.kind, space=plan.space, base_config=plan.base.to_dict(),
                           metric=plan.metric, cpus_per_trial=resources["cpus_per_trial"],
                           feature_key=feature_key(plan.base, plan.data),
                           experiment=str(self.layout.root), features_ref=features_ref,
                           cv=plan.cv)
        if plan.kind == "ablation":
            done = [{"ablation": t.params.get("ablation"), "seed": t.params.get("seed")}
                    for t in state.trials.values()]
            pending = [g for g in plan.space.ablation_grid() if g not in done]
            searcher: Any = FixedTrialsSearcher(
                ledger=ledger, pending=pending, replays=[Replay(t) for t in replays],
                dirname=trial_dirname, metric=plan.metric, mode=plan.mode)
            scheduler: Any = JournaledFIFO(ledger)
        else:
            sampler = make_sampler(plan.searcher, plan.base.seed,
                                   startup_trials=budget.startup_trials,
                                   constant_liar=budget.constant_liar)
            ids: dict[str, int] = {}
            if plan.resume:
                ids = self._rebuild_study(state, replays)
                if restore_sampler_state(sampler, state.sampler_state):
                    self.echo("optuna: study rebuilt from the journal; sampler continues its "
                              "random stream")
            searcher = JournaledOptunaSearch(
                ledger=ledger, replays=[Replay(t, ids.get(t.tid)) for t in replays],
                to_create=to_create, dirname=trial_dirname, space=plan.space.define_by_run,
                startup_trials=budget.startup_trials if plan.searcher == "tpe" else None,
                metric=plan.metric, mode=plan.mode, sampler=sampler, study_name=plan.study_name,
                storage=study_storage(self.layout.optuna_journal))
            scheduler = self._scheduler(ledger)
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, data=plan.data, setup=setup),
            {"cpu": resources["cpus_per_trial"], "gpu": resources["gpus_per_trial"]})
        run_config = tune.RunConfig(
            name=f"{plan.name}/{TRIALS_DIR}", storage_path=str(self.layout.root.parent),
            verbose=0, stop=InterruptStopper(ledger),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            # Trials write train_config.yaml, final.json, TensorBoard events and their
            # checkpoints straight into their folder on the (shared) storage: no artifact
            # syncing and no checkpoint copying per epoch (see publish_checkpoint).
            sync_config=tune.SyncConfig(sync_artifacts=False),
            callbacks=[TrialProgress(ledger, budget.max_epochs), JournalCallback(ledger)])
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=self.concurrency),
                scheduler=scheduler, num_samples=len(replays) + to_create,
                reuse_actors=True, trial_dirname_creator=_dirname_of),
            run_config=run_config)

    def _scheduler(self, ledger: Ledger) -> Any:
        if self.plan.scheduler == "fifo":
            return JournaledFIFO(ledger)
        budget = self.plan.budget
        scheduler = JournaledASHA(
            ledger, time_attr="epoch", metric=self.plan.metric, mode=self.plan.mode,
            max_t=budget.max_epochs, grace_period=budget.grace_period,
            reduction_factor=budget.reduction_factor, state_file=self.layout.asha_state)
        restored = scheduler.restore(ledger.state.rungs)
        scheduler.snapshot(self.layout.asha_restored(ledger.journal.segment))
        scheduler.snapshot()
        if self.plan.resume:
            self.echo(f"asha: {restored} rung record(s) restored")
        return scheduler

    # ------------------------------------------------------------------------- endings
    def _interrupted(self, ledger: Ledger, signum: int) -> int:
        name = signal.Signals(signum).name
        ledger.record("driver_end", how="interrupted", signal=name)
        state = ledger.state
        self._report()
        took = time.perf_counter() - (self.stop.received_at or time.perf_counter())
        self.echo(f"interrupted by {name}: {len(state.ended)} of "
                  f"{self.plan.budget.num_samples} trials finished; the unfinished continue "
                  f"from their last checkpoint (stopped in {took:.1f}s). No best "
                  "configuration was exported and the test split was not touched.")
        self.echo(f"continue with: {self.plan.resume_command()}")
        return exit_code(signum)

    def _storage_full(self, ledger: Ledger) -> int:
        """The storage is full: one line naming --storage and about how much it needs, exit
        1. The trials it interrupted stay unfinished (never ERROR): --resume continues them
        once there is space. No report is written (there is no room for one)."""
        with contextlib.suppress(OSError):
            ledger.record("driver_end", how="failed", error="storage full")
        print(f"error: {storage_advice(self, ledger.storage_full)}; then "
              f"continue with: {self.plan.resume_command()}", file=sys.stderr, flush=True)
        return 1

    def _finished(self, ledger: Ledger) -> int:
        state = ledger.state
        total = self.plan.budget.num_samples
        unfinished = state.unfinished
        if unfinished or len(state.trials) < total:
            ledger.record("driver_end", how="incomplete")
            self._report()
            self.echo(f"error: the search ended with {len(unfinished)} unfinished and "
                      f"{total - len(state.trials)} never created trial(s); run it again "
                      "with --resume")
            return 1
        counts = {s: sum(1 for t in state.trials.values() if t.status == s)
                  for s in (Status.TERMINATED, Status.DIVERGED, Status.ERROR)}
        earlier = sum(1 for s in state.segments.values()
                      if s.seg != ledger.journal.segment and s.how != "finished")
        self.echo(f"search finished: {total} trials ({counts[Status.TERMINATED]} ended "
                  f"normally, {counts[Status.DIVERGED]} diverged, {counts[Status.ERROR]} "
                  f"failed); this run {time.perf_counter() - self.started:.1f}s, experiment "
                  f"{state.wall_seconds:.1f}s over {len(state.segments)} driver run(s)"
                  + (f", {earlier} of them interrupted" if earlier else ""))
        if self.plan.kind != "ablation":
            if self.features.features is None and self.plan.base.use_vision:
                self.features.cached()  # a resume with nothing left to train
            score_best_once(self.layout, state, metric=self.plan.metric, mode=self.plan.mode,
                            data=self.plan.data,
                            base_feature_key=feature_key(self.plan.base, self.plan.data),
                            features=self.features.features, echo=self.echo,
                            cv=self.plan.cv)
        ledger.record("driver_end", how="finished")
        self._report()
        self.echo(f"tensorboard: tensorboard --logdir {self.layout.trials}")
        return 0

    def _report(self) -> None:
        build_report(self.layout.root, data_bundle=self.plan.data, echo=self.echo)


def storage_advice(driver: Driver, what: str | None) -> str:
    """`--storage DIR is full (...): free about N MB there (...)`: how much a search needs
    to go on, from what its trials keep (up to KEEP_CHECKPOINTS + 1 checkpoint folders per
    running trial while it publishes a new one) plus room for the journal and the report."""
    layout = driver.layout
    largest = max((_size(p) for p in layout.trials.glob(f"*/{CHECKPOINT_PREFIX}*")),
                  default=0)
    running = driver.concurrency
    need = (KEEP_CHECKPOINTS + 1) * largest * running + 20 * 2**20
    cause = clip_line(what or "no space left on device", 160)
    return (f"--storage {layout.root.parent} is full ({cause}): free at least "
            f"{need / 2**20:.0f} MB there (each of the {running} running "
            f"trial(s) keeps up to {KEEP_CHECKPOINTS} checkpoints of {largest / 2**20:.1f} "
            "MB, plus room for the journal and the report)")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_json(path: Any, payload: dict[str, Any]) -> None:
    write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def _dirname_of(trial: Any) -> str:
    """Ray's trial folder name: our trial id and key parameters (see trial_dirname)."""
    return trial_dirname(trial.config[TRIAL_ID], trial.config)


__all__ = ["Driver"]
