"""The vision pass: features independent of the image batch, bounded tower calls, progress.

Tiny backbone (the real transformers CLIP code at toy size) on CPU; every test runs in
well under a second or two.
"""

from __future__ import annotations

import io

import pytest
import torch
from transformers import CLIPVisionConfig

from timesclip.model import TINY, load_backbone, render_series
from timesclip.model import vision as vision_module
from timesclip.model.vision import (
    CPU_MEMORY_BUDGET,
    IMAGE_BATCH_ENV,
    MAX_IMAGE_BATCH,
    compute_vision_features,
    default_image_batch,
    image_bytes_estimate,
)
from timesclip.progress import PROGRESS_ENV, LineProgress, progress_bar

T = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(TINY)


def _series(n: int, v: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, T, v, generator=g).cumsum(dim=1)  # [N, T, V] random walks


def _reference(x: torch.Tensor, vision, size: int) -> torch.Tensor:
    """Each sample's images through the tower on their own: [N, V, Hv]."""
    with torch.no_grad():
        return torch.stack([vision(pixel_values=render_series(x[i:i + 1], size)[0]).pooler_output
                            for i in range(len(x))])


# ----------------------------------------------------------------------------- features
@pytest.mark.parametrize("bands", [1, 3, 7])
def test_features_do_not_depend_on_the_image_batch(backbone, bands):
    n = 5
    x = _series(n, bands, seed=bands)
    size = backbone.image_size
    expected = _reference(x, backbone.vision, size)
    # 1 image per call, batches that do not divide N*V (and straddle samples), exactly
    # N*V, and more than N*V
    for batch in sorted({1, 3, 4, 7, n * bands, n * bands + 5}):
        got = compute_vision_features(x, backbone.vision, image_size=size, image_batch=batch)
        assert got.shape == (n, bands, backbone.vision_config.hidden_size)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5,
                                   msg=lambda m, b=batch: f"image_batch {b}: {m}")


def test_features_at_a_non_native_image_size_do_not_depend_on_the_batch(backbone):
    x = _series(3, 4, seed=9)
    a = compute_vision_features(x, backbone.vision, image_size=96, image_batch=5)
    b = compute_vision_features(x, backbone.vision, image_size=96, image_batch=12)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_features_are_normal_tensors_usable_in_training(backbone):
    # inference_mode tensors cannot be saved for backward; the features feed a trainable layer
    feats = compute_vision_features(_series(2, 3), backbone.vision,
                                    image_size=backbone.image_size, image_batch=4)
    assert not feats.is_inference()
    layer = torch.nn.Linear(feats.shape[-1], 1)
    layer(feats).sum().backward()
    assert layer.weight.grad is not None


# ----------------------------------------------------------------------------- memory bound
def test_no_tower_call_and_no_render_exceeds_the_image_batch(backbone, monkeypatch):
    seen_tower: list[int] = []
    seen_render: list[int] = []

    def count_pixels(module, args, kwargs, output):
        seen_tower.append(int(kwargs["pixel_values"].shape[0]))

    real_render = vision_module.render_lines

    def counting_render(series, variate, *args, **kwargs):
        seen_render.append(int(series.shape[0]))
        return real_render(series, variate, *args, **kwargs)

    monkeypatch.setattr(vision_module, "render_lines", counting_render)
    handle = backbone.vision.register_forward_hook(count_pixels, with_kwargs=True)
    try:
        n, v = 6, 7
        compute_vision_features(_series(n, v), backbone.vision,
                                image_size=backbone.image_size, image_batch=8)
        assert seen_tower == [8, 8, 8, 8, 8, 2] and seen_render == seen_tower
        seen_tower.clear()
        seen_render.clear()
        # the default comes from the environment override when set (e.g. in a Ray task)
        monkeypatch.setenv(IMAGE_BATCH_ENV, "5")
        compute_vision_features(_series(n, v), backbone.vision, image_size=backbone.image_size)
        assert max(seen_tower) == 5 and sum(seen_tower) == n * v
        assert max(seen_render) == 5
    finally:
        handle.remove()


