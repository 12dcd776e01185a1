"""The forecasting model (the paper's Fig. 2) and the TrainConfig fields of the task.

Shapes of every new module, RevIN's round trip and the de-normalisation at the output, the
cross-attention variate selection asking with the text [CLS], the ablation switches, and the
one-line refusals of settings that belong to the other task.
"""

from __future__ import annotations

import pytest
import torch

from timesclip.config import (
    ABLATIONS,
    FORECAST_ONLY,
    TASK_DEFAULTS,
    YIELD_ONLY,
    TrainConfig,
    apply_ablation,
)
from timesclip.errors import ConfigError
from timesclip.model import TimesCLIP, load_backbone
from timesclip.model.cross_selection import CrossVariateSelection
from timesclip.model.forecast_head import ForecastHead
from timesclip.model.language import LanguageBranch
from timesclip.model.revin import denormalise, instance_norm

B, L, H, V, D = 3, 48, 24, 5, 32


def forecast_config(**changes) -> TrainConfig:
    return TrainConfig(task="forecast", backbone="tiny", lookback=L, horizon=H, d_model=D,
                       n_heads=4, device="cpu", seed=3, **changes)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny")


def feats(backbone, b: int = B) -> torch.Tensor:
    return torch.randn(b, V, backbone.vision_config.hidden_size).half()  # [B, V, Hv] fp16


# ----------------------------------------------------------------------------- pieces
def test_revin_round_trip_and_statistics():
    series = torch.randn(B, V, L) * 7 + 3  # [B, V, L]
    normed, mean, std = instance_norm(series)
    assert normed.shape == (B, V, L) and mean.shape == std.shape == (B, V, 1)
    torch.testing.assert_close(normed.mean(-1), torch.zeros(B, V), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.std(-1, unbiased=False), torch.ones(B, V), atol=1e-4,
                               rtol=0)
    torch.testing.assert_close(denormalise(normed, mean, std), series, atol=1e-4, rtol=1e-5)
    flat, _, flat_std = instance_norm(torch.full((1, 1, L), 4.0))  # constant: finite
    assert torch.isfinite(flat).all() and flat.abs().max() == 0 and flat_std.item() > 0


def test_cross_selection_shapes_and_rows():
    module = CrossVariateSelection(D, 4, dropout=0.0).eval()
    query, tokens = torch.randn(B, V, D), torch.randn(B, V, D)
    selected, attention = module(query, tokens)
    assert selected.shape == (B, V, D)  # [B, V, D]
    assert attention.shape == (B, V, V)  # [B, V, V]
    torch.testing.assert_close(attention.sum(-1), torch.ones(B, V))


def test_cross_selection_attention_is_the_query_against_the_tokens():
    """The weights are softmax(q k^T / sqrt(d)) of the module's own projections: the first
    argument is the query (a swapped call gives other weights)."""
    module = CrossVariateSelection(D, 1, dropout=0.0).eval()
    query, tokens = torch.randn(B, V, D), torch.randn(B, V, D)
    _, attention = module(query, tokens)
    w, b = module.attention.in_proj_weight, module.attention.in_proj_bias
    q = query @ w[:D].T + b[:D]  # [B, V, D]
    k = tokens @ w[D:2 * D].T + b[D:2 * D]
    expected = torch.softmax(q @ k.transpose(1, 2) / D ** 0.5, dim=-1)  # [B, V, V]
    torch.testing.assert_close(attention, expected, atol=1e-5, rtol=1e-4)
    _, swapped = module(tokens, query)
    assert not torch.allclose(swapped, expected, atol=1e-3)


def test_forecast_head_shapes():
    head = ForecastHead(n_patches=5, d_model=D, horizon=H, dropout=0.0)
    out = head(torch.randn(B, V, 5, D), torch.randn(B, V, D))  # [B, V, P, D], [B, V, D]
    assert out.shape == (B, V, H)  # [B, V, H]
    assert head.proj.in_features == (5 + 1) * D  # flatten + linear, shared by variates


