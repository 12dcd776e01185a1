"""The search's frozen vision features: computed once, before any trial starts.

The features are a pure function of (data, render settings, backbone), so one search
computes them once and every trial reads them: from the on-disk cache when an earlier run
stored them (no ViT time), else from one Ray task (with a GPU when trials have one) whose
result is cached at once. Trials fetch them through an ObjectRef, once per worker process
(see tuner.trainable).

The driver waits for the task before Tune starts any trial: a trial that needs the
features waits for them while holding the CPUs (or GPU) of its placement group, so trials
that took every CPU before the task got one waited for it forever (2 CPUs, 2 concurrent
trials), and a task that ran beside the first trial left Tune starting one trial at a time
for the whole search.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from timesclip.config import TrainConfig
from timesclip.data import DataBundle
from timesclip.feature_cache import FeatureKey, lookup, store
from timesclip.features import compute_features
from tuner.cluster import SearchInterrupted
from tuner.journal import clip_line
from tuner.trainable import quiet_sigterm_exit

#: After this many seconds of waiting for the feature task the driver says what it needs.
FEATURE_WAIT_NOTE_S = 60.0

Echo = Callable[[str], None]


class FeatureTaskFailed(RuntimeError):
    """The search's one vision pass failed: no trial can run without its features."""


def vision_features(config: TrainConfig, data: DataBundle) -> dict[str, Any] | None:
    """The search's one vision pass (a Ray task; its progress lines reach the driver)."""
    quiet_sigterm_exit()
    return compute_features(config, data, progress="vision features")


class SharedFeatures:
    """The features of one search: where they come from, and the ref trials read."""

    def __init__(self, base: TrainConfig, data: DataBundle, cache_dir: Path | None,
                 echo: Echo) -> None:
        self.base, self.data, self.cache_dir, self.echo = base, data, cache_dir, echo
        self.features: dict[str, Any] | None = None  # once known (the test scoring uses them)
        self._key: FeatureKey | None = None

    def cached(self) -> dict[str, Any] | None:
        """The features from the on-disk cache, or None (the key is kept so that features
        computed by the Ray task are stored under it)."""
        if self.cache_dir is None or not self.base.use_vision:
            return None
        self.features, self._key = lookup(self.base, self.data, self.cache_dir, self.echo)
        return self.features

    def start(self, cpus: float, gpus: float) -> Any:
        """The ObjectRef of the features (None without the vision branch), ready when this
        returns: put into the object store from the cache, or computed by a Ray task that
        this waits for (see the module docstring)."""
        if not self.base.use_vision:
            return None
        started = time.perf_counter()
        if self.cached() is not None:
            return ray.put(self.features)
        gpus = min(1.0, gpus) if gpus > 0 else 0
        needs = f"{cpus:g} CPU" + (f" and {gpus:g} GPU" if gpus else "")
        task = ray.remote(num_cpus=cpus, num_gpus=gpus)(vision_features)
        n = sum(len(getattr(self.data, s)) for s in ("train", "val", "test"))
        self.echo(f"vision features: encoding {n} samples x {len(self.data.bands)} bands once "
                  "(a Ray task, before the trials start); shared by all trials")
        # the trials' thread count: float sums depend on it, and trials train on these
        config = self.base.replace(threads=self.base.threads or max(1, int(cpus)))
        ref = task.remote(config, self.data)
        self._await(ref, needs)
        if self.features is not None and self.cache_dir is not None:
            store(self.base, self.data, self.cache_dir, self._key, self.features,
                  time.perf_counter() - started, self.echo)
        return ref

    def _await(self, ref: Any, needs: str) -> None:
        waited, noted = time.perf_counter(), False
        # short waits: Ctrl-C and SIGTERM are handled between them
        while not ray.wait([ref], timeout=0.5, fetch_local=False)[0]:
            if not noted and time.perf_counter() - waited > FEATURE_WAIT_NOTE_S:
                noted = True
                self.echo(f"vision features: still running after {FEATURE_WAIT_NOTE_S:.0f}s "
                          f"(the task needs {needs}; if no node has them free, `ray status` "
                          "shows what the cluster offers)")
        try:
            self.features = ray.get(ref)
        except SearchInterrupted:
            raise
        except Exception as exc:
            # Every trial needs these features: starting them would only fail each one
            # --max-failures times. Say what went wrong in the task, and stop.
            cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the original
            text = clip_line(f"{type(cause).__name__}: {cause}", 240)
            raise FeatureTaskFailed(
                f"the vision feature task failed before any trial started ({text}); fix what "
                "it names (the backbone's weights on the node that ran it, its memory or "
                "GPU), then continue with the same command plus --resume") from None


__all__ = ["FEATURE_WAIT_NOTE_S", "FeatureTaskFailed", "SharedFeatures", "vision_features"]