def test_default_image_batch_comes_from_a_memory_budget(monkeypatch):
    monkeypatch.delenv(IMAGE_BATCH_ENV, raising=False)
    b16 = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=16)
    per_image = image_bytes_estimate(b16, 224)
    assert 8 * 2**20 < per_image < 32 * 2**20  # the order of ViT-B/16's activations per image
    cpu = default_image_batch("cpu", b16, 224)
    assert cpu == 8 and cpu * per_image <= CPU_MEMORY_BUDGET
    # a bigger image costs more per image, so fewer go into one call
    assert default_image_batch("cpu", b16, 448) < cpu
    # CUDA: half of the free memory; capped
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * 2**30, 80 * 2**30))
    small = default_image_batch("cuda", b16, 224)
    assert 8 <= small and small * per_image <= 2 * 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**40, 2**41))
    assert default_image_batch("cuda", b16, 224) == MAX_IMAGE_BATCH
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 2**41))
    assert default_image_batch("cuda", b16, 224) == 1
    monkeypatch.setenv(IMAGE_BATCH_ENV, "0")
    with pytest.raises(ValueError, match=IMAGE_BATCH_ENV):
        default_image_batch("cpu", b16, 224)


# ----------------------------------------------------------------------------- progress
def _lines(text: str) -> list[str]:
    assert text.endswith("\n") and "\r" not in text  # whole lines only, no redraws
    return text.splitlines()


def test_line_mode_prints_a_line_every_tenth_and_one_at_100_percent(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    out = io.StringIO()  # not a terminal: line mode
    with progress_bar(250, "shared features (search)", unit="img", file=out) as bar:
        assert isinstance(bar, LineProgress)
        for _ in range(250):
            bar.update(1)
    lines = _lines(out.getvalue())
    assert len(lines) == 10
    assert all(line.startswith("shared features (search): ") for line in lines)
    assert [line.split(":")[1].split("%")[0].strip() for line in lines] == \
        [str(p) for p in range(10, 101, 10)]
    assert "250/250 img" in lines[-1] and "img/s" in lines[-1]


def test_line_mode_with_coarse_updates_and_closing_early(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    out = io.StringIO()
    with progress_bar(1000, "pass", unit="img", file=out) as bar:
        for step in (350, 350, 300):  # jumps over several tenths: one line per update
            bar.update(step)
    lines = _lines(out.getvalue())
    assert [line.split()[1] for line in lines] == ["35%", "70%", "100%"]
    out = io.StringIO()
    with pytest.raises(RuntimeError), progress_bar(10, "broken", file=out) as bar:
        for _ in range(5):
            bar.update(1)
        raise RuntimeError  # a failed step: no 100 % line claims it finished
    assert [line.split()[1] for line in _lines(out.getvalue())] == \
        ["10%", "20%", "30%", "40%", "50%"]


def test_quiet_modes(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    out = io.StringIO()
    with progress_bar(10, "fast", file=out, delay=60) as bar:  # done before the delay
        bar.update(10)
    with progress_bar(10, None, file=out) as bar:  # no label: no output
        bar.update(10)
    monkeypatch.setenv(PROGRESS_ENV, "off")
    with progress_bar(10, "off", file=out) as bar:
        bar.update(10)
    assert out.getvalue() == ""


def test_terminal_gets_a_tqdm_bar(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    with progress_bar(10, "vision features", unit="img", file=out) as bar:
        assert not isinstance(bar, LineProgress)
        bar.update(10)
    assert "\r" in out.getvalue() and "10/10" in out.getvalue()
    monkeypatch.setenv(PROGRESS_ENV, "lines")  # forced line mode on a terminal
    assert isinstance(progress_bar(1, "x", file=Terminal()), LineProgress)


def test_compute_features_reports_progress_to_100_percent(small_bundle, tiny_config,
                                                          monkeypatch):
    import timesclip.features as features

    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    monkeypatch.setattr(features, "QUIET_SECONDS", 0.0)  # the tiny pass is faster than the delay
    out, logged = io.StringIO(), []
    feats = features.compute_features(tiny_config, small_bundle, log=logged.append,
                                   image_batch=16, progress="search: vision features",
                                   progress_file=out)
    n = sum(len(getattr(small_bundle, s)) for s in ("train", "val", "test"))
    total = n * len(small_bundle.bands)
    lines = _lines(out.getvalue())
    assert len(lines) == 10 and all(ln.startswith("search: vision features: ") for ln in lines)
    assert f"{total}/{total} img" in lines[-1] and " 100% " in lines[-1]
    assert f"{total} images" in logged[0] and "16 per tower call" in logged[0]
    assert {s: f.shape[0] for s, f in feats.items()} == {
        s: len(getattr(small_bundle, s)) for s in ("train", "val", "test")}
