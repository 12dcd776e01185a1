"""The trainer contract: reports, checkpoints/resume, early stopping, NaN guard, TensorBoard."""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from timesclip.config import ABLATIONS, apply_ablation
from timesclip.errors import ConfigError, NonFiniteLossError
from timesclip.metrics import EPOCH_METRICS
from timesclip.model import TimesCLIP, load_backbone
from timesclip.train import build_optimizer, fit


def test_fit_reports_each_epoch_with_contract_names(small_bundle, tiny_config, tmp_path,
                                                    expected_params):
    seen = []

    def report(epoch, metrics, checkpoint):
        seen.append((epoch, metrics, checkpoint))

    result = fit(tiny_config, small_bundle, report=report, checkpoint_dir=tmp_path / "ck",
                 tb_dir=tmp_path / "tb")
    assert [e for e, _, _ in seen] == [1, 2, 3]
    for _, metrics, checkpoint in seen:
        assert set(EPOCH_METRICS) <= set(metrics)
        assert all(math.isfinite(metrics[k]) for k in EPOCH_METRICS)
        assert checkpoint == str(tmp_path / "ck")
    assert (tmp_path / "ck" / "last.pt").exists() and (tmp_path / "ck" / "best.pt").exists()
    assert result.epochs_run == 3 and 1 <= result.best_epoch <= 3
    assert set(result.val) == {"rmse", "mae", "r2", "mape"} and result.test is not None
    assert result.params == expected_params(tiny_config, len(small_bundle.bands))
    # the reported val metrics are those of the saved best model, scored afresh
    from timesclip.inference import evaluate_arrays, load_for_inference

    model, config, scaler, _, backbone = load_for_inference(tmp_path / "ck", device="cpu")
    fresh = evaluate_arrays(model, config, scaler, backbone, small_bundle.val.x_raw,
                            small_bundle.val.y_raw, progress=None)
    assert result.val == pytest.approx(fresh, rel=1e-6, abs=1e-9)


