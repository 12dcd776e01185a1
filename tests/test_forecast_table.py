"""benchmarks/forecast_table.py: its own logic, without training anything.

The arguments (quick vs full settings, overrides, one-line errors with exit 2 before any
run), the gap and beats arithmetic, and the table and notes assembled from made-up rows.
The runs themselves are `timesclip.train.fit` and `timesclip.forecast_baselines`, tested
in their own files.
"""

from __future__ import annotations

import pytest
from real_data import forecast_csv
from search_helpers import benchmark_module

ft = benchmark_module("forecast_table")


def scores(mse: float, mae: float) -> dict[str, float]:
    return {"mse": mse, "mae": mae}


def row(dataset: str, horizon: int, **test: tuple[float, float]):
    r = ft.Row(dataset, horizon, train_windows=1000, test_windows=2000)
    for arm, (mse, mae) in test.items():
        r.scores[arm] = {"val": scores(mse, mae), "test": scores(mse, mae)}
    return r


def settings(*argv: str):
    return ft.settings_from_args(ft.build_parser().parse_args(list(argv)))


# ----------------------------------------------------------------------------- arithmetic
def test_gap_is_ours_minus_reference_with_its_relative_size():
    diff, rel = ft.gap(scores(0.30, 0.4), scores(0.25, 0.3))
    assert diff == pytest.approx(0.05) and rel == pytest.approx(20.0)
    diff, rel = ft.gap(scores(0.20, 0.4), scores(0.25, 0.3))
    assert diff == pytest.approx(-0.05) and rel == pytest.approx(-20.0)
    assert ft.gap(scores(0.2, 0.5), scores(0.2, 0.25), "mae")[1] == pytest.approx(100.0)


def test_beats_is_strictly_lower_error():
    assert ft.beats(scores(0.1, 0.3), scores(0.2, 0.2))
    assert not ft.beats(scores(0.2, 0.1), scores(0.2, 0.3))  # a tie is not a win
    assert ft.beats(scores(0.2, 0.1), scores(0.2, 0.3), "mae")


def test_paper_constant_has_every_number_the_table_prints():
    for dataset in ft.DATASETS:
        for model in ft.PAPER_TABLE4:
            mse, mae = ft.paper(model, dataset, 96)
            assert 0 < mse < 1 and 0 < mae < 1
        assert ft.paper("TimesCLIP", dataset, 192) is not None
        assert ft.paper("PatchTST", dataset, 192) is None  # not given: printed as "–"
    assert ft.paper("TimesCLIP", "ETTm1", 96) == (0.319, 0.358)
    assert ft.paper("DLinear", "exchange_rate", 96) == (0.088, 0.218)
    assert "2506.24124" in ft.PAPER_SOURCE and "Table 4" in ft.PAPER_SOURCE


# ----------------------------------------------------------------------------- table
def test_table_puts_ours_beside_the_paper_with_gap_and_verdict():
    rows = [row("ETTm1", 96, timesclip=(0.40, 0.41), e4=(0.42, 0.43), naive=(0.80, 0.60),
                dlinear=(0.35, 0.38)),
            row("exchange_rate", 96, timesclip=(0.090, 0.21), e4=(0.095, 0.22),
                naive=(0.081, 0.196), dlinear=(0.100, 0.23)),
            row("ETTm2", 192, timesclip=(0.30, 0.35), naive=(0.30, 0.36))]
    table = ft.markdown_table(rows, "tiny").splitlines()
    assert len(table) == 2 + len(rows)
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[1] == "TimesCLIP (tiny)" and header[-4:] == [
        "paper TimesCLIP", "paper iTransformer", "paper PatchTST", "paper DLinear"]
    cells = {h: [c.strip() for c in line.strip("|").split("|")][i]
             for line in table[2:3] for i, h in enumerate(header)}
    assert cells["data (H)"] == "ETTm1 (96)"
    assert cells["TimesCLIP (tiny)"] == "0.400 / 0.410"
    assert cells["E4 language only"] == "0.420 / 0.430"
    assert cells["TimesCLIP vs DLinear (MSE)"] == "+0.050 (+14 %)"
    assert cells["TimesCLIP beats naive (MSE / MAE)"] == "yes / yes"
    assert cells["paper TimesCLIP"] == "0.319 / 0.358"
    assert cells["paper DLinear"] == "0.345 / 0.372"
    exchange = [c.strip() for c in table[3].strip("|").split("|")]
    assert exchange[5] == "-0.010 (-10 %)" and exchange[6] == "**no** / **no**"
    ettm2 = [c.strip() for c in table[4].strip("|").split("|")]
    # a tie on MSE does not beat naive; no DLinear or E4: dashes, not zeros
    assert ettm2[2] == "–" and ettm2[5] == "–" and ettm2[6] == "**no** / yes"
    assert ettm2[7] == "0.242 / 0.302" and ettm2[8:] == ["–", "–", "–"]


def test_notes_say_tiny_cannot_reproduce_and_which_files_lose_to_naive():
    rows = [row("ETTm1", 96, timesclip=(0.40, 0.41), naive=(0.80, 0.60)),
            row("exchange_rate", 96, timesclip=(0.090, 0.21), naive=(0.081, 0.196))]
    quick = settings("--quick")
    text = "\n".join(ft.notes(rows, quick))
    assert "cannot reproduce pretrained-CLIP numbers" in text
    assert ft.gpu_command(quick) in text
    assert "beats naive on test MSE: ETTm1 (96)." in text
    assert "does not beat naive on test MSE: Exchange (96)." in text
    # where it loses on test, what validation said (row() gives val the test's numbers)
    assert "its validation MSE against naive's: Exchange (96: 0.090 against 0.081)" in text
    assert "ETTm1 (96: 0.400" not in text
    # naive 0.081 <= the paper's TimesCLIP 0.083 on Exchange, not on ETTm1 (0.80 > 0.319)
    assert "TimesCLIP MSE on Exchange (96: naive 0.081, paper 0.083)" in text
    assert "ETTm1 (96: naive" not in text
    assert "DLinear with TSLib's recipe" in text and "Exchange 2" in text
    full = "\n".join(ft.notes(rows, settings("--backbone", "some/clip")))
    assert "cannot reproduce" not in full and "--quick" not in full


