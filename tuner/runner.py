"""One run of the search driver: resume what the journal says, run the trials, finish.

`Experiment.run()` is what `python -m tuner.search` does once its flags are checked:

1. replay `journal.jsonl` (empty for a new experiment) and close the trials whose end was
   decided but not yet recorded;
2. rebuild the Optuna study from the journal, restore ASHA's rung records and the sampler's
   random state, and hand the unfinished trials out again (each continues from the last
   checkpoint the journal names) before asking Optuna for new ones;
3. run them with Ray Tune until `num_samples` trials have ended, or until SIGINT/SIGTERM;
4. when every trial has ended: score the best configuration on the test split once
   (persisted in best_test.json, never recomputed) and write the report; when interrupted:
   write the report without a best configuration and print the command that continues.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timesclip.atomic import write_text
from timesclip.config import TrainConfig
from tuner.journal import (
    BEST_TEST_FILE,
    JOURNAL_FILE,
    LEGACY_OPTUNA_DB,
    OPTUNA_JOURNAL,
    TRIALS_DIR,
    ExperimentState,
    Journal,
    TrialState,
    driver_fields,
    load_state,
    select_best,
)
from tuner.spaces import DEFAULT_STARTUP_TRIALS

#: Per-sample test predictions of the exported configuration (row, year, y_true, y_pred).
BEST_PREDICTIONS_FILE = "best_test_predictions.csv"
#: Its variate-selection attention [V, V] averaged over the test split (bands on both axes).
BEST_ATTENTION_FILE = "best_attention.csv"


@dataclass
class Experiment:
    args: argparse.Namespace
    argv: Sequence[str]
    space: Any
    base: TrainConfig
    budget: dict[str, Any]
    resources: dict[str, float]
    data: Any
    exp_dir: Path
    name: str
    stop: Any  # tuner.search.GracefulStop
    echo: Callable[[str], None]
    features: dict[str, Any] | None = None  # the shared vision features, once known

    @property
    def metric(self) -> str:
        return str(self.budget["metric"])

    @property
    def mode(self) -> str:
        return str(self.budget["mode"])

    # ------------------------------------------------------------------------- driver
    def run(self) -> int:
        from tuner.tracking import Ledger

        state = load_state(self.exp_dir)
        segment = 1 + max(state.segments, default=0)
        journal = Journal(self.exp_dir / JOURNAL_FILE, segment)
        ledger = Ledger(journal, state, metric=self.metric, mode=self.mode,
                        max_epochs=int(self.budget["max_epochs"]),
                        experiment_dir=self.exp_dir)
        self.started = time.perf_counter()
        trials_dir = self.exp_dir / TRIALS_DIR
        # (Ray pickles the ledger with its searcher; the pickled copy drops this hook)
        ledger.on_end = lambda trial: prune_checkpoints(trials_dir / trial.dirname,
                                                        trial.checkpoint)
        ledger.record("driver_start", argv=list(self.argv), resume=bool(self.args.resume),
                      **driver_fields())
        try:
            return self._run(ledger)
        except BaseException as exc:
            from tuner.search import SearchInterrupted

            if isinstance(exc, (SearchInterrupted, KeyboardInterrupt)):
                signum = getattr(exc, "signum", signal.SIGINT)
                ledger.record("driver_end", how="interrupted",
                              signal=signal.Signals(signum).name)
            raise
        finally:
            journal.close()

    def _run(self, ledger: Any) -> int:
        from tuner.tracking import closable_at_resume, record_end

        state: ExperimentState = ledger.state
        if self.args.resume:
            self._print_resume_state(state)
            for trial in state.unfinished:
                if closable_at_resume(trial, int(self.budget["max_epochs"])):
                    record_end(ledger, trial, error=False)
        replays = state.unfinished
        to_create = max(0, int(self.budget["num_samples"]) - len(state.trials))
        if self.args.resume and not (replays or to_create) and self.space.kind != "ablation":
            # every trial had ended (some closed just now): no Tuner runs, so the study
            # is brought in line with the journal here
            self._rebuild_study(state, [])
        if replays or to_create:
            signum = self._run_trials(ledger, replays, to_create)
            if signum is not None:
                return self._interrupted(ledger, signum)
        return self._finished(ledger)

    def _rebuild_study(self, state: ExperimentState, replays: Sequence[TrialState]
                       ) -> dict[str, int]:
        """optuna.journal written anew from the journal (see tracking.rebuild_study); an
        earlier version's optuna.db is superseded by it and removed."""
        from tuner.tracking import rebuild_study

        ids = rebuild_study(self.exp_dir / OPTUNA_JOURNAL, study_name=self.name,
                            direction="minimize" if self.mode == "min" else "maximize",
                            state=state, replays=replays, metric=self.metric)
        legacy = self.exp_dir / LEGACY_OPTUNA_DB
        if legacy.exists():
            legacy.unlink()
            self.echo(f"optuna: the study moved from {LEGACY_OPTUNA_DB} (an earlier version's "
                      f"SQLite file, removed) to {OPTUNA_JOURNAL}")
        return ids

    def _print_resume_state(self, state: ExperimentState) -> None:
        ended = len(state.ended)
        earlier = [s for s in state.segments.values() if s.seg != max(state.segments)]
        self.echo(f"resuming: {ended} trial(s) ended and kept, {len(state.unfinished)} "
                  f"unfinished continue from their last checkpoint, "
                  f"{max(0, int(self.budget['num_samples']) - len(state.trials))} not "
                  f"started yet; {len(state.rungs)} ASHA rung record(s) restored; "
                  f"{len(earlier)} earlier driver run(s), "
                  f"{sum(1 for s in earlier if s.how != 'finished')} interrupted")

    # ------------------------------------------------------------------------- trials
    def _run_trials(self, ledger: Any, replays: list[TrialState], to_create: int
                    ) -> int | None:
        """Run this driver's trials; returns the signal number if interrupted."""
        import optuna
        import ray

        from tuner.search import _init_ray, fit_local_resources

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # we print what matters

        ray_start = time.perf_counter()
        try:
            _init_ray(self.args)
            # Ray's core installs its own SIGTERM handler (it aborts the process): take
            # SIGINT/SIGTERM back so a preemption stops the search cleanly.
            self.stop.install()
            self.echo(f"ray: ready in {time.perf_counter() - ray_start:.1f}s")
            resources = self.resources
            if not self.args.address:
                resources = fit_local_resources(resources, ray.cluster_resources())
                self._record_resources(resources)
            features_ref = self._start_features(resources)
            if features_ref is not None and self.features is None:
                self._await_features(features_ref)
            tuner = self._tuner(ledger, replays, to_create, features_ref, resources)
            self.stop.ledger = ledger
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
        return ledger.interrupt_signal

    def _record_resources(self, resources: dict[str, float]) -> None:
        """search_meta.json names the resources the trials ran with (the request is kept
        beside them when the local machine made them smaller)."""
        from tuner.search import META_FILE, _write_json

        path = self.exp_dir / META_FILE
        meta = json.loads(path.read_text())
        if meta.get("resources") != resources:
            meta.setdefault("resources_requested", meta.get("resources"))
            meta["resources"] = resources
            _write_json(path, meta)

    # ------------------------------------------------------------------------- features
    def _cache_dir(self) -> Path | None:
        from timesclip.feature_cache import default_cache_dir

        if getattr(self.args, "no_feature_cache", False):
            return None
        return Path(self.args.feature_cache).expanduser() if getattr(
            self.args, "feature_cache", None) else default_cache_dir()

    def _cached_features(self) -> dict[str, Any] | None:
        """The frozen vision features from the on-disk cache (no ViT time), or None; the
        key is kept so that features computed by the Ray task are stored under it."""
        from timesclip.feature_cache import lookup

        directory = self._cache_dir()
        self._cache_key = None
        if directory is None or not self.base.use_vision:
            return None
        features, self._cache_key = lookup(self.base, self.data, directory, self.echo)
        return features

    def _start_features(self, resources: dict[str, float]) -> Any:
        """The ObjectRef of the frozen vision features (None without the vision branch):
        put into the object store from the on-disk cache, or the result of a Ray task
        computing them.

        The driver waits for the task before any trial starts (see _await_features). It
        gets a GPU when trials do. Either way the trials fetch the features through the
        ref, once per worker process (see tuner.trainable)."""
        import ray

        self._features_started = time.perf_counter()
        if not self.base.use_vision:
            return None
        cached = self._cached_features()
        if cached is not None:
            self.features = cached
            return ray.put(cached)
        gpus = min(1.0, resources["gpus_per_trial"]) if resources["gpus_per_trial"] > 0 else 0
        self._feature_resources = f"{resources['cpus_per_trial']:g} CPU" + (
            f" and {gpus:g} GPU" if gpus else "")
        task = ray.remote(num_cpus=resources["cpus_per_trial"], num_gpus=gpus)(
            vision_features)
        n = sum(len(getattr(self.data, s)) for s in ("train", "val", "test"))
        self.echo(f"vision features: encoding {n} samples x {len(self.data.bands)} bands once "
                  "(a Ray task, before the trials start); shared by all trials")
        # the trials' thread count: float sums depend on it, and trials train on these
        config = self.base.replace(threads=self.base.threads or
                                   max(1, int(resources["cpus_per_trial"])))
        return task.remote(config, self.data)

    def _await_features(self, ref: Any) -> None:
        """Before any trial starts: wait for the feature task, fetch its features (for the
        test evaluation) and store them in the cache for the next search on the same data.

        Trials must not start first: a trial that needs the features waits for them while
        holding the CPUs (or GPU) of its placement group, so trials that took every CPU
        before the task got one waited for it forever (2 CPUs, 2 concurrent trials), and a
        task that ran beside the first trial left Tune starting one trial at a time for
        the whole search. Cached at once, the features survive an interrupted search."""
        import ray

        from timesclip.feature_cache import store
        from tuner.search import SearchInterrupted

        waited, noted = time.perf_counter(), False
        # short waits: Ctrl-C and SIGTERM are handled between them
        while not ray.wait([ref], timeout=0.5, fetch_local=False)[0]:
            if not noted and time.perf_counter() - waited > FEATURE_WAIT_NOTE_S:
                noted = True
                self.echo(f"vision features: still running after {FEATURE_WAIT_NOTE_S:.0f}s "
                          f"(the task needs {self._feature_resources}; if no node has them "
                          "free, `ray status` shows what the cluster offers)")
        try:
            self.features = ray.get(ref)
        except SearchInterrupted:
            raise
        except Exception as exc:  # the trials that need them fail and say so
            self.echo(f"vision features: the feature task failed ({exc.__class__.__name__})")
            return
        directory = self._cache_dir()
        if directory is None or self.features is None:
            return
        store(self.base, self.data, directory, getattr(self, "_cache_key", None),
              self.features, time.perf_counter() - self._features_started, self.echo)

    def _tuner(self, ledger: Any, replays: list[TrialState], to_create: int,
               features_ref: Any, resources: dict[str, float]) -> Any:
        from ray import tune
        from ray.tune.search import ConcurrencyLimiter

        from timesclip.train import feature_key
        from tuner.progress import TrialProgress
        from tuner.search import DEFAULT_MAX_FAILURES, REUSE_ACTORS
        from tuner.study import study_storage
        from tuner.tracking import (
            FixedTrialsSearcher,
            InterruptStopper,
            JournalCallback,
            JournaledASHA,
            JournaledFIFO,
            JournaledOptunaSearch,
            Replay,
            restore_sampler_state,
        )
        from tuner.trainable import train_trial, trial_dirname

        state: ExperimentState = ledger.state
        budget = self.budget
        storage = self.exp_dir / TRIALS_DIR
        setup = {"kind": self.space.kind, "space": self.space,
                 "base_config": self.base.to_dict(), "max_epochs": budget["max_epochs"],
                 "cpus_per_trial": resources["cpus_per_trial"],
                 "feature_key": feature_key(self.base, self.data),
                 "journal": str(self.exp_dir / JOURNAL_FILE), "trials_root": str(storage),
                 "features_ref": features_ref}

        dirname = trial_dirname  # module-level: Ray pickles the searcher that holds it
        if self.space.kind == "ablation":
            done = [{"ablation": t.params.get("ablation"), "seed": t.params.get("seed")}
                    for t in state.trials.values()]
            pending = [g for g in self.space.ablation_grid() if g not in done]
            searcher: Any = FixedTrialsSearcher(
                ledger=ledger, pending=pending, replays=[Replay(t) for t in replays],
                dirname=dirname, metric=self.metric, mode=self.mode)
            scheduler: Any = JournaledFIFO(ledger)
        else:
            sampler = make_sampler(self.args.searcher, int(self.base.seed),
                                   startup_trials=int(budget.get("startup_trials",
                                                                  DEFAULT_STARTUP_TRIALS)))
            ids: dict[str, int] = {}
            if self.args.resume:
                ids = self._rebuild_study(state, replays)
                if restore_sampler_state(sampler, state.sampler_state):
                    self.echo("optuna: study rebuilt from the journal; sampler continues its "
                              "random stream")
            searcher = JournaledOptunaSearch(
                ledger=ledger, replays=[Replay(t, ids.get(t.tid)) for t in replays],
                to_create=to_create, dirname=dirname, space=self.space.define_by_run,
                metric=self.metric, mode=self.mode, sampler=sampler, study_name=self.name,
                storage=study_storage(self.exp_dir / OPTUNA_JOURNAL))
            if self.args.scheduler == "fifo":
                scheduler = JournaledFIFO(ledger)
            else:
                scheduler = JournaledASHA(
                    ledger, time_attr="epoch", metric=self.metric, mode=self.mode,
                    max_t=budget["max_epochs"], grace_period=budget["grace_period"],
                    reduction_factor=budget["reduction_factor"])
                restored = scheduler.restore(state.rungs)
                scheduler.snapshot(self.exp_dir / f"asha_restored-seg{ledger.journal.segment}"
                                   ".json")
                scheduler._snapshot()
                if self.args.resume:
                    self.echo(f"asha: {restored} rung record(s) restored")
        search_alg = ConcurrencyLimiter(searcher, max_concurrent=budget["max_concurrent"])
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, data=self.data, setup=setup),
            {"cpu": resources["cpus_per_trial"], "gpu": resources["gpus_per_trial"]})
        max_failures = getattr(self.args, "max_failures", DEFAULT_MAX_FAILURES)
        run_config = tune.RunConfig(
            name=f"{self.name}/{TRIALS_DIR}", storage_path=str(self.exp_dir.parent),
            verbose=0, stop=InterruptStopper(ledger),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            # Trials write train_config.yaml, final.json, TensorBoard events and their
            # checkpoints straight into their folder on the (shared) storage: no artifact
            # syncing and no checkpoint copying per epoch (see publish_checkpoint).
            sync_config=tune.SyncConfig(sync_artifacts=False),
            callbacks=[TrialProgress(ledger, budget["max_epochs"]), JournalCallback(ledger)])
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=search_alg,
                scheduler=scheduler, num_samples=len(replays) + to_create,
                reuse_actors=REUSE_ACTORS,
                trial_dirname_creator=_dirname_of),
            run_config=run_config)

    # ------------------------------------------------------------------------- endings
    def _interrupted(self, ledger: Any, signum: int) -> int:
        from tuner.search import exit_code, resume_command

        name = signal.Signals(signum).name
        ledger.record("driver_end", how="interrupted", signal=name)
        state: ExperimentState = ledger.state
        self._report(state, interrupted=True)
        took = time.perf_counter() - (self.stop.received_at or time.perf_counter())
        self.echo(f"interrupted by {name}: {len(state.ended)} of "
                  f"{self.budget['num_samples']} trials finished; the unfinished continue "
                  f"from their last checkpoint (stopped in {took:.1f}s). No best "
                  "configuration was exported and the test split was not touched.")
        self.echo(f"continue with: {resume_command(self.argv, self.name)}")
        return exit_code(signum)

    def _finished(self, ledger: Any) -> int:
        state: ExperimentState = ledger.state
        total = int(self.budget["num_samples"])
        unfinished = state.unfinished
        if unfinished or len(state.trials) < total:
            ledger.record("driver_end", how="incomplete")
            self._report(state, interrupted=True)
            self.echo(f"error: the search ended with {len(unfinished)} unfinished and "
                      f"{total - len(state.trials)} never created trial(s); run it again "
                      "with --resume")
            return 1
        counts = {s: sum(1 for t in state.trials.values() if t.status == s)
                  for s in ("TERMINATED", "DIVERGED", "ERROR")}
        segs = len(state.segments)
        earlier = sum(1 for s in state.segments.values()
                      if s.seg != ledger.journal.segment and s.how != "finished")
        self.echo(f"search finished: {total} trials ({counts['TERMINATED']} ended normally, "
                  f"{counts['DIVERGED']} diverged, {counts['ERROR']} failed); this run "
                  f"{time.perf_counter() - self.started:.1f}s, experiment "
                  f"{state.wall_seconds:.1f}s over {segs} driver run(s)"
                  + (f", {earlier} of them interrupted" if earlier else ""))
        if self.space.kind != "ablation":
            self._evaluate_best_once(state)
        ledger.record("driver_end", how="finished")
        self._report(state, interrupted=False)
        self.echo(f"tensorboard: tensorboard --logdir {self.exp_dir / TRIALS_DIR}")
        return 0

    def _evaluate_best_once(self, state: ExperimentState) -> None:
        """Score the selected configuration on the test split, once per experiment.

        The same forward pass also yields what the report draws: the per-sample predictions
        and the mean variate-selection attention, stored as plain CSV next to
        best_test.json (written last: it marks the scoring as done), so the report reads
        them and never scores the test split again."""
        from timesclip.inference import load_for_inference, predict_with_attention
        from timesclip.metrics import regression_metrics
        from timesclip.plots import attention_frame, predictions_frame, write_csv

        path = self.exp_dir / BEST_TEST_FILE
        best = select_best(state, self.metric, self.mode)
        if best is None:
            self.echo(f"no trial ended with a finite {self.metric}: nothing to evaluate")
            return
        if path.exists():
            stored = json.loads(path.read_text())
            self.echo(f"test split already scored once for trial {stored.get('trial_id')} "
                      f"({BEST_TEST_FILE}); not scored again")
            return
        if not best.checkpoint:
            self.echo(f"best trial {best.tid} has no checkpoint: test split not scored")
            return
        ckdir = self.exp_dir / TRIALS_DIR / best.dirname / best.checkpoint
        model, config, scaler, bands, backbone = load_for_inference(ckdir, device="cpu")
        from timesclip.train import feature_key

        shared = self.features is not None and feature_key(config, self.data) == \
            feature_key(self.base, self.data)
        split = self.data.test
        y_pred, attention = predict_with_attention(
            model, config, scaler, backbone, split.x_raw,
            features=self.features["test"] if shared else None)
        test = regression_metrics(split.y_raw, y_pred)
        write_csv(predictions_frame(split.y_raw, y_pred, split.years, split.index),
                  self.exp_dir / BEST_PREDICTIONS_FILE)
        if attention is not None:
            write_csv(attention_frame(attention, bands), self.exp_dir / BEST_ATTENTION_FILE,
                      index=True)
        from tuner.journal import best_value

        value, epoch = best_value(best.history, self.metric, self.mode)
        payload = {"trial_id": best.tid, self.metric: value, "epoch": epoch, "test": test,
                   "checkpoint": str(Path(TRIALS_DIR) / best.dirname / best.checkpoint),
                   "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "predictions": BEST_PREDICTIONS_FILE,
                   "attention": BEST_ATTENTION_FILE if attention is not None else None,
                   "bands": [str(b) for b in bands],
                   "use_variate_selection": bool(config.use_variate_selection)}
        write_text(path, json.dumps(payload, indent=2) + "\n")
        self.echo(f"best trial {best.tid}: {self.metric} {value:.4f} (epoch {epoch}); test "
                  f"(evaluated once) RMSE {test['rmse']:.3f}, R2 {test['r2']:+.3f}")

    def _report(self, state: ExperimentState, *, interrupted: bool) -> None:
        from tuner.results import build_report

        build_report(self.exp_dir, data_bundle=self.data, echo=self.echo)


