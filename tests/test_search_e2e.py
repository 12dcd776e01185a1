"""End-to-end: the real `python -m tuner.search` CLI with real Ray, Optuna and training.

Every search runs as a subprocess on the tiny random backbone with a local Ray instance of
2 CPUs, exactly as a user would start it. The long runs are marked `e2e`; the pre-flight
failures and --help are fast (no Ray is started for them).

To stay within a few minutes on a 2-core machine the acceptance search and the failing-trial
search train on the small CSV data set of conftest (`small_csvs`) and run two single-CPU
trials at a time; the ablation trains on the built-in synthetic data set (its report must
say "synthetic"). Wall times are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from real_data import forecast_csv, illinois_csvs
from search_helpers import in_process, journal_events, tb_scalars

from tuner.layout import OPTUNA_JOURNAL
from tuner.report import CONTRACT_COLUMNS
from tuner.study import open_stored_study

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "t"
MAX_EPOCHS = 6
NUM_SAMPLES = 8
ABSURD_LR = 1e12  # AdamW steps of ~1e12: the loss is NaN after the first update
SANE_LR = 1e-3


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)  # a local instance, never somebody else's cluster
    return env


def _cli(*args: str | Path, timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
    """Run `python -m ...` from the repository root; returns (process, wall seconds)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - started


def _ok(proc: subprocess.CompletedProcess) -> str:
    """stdout of a run that must have exited 0 (its output is shown when it did not)."""
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n"
        f"--- stderr\n{proc.stderr[-6000:]}")
    return proc.stdout


def _report_port_clashes(label: str, proc: subprocess.CompletedProcess) -> None:
    """Other Ray instances may share the machine: show (not fail on) port trouble."""
    hits = [line for line in (proc.stdout + proc.stderr).splitlines()
            if "already in use" in line.lower() or "port conflict" in line.lower()]
    if hits:
        print(f"[ports] {label}: " + " | ".join(hits[:3]))


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def _no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


# =============================================================== 1. the acceptance run
@pytest.fixture(scope="module")
def acceptance(tmp_path_factory, small_csvs):
    """The issue's acceptance search: full space, tiny backbone, 8 trials, 6 epochs, grace 1."""
    storage = tmp_path_factory.mktemp("acceptance")
    proc, wall = _cli("tuner.search", "--space", "full", "--backbone", "tiny",
                      "--num-samples", NUM_SAMPLES, "--max-epochs", MAX_EPOCHS,
                      "--grace-period", 1, "--storage", storage, "--name", EXPERIMENT,
                      "--num-cpus", 2, "--cpus-per-trial", 1, "--data", *small_csvs)
    print(f"\n[wall] acceptance search (full space, {NUM_SAMPLES} trials x <= {MAX_EPOCHS} "
          f"epochs): {wall:.1f}s")
    _report_port_clashes("acceptance", proc)
    stdout = _ok(proc)
    exp = storage / EXPERIMENT
    return {"exp": exp, "stdout": stdout, "stderr": proc.stderr, "wall": wall,
            "data": small_csvs, "meta": json.loads((exp / "search_meta.json").read_text())}