def test_language_patch_tokens(backbone):
    config = forecast_config()
    branch = LanguageBranch(backbone.text, config, pretrained=True)
    assert config.n_patches == (L - 16) // 8 + 1  # the forecast default patches 16/8
    series, _, _ = instance_norm(torch.randn(B, V, L))
    cls, patches = branch.forward_tokens(series)
    assert cls.shape == (B, V, D)  # [B, V, D]
    assert patches.shape == (B, V, config.n_patches, D)  # [B, V, P, D]
    # the [CLS] is the yield path's [CLS] of the same (already normalised) window
    torch.testing.assert_close(cls, branch(series.permute(0, 2, 1)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=f"\\[B, V, {L}\\]"):
        branch.forward_tokens(torch.randn(B, V, L + 1))


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("arm", sorted(ABLATIONS))
def test_each_arm_forecasts_every_variate(backbone, arm):
    config = apply_ablation(forecast_config(), arm)
    model = TimesCLIP(config, V, backbone).eval()
    x = torch.randn(B, L, V)  # [B, L, V]
    out = model(x, feats(backbone) if config.use_vision else None)
    assert out.y_pred.shape == (B, H, V)  # [B, H, V]
    assert out.cls_text.shape == (B, V, D)
    assert (out.attention is None) == (not config.use_variate_selection)
    if out.attention is not None:
        assert out.attention.shape == (B, V, V)
        torch.testing.assert_close(out.attention.sum(-1), torch.ones(B, V))
    assert (out.cls_img is None) == (not config.use_vision)
    assert (float(out.contrastive_loss.detach()) > 0) == config.use_contrastive


def test_output_is_denormalised_into_each_windows_level_and_spread(backbone):
    """RevIN: a window shifted by c and scaled by s is forecast as s * forecast + c (the
    language-only arm, whose every input passes the normalisation)."""
    model = TimesCLIP(apply_ablation(forecast_config(), "E4"), V, backbone).eval()
    x = torch.randn(B, L, V)
    with torch.no_grad():
        base = model(x, None).y_pred  # [B, H, V]
        moved = model(x * 3.0 + 10.0, None).y_pred
    torch.testing.assert_close(moved, base * 3.0 + 10.0, atol=2e-3, rtol=1e-4)
    assert (base.mean() - moved.mean()).abs() > 5  # not normalised away


@pytest.mark.parametrize("arm", ["E1", "E4"])
def test_the_last_value_anchor_starts_at_the_naive_forecast(backbone, arm):
    """forecast_anchor last: an untrained model repeats each variate's last value exactly
    (the head starts at zero, its output is added to the last value), and training moves
    it away from there; the default (mean) starts elsewhere."""
    torch.manual_seed(0)
    config = apply_ablation(forecast_config(forecast_anchor="last"), arm)
    model = TimesCLIP(config, V, backbone).eval()
    x = torch.randn(B, L, V) * 2 + 5  # [B, L, V]
    vision = feats(backbone) if config.use_vision else None
    with torch.no_grad():
        out = model(x, vision).y_pred  # [B, H, V]
    naive = x[:, -1:, :].expand(B, H, V)  # the last step repeated
    torch.testing.assert_close(out, naive, atol=1e-4, rtol=1e-5)

    model.train()
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    target = torch.randn(B, H, V)
    for _ in range(2):  # two steps: the first moves only the head, the second the rest too
        optimiser.zero_grad()
        torch.nn.functional.mse_loss(model(x, vision).y_pred, target).backward()
        optimiser.step()
    with torch.no_grad():
        assert not torch.allclose(model.eval()(x, vision).y_pred, naive, atol=1e-3)

    mean_model = TimesCLIP(apply_ablation(forecast_config(), arm), V, backbone).eval()
    with torch.no_grad():
        assert not torch.allclose(mean_model(x, vision).y_pred, naive, atol=1e-2)


def test_cross_selection_asks_with_the_text_cls(backbone):
    """E1 with the paper's selection: the query handed to the attention is the text [CLS],
    not the image [CLS]; keys and values are the fused tokens (image + text)."""
    model = TimesCLIP(forecast_config(), V, backbone).eval()
    assert isinstance(model.selection, CrossVariateSelection)
    seen = {}

    def spy(_module, args, kwargs):
        seen["query"], seen["key"] = args[0].detach().clone(), args[1].detach().clone()

    handle = model.selection.attention.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        out = model(torch.randn(B, L, V), feats(backbone))
    finally:
        handle.remove()
    torch.testing.assert_close(seen["query"], out.cls_text)
    assert not torch.allclose(seen["query"], out.cls_img, atol=1e-3)
    torch.testing.assert_close(seen["key"], out.cls_img + out.cls_text)


def test_gate_selection_is_the_other_option(backbone):
    from timesclip.model.variate_selection import VariateSelection

    gate = TimesCLIP(forecast_config(variate_selection="gate"), V, backbone)
    assert isinstance(gate.selection, VariateSelection)
    assert gate(torch.randn(B, L, V), feats(backbone)).y_pred.shape == (B, H, V)
    yield_cross = TimesCLIP(TrainConfig(backbone="tiny", d_model=D, variate_selection="cross"),
                            V, backbone)
    assert isinstance(yield_cross.selection, CrossVariateSelection)
    assert yield_cross(torch.randn(B, 12, V), feats(backbone)).y_pred.shape == (B,)


def test_a_window_of_another_length_is_refused(backbone):
    model = TimesCLIP(forecast_config(), V, backbone)
    with pytest.raises(ValueError, match="expected"):
        model(torch.randn(B, L - 1, V), feats(backbone))


# ----------------------------------------------------------------------------- config
def test_task_defaults_resolve_per_task():
    yield_config, forecast = TrainConfig(), TrainConfig(task="forecast")
    assert (yield_config.resolved("patch_length"), yield_config.resolved("stride")) == (6, 3)
    assert yield_config.monitor_metric == "val_rmse"
    assert yield_config.resolved("variate_selection") == "gate"
    assert (forecast.resolved("patch_length"), forecast.resolved("stride")) == (16, 8)
    assert forecast.monitor_metric == "val_mse" and forecast.monitor_mode == "min"
    assert forecast.resolved("variate_selection") == "cross"
    assert forecast.window_steps == 96 and forecast.n_patches == 11
    assert forecast.replace(patch_length=12, stride=6).n_patches == 15  # given values win
    assert TASK_DEFAULTS["forecast"]["monitor"] == "val_mse"
    # the tiny tower draws forecasting windows at 32 px unless image_size says otherwise
    assert forecast.replace(backbone="tiny").image_px(64) == 32
    assert forecast.replace(backbone="tiny", image_size=48).image_px(64) == 48
    assert forecast.image_px(224) == 224 and TrainConfig(backbone="tiny").image_px(64) == 64


@pytest.mark.parametrize("field, value", [(f, v) for f, v in [
    ("input_steps", 10), ("split", "year"), ("split_seed", 7), ("val_fraction", 0.2),
    ("test_fraction", 0.2), ("bands", ["OT"]), ("head_hidden", 64)]])
def test_yield_only_fields_are_refused_for_forecast(field, value):
    assert field in YIELD_ONLY
    with pytest.raises(ConfigError, match=f"^{field} .*only applies to the yield task.*"
                                          "'forecast': drop it"):
        TrainConfig(task="forecast", **{field: value})


@pytest.mark.parametrize("field, value", [("lookback", 48), ("horizon", 192),
                                          ("train_stride", 4), ("borders", "ratio"),
                                          ("forecast_anchor", "last")])
def test_forecast_only_fields_are_refused_for_yield(field, value):
    assert field in FORECAST_ONLY
    with pytest.raises(ConfigError, match=f"^{field} .*only applies to the forecast task.*"
                                          "add --task forecast"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("changes, message", [
    (dict(task="forecast", monitor="val_rmse"),
     "monitor must be one of val_loss, val_mae, val_mse .*forecast"),
    (dict(monitor="val_mse"), "monitor must be one of val_rmse, val_loss, val_mae, val_mape"),
    (dict(task="forecast", patch_length=100), r"patch_length \(100\) must be <= lookback"),
    (dict(task="forecast", lookback=8), r"patch_length \(16\) must be <= lookback \(8\)"),
    (dict(task="forecast", horizon=0), "horizon must be an integer >= 1"),
    (dict(task="forecast", train_stride=0), "train_stride must be an integer >= 1"),
    (dict(task="forecast", borders="months"), "borders must be one of auto, etth"),
    (dict(task="predict"), "task must be one of yield, forecast"),
    (dict(task="forecast", forecast_anchor="first"), "forecast_anchor must be one of mean, last"),
    (dict(variate_selection="both"), "variate_selection must be one of gate, cross"),
])
def test_bad_forecast_settings_are_one_line(changes, message):
    with pytest.raises(ConfigError, match=message) as info:
        TrainConfig(**changes)
    assert "\n" not in str(info.value)


def test_a_forecast_config_round_trips_through_yaml(tmp_path):
    config = forecast_config(train_stride=4, borders="ratio", variate_selection="gate",
                             patch_length=12, stride=6, forecast_anchor="last")
    config.to_yaml(tmp_path / "c.yaml", provenance={"experiment": "x"})
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == config