def test_tensorboard_tags(small_bundle, tiny_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(tiny_config.replace(epochs=2), small_bundle, tb_dir=tmp_path / "tb")
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("Loss/train", "Loss/train_regression", "Loss/train_contrastive", "Loss/val",
                "Metrics/RMSE", "Metrics/R2", "LR"):
        assert tag in tags
        assert [e.step for e in acc.Scalars(tag)] == [1, 2]


def test_resume_continues_as_if_never_stopped(small_bundle, tiny_config, tmp_path):
    config = tiny_config.replace(epochs=4, dropout=0.2)
    full = fit(config, small_bundle, checkpoint_dir=tmp_path / "full")
    with pytest.raises(Crash):
        fit(config, small_bundle, checkpoint_dir=tmp_path / "part", report=crash_after(2))
    resumed = fit(config, small_bundle, checkpoint_dir=tmp_path / "part",
                  resume_from=tmp_path / "part")
    assert resumed.epochs_run == full.epochs_run == 4
    assert [h["val_loss"] for h in resumed.history] == pytest.approx(
        [h["val_loss"] for h in full.history], rel=1e-6, abs=1e-9)
    assert resumed.val == pytest.approx(full.val, rel=1e-6)
    assert resumed.test == pytest.approx(full.test, rel=1e-6)
    # the monitor's state came back too: same best epoch, value and early-stopping count
    assert (resumed.monitor, resumed.best_epoch) == (full.monitor, full.best_epoch)
    assert resumed.best_value == pytest.approx(full.best_value, rel=1e-6)
    last = [torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("full", "part")]
    assert [(c["monitor"], c["best_epoch"], c["bad_epochs"]) for c in last] == [
        (full.monitor, full.best_epoch, full.epochs_run - full.best_epoch)] * 2


def test_non_finite_loss_raises_specific_error(small_bundle, tiny_config):
    broken = copy.deepcopy(small_bundle)
    broken.train.x[3, 0, 0] = np.nan
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        fit(tiny_config.replace(use_vision=False, use_contrastive=False), broken)


def test_early_stopping_when_nothing_improves(small_bundle, tiny_config):
    # lr far below float32 resolution: weights cannot move, so no metric ever improves
    config = tiny_config.replace(lr=1e-14, weight_decay=0.0, epochs=20, patience=2)
    result = fit(config, small_bundle, evaluate_test=False)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert result.test is None


# ----------------------------------------------------------------------------- the monitor
#: A heavy contrastive term on the small data set: val_loss is then mostly the InfoNCE
#: term, and its best epoch (12, the last) is not that of val_rmse (10) -- measured on
#: this seed: val_rmse 1.49 at epoch 10 vs 1.55 at 12, val_loss 62.12 vs 60.54. The
#: monitored best is not the last epoch, so best.pt cannot be the final weights by chance.
DIVERGING = dict(contrastive_weight=20.0, lr=3e-3, epochs=12, patience=15)


def _first_best(values: list[float], mode: str = "min") -> int:
    """1-based epoch of the best value, the earliest one on a tie (how a search picks)."""
    return int(np.argmin(values) if mode == "min" else np.argmax(values)) + 1


@pytest.fixture(scope="module")
def diverging_run(small_bundle, tiny_config, tmp_path_factory):
    """One run where the lowest val_loss and the lowest val_rmse fall on different epochs,
    with its reports, checkpoint folder and result."""
    config = tiny_config.replace(**DIVERGING)
    assert config.use_contrastive and config.monitor is None
    ckdir = tmp_path_factory.mktemp("diverging")
    reports: list[dict[str, float]] = []
    result = fit(config, small_bundle, checkpoint_dir=ckdir,
                 report=lambda epoch, metrics, ck: reports.append(metrics))
    return config, ckdir, reports, result


def test_best_checkpoint_is_the_epoch_of_the_monitored_metric(diverging_run, small_bundle):
    """best.pt, FitResult and its val metrics all follow val_rmse (the default monitor),
    not val_loss, so they are the epoch a search would select from the same reports."""
    from timesclip.inference import evaluate_arrays, load_for_inference

    config, ckdir, reports, result = diverging_run
    rmse = [m["val_rmse"] for m in reports]
    best_rmse, best_loss = _first_best(rmse), _first_best([m["val_loss"] for m in reports])
    assert best_rmse != best_loss  # or this test could not tell the two apart
    assert best_rmse < result.epochs_run  # or best.pt could hold the final weights by chance
    assert config.monitor_metric == "val_rmse" and result.monitor == "val_rmse"
    assert result.best_epoch == best_rmse and result.best_value == min(rmse)
    assert result.val["rmse"] == min(rmse)
    best = torch.load(ckdir / "best.pt", weights_only=True)
    assert (best["epoch"], best["monitor"], best["best_value"]) == (best_rmse, "val_rmse",
                                                                    min(rmse))
    assert best["metrics"] == pytest.approx(result.history[best_rmse - 1], rel=1e-12)
    # the stored weights are that epoch's: scored afresh they give its val_rmse again
    model, loaded, scaler, _, backbone = load_for_inference(ckdir, device="cpu")
    fresh = evaluate_arrays(model, loaded, scaler, backbone, small_bundle.val.x_raw,
                            small_bundle.val.y_raw, progress=None)
    assert fresh["rmse"] == pytest.approx(rmse[best_rmse - 1], rel=1e-5)
    test = evaluate_arrays(model, loaded, scaler, backbone, small_bundle.test.x_raw,
                           small_bundle.test.y_raw, progress=None)
    assert result.test == pytest.approx(test, rel=1e-5)
    saved = result.metrics_json()
    assert (saved["best_epoch"], saved["monitor"], saved["best_value"]) == (
        best_rmse, "val_rmse", min(rmse))


def test_monitor_val_loss_keeps_the_lowest_val_loss_and_trains_the_same(diverging_run,
                                                                        small_bundle):
    """--monitor changes which epoch is kept, never the training itself (the plateau
    scheduler follows val_loss either way)."""
    config, _, reports, _ = diverging_run
    result = fit(config.replace(monitor="val_loss"), small_bundle, evaluate_test=False)
    assert [h["val_loss"] for h in result.history] == [m["val_loss"] for m in reports]
    assert result.best_epoch == _first_best([m["val_loss"] for m in reports])
    assert result.best_epoch != _first_best([m["val_rmse"] for m in reports])
    assert result.monitor == "val_loss" and result.best_value == min(
        m["val_loss"] for m in reports)


def test_early_stopping_follows_the_monitor(small_bundle, tiny_config, tmp_path):
    """val_rmse stops improving after epoch 3 while val_loss still improves: the run stops
    `patience` epochs after the monitored best, and the last report says the fit ends."""
    config = tiny_config.replace(**{**DIVERGING, "patience": 2})
    reports: list[dict[str, float]] = []
    lines: list[str] = []
    result = fit(config, small_bundle, evaluate_test=False, log=lines.append,
                 report=lambda epoch, metrics, ck: reports.append(metrics))
    rmse = [m["val_rmse"] for m in reports]
    loss = [m["val_loss"] for m in reports]
    best = _first_best(rmse)
    assert result.stopped_early and result.epochs_run == best + config.patience < config.epochs
    assert result.best_epoch == best
    assert min(loss[best:]) < min(loss[:best])  # val_loss alone would have gone on
    assert [m["fit_ends"] for m in reports] == [False] * (len(reports) - 1) + [True]
    assert any(f"early stopping: val_rmse has not improved for {config.patience} epochs"
               in line for line in lines)
    starred = [int(line.split("/")[0].split()[-1]) for line in lines
               if line.startswith("epoch") and line.endswith("*")]
    assert starred == [e for e in range(1, len(rmse) + 1)
                       if rmse[e - 1] < min(rmse[:e - 1], default=math.inf)]


def test_monitor_state_compares_like_the_search():
    """Strictly better wins, the earlier epoch keeps a tie, r2 counts upwards, and a
    non-finite monitored value is a ConfigError rather than a silent 'no best'."""
    from timesclip.checkpoint import MonitorState

    rmse = MonitorState("val_rmse")
    assert [rmse.update(e, {"val_rmse": v}) for e, v in enumerate([2.0, 1.5, 1.5, 1.7], 1)
            ] == [True, True, False, False]
    assert (rmse.best_epoch, rmse.best_value, rmse.bad_epochs) == (2, 1.5, 2)
    r2 = MonitorState("val_r2")
    assert [r2.update(e, {"val_r2": v}) for e, v in enumerate([0.1, 0.3, 0.2], 1)
            ] == [True, True, False]
    assert (r2.mode, r2.best_epoch) == ("max", 2)
    with pytest.raises(ConfigError, match="val_r2 is nan at epoch 4.*--monitor"):
        r2.update(4, {"val_r2": float("nan")})


def test_monitor_must_be_a_reported_metric():
    from timesclip.config import TrainConfig

    with pytest.raises(ConfigError) as info:
        TrainConfig(monitor="val_mse")  # the forecasting metric: not reported here
    assert str(info.value) == ("monitor must be one of val_rmse, val_loss, val_mae, "
                               "val_mape, val_r2 (unset: val_rmse), got 'val_mse'")
    assert TrainConfig(monitor="val_r2").monitor_mode == "max"
    assert (TrainConfig().monitor_metric, TrainConfig().monitor_mode) == ("val_rmse", "min")


def _as_earlier_version(path: Path) -> None:
    """Rewrite a checkpoint as versions before `monitor` wrote it: last.pt kept
    best_val_loss (its monitor was val_loss), best.pt its val_loss; no monitor anywhere."""
    ck = torch.load(path, weights_only=True)
    ck["config"].pop("monitor")
    for key in ("monitor", "best_value", "metrics"):
        ck.pop(key, None)
    if path.name == "last.pt":
        ck["best_val_loss"] = min(h["val_loss"] for h in ck["history"])
    else:
        ck["val_loss"] = 1.0
    torch.save(ck, path)


def test_checkpoints_of_earlier_versions_resume_as_val_loss_and_load(small_bundle,
                                                                     tiny_config, tmp_path):
    """An earlier last.pt monitored val_loss: it resumes a val_loss run exactly, and a run
    that monitors something else refuses it in one line. An earlier best.pt still loads."""
    from timesclip.inference import evaluate_arrays, load_for_inference

    config = tiny_config.replace(epochs=4, dropout=0.2, monitor="val_loss")
    full = fit(config, small_bundle, evaluate_test=False)
    with pytest.raises(Crash):
        fit(config, small_bundle, checkpoint_dir=tmp_path / "old", report=crash_after(2))
    _as_earlier_version(tmp_path / "old" / "last.pt")
    _as_earlier_version(tmp_path / "old" / "best.pt")

    model, loaded, scaler, _, backbone = load_for_inference(tmp_path / "old", device="cpu")
    assert loaded.monitor is None  # the stored config has no such key
    scored = evaluate_arrays(model, loaded, scaler, backbone, small_bundle.val.x_raw,
                             small_bundle.val.y_raw, progress=None)
    assert scored["rmse"] == pytest.approx(
        full.history[_first_best([h["val_loss"] for h in full.history[:2]]) - 1]["val_rmse"],
        rel=1e-5)

    with pytest.raises(ConfigError) as info:
        fit(config.replace(monitor=None), small_bundle, resume_from=tmp_path / "old")
    message = str(info.value)
    assert "\n" not in message and "monitor val_loss" in message
    assert "monitors val_rmse" in message and "--monitor val_loss" in message

    resumed = fit(config, small_bundle, resume_from=tmp_path / "old", evaluate_test=False)
    assert [h["val_loss"] for h in resumed.history] == pytest.approx(
        [h["val_loss"] for h in full.history], rel=1e-6, abs=1e-9)
    assert (resumed.best_epoch, resumed.epochs_run) == (full.best_epoch, full.epochs_run)


def test_resuming_with_another_monitor_is_refused(small_bundle, tiny_config, tmp_path):
    config = tiny_config.replace(epochs=3)
    with pytest.raises(Crash):
        fit(config, small_bundle, checkpoint_dir=tmp_path, report=crash_after(1))
    with pytest.raises(ConfigError) as info:
        fit(config.replace(monitor="val_r2"), small_bundle, resume_from=tmp_path)
    assert str(info.value) == (f"{tmp_path / 'last.pt'} was trained with monitor val_rmse "
                               "but this run monitors val_r2; resume with --monitor "
                               "val_rmse or start again without resuming")


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_each_ablation_trains_and_counts_parameters(small_bundle, tiny_config, ablation,
                                                    expected_params):
    config = apply_ablation(tiny_config, ablation).replace(epochs=1)
    result = fit(config, small_bundle)
    p = result.params
    assert p == expected_params(config, len(small_bundle.bands))
    assert set(result.test) == {"rmse", "mae", "r2", "mape"}
    assert all(math.isfinite(v) for v in result.test.values())


def test_shared_features_give_the_same_run(small_bundle, tiny_config):
    from timesclip.features import compute_features

    feats = compute_features(tiny_config, small_bundle)
    assert feats["train"].shape[:2] == (len(small_bundle.train), len(small_bundle.bands))
    a = fit(tiny_config.replace(epochs=2), small_bundle)
    b = fit(tiny_config.replace(epochs=2), small_bundle, vision_features=feats)
    assert a.val == pytest.approx(b.val, rel=1e-6)
    assert a.params == b.params  # the vision tower is counted even when it was not loaded


@pytest.mark.e2e
def test_full_model_learns_on_synthetic_data():
    """E1 with the tiny backbone beats predicting the mean clearly within 10 epochs (~5 s)."""
    from timesclip.config import TrainConfig
    from timesclip.data import load_bundle

    config = TrainConfig(backbone="tiny", epochs=10, device="cpu")
    result = fit(config, load_bundle(config, None))
    assert result.test["r2"] > 0.3


# ----------------------------------------------------------------------------- checkpoints
class Crash(Exception):
    """Raised from a report callback to simulate a run killed after an epoch."""


def crash_after(n: int):
    def report(epoch, metrics, checkpoint):
        if epoch == n:
            raise Crash
    return report


def test_checkpoints_are_tensors_and_plain_data(small_bundle, tiny_config, tmp_path):
    """Both files load with weights_only=True (no pickled objects), RNG state included."""
    fit(tiny_config.replace(epochs=2), small_bundle, checkpoint_dir=tmp_path)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert last["epoch"] == 2 and best["bands"] == small_bundle.bands
    # epoch 2 is the best so far: its weights are stored once, shared by "model" and
    # "best_state" (a checkpoint is written every epoch of every trial)
    assert last["best_epoch"] == 2
    assert all(last["model"][k].untyped_storage().data_ptr()
               == last["best_state"][k].untyped_storage().data_ptr() for k in last["model"])
    assert all(torch.equal(last["model"][k], best["model"][k]) for k in best["model"])
    rng = last["rng"]
    assert isinstance(rng["numpy"]["keys"], torch.Tensor) and rng["numpy"]["keys"].shape == (624,)
    # the optimizer's tensors joined, and Python's 625 state words as one tensor:
    # torch.save pays per pickled object
    assert sorted(last["optimizer"]["packed"]) == ["exp_avg", "exp_avg_sq", "step"]
    assert rng["python"]["state"].dtype == torch.int64 and rng["python"]["state"].shape == (625,)


@pytest.mark.parametrize("form", ["tensor", "list (earlier versions)"])
def test_python_rng_state_round_trips(form):
    """set_rng_state restores Python's generator exactly, from the tensor written now and
    from the plain list that checkpoints of earlier versions hold."""
    import random

    from timesclip.checkpoint import rng_state, set_rng_state

    random.seed(123)
    random.random()
    state = rng_state()
    expected = [random.random() for _ in range(5)]
    if form != "tensor":
        state["python"]["state"] = state["python"]["state"].tolist()
    random.seed(999)
    set_rng_state(state)
    assert [random.random() for _ in range(5)] == expected


def _adam_after_steps(steps: int = 3) -> torch.optim.Adam:
    """An Adam holding state for a matrix, a vector and a 0-dim parameter."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5)),
              torch.nn.Parameter(torch.tensor(0.07))]
    opt = torch.optim.Adam(params, lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        sum((p ** 2).sum() for p in params).backward()
        opt.step()
    return opt


def _same_state(a: dict, b: dict) -> bool:
    return (a["param_groups"] == b["param_groups"] and list(a["state"]) == list(b["state"])
            and all(list(a["state"][i]) == list(b["state"][i])
                    and all(torch.equal(a["state"][i][k], b["state"][i][k])
                            and a["state"][i][k].shape == b["state"][i][k].shape
                            for k in a["state"][i]) for i in a["state"]))


def test_optimizer_state_is_packed_and_restored_exactly(tmp_path):
    """last.pt stores the optimizer's tensors joined (three instead of nine here), and
    what torch.load(weights_only=True) reads back unpacks to the same state dict."""
    from timesclip.checkpoint import pack_optimizer_state, unpack_optimizer_state

    sd = _adam_after_steps().state_dict()
    packed = pack_optimizer_state(sd)
    assert sorted(packed["packed"]) == ["exp_avg", "exp_avg_sq", "step"]
    assert packed["packed"]["exp_avg"].shape == (12 + 5 + 1,)
    torch.save(packed, tmp_path / "opt.pt")
    loaded = torch.load(tmp_path / "opt.pt", weights_only=True)
    restored = unpack_optimizer_state(loaded)
    assert _same_state(restored, sd)
    fresh = _adam_after_steps(0)
    fresh.load_state_dict(restored)  # what resume does
    assert _same_state(fresh.state_dict(), sd)
    # an unpacked state (checkpoints of earlier versions) passes through unchanged
    assert unpack_optimizer_state(sd) is sd
    broken = {**loaded, "shapes": {**loaded["shapes"], "exp_avg": [[4, 3], [5], [2]]}}
    with pytest.raises(ValueError, match="exp_avg"):
        unpack_optimizer_state(broken)


def test_large_optimizer_state_is_stored_unpacked(monkeypatch, small_bundle, tiny_config,
                                                  tmp_path):
    """Above the size limit (real-size models) joining would only copy memory: the state is
    stored as torch gives it, and resuming from it still repeats the run."""
    import timesclip.checkpoint as checkpoint_module

    sd = _adam_after_steps().state_dict()
    monkeypatch.setattr(checkpoint_module, "PACK_LIMIT_BYTES", 64)
    assert checkpoint_module.pack_optimizer_state(sd) is sd

    config = tiny_config.replace(epochs=3)
    full = fit(config, small_bundle, checkpoint_dir=tmp_path / "full")
    with pytest.raises(Crash):
        fit(config, small_bundle, checkpoint_dir=tmp_path / "part", report=crash_after(2))
    assert "packed" not in torch.load(tmp_path / "part" / "last.pt",
                                      weights_only=True)["optimizer"]
    resumed = fit(config, small_bundle, checkpoint_dir=tmp_path / "part",
                  resume_from=tmp_path / "part")
    assert [h["val_loss"] for h in resumed.history] == pytest.approx(
        [h["val_loss"] for h in full.history], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-zip", "bare-pickle"])
def test_crafted_checkpoint_never_runs_code_on_resume(small_bundle, tiny_config, tmp_path,
                                                      zip_format, crafted_checkpoint):
    # the file is live: an unrestricted torch.load runs its payload (a bare pickle is then
    # rejected for its missing magic number, but only after the code ran)
    live_marker = tmp_path / "live-marker"
    live = crafted_checkpoint(tmp_path / "live" / "last.pt", live_marker,
                                    zip_format=zip_format)
    with contextlib.suppress(RuntimeError):
        torch.load(live, weights_only=False)
    assert live_marker.exists()

    marker = tmp_path / "marker"
    crafted_checkpoint(tmp_path / "evil" / "last.pt", marker, zip_format=zip_format)
    with pytest.raises(ConfigError) as info:
        fit(tiny_config.replace(epochs=1), small_bundle, resume_from=tmp_path / "evil")
    message = str(info.value)
    assert "\n" not in message and "last.pt" in message and "not a timesclip checkpoint" in message
    assert not marker.exists()


@pytest.mark.parametrize("case", ["early-stopped", "last-epoch"])
def test_resuming_a_finished_run_trains_nothing(small_bundle, tiny_config, tmp_path, case):
    """A search that restarts a finished trial gets the same result back, with no epoch run."""
    if case == "early-stopped":  # lr below float32 resolution: stops after epoch 3 of 20
        config = tiny_config.replace(lr=1e-14, weight_decay=0.0, epochs=20, patience=2)
    else:
        config = tiny_config.replace(epochs=3, patience=5)
    first = fit(config, small_bundle, checkpoint_dir=tmp_path / "run")
    assert first.stopped_early == (case == "early-stopped") and first.epochs_run == 3
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)

    epochs_reported = []
    again = fit(config, small_bundle, checkpoint_dir=tmp_path / "again",
                resume_from=tmp_path / "run",
                report=lambda epoch, metrics, ck: epochs_reported.append(epoch))
    assert epochs_reported == []
    assert (again.best_epoch, again.epochs_run, again.stopped_early) == (
        first.best_epoch, first.epochs_run, first.stopped_early)
    assert again.history == first.history
    assert again.val == pytest.approx(first.val, rel=1e-9)
    assert again.test == pytest.approx(first.test, rel=1e-9)
    assert (again.monitor, again.best_value) == (first.monitor, first.best_value)
    # the state handed on is the finished run's, unchanged: no optimiser step was taken
    resumed = torch.load(tmp_path / "again" / "last.pt", weights_only=True)
    assert resumed["epoch"] == saved["epoch"] == 3
    assert all(torch.equal(resumed["model"][k], v) for k, v in saved["model"].items())
    assert Path(again.checkpoint_path).is_file()


@pytest.mark.parametrize("scheduler", ["plateau", "cosine"])
def test_resume_restores_the_lr_scheduler(small_bundle, tiny_config, tmp_path, scheduler):
    """The per-epoch learning rates (and val losses) of a resumed run match an uninterrupted
    one only if the scheduler's own state comes back, not just the optimiser's lr.

    plateau: an lr so small that val_loss never improves by ReduceLROnPlateau's 1e-4
    threshold, so with plateau_patience 1 the lr halves after epochs 3, 5 and 7. At the
    interruption (after epoch 4) the scheduler has counted one bad epoch since its last cut;
    a fresh scheduler would count from zero and cut a different epoch.
    """
    config = tiny_config.replace(use_vision=False, use_contrastive=False, dropout=0.2,
                                 scheduler=scheduler, epochs=8, patience=50)
    if scheduler == "plateau":
        config = config.replace(lr=1e-7, plateau_patience=1)
    full = fit(config, small_bundle, evaluate_test=False)
    lrs = [h["lr"] for h in full.history]
    assert lrs[3] < lrs[0] and lrs[7] < lrs[4]  # lr cut before and after the interruption
    with pytest.raises(Crash):
        fit(config, small_bundle, checkpoint_dir=tmp_path, report=crash_after(4))
    resumed = fit(config, small_bundle, resume_from=tmp_path, evaluate_test=False)
    assert [h["lr"] for h in resumed.history] == pytest.approx(lrs, rel=1e-12)
    assert [h["val_loss"] for h in resumed.history] == pytest.approx(
        [h["val_loss"] for h in full.history], rel=1e-6, abs=1e-9)


# ----------------------------------------------------------------------------- units, lr groups
def test_metrics_are_in_the_yields_own_units(small_bundle, tiny_config, tmp_path):
    """Recompute the validation metrics by hand from the best checkpoint's predictions,
    de-normalised with the training split's mean and standard deviation."""
    from timesclip.features import compute_features
    from timesclip.inference import load_for_inference
    from timesclip.train import predict

    result = fit(tiny_config.replace(epochs=2), small_bundle, checkpoint_dir=tmp_path)
    model, config, _, _, _ = load_for_inference(tmp_path, device="cpu")
    feats = compute_features(config, small_bundle)
    scaled, _ = predict(model, torch.tensor(small_bundle.val.x), feats["val"], batch_size=256)
    y_train, y_val = small_bundle.train.y_raw, small_bundle.val.y_raw
    assert abs(y_train.std() - 1.0) > 0.3  # or standardised and own units would look alike
    err = (scaled * y_train.std() + y_train.mean()) - y_val  # own units (t/ha)
    by_hand = {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
               "r2": float(1 - np.sum(err ** 2) / np.sum((y_val - y_val.mean()) ** 2)),
               "mape": float(100 * np.mean(np.abs(err) / np.abs(y_val)))}
    assert result.val == pytest.approx(by_hand, rel=1e-5)
    best = result.history[result.best_epoch - 1]
    assert best["val_rmse"] == pytest.approx(by_hand["rmse"], rel=1e-5)


def _groups(optimizer: torch.optim.Optimizer) -> list[tuple[float, set[int]]]:
    return [(g["lr"], {id(p) for p in g["params"]}) for g in optimizer.param_groups]


def test_fine_tuned_clip_text_gets_backbone_lr_and_nothing_else_does(small_bundle, tiny_config):
    config = tiny_config.replace(freeze_text=False, lr=1e-3, backbone_lr=1e-5)
    model = TimesCLIP(config, len(small_bundle.bands), load_backbone("tiny"))
    encoder = {id(p) for p in model.language.encoder_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert encoder and encoder <= trainable
    groups = _groups(build_optimizer(model, config))
    with_encoder = [(lr, ids) for lr, ids in groups if ids & encoder]
    assert with_encoder == [(1e-5, encoder)]  # one group, exactly the encoder, backbone_lr
    others = [(lr, ids) for lr, ids in groups if not ids & encoder]
    assert [lr for lr, _ in others] == [1e-3]
    assert others[0][1] == trainable - encoder
    # trained from scratch (E5) the same encoder shape is not pretrained: main lr for all
    scratch = apply_ablation(config, "E5")
    model = TimesCLIP(scratch, len(small_bundle.bands), load_backbone("tiny"))
    groups = _groups(build_optimizer(model, scratch))
    assert [lr for lr, _ in groups] == [1e-3]
    assert groups[0][1] == {id(p) for p in model.parameters() if p.requires_grad}


def test_fine_tuned_clip_text_trains_at_backbone_lr_in_fit(small_bundle, tiny_config, tmp_path):
    """Through fit(): a backbone_lr of 1e-12 leaves the text encoder where CLIP put it while
    lr 1e-3 moves the rest; a backbone_lr of 1e-3 moves the encoder too."""
    config = apply_ablation(tiny_config, "E4").replace(freeze_text=False, lr=1e-3,
                                                       backbone_lr=1e-12, weight_decay=0.0,
                                                       epochs=1)
    initial = TimesCLIP(config, len(small_bundle.bands), load_backbone("tiny")).state_dict()

    def moved(cfg, prefixes: tuple[str, ...]) -> float:
        """Largest change of any weight under `prefixes` after one epoch of fit()."""
        out = tmp_path / f"lr{cfg.backbone_lr:g}"
        fit(cfg, small_bundle, checkpoint_dir=out, evaluate_test=False)
        trained = torch.load(out / "last.pt", weights_only=True)["model"]
        keys = [k for k in trained if k.startswith(prefixes)]
        assert keys
        return max(float((trained[k] - initial[k]).abs().max()) for k in keys)

    encoder = ("language.encoder.", "language.final_layer_norm.")
    assert moved(config, encoder) < 1e-8
    assert moved(config, ("head.",)) > 1e-4
    assert moved(config.replace(backbone_lr=1e-3), encoder) > 1e-4


# ----------------------------------------------------------------------------- every arm learns
@pytest.fixture(scope="module")
def learn_data(tmp_path_factory):
    """320 synthetic rows, their frozen vision features computed once for every arm."""
    from timesclip.data import load_bundle, write_synthetic
    from timesclip.features import compute_features

    paths = write_synthetic(tmp_path_factory.mktemp("learn"), years=range(2016, 2020),
                            n_per_year=80, seed=3)
    from timesclip.config import TrainConfig

    config = TrainConfig(backbone="tiny", d_model=32, head_hidden=32, n_heads=4, batch_size=16,
                         epochs=6, lr=1e-3, seed=1, device="cpu")
    bundle = load_bundle(config, paths)
    return config, bundle, compute_features(config, bundle)


@pytest.mark.parametrize("arm", ["E2", "E3", "E4", "E5"])
def test_each_ablation_arm_beats_the_training_mean(learn_data, arm):
    """6 epochs on 320 rows: every arm's validation RMSE is clearly below that of predicting
    the training mean (measured: 0.75-0.85 of it; a model that learns nothing is at ~1)."""
    base, bundle, feats = learn_data
    config = apply_ablation(base, arm)
    result = fit(config, bundle, vision_features=feats if config.use_vision else None,
                 evaluate_test=False)
    mean_rmse = float(np.sqrt(np.mean((bundle.val.y_raw - bundle.train.y_raw.mean()) ** 2)))
    assert result.val["rmse"] < 0.92 * mean_rmse, (result.val["rmse"], mean_rmse)


def test_bf16_autocast_runs_changes_the_features_and_says_it_is_slow_on_cpu(
        small_bundle, tiny_config):
    """precision bf16 runs the CLIP towers under autocast: the frozen features differ from
    fp32 (bf16 rounding) but stay close, training runs, and on a CPU the run says that
    fp32 is the better choice there."""
    from timesclip.features import compute_features

    fp32 = compute_features(tiny_config, small_bundle, progress=None)
    bf16 = compute_features(tiny_config.replace(precision="bf16"), small_bundle, progress=None)
    assert not torch.equal(fp32["val"], bf16["val"])
    assert torch.allclose(fp32["val"], bf16["val"].float(), atol=0.1)
    lines: list[str] = []
    result = fit(tiny_config.replace(precision="bf16", epochs=1), small_bundle, log=lines.append)
    assert math.isfinite(result.val["rmse"])
    assert any("precision bf16 on a CPU" in line for line in lines)
    lines.clear()
    fit(tiny_config.replace(epochs=1), small_bundle, log=lines.append)
    assert not any("bf16" in line for line in lines)


def test_parameter_count_includes_the_vision_tower_whether_or_not_it_was_loaded(
        small_bundle, tiny_config):
    """A search hands fit() precomputed features and a backbone without its vision tower;
    the frozen count still includes that tower (counted on the meta device), exactly as
    when fit() loads the tower and encodes the features itself."""
    from timesclip.features import compute_features

    config = tiny_config.replace(epochs=1)
    assert config.use_vision
    own = fit(config, small_bundle)
    without_tower = load_backbone(config.backbone, need_vision=False)
    assert without_tower.vision is None
    given = fit(config, small_bundle, backbone=without_tower,
                vision_features=compute_features(config, small_bundle))
    tower = sum(p.numel() for p in load_backbone(config.backbone).vision.parameters())
    assert tower > 0 and without_tower.vision_tower_size == tower
    assert given.params == own.params and own.params["frozen"] >= tower


# ----------------------------------------------------------------------------- Training, stepped
def test_training_stepped_by_hand_is_fit(small_bundle, tiny_config, tmp_path):
    """fit() is the loop over Training: stepping one by hand reports, checkpoints and
    returns what fit() does."""
    from timesclip.train import Training

    config = tiny_config.replace(epochs=2, use_vision=False, use_contrastive=False,
                                 dropout=0.2)
    reports: list[tuple[int, dict, str | None]] = []
    fitted = fit(config, small_bundle, checkpoint_dir=tmp_path / "fit",
                 report=lambda e, m, c: reports.append((e, m, c)))
    training = Training(config, small_bundle, checkpoint_dir=tmp_path / "steps")
    rows = []
    while not training.done:
        rows.append(training.epoch())
    stepped = training.finish()
    assert [r["epoch"] for r in rows] == [e for e, _, _ in reports] == [1, 2]
    for row, (_, metrics, _) in zip(rows, reports):
        assert set(row) == set(metrics)
        assert {k: v for k, v in row.items() if k != "epoch_seconds"} == pytest.approx(
            {k: v for k, v in metrics.items() if k != "epoch_seconds"}, rel=1e-6)
    assert (stepped.best_epoch, stepped.epochs_run) == (fitted.best_epoch, fitted.epochs_run)
    assert stepped.test == pytest.approx(fitted.test, rel=1e-6)
    assert Path(stepped.checkpoint_path).is_file()
    with pytest.raises(RuntimeError, match="already ended at epoch 2"):
        training.epoch()


def test_training_runs_keep_their_own_random_state(small_bundle, tiny_config):
    """Each run restores its own RNG before an epoch: two runs stepped alternately (or
    anything drawing random numbers between two epochs) train exactly as each alone. This
    is what lets cross-validation folds advance in lockstep (timesclip.cv)."""
    import random

    from timesclip.train import Training

    config = tiny_config.replace(epochs=3, use_vision=False, use_contrastive=False,
                                 dropout=0.3)
    other = config.replace(seed=2)
    alone = [fit(c, small_bundle, evaluate_test=False) for c in (config, other)]
    runs = [Training(c, small_bundle) for c in (config, other)]
    while not runs[0].done:
        for run in runs:
            run.epoch()
            torch.rand(1000), random.random(), np.random.rand(3)  # someone else's draws
    for run, single in zip(runs, alone):
        assert [h["val_rmse"] for h in run.history] == pytest.approx(
            [h["val_rmse"] for h in single.history], rel=1e-6)


def test_stop_after_ends_a_run_early_on_its_own_schedule(small_bundle, tiny_config):
    """stop_after ends the run after that many epochs of a schedule that still spans
    config.epochs; outside 1..epochs it is refused in one line."""
    from timesclip.train import Training

    # lr below float32 resolution: nothing changes, so only keep_last makes epoch 2 "best"
    config = tiny_config.replace(epochs=4, use_vision=False, use_contrastive=False,
                                 scheduler="cosine", lr=1e-14,
                                 weight_decay=0.0)
    full = fit(config, small_bundle, evaluate_test=False)
    assert full.best_epoch == 1
    training = Training(config, small_bundle, stop_after=2, keep_last=True,
                        early_stopping=False)
    while not training.done:
        last = training.epoch()
    assert last["fit_ends"] is True and training.epochs_run == 2
    result = training.finish(evaluate_test=False)
    assert [h["lr"] for h in result.history] == [h["lr"] for h in full.history[:2]]
    assert result.best_epoch == 2  # keep_last: the last epoch is the one kept
    for bad in (0, 5):
        with pytest.raises(ConfigError) as info:
            Training(config, small_bundle, stop_after=bad)
        assert str(info.value) == f"stop_after must be an epoch in 1..4 (the config's " \
                                  f"epochs), got {bad}"