@pytest.mark.e2e
def test_acceptance_search_completes_with_contract_report(acceptance):
    stdout, meta, report = acceptance["stdout"], acceptance["meta"], acceptance["exp"] / "report"
    if _no_gpu():
        # the full space asks for 0.25 GPU per trial: without a GPU that would wait forever
        assert "no GPU on this machine: trials run on the CPU (gpus_per_trial 0.25 -> 0)" \
            in stdout
        assert meta["resources"]["gpus_per_trial"] == 0
    assert "ray: private local instance on 127.0.0.1" in stdout
    # full.yaml asks for 8 at a time; 2 CPUs run 2: only those are proposed at once
    assert "max_concurrent 8 -> 2: this instance runs 2 trial(s) at a time" in stdout
    assert meta["max_concurrent_run"] == 2
    assert f"search finished: {NUM_SAMPLES} trials ({NUM_SAMPLES} ended normally, 0 diverged, " \
        "0 failed)" in stdout
    for name in ("trials.csv", "trials.parquet", "summary.md", "best_config.yaml"):
        assert (report / name).is_file(), name

    sampled = meta["sampled_names"]
    assert {"lr", "use_contrastive", "contrastive_weight", "patch_length", "stride"} \
        <= set(sampled)
    expected = CONTRACT_COLUMNS + [f"config.{n}" for n in sampled]
    csv = _read_csv(report / "trials.csv")
    parquet = pd.read_parquet(report / "trials.parquet")
    for table in (csv, parquet):
        assert list(table.columns[:len(CONTRACT_COLUMNS)]) == CONTRACT_COLUMNS
        assert set(expected) <= set(table.columns)
        assert len(table) == NUM_SAMPLES
        assert table["trial_id"].is_unique
    assert list(csv["trial_id"].astype(str)) == list(parquet["trial_id"])

    assert (csv["status"] == "TERMINATED").all(), csv[["trial_id", "status", "error"]]
    assert csv["error"].isna().all()
    assert csv["best_val_rmse"].map(math.isfinite).all()
    assert csv["epochs_run"].between(1, MAX_EPOCHS).all()
    assert (csv["wall_seconds"] > 0).all()
    stopped = csv[csv["stopped_by"] == "asha"]
    assert len(stopped) >= 1 and (stopped["epochs_run"] < MAX_EPOCHS).all(), \
        csv[["trial_id", "epochs_run", "stopped_by"]]
    # a trial that ran to max_epochs is never reported as stopped by ASHA
    assert (csv.loc[csv["epochs_run"] == MAX_EPOCHS, "stopped_by"]
            .isin(["completed", "early_stopping"]).all())
    # lr is sampled in every trial; the contrastive parameters only when the loss is on
    assert csv["config.lr"].map(math.isfinite).all()
    off = csv[csv["config.use_contrastive"].astype(str) == "False"]
    assert off["config.temperature"].isna().all() and off["config.contrastive_weight"].isna(
    ).all(), off[["trial_id", "config.temperature"]]
    print(f"[info] stopped by ASHA: {len(stopped)} of {len(csv)}; epochs_run "
          f"{sorted(csv['epochs_run'].tolist())}")


@pytest.mark.e2e
def test_acceptance_every_stored_best_is_the_selected_epoch(acceptance):
    """One notion of "best": for every trial, best.pt holds the epoch of its best val_rmse
    (the search metric is the trainer's monitor), and trials.csv, final.json, best_test.json
    and best_config.yaml's provenance name that same epoch; best_test.json records the epoch
    of the weights it scored. The full space samples the contrastive loss on and off, so
    val_loss (with the contrastive term) and val_rmse can disagree about the best epoch."""
    import yaml

    from timesclip.checkpoint import BEST, safe_load
    from tuner.journal import load_state
    from tuner.layout import ExperimentLayout
    from tuner.outcomes import best_value

    exp = acceptance["exp"]
    layout = ExperimentLayout.at(exp)
    state = load_state(exp)
    csv = _read_csv(exp / "report" / "trials.csv").set_index("trial_id")
    disagree = 0
    for trial in state.trials.values():
        value, epoch = best_value(trial.history, "val_rmse", "min")
        stored = safe_load(layout.checkpoint_dir(trial.dirname, trial.checkpoint) / BEST, "")
        assert (stored["epoch"], stored["monitor"]) == (epoch, "val_rmse"), trial.tid
        assert stored["best_value"] == pytest.approx(value)
        assert int(csv.loc[trial.tid, "best_epoch"]) == epoch
        final = layout.trial_dir(trial.dirname) / "final.json"
        if final.exists():
            assert json.loads(final.read_text())["best_epoch"] == epoch
        losses = {e: h["val_loss"] for e, h in trial.history.items()}
        disagree += min(losses, key=losses.get) != epoch
    best_test = json.loads((exp / "best_test.json").read_text())
    chosen = state.trials[best_test["trial_id"]]
    assert best_test["epoch"] == best_test["selected_epoch"] == \
        best_value(chosen.history, "val_rmse", "min")[1]
    provenance = yaml.safe_load((exp / "report" / "best_config.yaml").read_text())["provenance"]
    assert provenance["metric"]["epoch"] == best_test["epoch"]
    print(f"[info] trials whose best val_loss epoch is another epoch: {disagree} of "
          f"{len(state.trials)}")


