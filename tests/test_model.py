"""Tests of timesclip.model on CPU with the tiny backbone (no network, no pretrained weights)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from timesclip.config import ABLATIONS, TrainConfig, apply_ablation
from timesclip.errors import BackboneError
from timesclip.model import (
    TINY,
    ContrastiveLoss,
    TimesCLIP,
    check_backbone,
    compute_vision_features,
    count_parameters,
    info_nce,
    load_backbone,
    render_series,
)
from timesclip.model import backbones as backbones_module
from timesclip.model.backbones import scratch_text_model, tiny_configs
from timesclip.model.contrastive import global_contrastive, variate_contrastive
from timesclip.model.language import LanguageBranch
from timesclip.model.render import CLIP_MEAN, CLIP_STD, variate_colours
from timesclip.model.variate_selection import VariateSelection
from timesclip.model.vision import VisionProjection

V = 5  # variates in most model tests
T = 12  # input steps


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(TINY)


@pytest.fixture
def config() -> TrainConfig:
    return TrainConfig(backbone=TINY, input_steps=T, patch_length=6, stride=3, d_model=32,
                       n_heads=4, head_hidden=32, dropout=0.1)


def _series(b: int, t: int = T, v: int = V, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, v, generator=g).cumsum(dim=1)  # [B, T, V] random walks


def _ink(images: torch.Tensor) -> torch.Tensor:
    """Un-normalised images [..., 3, H, W] -> boolean ink mask [..., H, W] (not white)."""
    return (images < 0.999).any(dim=-3)


# ================================================================================ rendering
def test_render_shape_range_and_white_background():
    x = _series(4, v=3)
    raw = render_series(x, 64, normalize=False)
    assert raw.shape == (4, 3, 3, 64, 64)
    assert raw.dtype == torch.float32
    assert raw.min() >= 0.0 and raw.max() <= 1.0
    # the margin is blank: first/last rows and columns are pure white
    for border in (raw[..., 0, :], raw[..., -1, :], raw[..., :, 0], raw[..., :, -1]):
        assert torch.all(border == 1.0)
    ink = _ink(raw)
    assert ink.float().mean() < 0.3  # mostly background
    assert ink.flatten(2).any(dim=-1).all()  # every image has a line
    # the line is drawn in the variate's colour (fully covered pixels equal it exactly)
    colours = variate_colours(3)
    for v in range(3):
        pixels = raw[:, v].permute(0, 2, 3, 1).reshape(-1, 3)
        assert (pixels - colours[v]).abs().amax(dim=-1).min() < 1e-6
    # normalize=True is exactly CLIP's mean/std applied to the [0, 1] image
    norm = render_series(x, 64)
    mean = torch.tensor(CLIP_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 1, 3, 1, 1)
    torch.testing.assert_close(norm, (raw - mean) / std)
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(norm[0, 0, :, 0, 0], white)


def test_render_same_series_same_image_different_series_different_image():
    x = _series(2, v=4, seed=1)
    a = render_series(x, 64)
    b = render_series(x.clone(), 64)
    assert torch.equal(a, b)
    y = x.clone()
    y[:, 5, 2] += 3.0  # one value of one variate
    c = render_series(y, 64)
    assert not torch.equal(a[:, 2], c[:, 2])
    torch.testing.assert_close(a[:, [0, 1, 3]], c[:, [0, 1, 3]])  # other variates untouched
    assert not torch.equal(a[0], a[1])  # different samples differ


def test_render_is_scale_free_per_variate():
    x = _series(3, v=3, seed=2)
    shifted = x * torch.tensor([2.0, 0.01, 50.0]) + torch.tensor([-7.0, 3.0, 1000.0])
    torch.testing.assert_close(render_series(x, 64), render_series(shifted, 64),
                               atol=1e-3, rtol=0)


def test_render_line_follows_the_series():
    size = 64
    rising = torch.linspace(0, 1, T).view(1, T, 1)
    ink = _ink(render_series(rising, size, normalize=False))[0, 0]  # [H, W]
    rows = torch.arange(size, dtype=torch.float32)

    def centre_row(col: int) -> float:
        return float((ink[:, col].float() * rows).sum() / ink[:, col].sum())

    assert centre_row(10) > centre_row(32) > centre_row(54)  # row 0 is the top
    # a constant series is a flat line through the middle
    flat = _ink(render_series(torch.full((1, T, 1), 4.2), size, normalize=False))[0, 0]
    inked_rows = flat[:, 20].nonzero().flatten().float()
    assert abs(inked_rows.mean().item() - (size - 1) / 2) < 1.0
    assert torch.equal(flat[:, 20], flat[:, 40])


def _fastest(fn, repeats: int = 5) -> float:
    """Best-of-n wall time of fn(): the least disturbed by other processes."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_render_batch_equals_one_image_at_a_time():
    """One call for the whole batch draws exactly what drawing each sample, and each single
    image, separately draws (up to the variate's colour)."""
    x = _series(8, v=7, seed=3)
    images = render_series(x, 64, normalize=False)  # [B, V, 3, H, W]
    assert images.shape == (8, 7, 3, 64, 64)
    for k in range(8):
        assert torch.equal(images[k], render_series(x[k:k + 1], 64, normalize=False)[0])
    colours = variate_colours(7)
    first = colours[0]
    for k in (0, 5):
        for v in range(7):
            alone = render_series(x[k:k + 1, :, v:v + 1], 64, normalize=False)[0, 0]
            # a single variate is drawn in colour 0: compare the coverage (alpha) maps
            c_alone, c_batch = int((1 - first).argmax()), int((1 - colours[v]).argmax())
            alpha_alone = (1 - alone[c_alone]) / (1 - first[c_alone])
            alpha_batch = (1 - images[k, v, c_batch]) / (1 - colours[v, c_batch])
            torch.testing.assert_close(alpha_batch, alpha_alone, atol=1e-5, rtol=0)