#: After this many seconds of waiting for the feature task the driver says what it needs.
FEATURE_WAIT_NOTE_S = 60.0


def make_sampler(searcher: str, seed: int, *,
                 startup_trials: int = DEFAULT_STARTUP_TRIALS) -> Any:
    """`--searcher`: Optuna's TPESampler (`startup_trials` random trials first, from the
    space's budget; constant liar for the trials still running, Optuna's default) or
    RandomSampler, seeded alike."""
    import optuna

    if searcher == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if searcher == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    raise ValueError(f"unknown searcher {searcher!r}")


def vision_features(config: TrainConfig, data: Any) -> dict[str, Any] | None:
    """The search's one vision pass (a Ray task; its progress lines reach the driver)."""
    from timesclip.train import compute_features
    from tuner.trainable import quiet_sigterm_exit

    quiet_sigterm_exit()

    return compute_features(config, data, progress="vision features")


def prune_checkpoints(trial_dir: Path, keep_name: str | None) -> None:
    """After a trial ended, keep its newest checkpoints (always the one the journal names),
    and drop the working folders a killed run left (a trial closed at resume never runs
    again to remove them)."""
    from tuner.trainable import CHECKPOINT_PREFIX, WORK_PREFIX, old_checkpoints

    for path in old_checkpoints(trial_dir):
        if path.name != keep_name:
            shutil.rmtree(path, ignore_errors=True)
    for path in [*trial_dir.glob(f"{WORK_PREFIX}*"), *trial_dir.glob(f".{CHECKPOINT_PREFIX}*")]:
        shutil.rmtree(path, ignore_errors=True)


def _dirname_of(trial: Any) -> str:
    """Ray's trial folder name: our trial id and key parameters (see trial_dirname)."""
    from tuner.tracking import TID_KEY
    from tuner.trainable import trial_dirname

    return trial_dirname(trial.config[TID_KEY], trial.config)


__all__ = ["BEST_ATTENTION_FILE", "BEST_PREDICTIONS_FILE", "BEST_TEST_FILE",
           "Experiment"]