def test_report_is_title_table_and_notes():
    rows = [row("weather", 96, timesclip=(0.2, 0.25), naive=(0.26, 0.25))]
    text = ft.report(rows, settings("--quick"))
    assert text.startswith("## Forecasting: TimesCLIP (tiny)") and "--quick" in text
    assert ft.markdown_table(rows, "tiny") in text and text.endswith("\n")


def test_gpu_command_names_the_pretrained_backbone_and_every_window():
    command = ft.gpu_command()
    parsed = ft.build_parser().parse_args(command.split()[2:])
    s = ft.settings_from_args(parsed)
    assert s.backbone == "openai/clip-vit-base-patch16" and s.device == "cuda"
    assert s.horizons == (96, 192) and not s.quick
    assert set(s.strides.values()) == {1} and s.datasets == tuple(ft.DATASETS)
    assert "--datasets ETTm1" in ft.gpu_command(settings("--datasets", "ETTm1"))


# ----------------------------------------------------------------------------- arguments
def test_quick_and_full_settings():
    quick = settings("--quick")
    assert quick.quick and quick.strides == ft.QUICK_STRIDES and quick.horizons == (96,)
    assert quick.epochs == ft.QUICK_EPOCHS
    config = quick.config("weather", 96)
    assert config.task == "forecast" and config.backbone == "tiny"
    assert config.train_stride == ft.QUICK_STRIDES["weather"] and config.seed == ft.SEED
    for name, value in ft.QUICK_OVERRIDES.items():
        assert getattr(config, name) == value
    default = settings()
    assert not default.quick and set(default.strides.values()) == {1}
    assert default.epochs == ft.FULL_EPOCHS and default.patience == ft.FULL_PATIENCE
    assert settings("--full").horizons == (96, 192)
    assert settings("--quick", "--full").config("ETTm1", 192).horizon == 192


def test_flags_change_the_settings_of_every_arm():
    s = settings("--quick", "--train-stride", "8", "--epochs", "2", "--seed", "7",
                 "--set", "freeze_text=false", "--set", "lr=3e-4", "--datasets", "ETTm2")
    assert s.datasets == ("ETTm2",) and s.strides["ETTm2"] == 8
    assert s.epochs == 2 and s.patience == 2  # patience never above the epochs
    config = s.config("ETTm2", 96)
    assert config.freeze_text is False and config.lr == 3e-4 and config.seed == 7
    assert config.batch_size == ft.QUICK_OVERRIDES["batch_size"]  # kept unless --set
    assert "freeze_text=False" in s.describe() and "ETTm2 8" in s.describe()


@pytest.mark.parametrize("argv, message", [
    (["--datasets", "ETTm1,foo"], "--datasets: unknown foo; choose from exchange_rate"),
    (["--datasets", ","], "--datasets: unknown (empty)"),
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--train-stride", "-1"], "--train-stride must be an integer >= 1"),
    (["--set", "lrr=1"], "unknown parameter 'lrr'"),
    (["--set", "lr"], "expected NAME=VALUE"),
    (["--set", "lr=abc"], "lr must be a finite number"),
    (["--set", "horizon=192"], "--set horizon: the table sets it"),
    (["--set", "d_model=30"], "d_model (30) must be divisible by n_heads"),
    (["--data-dir", "/nonexistent-forecast-dir"],
     "forecasting file exchange_rate.csv.gz not found in /nonexistent-forecast-dir"),
    (["--out", "/nonexistent-dir/table.md"], "--out /nonexistent-dir/table.md: not a writable"),
])
def test_bad_arguments_are_one_line_and_exit_2_before_any_run(argv, message, capsys,
                                                              monkeypatch):
    def no_run(*_a, **_k):
        raise AssertionError("ran with bad arguments")

    monkeypatch.setattr(ft, "run", no_run)
    assert ft.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err


def test_usage_error_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        ft.main(["--epochs", "x"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_main_prints_and_writes_the_table(tmp_path, capsys, monkeypatch):
    rows = [row("ETTm1", 96, timesclip=(0.40, 0.41), e4=(0.42, 0.43), naive=(0.80, 0.60),
                dlinear=(0.35, 0.38))]
    seen = {}

    def fake_run(s, files, cache, say):
        seen.update(settings=s, files=files, cache=cache)
        return rows

    monkeypatch.setattr(ft, "run", fake_run)
    out = tmp_path / "table.md"
    assert ft.main(["--quick", "--datasets", "ETTm1", "--out", str(out),
                    "--feature-cache", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert seen["files"] == {"ETTm1": forecast_csv("ETTm1")}  # where the tests look too
    assert seen["cache"] == {"dir": str(tmp_path / "cache"), "off": False}
    assert out.read_text() == ft.report(rows, seen["settings"])
    assert ft.markdown_table(rows, "tiny") in printed
    assert printed.rstrip().endswith(f"wrote {out}")
    assert f"the pretrained row, on a GPU: {ft.gpu_command(seen['settings'])}" in printed
