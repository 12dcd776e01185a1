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
from timesclip.model import TimesCLIP, load_backbone
from timesclip.train import EPOCH_METRICS, build_optimizer, fit


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

    class Crash(Exception):
        pass

    def crash_after_two(epoch, metrics, checkpoint):
        if epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        fit(config, small_bundle, checkpoint_dir=tmp_path / "part", report=crash_after_two)
    resumed = fit(config, small_bundle, checkpoint_dir=tmp_path / "part",
                  resume_from=tmp_path / "part")
    assert resumed.epochs_run == full.epochs_run == 4
    assert [h["val_loss"] for h in resumed.history] == pytest.approx(
        [h["val_loss"] for h in full.history], rel=1e-6, abs=1e-9)
    assert resumed.val == pytest.approx(full.val, rel=1e-6)
    assert resumed.test == pytest.approx(full.test, rel=1e-6)


def test_non_finite_loss_raises_specific_error(small_bundle, tiny_config):
    broken = copy.deepcopy(small_bundle)
    broken.train.x[3, 0, 0] = np.nan
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        fit(tiny_config.replace(use_vision=False, use_contrastive=False), broken)


def test_early_stopping_when_val_loss_stalls(small_bundle, tiny_config):
    # lr far below float32 resolution: weights cannot move, so val_loss never improves
    config = tiny_config.replace(lr=1e-14, weight_decay=0.0, epochs=20, patience=2)
    result = fit(config, small_bundle, evaluate_test=False)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    assert result.test is None


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
    from timesclip.train import compute_features

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
    """_set_rng_state restores Python's generator exactly, from the tensor written now and
    from the plain list that checkpoints of earlier versions hold."""
    import random

    from timesclip.train import _rng_state, _set_rng_state

    random.seed(123)
    random.random()
    state = _rng_state()
    expected = [random.random() for _ in range(5)]
    if form != "tensor":
        state["python"]["state"] = state["python"]["state"].tolist()
    random.seed(999)
    _set_rng_state(state)
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
    from timesclip.train import pack_optimizer_state, unpack_optimizer_state

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
    import timesclip.train as train_module

    sd = _adam_after_steps().state_dict()
    monkeypatch.setattr(train_module, "PACK_LIMIT_BYTES", 64)
    assert train_module.pack_optimizer_state(sd) is sd

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
    assert again.best_val_loss == first.best_val_loss
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
    from timesclip.inference import load_for_inference
    from timesclip.train import compute_features, predict

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
    from timesclip.train import compute_features

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
    from timesclip.train import compute_features

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
    from timesclip.train import compute_features

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