@pytest.mark.e2e
def test_acceptance_log_has_no_colour_codes(acceptance):
    """Output to a pipe (a log file) carries no ANSI colour codes from Ray's worker prefixes
    (test_hooks checks Ray's printer itself; this is the whole search's output)."""
    output = acceptance["stdout"] + acceptance["stderr"]
    print(f"[info] worker-prefixed lines in the output: {output.count(' pid=')}")
    assert "\x1b[" not in output


@pytest.mark.e2e
def test_acceptance_optuna_recorded_every_trial(acceptance):
    import optuna

    exp = acceptance["exp"]
    study = open_stored_study(exp / OPTUNA_JOURNAL, EXPERIMENT)
    # the objective is named (optuna-dashboard shows val_rmse, not "Objective 0")
    assert study.metric_names == ["val_rmse"]
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == NUM_SAMPLES
    states = [t.state for t in trials]
    assert optuna.trial.TrialState.RUNNING not in states, states
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}

    # Optuna trial <-> row of trials.csv by the trial id each Optuna trial carries
    table = pd.read_parquet(exp / "report" / "trials.parquet")
    by_id = {row["trial_id"]: row for _, row in table.iterrows()}
    assert sorted(t.user_attrs["trial_id"] for t in trials) == sorted(by_id)
    for trial in trials:
        row = by_id[trial.user_attrs["trial_id"]]
        assert trial.number == int(row["trial_id"].removeprefix("t"))
        assert float(trial.params["lr"]) == float(row["config.lr"])
        assert trial.user_attrs["ray_trial_id"]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            # the value told to Optuna is the one selection uses: best validation RMSE
            assert trial.value == pytest.approx(row["best_val_rmse"], rel=1e-12, abs=0), \
                (trial.number, row["trial_id"])
            assert row["stopped_by"] in ("completed", "early_stopping")
        else:  # PRUNED only for a trial ASHA stopped, with every epoch it reported
            assert row["stopped_by"] == "asha"
            assert sorted(trial.intermediate_values) == list(range(1, row["epochs_run"] + 1))
    assert (table["stopped_by"] == "asha").sum() >= 1
    # who proposed each trial is Optuna's own rule, recomputed from the journal: TPE's
    # random start-up until startup_trials trials had finished (COMPLETE or PRUNED), its
    # model after; the model proposed some of the trials (the budget's rule leaves it most)
    startup = acceptance["meta"]["budget"]["startup_trials"]
    finished, expected = 0, {}
    for e in journal_events(exp):
        if e["ev"] == "trial":
            expected[e["tid"]] = "startup" if finished < startup else "model"
        elif e["ev"] == "end" and e["status"] in ("TERMINATED", "DIVERGED"):
            finished += 1
    assert dict(zip(table["trial_id"], table["proposed_by"])) == expected
    assert {t.user_attrs["trial_id"]: t.user_attrs["proposed_by"] for t in trials} == expected
    model = sum(v == "model" for v in expected.values())
    assert model >= 1, expected
    line = (f"TPE proposed {model} of {NUM_SAMPLES} trials from its model; "
            f"{NUM_SAMPLES - model} were its random start-up (until {startup} trials had "
            "finished)")
    assert line in (exp / "report" / "summary.md").read_text()
    assert line in (exp / "report" / "index.html").read_text()


