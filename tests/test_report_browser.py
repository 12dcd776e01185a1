"""report/index.html in a real browser: Debian's headless Chromium, driven by Playwright.

Each page is opened from disk (file://, no server) with the network unused: it must load
without console errors or failed requests, every image must have loaded (non-zero natural
size), and a full-page screenshot must not be blank. One page is a fixture experiment
(fast, always run); the `e2e` ones come from real searches: the quick space on the real
Illinois soybean data, and the ablation on the small synthetic CSVs.

Chromium is not optional here: when it is missing the tests fail and say that `.ci/run`
installs it (`apt-get install -y chromium`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from real_data import illinois_csvs

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("TIMESCLIP_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    found = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    if not found:
        pytest.fail(f"Chromium not found ({CHROMIUM}, nor `chromium` on PATH): the browser "
                    "tests need Debian's headless Chromium; .ci/run installs it "
                    "(apt-get update && apt-get install -y chromium), or set "
                    "TIMESCLIP_CHROMIUM to its path")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the Python package playwright is missing: pip install -e '.[test]' "
                    "(.ci/run does); it drives the system Chromium, no `playwright install`")
    return found


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """A Chromium context with a fresh profile (--user-data-dir) and the flags that work as
    root in a container."""
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True, args=FLAGS,
            viewport={"width": 1200, "height": 900})
        try:
            yield context
        finally:
            context.close()


def render(context: Any, index: Path, screenshot: Path) -> dict[str, Any]:
    """Open `index` from disk; what the browser saw."""
    page = context.new_page()
    seen: dict[str, Any] = {"console": [], "errors": [], "failed": [], "requests": []}
    page.on("console", lambda m: seen["console"].append((m.type, m.text)))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("requestfailed", lambda r: seen["failed"].append(r.url))
    page.on("request", lambda r: seen["requests"].append(r.url))
    try:
        page.goto(index.resolve().as_uri(), wait_until="load")
        seen["images"] = page.evaluate(
            "Array.from(document.images).map(i => ({src: i.getAttribute('src'), "
            "w: i.naturalWidth, h: i.naturalHeight, complete: i.complete}))")
        seen["title"] = page.title()
        seen["h1"] = page.inner_text("h1")
        seen["text"] = page.inner_text("body")
        page.screenshot(path=str(screenshot), full_page=True)
    finally:
        page.close()
    seen["screenshot"] = screenshot
    return seen


def assert_page_ok(seen: dict[str, Any], expected_images: list[str]) -> None:
    errors = [text for kind, text in seen["console"] if kind == "error"]
    assert not errors and not seen["errors"], (errors, seen["errors"])
    assert not seen["failed"], seen["failed"]
    remote = [u for u in seen["requests"] if not u.startswith(("file://", "data:"))]
    assert not remote, remote  # offline: nothing but the page and its files
    images = seen["images"]
    assert [Path(i["src"]).name for i in images] == expected_images
    for image in images:
        assert image["complete"] and image["w"] > 0 and image["h"] > 0, image
    from PIL import Image, ImageStat

    with Image.open(seen["screenshot"]) as shot:
        rgb = shot.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        assert rgb.size[1] > 900  # the full page, taller than one screen
        assert len(colours) > 50, f"screenshot has {len(colours)} colours: blank page?"
        assert max(ImageStat.Stat(rgb).stddev) > 10


def test_fixture_page_in_chromium(chromium, tmp_path, small_bundle, small_csvs, tiny_config):
    from test_report_html import write_page_experiment

    from tuner.report import build_report

    exp = tmp_path / "page"
    write_page_experiment(exp, small_bundle, small_csvs, tiny_config)
    paths = build_report(exp, data_bundle=small_bundle, echo=lambda _: None)
    seen = render(chromium, paths.index_html, tmp_path / "page.png")
    assert_page_ok(seen, ["search_history.png", "learning_curves.png", "param_importance.png",
                          "parallel_coordinates.png", "predicted_vs_actual.png",
                          "attention.png"])
    assert seen["h1"] == "Search report: page"
    assert "Best configuration: trial t0002" in seen["text"]


# ---------------------------------------------------------------------------------- e2e
def _cli(*args: Any, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    print(f"\n[wall] {' '.join(map(str, args[:3]))}: {time.perf_counter() - started:.1f}s")
    assert proc.returncode == 0, (f"exit {proc.returncode}\n{proc.stdout[-5000:]}\n"
                                  f"{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def illinois_search(tmp_path_factory):
    """The quick space on the real Illinois data: 6 trials x <= 3 epochs, ASHA, one trial
    at a time: asynchronous ASHA decides by the order in which results arrive, and only a
    fixed order makes "ASHA stopped a trial" certain (with two at a time all six once
    completed)."""
    storage = tmp_path_factory.mktemp("illinois")
    proc = _cli("tuner.search", "--space", "quick", "--num-samples", 6, "--max-epochs", 3,
                "--storage", storage, "--name", "il", "--num-cpus", 2, "--no-dashboard",
                "--input-steps", 12, "--max-concurrent", 1, "--data", *illinois_csvs())
    return {"exp": storage / "il", "stdout": proc.stdout}


@pytest.mark.e2e
def test_search_page_in_chromium(illinois_search, chromium, tmp_path):
    exp = illinois_search["exp"]
    assert "baselines: gradient boosting, 4 settings" in illinois_search["stdout"]
    html = (exp / "report" / "index.html").read_text()
    optuna_figures = [name for name in ("param_importance.png", "parallel_coordinates.png",
                                        "slice.png") if name in html]
    assert optuna_figures or "parameter importance needs at least" in html
    expected = ["search_history.png", "learning_curves.png", *optuna_figures,
                "predicted_vs_actual.png", "attention.png"]
    seen = render(chromium, exp / "report" / "index.html", tmp_path / "search.png")
    print(f"[screenshot] {seen['screenshot']}")
    assert_page_ok(seen, expected)
    assert "Toy backbone." in seen["text"] and "illinois_soybean_2018.csv" in seen["text"]
    assert "reference: gradient boosting" in seen["text"]


@pytest.mark.e2e
def test_search_stored_the_figures_data_once(illinois_search):
    """What the page draws was stored when the test split was scored: the predictions give
    back best_test.json's metrics, the attention names the 15 bands and its rows sum to 1."""
    from timesclip.metrics import regression_metrics
    from timesclip.plots import read_attention, read_predictions

    exp = illinois_search["exp"]
    best_test = json.loads((exp / "best_test.json").read_text())
    predictions = read_predictions(exp / best_test["predictions"])
    assert regression_metrics(predictions["y_true"], predictions["y_pred"]) == \
        pytest.approx(best_test["test"], rel=1e-9)
    assert sorted(predictions["year"].unique()) == [2018, 2019, 2020, 2021, 2022]
    bands = json.loads((exp / "search_meta.json").read_text())["data"]["bands"]
    assert len(bands) == 15 and best_test["bands"] == bands
    attention = read_attention(exp / best_test["attention"])
    assert list(attention.index) == bands and list(attention.columns) == bands
    np.testing.assert_allclose(attention.to_numpy().sum(axis=1), 1.0, atol=1e-6)
    history = pd.read_csv(exp / "report" / "trials.csv")
    assert best_test["trial_id"] == history["trial_id"].iloc[0]