def test_render_is_vectorised_over_samples_and_variates():
    """Rendering 32 samples x 7 bands in one call beats looping over the same images in the
    same process by a wide margin (measured with one thread: ~33x the per-image loop, ~5x
    the per-sample loop). A renderer that loops per image inside is ~1x, one that loops per
    sample ~5x the per-image loop. Small images, so per-call work, not memory, dominates."""
    x = _series(32, v=7, seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # comparable timings on a shared machine
    try:
        batch = _fastest(lambda: render_series(x, 64))
        per_sample = _fastest(lambda: [render_series(x[b:b + 1], 64) for b in range(32)])
        per_image = _fastest(lambda: [render_series(x[b:b + 1, :, v:v + 1], 64)
                                      for b in range(32) for v in range(7)])
    finally:
        torch.set_num_threads(threads)
    assert per_image / batch > 12, (per_image, batch)
    assert per_sample / batch > 2, (per_sample, batch)


def test_variate_colours_fixed_and_distinct():
    colours = variate_colours(15)
    assert colours.shape == (15, 3)
    assert colours.min() >= 0 and colours.max() <= 1
    assert torch.equal(colours[:7], variate_colours(7))
    distance = torch.cdist(colours, colours) + torch.eye(15) * 10
    assert distance.min() > 0.1
    assert (colours.min(dim=1).values < 0.8).all()  # none is near-white


# ================================================================================ language
def test_cls_sees_the_last_patch_bidirectional_not_causal(backbone, config):
    branch = LanguageBranch(backbone.text, config, pretrained=True).eval()
    with torch.no_grad():
        h = branch.embed(_series(3))  # [B*V, P+1, H]
        changed = h.clone()
        changed[:, -1] += torch.randn_like(changed[:, -1])  # only the LAST patch token
        cls = branch.encode(h)[:, 0]
        cls_changed = branch.encode(changed)[:, 0]
        assert (cls - cls_changed).abs().max() > 1e-3  # the CLS token saw the change

        # contrast: under CLIP's causal mask the first token would see nothing after it
        n = h.shape[1]
        causal = torch.full((n, n), float("-inf")).triu(1).view(1, 1, n, n)
        causal_cls = branch.encode(h, causal)[:, 0]
        causal_cls_changed = branch.encode(changed, causal)[:, 0]
        torch.testing.assert_close(causal_cls, causal_cls_changed)


def test_language_branch_shapes_and_instance_norm(backbone, config):
    branch = LanguageBranch(backbone.text, config, pretrained=True).eval()
    x = _series(4)
    out = branch(x)
    assert out.shape == (4, V, config.d_model)
    assert branch.embed(x).shape == (4 * V, config.n_patches + 1, backbone.text_config.hidden_size)
    # instance normalisation: per-sample, per-variate affine changes do not matter
    scaled = x * torch.linspace(0.5, 20, V) + 3.0
    torch.testing.assert_close(branch(scaled), out, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        branch(_series(2, t=T + 1))


def test_language_branch_does_not_alter_the_backbone(backbone, config):
    before = {k: v.clone() for k, v in backbone.text.state_dict().items()}
    flags = [p.requires_grad for p in backbone.text.parameters()]
    branch = LanguageBranch(backbone.text, config.replace(freeze_text=False), pretrained=True)
    with torch.no_grad():
        for p in branch.encoder_parameters():
            p.add_(1.0)
    LanguageBranch(backbone.text, config, pretrained=True)  # freezing copies, too
    for k, v in backbone.text.state_dict().items():
        assert torch.equal(v, before[k])
    assert [p.requires_grad for p in backbone.text.parameters()] == flags


# ================================================================================ contrastive
def _reference_info_nce(a: np.ndarray, b: np.ndarray, t: float) -> float:
    """Symmetric InfoNCE with explicit loops, float64."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    n = a.shape[0]
    logits = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            logits[i, j] = float(np.dot(a[i], b[j])) / t
    a_to_b = b_to_a = 0.0
    for i in range(n):
        a_to_b += -(logits[i, i] - math.log(sum(math.exp(logits[i, j]) for j in range(n))))
        b_to_a += -(logits[i, i] - math.log(sum(math.exp(logits[j, i]) for j in range(n))))
    return (a_to_b / n + b_to_a / n) / 2


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_contrastive_losses_match_reference(temperature):
    g = torch.Generator().manual_seed(4)
    img = torch.randn(6, 3, 8, generator=g)  # [B, V, D]
    txt = torch.randn(6, 3, 8, generator=g)
    ref_nce = _reference_info_nce(img[:, 0].numpy(), txt[:, 0].numpy(), temperature)
    assert info_nce(img[:, 0], txt[:, 0], temperature).item() == pytest.approx(ref_nce, rel=1e-4)

    ref_variate = np.mean([_reference_info_nce(img[:, v].numpy(), txt[:, v].numpy(),
                                               temperature) for v in range(3)])
    ref_global = _reference_info_nce(img.reshape(6, -1).numpy(), txt.reshape(6, -1).numpy(),
                                     temperature)
    assert variate_contrastive(img, txt, temperature).item() == pytest.approx(ref_variate,
                                                                              rel=1e-4)
    assert global_contrastive(img, txt, temperature).item() == pytest.approx(ref_global,
                                                                             rel=1e-4)
    for mode, expected in (("variate", ref_variate), ("global", ref_global),
                           ("hybrid", 0.3 * ref_variate + 0.7 * ref_global)):
        loss = ContrastiveLoss(mode, temperature, learnable=False, alpha=0.3)(img, txt)
        assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_contrastive_rewards_alignment():
    g = torch.Generator().manual_seed(5)
    img = torch.randn(8, 2, 16, generator=g)
    aligned = info_nce(img[:, 0], img[:, 0] + 0.01 * torch.randn(8, 16, generator=g), 0.07)
    shuffled = info_nce(img[:, 0], img[torch.randperm(8, generator=g), 0], 0.07)
    assert aligned < 0.1 < math.log(8) / 2 < shuffled


def test_learnable_temperature_gets_gradient_fixed_does_not():
    img, txt = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    learnable = ContrastiveLoss("hybrid", 0.07, learnable=True, alpha=0.5)
    assert learnable.temperature.item() == pytest.approx(0.07, rel=1e-5)
    learnable(img, txt).backward()
    assert learnable.logit_scale.grad is not None and learnable.logit_scale.grad.abs() > 0
    assert [n for n, _ in learnable.named_parameters()] == ["logit_scale"]

    fixed = ContrastiveLoss("hybrid", 0.07, learnable=False, alpha=0.5)
    assert list(fixed.parameters()) == []
    assert "logit_scale" in fixed.state_dict()  # a buffer: saved, never trained
    fixed(img.requires_grad_(), txt).backward()
    assert fixed.logit_scale.grad is None and not fixed.logit_scale.requires_grad

    clamped = ContrastiveLoss("variate", 0.001, learnable=True, alpha=0.5)
    assert clamped.temperature.item() == pytest.approx(0.01, rel=1e-5)  # 1/T <= 100
    with pytest.raises(ValueError, match="mode"):
        ContrastiveLoss("nope", 0.07, learnable=False, alpha=0.5)


# ================================================================================ freezing
def _loss(model: TimesCLIP, x: torch.Tensor, feats: torch.Tensor | None) -> torch.Tensor:
    out = model(x, feats)
    return out.y_pred.pow(2).mean() + 0.1 * out.contrastive_loss


def test_frozen_text_encoder_passes_gradients_but_gets_none(backbone, config):
    x = _series(4)
    feats = torch.randn(4, V, backbone.vision_config.hidden_size)
    model = TimesCLIP(config, V, backbone)
    _loss(model, x, feats).backward()
    encoder = model.language.encoder_parameters()
    assert encoder and all(not p.requires_grad and p.grad is None for p in encoder)
    tokenizer = list(model.language.tokenizer.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tokenizer)
    assert model.language.cls_token.grad.abs().sum() > 0
    assert model.pretrained_trainable_parameters() == []
    assert {id(p) for p in model.other_trainable_parameters()} == {
        id(p) for p in model.parameters() if p.requires_grad}
    model.train()
    assert not model.language.encoder.training  # frozen encoder stays in eval mode


def test_unfrozen_text_encoder_gets_gradients_and_its_own_group(backbone, config):
    x = _series(4)
    feats = torch.randn(4, V, backbone.vision_config.hidden_size)
    model = TimesCLIP(config.replace(freeze_text=False), V, backbone)
    _loss(model, x, feats).backward()
    encoder = model.language.encoder_parameters()
    assert all(p.requires_grad and p.grad is not None for p in encoder)
    assert sum(p.grad.abs().sum() for p in encoder) > 0
    pretrained = {id(p) for p in model.pretrained_trainable_parameters()}
    other = {id(p) for p in model.other_trainable_parameters()}
    assert pretrained == {id(p) for p in encoder}
    assert not pretrained & other
    assert pretrained | other == {id(p) for p in model.parameters() if p.requires_grad}
    assert model.language.encoder.training


# ================================================================================ ablations
@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_each_ablation_builds_runs_and_counts(backbone, config, ablation):
    cfg = apply_ablation(config, ablation)
    torch.manual_seed(0)
    model = TimesCLIP(cfg, V, backbone)
    x = _series(6)
    feats = torch.randn(6, V, backbone.vision_config.hidden_size) if cfg.use_vision else None
    out = model(x, feats)
    assert out.y_pred.shape == (6,)
    assert out.cls_text.shape == (6, V, cfg.d_model)
    assert out.contrastive_loss.shape == ()
    if cfg.use_contrastive:
        assert out.contrastive_loss.item() > 0
    else:
        assert out.contrastive_loss.item() == 0.0
    if cfg.use_variate_selection:
        assert out.attention.shape == (6, V, V)
    else:
        assert out.attention is None
    assert (out.cls_img is not None) == cfg.use_vision
    (out.y_pred.pow(2).mean() + out.contrastive_loss).backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert dead == []  # every trainable parameter is used

    counts = count_parameters(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    encoder_size = sum(p.numel() for p in model.language.encoder_parameters())
    names = [n for n, _ in model.named_parameters()]
    if ablation == "E4":
        assert model.vision_proj is None and not any(n.startswith("vision_proj") for n in names)
    else:
        assert any(n.startswith("vision_proj") for n in names)
    if ablation == "E5":
        assert counts["frozen"] == 0
        assert all(p.requires_grad for p in model.language.encoder_parameters())
        assert model.pretrained_trainable_parameters() == []
    else:
        assert counts["frozen"] == encoder_size


def test_ablation_parameter_counts_are_ordered(backbone, config):
    counts = {a: count_parameters(TimesCLIP(apply_ablation(config, a), V, backbone))
              for a in ABLATIONS}
    assert counts["E1"] == counts["E2"]  # a fixed temperature adds no parameter
    assert counts["E3"]["total"] < counts["E1"]["total"]  # no selection module
    assert counts["E4"]["total"] < counts["E3"]["total"]  # no vision projection, 2 streams
    assert counts["E5"]["total"] == counts["E3"]["total"]  # same shape, all trainable
    assert counts["E5"]["trainable"] == counts["E3"]["total"]


def test_vision_features_matter_and_are_required(backbone, config):
    model = TimesCLIP(config, V, backbone).eval()
    x = _series(4)
    feats = torch.randn(4, V, backbone.vision_config.hidden_size)
    with torch.no_grad():
        a = model(x, feats).y_pred
        assert torch.equal(a, model(x, feats).y_pred)  # deterministic in eval mode
        assert not torch.allclose(a, model(x, feats + 1.0).y_pred)
    with pytest.raises(ValueError, match="vision_features"):
        model(x, None)
    with pytest.raises(ValueError):
        model(x, feats[:, :2])


def test_seeded_build_and_state_dict_round_trip(backbone, config):
    cfg = apply_ablation(config, "E5")  # scratch encoder: drawn from the global RNG
    torch.manual_seed(3)
    a = TimesCLIP(cfg, V, backbone).eval()
    torch.manual_seed(3)
    b = TimesCLIP(cfg, V, backbone).eval()
    x, feats = _series(4), torch.randn(4, V, backbone.vision_config.hidden_size)
    with torch.no_grad():
        assert torch.equal(a(x, feats).y_pred, b(x, feats).y_pred)
        torch.manual_seed(4)
        c = TimesCLIP(cfg, V, backbone).eval()
        assert not torch.equal(a(x, feats).y_pred, c(x, feats).y_pred)
        c.load_state_dict(a.state_dict())
        assert torch.equal(a(x, feats).y_pred, c(x, feats).y_pred)


def test_learnable_temperature_in_the_model(backbone, config):
    model = TimesCLIP(config.replace(learnable_temperature=True), V, backbone)
    assert any(p is model.contrastive.logit_scale for p in model.other_trainable_parameters())
    feats = torch.randn(4, V, backbone.vision_config.hidden_size)
    _loss(model, _series(4), feats).backward()
    assert model.contrastive.logit_scale.grad is not None


# ================================================================================ selection
def test_variate_selection_attention_rows_sum_to_one():
    torch.manual_seed(0)
    selection = VariateSelection(d_model=16, n_heads=4, dropout=0.1).eval()
    fused = torch.randn(3, 7, 16)
    selected, attention = selection(fused)
    assert selected.shape == (3, 7, 16)
    assert attention.shape == (3, 7, 7)
    assert (attention >= 0).all()
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(3, 7))
    # the gate mixes attended and fused: the output is not the input
    assert not torch.allclose(selected, fused)


def test_variate_selection_gate_formula_by_hand():
    """selected = g * attended + (1 - g) * fused with g = sigmoid(W [fused, attended] + b),
    and attention across the variate axis, recomputed from the module's own weights."""
    torch.manual_seed(0)
    b, v, d, heads = 3, 5, 16, 4
    selection = VariateSelection(d_model=d, n_heads=heads, dropout=0.0).eval()
    with torch.no_grad():
        selection.gate.bias.fill_(1.5)  # g ~ 0.8: swapping g and 1 - g would show
    fused = torch.randn(b, v, d)
    with torch.no_grad():
        selected, weights = selection(fused)

    mha = selection.attention
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)

    def split(t: torch.Tensor) -> torch.Tensor:  # [B, V, D] -> [B, heads, V, D/heads]
        return t.reshape(b, v, heads, d // heads).transpose(1, 2)

    with torch.no_grad():
        q, k, val = (split(fused @ w_q.T + b_q), split(fused @ w_k.T + b_k),
                     split(fused @ w_v.T + b_v))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        mixed = (probs @ val).transpose(1, 2).reshape(b, v, d)  # probs [B, heads, V, V]
        attended = mixed @ mha.out_proj.weight.T + mha.out_proj.bias  # [B, V, D]
        g = torch.sigmoid(torch.cat([fused, attended], dim=-1) @ selection.gate.weight.T
                          + selection.gate.bias)
    assert 0.6 < float(g.mean()) < 0.95
    torch.testing.assert_close(weights, probs.mean(dim=1))
    torch.testing.assert_close(selected, g * attended + (1 - g) * fused)


def _before_affine(out: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    return (out - norm.bias) / norm.weight


def test_vision_projection_is_linear_then_layernorm(backbone, config):
    """Structure (Linear -> LayerNorm over d_model) and behaviour: CLS_img of the assembled
    model has zero mean and unit variance per token before the LayerNorm's affine part."""
    model = TimesCLIP(config, V, backbone).eval()
    proj = model.vision_proj
    assert isinstance(proj, VisionProjection)
    assert [type(m) for m in proj.children()] == [nn.Linear, nn.LayerNorm]
    assert proj.norm.normalized_shape == (config.d_model,)
    with torch.no_grad():  # a non-trivial affine part, so it must be taken off to see N(0, 1)
        proj.norm.weight.uniform_(0.5, 2.0)
        proj.norm.bias.uniform_(-1.0, 1.0)
        feats = torch.randn(4, V, backbone.vision_config.hidden_size) * 5 + 3
        z = _before_affine(model(_series(4), feats).cls_img, proj.norm)  # [B, V, D]
    torch.testing.assert_close(z.mean(-1), torch.zeros(4, V), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(-1, unbiased=False), torch.ones(4, V), atol=1e-3, rtol=0)


def test_patch_tokenizer_is_linear_layernorm_gelu(backbone, config):
    """Structure (Linear -> LayerNorm -> GELU) and behaviour: the tokens equal
    gelu(layer_norm(linear(patch))) from the module's own weights, GELU's range shows in the
    embeddings the encoder receives, and per token the values before GELU are normalised."""
    branch = LanguageBranch(backbone.text, config, pretrained=True).eval()
    tok = branch.tokenizer
    width = backbone.text_config.hidden_size
    assert [type(m) for m in tok] == [nn.Linear, nn.LayerNorm, nn.GELU]
    assert tok[1].normalized_shape == (width,)
    with torch.no_grad():
        tok[1].weight.uniform_(0.5, 2.0)
        tok[1].bias.uniform_(-1.0, 1.0)
        patches = torch.randn(2, V, config.n_patches, config.patch_length) * 3  # [B,V,P,L]
        out = tok(patches)  # [B, V, P, H]
        pre = F.layer_norm(F.linear(patches, tok[0].weight, tok[0].bias), (width,))
        torch.testing.assert_close(out, F.gelu(pre * tok[1].weight + tok[1].bias))
        torch.testing.assert_close(pre.mean(-1), torch.zeros(pre.shape[:-1]), atol=1e-5,
                                   rtol=0)
        torch.testing.assert_close(pre.var(-1, unbiased=False), torch.ones(pre.shape[:-1]),
                                   atol=1e-3, rtol=0)
        # what the encoder sees: tokens (after the CLS) minus positions are GELU outputs
        tokens = branch.embed(_series(3))[:, 1:] - branch.position[:, 1:]  # [B*V, P, H]
    gelu_min = -0.1700  # min of x * Phi(x), at x ~ -0.75
    assert float(tokens.min()) >= gelu_min and bool((tokens < -0.05).any())


# ================================================================================ backbones
def test_tiny_backbone_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = load_backbone(TINY)
    b = load_backbone(TINY)
    assert torch.equal(torch.get_rng_state(), state)
    for module_a, module_b in ((a.text, b.text), (a.vision, b.vision)):
        sa, sb = module_a.state_dict(), module_b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.image_size == 64
    assert a.text_config.hidden_size == 64
    assert not any(p.requires_grad for p in a.vision.parameters())  # frozen by design
    no_vision = load_backbone(TINY, need_vision=False)
    assert no_vision.vision is None
    assert all(torch.equal(v, a.text.state_dict()[k])
               for k, v in no_vision.text.state_dict().items())
    check_backbone(TINY)  # no error


def test_scratch_text_model_same_shape_fresh_weights(backbone):
    scratch = scratch_text_model(backbone.text_config)
    ours, theirs = scratch.state_dict(), backbone.text.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    weight = "encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(ours[weight], theirs[weight])


def _assert_one_line_backbone_error(excinfo, *needles: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith("cannot load CLIP backbone")
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize("fn", [check_backbone, load_backbone])
def test_missing_local_directory_is_a_backbone_error(tmp_path, fn):
    missing = str(tmp_path / "no-such-clip")
    with pytest.raises(BackboneError) as excinfo:
        fn(missing)
    _assert_one_line_backbone_error(excinfo, missing, "no such directory", "tiny")
    with pytest.raises(BackboneError) as excinfo:
        fn(str(tmp_path))  # exists, but holds no checkpoint
    _assert_one_line_backbone_error(excinfo, "config.json")


@pytest.mark.parametrize("fn", [check_backbone, load_backbone])
def test_uncached_hub_id_offline_is_a_fast_backbone_error(monkeypatch, fn):
    # set after import: the loader must read the variable at call time
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "timesclip-tests/no-such-clip"  # never in anyone's cache
    start = time.perf_counter()
    with pytest.raises(BackboneError) as excinfo:
        fn(name)
    assert time.perf_counter() - start < 10
    _assert_one_line_backbone_error(excinfo, name, "offline", "HF_HOME", "--backbone tiny")


def test_unreachable_hub_fails_without_waiting_for_retries(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(backbones_module, "_hub_unreachable",
                        lambda: "the Hugging Face Hub (huggingface.co) is unreachable (test)")
    with pytest.raises(BackboneError) as excinfo:
        check_backbone("timesclip-tests/no-such-clip")
    _assert_one_line_backbone_error(excinfo, "timesclip-tests/no-such-clip", "unreachable")


def _save_tiny_clip(path) -> None:
    from transformers import CLIPConfig, CLIPModel

    text, vision = tiny_configs()
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                        projection_dim=16)
    torch.manual_seed(7)
    CLIPModel(config).save_pretrained(str(path))


def test_local_clip_checkpoint_loads_both_towers(tmp_path):
    from transformers import CLIPModel

    _save_tiny_clip(tmp_path)
    check_backbone(str(tmp_path))
    loaded = load_backbone(str(tmp_path))
    reference = CLIPModel.from_pretrained(str(tmp_path))
    assert loaded.name == str(tmp_path) and loaded.image_size == 64
    for ours, theirs in ((loaded.text, reference.text_model),
                         (loaded.vision, reference.vision_model)):
        sa, sb = ours.state_dict(), theirs.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not loaded.text.training and not loaded.vision.training


def test_non_clip_checkpoint_is_a_backbone_error(tmp_path):
    from transformers import CLIPTextModel

    CLIPTextModel(tiny_configs()[0]).save_pretrained(str(tmp_path))
    with pytest.raises(BackboneError) as excinfo:
        load_backbone(str(tmp_path))
    _assert_one_line_backbone_error(excinfo, "clip_text_model")


# ================================================================================ vision
def test_compute_vision_features_shape_determinism_and_batching(backbone):
    x = _series(7, v=3, seed=6).numpy()
    calls = []
    a = compute_vision_features(x, backbone.vision, image_size=backbone.image_size,
                                image_batch=4, progress=calls.append)
    hidden = backbone.vision_config.hidden_size
    assert a.shape == (7, 3, hidden) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert calls == [4, 4, 4, 4, 4, 1]  # images per tower call: 21 = 5 * 4 + 1
    b = compute_vision_features(torch.from_numpy(x), backbone.vision,
                                image_size=backbone.image_size, image_batch=64)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(b, compute_vision_features(x, backbone.vision,
                                                  image_size=backbone.image_size))
    # it is the tower's pooled output on the rendered images
    with torch.no_grad():
        images = render_series(torch.from_numpy(x[:1]), backbone.image_size)[0]  # [V,3,H,W]
        pooled = backbone.vision(pixel_values=images).pooler_output
    torch.testing.assert_close(a[0], pooled, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[0], a[1])  # different series, different features
    assert not backbone.vision.training


def test_compute_vision_features_other_image_size(backbone):
    x = _series(2, v=2, seed=8)
    out = compute_vision_features(x, backbone.vision, image_size=96)
    assert out.shape == (2, 2, backbone.vision_config.hidden_size)
    assert torch.isfinite(out).all()