@pytest.mark.e2e
def test_acceptance_best_config_retrains(acceptance, tmp_path):
    """`python -m timesclip train --config best_config.yaml` on the same data and machine
    repeats the exported trial epoch by epoch, exactly (same seed, same thread count, the
    same cached vision features)."""
    import numpy as np

    from tuner.journal import load_state

    best_path = acceptance["exp"] / "report" / "best_config.yaml"
    best = yaml.safe_load(best_path.read_text())
    assert best["provenance"]["experiment"] == EXPERIMENT
    assert best["backbone"] == "tiny" and best["epochs"] == MAX_EPOCHS
    assert best["threads"] == 1  # the trial's CPUs, recorded for the re-run
    table = _read_csv(acceptance["exp"] / "report" / "trials.csv")
    tid = best["provenance"]["trial_id"]
    assert tid == str(table["trial_id"].iloc[0])
    trial = load_state(acceptance["exp"]).trials[tid]

    out = tmp_path / "retrain"
    proc, wall = _cli("timesclip", "train", "--config", best_path, "--out", out,
                      "--data", *acceptance["data"], timeout=300)
    print(f"\n[wall] retrain best_config.yaml ({MAX_EPOCHS} epochs max): {wall:.1f}s")
    stdout = _ok(proc)
    assert "loaded from cache" in stdout + proc.stderr  # the search's features, reused
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written == {k: v for k, v in best.items() if k != "provenance"}
    assert (out / "metrics.json").is_file() and (out / "best.pt").is_file()

    # every epoch the trial ran, repeated exactly (TensorBoard keeps float32 values)
    for tag, name in (("Metrics/RMSE", "val_rmse"), ("Loss/val", "val_loss"),
                      ("Loss/train", "train_loss")):
        rerun = tb_scalars(out / "tb", tag)
        for epoch, metrics in trial.history.items():
            assert rerun[epoch] == float(np.float32(metrics[name])), (tag, epoch)
    print(f"[info] trial {tid}: {len(trial.history)} epoch(s) repeated exactly")


@pytest.mark.e2e
def test_acceptance_results_rebuild_is_byte_identical(acceptance):
    exp = acceptance["exp"]
    before = (exp / "report" / "trials.csv").read_bytes()
    proc, wall = _cli("tuner.results", exp, timeout=300)
    print(f"\n[wall] python -m tuner.results: {wall:.1f}s")
    stdout = _ok(proc)
    assert "report written to" in stdout
    assert (exp / "report" / "trials.csv").read_bytes() == before
    for name in ("trials.parquet", "summary.md", "best_config.yaml"):
        assert (exp / "report" / name).is_file(), name