@pytest.mark.e2e
def test_search_hparams_table_holds_every_trial(illinois_search):
    """`tensorboard --logdir STORAGE/NAME/trials`: one HParams table, one row per trial
    (ASHA-stopped ones included), a column for every sampled parameter."""
    from test_tensorboard_hparams import hparams_table

    exp = illinois_search["exp"]
    experiment, groups = hparams_table(exp / "trials")
    meta = json.loads((exp / "search_meta.json").read_text())
    assert {h["name"] for h in experiment["hparamInfos"]} == \
        {"trial_id", *meta["sampled_names"]}
    ids = sorted(g["hparams"]["trial_id"] for g in groups)
    assert ids == [f"t{i:04d}" for i in range(6)]
    stopped = pd.read_csv(exp / "report" / "trials.csv")
    assert (stopped["stopped_by"] == "asha").any()


@pytest.mark.e2e
def test_results_cli_rebuilds_the_page(illinois_search, tmp_path):
    exp = tmp_path / "copy"
    shutil.copytree(illinois_search["exp"], exp)
    shutil.rmtree(exp / "report")
    proc = _cli("tuner.results", exp)
    assert "baselines: gradient boosting" in proc.stdout
    assert str(exp / "report" / "index.html") in proc.stdout
    before = (illinois_search["exp"] / "report" / "index.html").read_text()
    after = (exp / "report" / "index.html").read_text()
    images = re.findall(r"<img src='([^']+)'", after)
    assert images == re.findall(r"<img src='([^']+)'", before) and len(images) >= 4
    for image in images:
        assert (exp / "report" / image).is_file()


@pytest.mark.e2e
def test_ablation_page_in_chromium(chromium, tmp_path, ablation_search):
    """The page of the ablation search test_search_e2e.py checks (one search, shared)."""
    assert ablation_search["proc"].returncode == 0, ablation_search["proc"].stderr[-3000:]
    index = ablation_search["exp"] / "report" / "index.html"
    seen = render(chromium, index, tmp_path / "ablation.png")
    print(f"[screenshot] {seen['screenshot']}")
    assert_page_ok(seen, ["ablation.png", "search_history.png", "learning_curves.png"])
    assert seen["h1"] == "Ablation report: ab"
    for row in ("E1", "E5", "mean", "ridge", "hgb"):
        assert f"{row}\t" in seen["text"], row
