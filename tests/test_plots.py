"""timesclip.plots and `python -m timesclip evaluate --plots`: per-sample predictions, the
mean variate-selection attention, and the figures drawn from them.

A tiny model is trained once (real fit(), tiny backbone) on the small synthetic data set;
expectations are recomputed here from the model's own forward pass, not read back from the
code under test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from timesclip.inference import load_for_inference, predict_with_attention
from timesclip.metrics import regression_metrics
from timesclip.plots import (
    attention_frame,
    plot_attention,
    plot_predicted_vs_actual,
    predictions_frame,
    read_attention,
    read_predictions,
    write_csv,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_bundle, tiny_config):
    """best.pt of a one-epoch tiny run with variate selection (the default config)."""
    from timesclip.train import fit

    out = tmp_path_factory.mktemp("trained")
    fit(tiny_config.replace(epochs=1), small_bundle, checkpoint_dir=out, evaluate_test=False)
    model, config, scaler, bands, backbone = load_for_inference(out, device="cpu")
    return {"dir": out, "model": model, "config": config, "scaler": scaler, "bands": bands,
            "backbone": backbone}


def test_predictions_score_like_evaluate_and_attention_is_the_sample_mean(trained,
                                                                          small_bundle):
    from timesclip.inference import evaluate_arrays
    from timesclip.model import compute_vision_features

    t = trained
    x_raw, y_raw = small_bundle.test.x_raw, small_bundle.test.y_raw
    # several batches, the last one short: the mean must weigh every sample once
    y_pred, attention = predict_with_attention(t["model"], t["config"], t["scaler"],
                                               t["backbone"], x_raw, batch_size=7)
    assert len(x_raw) % 7 != 0 and len(x_raw) > 7
    assert regression_metrics(y_raw, y_pred) == pytest.approx(
        evaluate_arrays(t["model"], t["config"], t["scaler"], t["backbone"], x_raw, y_raw),
        rel=1e-6)

    # the attention of one full-batch forward pass, averaged here by hand
    feats = compute_vision_features(x_raw, t["backbone"].vision,
                                    image_size=t["config"].image_size
                                    or t["backbone"].image_size,
                                    line_width=t["config"].line_width)
    with torch.no_grad():
        t["model"].eval()
        out = t["model"](torch.as_tensor(t["scaler"].transform_x(x_raw)), feats)
    expected = out.attention.double().mean(dim=0).numpy()  # [V, V]
    v = len(small_bundle.bands)
    assert attention.shape == (v, v)
    np.testing.assert_allclose(attention, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(attention.sum(axis=1), np.ones(v), atol=1e-6)


def test_no_variate_selection_means_no_attention(small_bundle, tiny_config, tmp_path):
    from timesclip.train import fit

    config = tiny_config.replace(epochs=1, use_variate_selection=False)
    fit(config, small_bundle, checkpoint_dir=tmp_path, evaluate_test=False)
    model, config, scaler, _, backbone = load_for_inference(tmp_path, device="cpu")
    y_pred, attention = predict_with_attention(model, config, scaler, backbone,
                                               small_bundle.test.x_raw)
    assert attention is None and y_pred.shape == (len(small_bundle.test),)


def test_attention_csv_keeps_band_labels_and_checks_rows(tmp_path):
    bands = ["ndvi", "evi", "NIR"]
    matrix = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    path = write_csv(attention_frame(matrix, bands), tmp_path / "a.csv", index=True)
    back = read_attention(path)
    assert list(back.index) == bands and list(back.columns) == bands
    np.testing.assert_allclose(back.to_numpy(), matrix, atol=1e-9)

    bad = attention_frame(matrix * np.array([[1.0], [1.0], [0.5]]), bands)  # last row 0.5
    with pytest.raises(ValueError, match="sum to 1"):
        read_attention(write_csv(bad, tmp_path / "bad.csv", index=True))
    swapped = attention_frame(matrix, bands).rename(columns={"evi": "ndvi", "ndvi": "evi"})
    with pytest.raises(ValueError, match="same bands"):
        read_attention(write_csv(swapped, tmp_path / "swapped.csv", index=True))
    with pytest.raises(ValueError, match="does not match"):
        attention_frame(matrix, bands[:2])


def test_predictions_csv_roundtrip(tmp_path):
    frame = predictions_frame([1.0, 2.0, 3.0], [1.5, 2.0, 2.0], [2019, 2020, 2020],
                              rows=[7, 3, 9])
    back = read_predictions(write_csv(frame, tmp_path / "p.csv"))
    assert list(back.columns) == ["row", "year", "y_true", "y_pred"]
    assert back["row"].tolist() == [7, 3, 9] and back["year"].tolist() == [2019, 2020, 2020]
    (tmp_path / "q.csv").write_text("year,y_true\n2019,1.0\n")
    with pytest.raises(ValueError, match="y_pred"):
        read_predictions(tmp_path / "q.csv")


def test_predicted_vs_actual_has_a_residual_panel_only_for_several_years():
    several = predictions_frame([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 5.0],
                                [2019, 2019, 2020, 2021])
    fig = plot_predicted_vs_actual(several, caption="data: X · backbone tiny")
    assert len(fig.axes) == 2
    labels = [t.get_text() for t in fig.axes[1].get_xticklabels()]
    assert labels == ["2019", "2020", "2021"]
    rmse = regression_metrics(several["y_true"], several["y_pred"])["rmse"]
    assert f"RMSE {rmse:.3g}" in fig.axes[0].get_title()
    assert "backbone tiny" in fig._supxlabel.get_text()  # the caption travels with the PNG
    one = predictions_frame([1.0, 2.0], [1.0, 2.5], [2022, 2022])
    assert len(plot_predicted_vs_actual(one).axes) == 1


def test_attention_figure_names_the_bands():
    bands = ["ndvi", "evi", "NIR", "red"]
    frame = attention_frame(np.full((4, 4), 0.25), bands)
    fig = plot_attention(frame, caption="c")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == bands
    assert [t.get_text() for t in ax.get_yticklabels()] == bands


def test_evaluate_cli_writes_plots(trained, small_csvs, tmp_path, capsys):
    from timesclip.__main__ import main

    out = tmp_path / "plots"
    assert main(["evaluate", "--checkpoint", str(trained["dir"]), "--data",
                 *map(str, small_csvs), "--subset", "test", "--device", "cpu",
                 "--plots", str(out)]) == 0
    assert "plots: " in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["attention.csv", "attention.png",
                                                      "predicted_vs_actual.png",
                                                      "predictions.csv"]
    attention = read_attention(out / "attention.csv")
    assert list(attention.index) == trained["bands"]
    predictions = read_predictions(out / "predictions.csv")
    from timesclip.data import load_bundle

    bundle = load_bundle(trained["config"].replace(bands=list(trained["bands"])), small_csvs)
    assert len(predictions) == len(bundle.test)
    assert sorted(predictions["year"].unique()) == sorted(np.unique(bundle.test.years))
    np.testing.assert_allclose(predictions["y_true"], bundle.test.y_raw)
    for png in ("attention.png", "predicted_vs_actual.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_plots_into_a_file_is_a_user_error(trained, small_csvs, tmp_path, capsys):
    from timesclip.__main__ import main

    taken = tmp_path / "file"
    taken.write_text("x")
    assert main(["evaluate", "--checkpoint", str(trained["dir"]), "--data",
                 *map(str, small_csvs), "--device", "cpu", "--plots", str(taken)]) == 2
    assert "--plots" in capsys.readouterr().err


def test_timesclip_plots_never_imports_ray_or_tuner():
    code = ("import sys, timesclip.plots, timesclip.__main__; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'tuner')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_predictions_frame_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="lengths differ"):
        predictions_frame([1.0, 2.0], [1.0], [2020, 2020])
    assert isinstance(predictions_frame([1.0], [1.0], [2020]), pd.DataFrame)