# =============================================================== 2. the ablation
@pytest.mark.e2e
def test_ablation_report(ablation_search):
    proc, wall = ablation_search["proc"], ablation_search["wall"]
    print(f"\n[wall] ablation search (5 arms x 2 seeds x 2 epochs): {wall:.1f}s")
    _report_port_clashes("ablation", proc)
    stdout = _ok(proc)
    assert "search finished: 10 trials (10 ended normally, 0 diverged, 0 failed)" in stdout
    report = ablation_search["exp"] / "report"
    assert (report / "ablation.csv").is_file() and (report / "ablation.md").is_file()
    assert not (report / "best_config.yaml").exists()  # arms are not a search

    table = _read_csv(report / "ablation.csv")
    assert list(table["row"]) == ["E1", "E2", "E3", "E4", "E5", "mean", "ridge", "hgb"]
    for metric in ("rmse", "mae", "r2", "mape"):
        values = table[f"test_{metric}_mean"].astype(float)
        assert values.map(math.isfinite).all(), (metric, values.tolist())
    arms = table[table["kind"] == "arm"]
    assert (arms["n"] == 2).all() and (arms["trials"] == 2).all()
    assert (arms["seeds"].astype(str) == "0,1").all()
    assert arms["test_rmse_std"].map(math.isfinite).all()  # two seeds: a spread exists

    md = (report / "ablation.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    labels = [line.split("|")[1].strip() for line in rows[1:]]  # rows[0] is the header
    assert labels == ["E1", "E2", "E3", "E4", "E5", "mean", "ridge", "hgb"]
    assert "`tiny`" in md and "NOT from pretrained CLIP" in md
    assert "synthetic" in md.lower()

    trials = _read_csv(report / "trials.csv")
    assert len(trials) == 10 and (trials["status"] == "TERMINATED").all()
    assert sorted(zip(trials["config.ablation"], trials["config.seed"])) == \
        [(f"E{i}", s) for i in range(1, 6) for s in (0, 1)]


# =============================================================== 2b. strategy flags
def test_make_sampler_follows_searcher():
    import optuna

    from tuner.study import make_sampler

    assert type(make_sampler("random", 3, startup_trials=4)) is optuna.samplers.RandomSampler
    assert type(make_sampler("tpe", 3, startup_trials=4)) is optuna.samplers.TPESampler
    with pytest.raises(ValueError):
        make_sampler("grid", 3, startup_trials=4)


def test_a_local_instance_proposes_only_the_trials_it_can_run():
    """Tune's limiter counts proposed trials, not running ones: on 2 CPUs, max_concurrent 8
    would propose 8 configurations before any trial finished (TPE blind). The driver caps
    it at what fits."""
    from tuner.cluster import trials_that_fit

    cpu = {"cpus_per_trial": 1.0, "gpus_per_trial": 0.0}
    assert trials_that_fit(cpu, {"CPU": 2.0}) == 2
    assert trials_that_fit({**cpu, "cpus_per_trial": 0.5}, {"CPU": 2.0}) == 4
    assert trials_that_fit({**cpu, "cpus_per_trial": 3.0}, {"CPU": 2.0}) == 1
    gpu = {"cpus_per_trial": 1.0, "gpus_per_trial": 0.25}
    assert trials_that_fit(gpu, {"CPU": 16.0, "GPU": 1.0}) == 4
    assert trials_that_fit(gpu, {"CPU": 2.0, "GPU": 1.0}) == 2


@pytest.mark.e2e
def test_random_fifo_runs_every_trial_to_its_end(tmp_path, small_csvs):
    """--searcher random --scheduler fifo: recorded in search_meta.json and summary.md, and
    no trial is cut (each runs to max_epochs or its own early stopping)."""
    cache = tmp_path / "cache"  # a feature cache of its own: the first search fills it
    proc, wall = _cli("tuner.search", "--space", "quick", "--searcher", "random",
                      "--scheduler", "fifo", "--num-samples", 3, "--max-epochs", 3,
                      "--storage", tmp_path, "--name", "rf", "--num-cpus", 2, "--no-dashboard",
                      "--feature-cache", cache, "--data", *small_csvs)
    print(f"\n[wall] random + FIFO search (3 trials x 3 epochs): {wall:.1f}s")
    stdout = _ok(proc)
    assert "RANDOM + FIFO" in stdout
    assert "ray: private local instance on 127.0.0.1, without the dashboard" in stdout
    assert "dashboard at http" not in stdout
    assert "vision features: encoding" in stdout and "stored in cache" in stdout
    exp = tmp_path / "rf"
    meta = json.loads((exp / "search_meta.json").read_text())
    assert meta["searcher"] == "random" and meta["scheduler"] == "fifo"
    summary = (exp / "report" / "summary.md").read_text()
    assert "random sampler, fifo scheduler" in summary and "## ASHA rungs" not in summary
    table = _read_csv(exp / "report" / "trials.csv")
    assert set(table["stopped_by"]) <= {"completed", "early_stopping"}, table["stopped_by"]
    assert (table["epochs_run"] == 3).all()
    assert not (exp / "asha_state.json").exists()
    # The feature task ran before any trial, and its features were cached at once: trials
    # started while it ran held the CPUs it needed (a search that hung, or one that ran a
    # single trial at a time to its end; see Experiment._await_features)
    lines = stdout.splitlines()
    first_start = next(i for i, line in enumerate(lines) if re.search(r"\]\s+start\s", line))
    assert any("stored in cache" in line for line in lines[:first_start]), lines[:first_start]
    # (a second search on the same data reading them from the cache, with no time in the
    # vision tower: the killed-and-resumed search of test_resilience.py checks it)


# =============================================================== 3. a trial that raises
FAILING_SPACE = f"""\
description: one sane and one absurd learning rate; the absurd one diverges (NaN loss)
kind: search
budget:
  num_samples: 4
  max_epochs: 2
  grace_period: 2
  reduction_factor: 2
  metric: val_rmse
  mode: min
  max_concurrent: 2
resources:
  cpus_per_trial: 1
  gpus_per_trial: 0
base:
  backbone: tiny
  d_model: 32
  head_hidden: 32
  patience: 3
parameters:
  lr:
    type: choice
    choices: [{SANE_LR!r}, {ABSURD_LR!r}]
"""


def _predicted_lrs(space, seed: int, n: int) -> list[float]:
    """What OptunaSearch's seeded TPE asks first: its startup trials are random draws in ask
    order, independent of the values told in between."""
    import optuna

    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    lrs = []
    for _ in range(n):
        trial = study.ask()
        space.define_by_run(trial)
        lrs.append(float(trial.params["lr"]))
    return lrs


@pytest.mark.e2e
def test_failing_trial_is_reported_and_search_finishes(tmp_path, small_csvs):
    import optuna

    from timesclip.data import load_bundle
    from timesclip.errors import NonFiniteLossError
    from timesclip.train import fit
    from tuner.spaces import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space_path = tmp_path / "diverge.yaml"
    space_path.write_text(FAILING_SPACE)
    space = load_space(space_path)

    # a seed for which the sampler proposes both learning rates (one or two absurd ones)
    seed, lrs = next((s, lrs) for s in range(100)
                     for lrs in [_predicted_lrs(space, s, 4)]
                     if 1 <= lrs.count(ABSURD_LR) <= 2)
    print(f"\n[info] --seed {seed}: Optuna proposes lr {lrs}")

    # precondition: the absurd learning rate really diverges with this trial config
    config = space.trial_config(space.base_config(), {"lr": ABSURD_LR}).replace(
        seed=seed, device="cpu")
    with pytest.raises(NonFiniteLossError):
        fit(config, load_bundle(config, small_csvs), evaluate_test=False)

    proc, wall = _cli("tuner.search", "--space", space_path, "--storage", tmp_path,
                      "--name", "nan", "--seed", seed, "--num-cpus", 2, "--no-dashboard",
                      "--data", *small_csvs)
    print(f"[wall] search with a diverging trial (4 trials x 2 epochs): {wall:.1f}s")
    _report_port_clashes("diverging", proc)
    stdout = _ok(proc)
    n_bad = lrs.count(ABSURD_LR)
    assert f"search finished: 4 trials ({4 - n_bad} ended normally, {n_bad} diverged, " \
        "0 failed)" in stdout
    assert stdout.count("(not retried)") == n_bad

    exp = tmp_path / "nan"
    study = open_stored_study(exp / OPTUNA_JOURNAL, "nan")
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert [float(t.params["lr"]) for t in trials] == lrs  # the prediction was right
    # a diverged trial is PRUNED for the sampler (ranked below every completed trial)
    assert [t.state.name for t in trials] == \
        ["PRUNED" if lr == ABSURD_LR else "COMPLETE" for lr in lrs]
    assert [t.user_attrs["status"] for t in trials] == \
        ["DIVERGED" if lr == ABSURD_LR else "TERMINATED" for lr in lrs]

    table = _read_csv(exp / "report" / "trials.csv")
    assert len(table) == 4
    bad = table[table["config.lr"] == ABSURD_LR]
    good = table[table["config.lr"] == SANE_LR]
    assert len(bad) == n_bad and len(good) == 4 - n_bad
    assert (bad["status"] == "DIVERGED").all() and (bad["stopped_by"] == "diverged").all()
    # a property of the configuration, not of the cluster: never retried (default
    # --max-failures is 2)
    assert (bad["num_failures"] == 0).all()
    for error in bad["error"]:
        assert "non-finite loss" in error and "epoch 1" in error, error
    assert (good["status"] == "TERMINATED").all()
    assert good["error"].isna().all()
    assert good["best_val_rmse"].map(math.isfinite).all()
    assert (good["epochs_run"] == 2).all()
    summary = (exp / "report" / "summary.md").read_text()
    assert f"## Failures ({n_bad})" in summary and "non-finite loss" in summary
    best = yaml.safe_load((exp / "report" / "best_config.yaml").read_text())
    assert best["lr"] == SANE_LR  # a diverged configuration is never recommended


# =============================================================== 4. pre-flight failures
BAD_SPACE = """\
description: a typo in a parameter name
kind: search
budget: {num_samples: 2, max_epochs: 2, grace_period: 1, reduction_factor: 2,
         metric: val_rmse, mode: min, max_concurrent: 1}
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
base: {backbone: tiny}
parameters:
  learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-3}
"""

# --address auto is not covered: whether a cluster is "running" depends on
# /tmp/ray/ray_current_cluster, which any other `ray start` on the machine may create.
PREFLIGHT = {
    "invalid-space-file": (["--space", "{bad_space}"], "unknown parameter 'learning_rate'"),
    "unknown-space-name": (["--space", "nosuch"], "unknown search space 'nosuch'"),
    "missing-data-file": (["--space", "quick", "--data", "{tmp}/no/such.csv"],
                          "file not found"),
    "unreachable-address": (["--space", "quick", "--address", "127.0.0.1:1"],
                            "cannot reach a Ray cluster at 127.0.0.1:1"),
    "no-dashboard-on-a-cluster": (["--space", "quick", "--address", "127.0.0.1:1",
                                   "--no-dashboard"],
                                  "--no-dashboard applies to the private local instance"),
    "missing-backbone-dir": (["--space", "quick", "--backbone", "/no/such/dir"],
                             "cannot load CLIP backbone '/no/such/dir'"),
    "grace-above-max-epochs": (["--space", "quick", "--grace-period", "5",
                                "--max-epochs", "2"],
                               "--grace-period: grace_period (5) must be <= max_epochs (2)"),
    "existing-experiment": (["--space", "quick", "--name", "taken"],
                            "already exists; pass --resume"),
    # a zero is a value, never replaced by the space's default
    "zero-num-samples": (["--space", "quick", "--num-samples", "0"],
                         "--num-samples: must be >= 1, got 0"),
    "zero-max-epochs": (["--space", "quick", "--max-epochs", "0"],
                        "--max-epochs: must be >= 1, got 0"),
    "zero-grace-period": (["--space", "quick", "--grace-period", "0"],
                          "--grace-period: must be >= 1, got 0"),
    "zero-max-concurrent": (["--space", "quick", "--max-concurrent", "0"],
                            "--max-concurrent: must be >= 1, got 0"),
    # a flag is held to the rule a space file's value is held to (one validator)
    "gpus-above-one-not-whole": (["--space", "quick", "--gpus-per-trial", "1.5"],
                                 "--gpus-per-trial: Ray shares a GPU only in fractions below "
                                 "1; above 1 use a whole number, got 1.5"),
    "zero-cpus": (["--space", "quick", "--cpus-per-trial", "0"],
                  "--cpus-per-trial: must be > 0, got 0"),
    "name-leaves-storage": (["--space", "quick", "--name", "../../escape"],
                            "--name '../../escape': use one path component"),
    "object-store-storage": (["--space", "quick", "--storage", "s3://bucket/x"],
                             "object-store URIs are not supported"),
    "resume-unknown": (["--space", "quick", "--name", "nothing-here", "--resume"],
                       "is not an experiment of this tool"),
    # a file of the other task, in both directions; a yield space on a forecasting task
    "yield-space-on-forecast-file": (["--space", "quick", "--data", "{etth1}"],
                                     "looks like a forecasting file"),
    "forecast-space-on-yield-file": (["--space", "forecast", "--data", "{yield_csv}"],
                                     "looks like a yield file"),
    "yield-metric-for-forecast": (["--space", "quick", "--task", "forecast", "--data",
                                   "{etth1}"],
                                  "budget.metric val_rmse is not reported by a forecast run"),
    # --cv: values the flag or the data cannot take, each in one line before Ray starts
    "cv-one-fold": (["--space", "quick", "--cv", "1"],
                    "--cv 1: cross-validation needs at least 2 folds"),
    "cv-more-folds-than-years": (["--space", "quick", "--data", "{y2020}", "{y2021}",
                                  "{y2022}", "--split", "year", "--test-year", "2022",
                                  "--cv", "3"],
                                 "--cv 3: folds are whole years and the training data hold 2 "
                                 "(2020, 2021)"),
    "cv-years-one-training-year": (["--space", "quick", "--data", "{y2021}", "{y2022}",
                                    "--split", "year", "--test-year", "2022", "--cv", "years"],
                                   "--cv years needs at least 2 training years"),
    "cv-on-an-ablation": (["--space", "ablation", "--cv", "2"], "--cv 2 applies to a search"),
    "cv-on-forecasting": (["--space", "forecast", "--data", "{etth1}", "--cv", "3"],
                          "--cv 3 is for the yield task"),
}


@pytest.fixture(scope="module")
def preflight_runs(tmp_path_factory):
    """Every PREFLIGHT case run once, in this process."""
    root = tmp_path_factory.mktemp("preflight")
    bad_space = root / "bad.yaml"
    bad_space.write_text(BAD_SPACE)
    seasons = {f"y{p.stem[-4:]}": p for p in illinois_csvs()}

    def run(case: str) -> tuple[subprocess.CompletedProcess, float, Path]:
        args, _ = PREFLIGHT[case]
        storage = root / case
        (storage / "taken").mkdir(parents=True)
        (storage / "taken" / "search_meta.json").write_text("{}")
        args = [a.format(bad_space=bad_space, tmp=root, etth1=forecast_csv("ETTh1"),
                         yield_csv=illinois_csvs()[0], **seasons) for a in args]
        if "--name" not in args:
            args += ["--name", "fresh"]
        if "--storage" not in args:
            args += ["--storage", str(storage)]
        started = time.perf_counter()
        proc = in_process("tuner.search", args)
        return proc, time.perf_counter() - started, storage

    return {case: run(case) for case in PREFLIGHT}


@pytest.mark.parametrize("case", list(PREFLIGHT))
def test_preflight_failure_is_one_line_exit_2_without_ray(case, preflight_runs):
    proc, wall, storage = preflight_runs[case]
    print(f"\n[wall] pre-flight {case}: {wall:.1f}s")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert PREFLIGHT[case][1] in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not any(line.startswith("ray: ") for line in proc.stdout.splitlines()), proc.stdout
    import ray

    assert not ray.is_initialized()  # no Ray instance was started for it
    assert "dashboard at http" not in (proc.stdout + proc.stderr).lower()  # none started
    assert not (storage / "fresh").exists()  # nothing written for a run that never started
    assert sorted(p.name for p in storage.iterdir()) == ["taken"]  # nothing outside it either
    assert not (storage / ".." / ".." / "escape").resolve().exists()


# =============================================================== 5. --help
def test_help_lists_the_main_flags():
    proc, wall = _cli("tuner.search", "--help", timeout=60)
    print(f"\n[wall] --help: {wall:.1f}s")
    stdout = _ok(proc)
    for flag in ("--space", "--num-samples", "--gpus-per-trial", "--address", "--storage",
                 "--resume", "--cv"):
        assert flag in stdout, flag
