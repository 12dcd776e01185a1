"""`python -m timesclip train|evaluate` run as a real subprocess: the CONTRACT outputs, config
precedence, one-line errors with exit code 2 for bad input, exit code 1 for a non-finite loss.

Every subprocess pays ~4-6 s of torch/transformers imports, so runs are grouped in
module-scoped fixtures (one training run serves the output and evaluate tests) and the
independent failing runs go through a small process pool.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from timesclip.__main__ import build_parser
from timesclip.cli_args import config_from_args
from timesclip.config import ABLATIONS, TrainConfig
from timesclip.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
WORKERS = max(2, min(6, os.cpu_count() or 2))
#: Flags that keep a CPU run small: tiny random CLIP towers, a narrow model.
SMALL = ["--backbone", "tiny", "--device", "cpu", "--d-model", "32", "--head-hidden", "32",
         "--batch-size", "32"]


@dataclass
class Run:
    args: list[str]
    cwd: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def __str__(self) -> str:  # shown by pytest when an assertion about the run fails
        return (f"python -m timesclip {' '.join(self.args)}\n(cwd {self.cwd}) -> exit "
                f"{self.returncode} after {self.seconds:.1f}s\n--- stdout\n"
                f"{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}")


def run_cli(args: list, cwd: Path, *, threads: int | None = None, timeout: int = 300) -> Run:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    args = [str(a) for a in args]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "timesclip", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return Run(args, Path(cwd), proc.returncode, proc.stdout, proc.stderr,
               time.perf_counter() - start)


def run_many(jobs: dict[str, tuple[list, Path]], threads: int | None = 1) -> dict[str, Run]:
    """Run independent CLI calls side by side: {key: (args, cwd)} -> {key: Run}."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {k: pool.submit(run_cli, args, cwd, threads=threads)
                   for k, (args, cwd) in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def assert_one_line_error(run: Run, code: int, *needles: str) -> str:
    assert run.returncode == code, run
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, run
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run
    line = lines[0]
    assert line.startswith("error:") and line[len("error:"):].strip(), run
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


# ----------------------------------------------------------------------------- training run
@pytest.fixture(scope="module")
def trained(small_csvs, tmp_path_factory):
    """One 2-epoch training run plus `evaluate` on its test split and on all rows."""
    cwd = tmp_path_factory.mktemp("cli-train")
    args = ["train", *SMALL, "--bands", "ndvi,red", "--epochs", "2", "--data", *small_csvs,
            "--out", "OUT"]
    train = run_cli(args, cwd)
    assert train.returncode == 0, train
    out = cwd / "OUT"
    after_train = listing(cwd)
    no_red = cwd.parent / f"{cwd.name}-inputs" / "no_red.csv"  # outside cwd: listing unchanged
    no_red.parent.mkdir()
    frame = pd.read_csv(small_csvs[0])
    frame.drop(columns=[c for c in frame.columns if c.startswith("red_")]).to_csv(no_red,
                                                                                   index=False)
    earlier = _as_earlier_best(out / "best.pt", no_red.parent / "earlier" / "best.pt")
    evals = run_many({
        "test": (["evaluate", "--checkpoint", out, "--data", *small_csvs, "--subset", "test",
                  "--device", "cpu"], cwd),
        "all": (["evaluate", "--checkpoint", out / "best.pt", "--data", *small_csvs,
                 "--subset", "all", "--device", "cpu", "--json", cwd / "all.json"], cwd),
        "lacks-band": (["evaluate", "--checkpoint", out, "--data", no_red, "--device", "cpu"],
                       cwd),
        "lacks-band-test": (["evaluate", "--checkpoint", out, "--data", no_red, *small_csvs[1:],
                             "--subset", "test", "--device", "cpu"], cwd),
        "earlier-version": (["evaluate", "--checkpoint", earlier, "--data", *small_csvs,
                             "--subset", "test", "--device", "cpu"], cwd),
    }, threads=None)
    return {"train": train, "out": out, "cwd": cwd, "after_train": after_train, **evals}


def _as_earlier_best(best: Path, dest: Path) -> Path:
    """A copy of `best` as versions before `monitor` wrote it: no monitor in the file or in
    its config, the best val_loss under "val_loss"."""
    import torch

    ck = torch.load(best, weights_only=True)
    ck["config"].pop("monitor")
    ck["val_loss"] = ck.pop("metrics")["val_loss"]
    del ck["monitor"], ck["best_value"]
    dest.parent.mkdir(parents=True)
    torch.save(ck, dest)
    return dest


def test_train_prints_progress_and_writes_the_contract_outputs(trained):
    run, out = trained["train"], trained["out"]
    assert "Traceback" not in run.stderr, run
    epoch_lines = [ln for ln in run.stdout.splitlines() if re.match(r"epoch\s+\d+/\d+\b", ln)]
    assert len(epoch_lines) == 2, run
    assert re.match(r"epoch\s+1/2\b", epoch_lines[0]) and re.match(r"epoch\s+2/2\b",
                                                                    epoch_lines[1])
    # the work directory was renamed into place: nothing half-written left beside OUT
    assert trained["after_train"] == ["OUT"]
    assert {"config.yaml", "metrics.json", "best.pt", "tb"} <= set(listing(out))


def test_config_yaml_is_exactly_the_flags(trained):
    config = TrainConfig.from_yaml(trained["out"] / "config.yaml")
    expected = TrainConfig(backbone="tiny", device="cpu", d_model=32, head_hidden=32,
                           batch_size=32, bands=["ndvi", "red"], epochs=2)
    assert config == expected
    # and it is a plain TrainConfig YAML, no provenance or extra keys
    assert set(yaml.safe_load((trained["out"] / "config.yaml").read_text())) == set(
        TrainConfig.field_names())


def test_metrics_json_has_the_contract_keys(trained, expected_params):
    m = json.loads((trained["out"] / "metrics.json").read_text())
    for part in ("val", "test"):
        assert set(m[part]) >= {"rmse", "mae", "r2", "mape"}
        assert all(math.isfinite(m[part][k]) for k in ("rmse", "mae", "r2", "mape"))
        assert m[part]["rmse"] > 0 and m[part]["mae"] > 0
    assert all(isinstance(m["params"][k], int) for k in ("total", "trainable", "frozen"))
    config = TrainConfig.from_yaml(trained["out"] / "config.yaml")
    assert m["params"] == expected_params(config, 2)  # bands ndvi, red
    assert m["train_seconds"] > 0
    assert m["backbone"] == "tiny"
    assert m["epochs_run"] == 2
    # best.pt and the val metrics are those of the best epoch of the monitored metric
    assert m["monitor"] == "val_rmse" and m["best_value"] == m["val"]["rmse"]
    assert m["best_epoch"] in (1, 2)
    starred = [int(re.match(r"epoch\s+(\d+)/", ln).group(1))
               for ln in trained["train"].stdout.splitlines()
               if re.match(r"epoch\s+\d+/\d+\b", ln) and ln.endswith("*")]
    assert starred[0] == 1 and starred[-1] == m["best_epoch"]


def test_tensorboard_events_written(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = trained["out"] / "tb"
    events = list(tb.glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert [e.step for e in acc.Scalars("Loss/val")] == [1, 2]


def test_evaluate_reproduces_the_test_metrics(trained, small_csvs):
    from timesclip.data import load_bundle

    run = trained["test"]
    assert run.returncode == 0, run
    result = json.loads(run.stdout)  # stdout is the JSON and nothing else
    saved = json.loads((trained["out"] / "metrics.json").read_text())["test"]
    config = TrainConfig.from_yaml(trained["out"] / "config.yaml")
    assert result["subset"] == "test" and result["backbone"] == "tiny"
    assert result["n"] == len(load_bundle(config, small_csvs).test)
    for key in ("rmse", "mae", "r2", "mape"):
        assert result[key] == pytest.approx(saved[key], abs=1e-6), key


def test_evaluate_reads_a_best_pt_of_an_earlier_version(trained):
    """A best.pt written before `monitor` existed (no monitor key in it or its config)
    evaluates to the same metrics as the file it was made from."""
    old, new = trained["earlier-version"], trained["test"]
    assert old.returncode == 0, old
    assert json.loads(old.stdout) == json.loads(new.stdout)


def test_evaluate_all_rows(trained, small_csvs):
    from timesclip.data import load_csvs

    run = trained["all"]
    assert run.returncode == 0, run
    result = json.loads(run.stdout)
    assert result["subset"] == "all"
    assert result["n"] == len(load_csvs(small_csvs)) > 0
    assert all(math.isfinite(result[k]) for k in ("rmse", "mae", "r2", "mape"))
    assert json.loads((trained["cwd"] / "all.json").read_text()) == result


@pytest.mark.parametrize("run", ["lacks-band", "lacks-band-test"])
def test_evaluate_on_data_lacking_a_band_names_the_models_bands(trained, run):
    line = assert_one_line_error(trained[run], 2, "no_red.csv", "lacks band(s) red",
                                 "trained on bands ndvi, red", "pass CSVs that have")
    assert "--bands" not in line  # evaluate has no such flag


# ----------------------------------------------------------------------------- precedence
PROVENANCE = {"experiment": "exp-1", "trial": {"id": "t3", "val_rmse": 0.5},
              "versions": {"torch": "2.x", "extra": [1, 2, {"deep": None}]}}


@pytest.fixture(scope="module")
def base_yaml(tmp_path_factory) -> Path:
    """An exported-best-config-like YAML: some fields plus an arbitrary provenance block."""
    path = tmp_path_factory.mktemp("cli-yaml") / "best_config.yaml"
    path.write_text(yaml.safe_dump({"temperature": 0.2, "epochs": 7, "patience": 4,
                                    "use_contrastive": True, "provenance": PROVENANCE}))
    return path


@pytest.fixture(scope="module")
def precedence_runs(small_csvs, base_yaml, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-precedence")
    for name in ("flag", "file"):
        (root / name).mkdir()
    data = ["--data", small_csvs[0], small_csvs[1], "--bands", "ndvi", "--out", "OUT"]
    runs = run_many({
        # flag beats file; --epochs beats --quick; E4 switches applied; provenance dropped
        "flag": (["train", "--config", base_yaml, *SMALL, "--temperature", "0.3", "--quick",
                  "--epochs", "1", "--ablation", "E4", *data], root / "flag"),
        # no flag: the file's value; --language-only turns contrastive off despite the file
        "file": (["train", "--config", base_yaml, *SMALL, "--language-only", "--epochs", "1",
                  *data], root / "file"),
    }, threads=None)
    for run in runs.values():
        assert run.returncode == 0, run
    return runs


def _written(run: Run) -> tuple[TrainConfig, dict]:
    path = run.cwd / "OUT" / "config.yaml"
    return TrainConfig.from_yaml(path), yaml.safe_load(path.read_text())


def test_flags_override_config_file_and_provenance_is_dropped(precedence_runs):
    config, raw = _written(precedence_runs["flag"])
    assert "provenance" not in raw
    assert config.temperature == 0.3
    assert config.epochs == 1  # --epochs wins over --quick
    assert config.patience == 4  # untouched file values survive
    for key, value in ABLATIONS["E4"].items():
        assert getattr(config, key) == value, key
    assert config.use_vision is False
    metrics = json.loads((precedence_runs["flag"].cwd / "OUT" / "metrics.json").read_text())
    assert metrics["ablation"] == "E4" and metrics["epochs_run"] == 1


def test_config_file_value_used_without_flag_and_language_only(precedence_runs):
    config, raw = _written(precedence_runs["file"])
    assert "provenance" not in raw
    assert config.temperature == 0.2
    assert config.patience == 4
    assert config.use_vision is False and config.use_contrastive is False
    assert config.use_variate_selection is True


def _parsed(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_monitor_flag_sets_the_field(tmp_path):
    """--monitor is the TrainConfig field; unset it stays None (the task's own metric) and
    a config file's value is kept until the flag overrides it."""
    assert _parsed().monitor is None and _parsed().monitor_metric == "val_rmse"
    assert _parsed("--monitor", "val_r2").monitor == "val_r2"
    path = tmp_path / "c.yaml"
    path.write_text("monitor: val_mae\n")
    assert _parsed("--config", str(path)).monitor == "val_mae"
    assert _parsed("--config", str(path), "--monitor", "val_loss").monitor == "val_loss"


def test_quick_and_switch_precedence_in_process(base_yaml):
    assert _parsed().epochs == TrainConfig().epochs == 100
    assert _parsed("--quick").epochs == 10
    assert _parsed("--quick", "--epochs", "3").epochs == 3
    assert _parsed("--config", str(base_yaml)).epochs == 7
    assert _parsed("--config", str(base_yaml), "--quick").epochs == 10
    assert _parsed("--config", str(base_yaml)).temperature == 0.2
    assert _parsed("--config", str(base_yaml), "--temperature", "0.3").temperature == 0.3
    e4 = _parsed("--ablation", "e4")  # case-insensitive id
    assert {k: getattr(e4, k) for k in ABLATIONS["E4"]} == ABLATIONS["E4"]
    # an explicit field flag beats the ablation row
    assert _parsed("--ablation", "E4", "--use-variate-selection").use_variate_selection is True
    assert _parsed("--no-contrastive").use_contrastive is False
    assert _parsed("--no-variate-selection").use_variate_selection is False
    off = _parsed("--no-use-vision")
    assert off.use_vision is False and off.use_contrastive is False
    lo = _parsed("--language-only")
    assert lo.use_vision is False and lo.use_contrastive is False
    with pytest.raises(ConfigError, match="use_contrastive needs use_vision"):
        _parsed("--language-only", "--use-contrastive")


# ----------------------------------------------------------------------------- bad input
BANDS = ("ndvi", "red")


def _table(steps: int = 12, rows: int = 20) -> tuple[list[str], list[list[str]]]:
    header = ["id", *(f"{b}_{t:02d}" for b in BANDS for t in range(steps)), "y2019"]
    body = [[f"field{i}",
             *(f"{0.2 + 0.01 * i + 0.03 * t + 0.1 * k:.4f}"
               for k, _ in enumerate(BANDS) for t in range(steps)),
             f"{3.0 + 0.1 * i:.2f}"] for i in range(rows)]
    return header, body


def _csv(header: list[str], body: list[list[str]]) -> str:
    return "".join(",".join(row) + "\n" for row in [header, *body])


def _with_cell(column: str, data_row: int, value: str) -> str:
    header, body = _table()
    body[data_row - 1][header.index(column)] = value
    return _csv(header, body)


def _no_target() -> str:
    header, body = _table()
    return _csv([*header[:-1], "yield"], body)


def _no_bands() -> str:
    header, body = _table()
    return _csv([h.replace("_", "-") if h[:-3] in BANDS else h for h in header], body)


#: file name -> contents; written once into the inputs directory.
FILES = {
    "good.csv": lambda: _csv(*_table()),
    "no_target.csv": _no_target,
    "no_bands.csv": _no_bands,
    "non_numeric.csv": lambda: _with_cell("red_04", 4, "abc"),
    "nan_cell.csv": lambda: _with_cell("ndvi_07", 6, "NaN"),
    "inf_cell.csv": lambda: _with_cell("red_10", 3, "inf"),
    "short.csv": lambda: _csv(*_table(steps=6)),
    "empty.csv": lambda: "",
    "header_only.csv": lambda: ",".join(_table()[0]) + "\n",
    "unknown_key.yaml": lambda: yaml.safe_dump({"temperature": 0.2, "bogus_knob": 3}),
    "good_copy.csv": lambda: _csv(*_table()),
    "dupe_rows.csv": lambda: _with_repeats(),
}


def _with_repeats() -> str:
    header, body = _table()
    return _csv(header, [*body, body[3], body[7]])  # data rows 21, 22 repeat rows 4, 8

BASE = ["train", "--backbone", "tiny", "--device", "cpu", "--out", "OUT"]
#: case id -> (args after BASE, substrings of the error line); "{x}" -> inputs/x.
BAD_CASES: dict[str, tuple[list[str], list[str]]] = {
    "missing-target": (["--data", "{no_target.csv}"], ["no_target.csv", "target column"]),
    "no-band-columns": (["--data", "{no_bands.csv}"], ["no_bands.csv", "{band}_{NN}"]),
    "non-numeric": (["--data", "{non_numeric.csv}"],
                    ["non_numeric.csv", "red_04", "data row 4", "'abc'", "not a number"]),
    "nan-cell": (["--data", "{nan_cell.csv}"],
                 ["nan_cell.csv", "ndvi_07", "data row 6", "missing"]),
    "inf-cell": (["--data", "{inf_cell.csv}"],
                 ["inf_cell.csv", "red_10", "data row 3", "infinite"]),
    "too-few-steps": (["--data", "{short.csv}", "--input-steps", "12"],
                      ["short.csv", "only 6 steps", "12"]),
    "empty-file": (["--data", "{empty.csv}"], ["empty.csv", "empty"]),
    "header-only": (["--data", "{header_only.csv}"], ["header_only.csv", "no data rows"]),
    "no-such-file": (["--data", "{does_not_exist.csv}"], ["does_not_exist.csv", "not found"]),
    "directory": (["--data", "{a_directory}"], ["a_directory", "not a regular file"]),
    "negative-temperature": (["--data", "{good.csv}", "--temperature", "-1"],
                             ["temperature must be > 0"]),
    "unknown-monitor": (["--data", "{good.csv}", "--monitor", "val_mse"],
                        ["monitor must be one of val_rmse, val_loss, val_mae, val_mape, "
                         "val_r2", "'val_mse'"]),
    "year-split-without-test-year": (["--data", "{good.csv}", "--split", "year"],
                                     ["test_year", "--test-year"]),
    "test-year-not-present": (["--data", "{good.csv}", "--split", "year", "--test-year",
                               "1999"], ["good.csv", "1999", "2019"]),
    "unknown-config-key": (["--data", "{good.csv}", "--config", "{unknown_key.yaml}"],
                           ["unknown_key.yaml", "bogus_knob"]),
    "missing-config-file": (["--data", "{good.csv}", "--config", "{no_such_config.yaml}"],
                            ["no_such_config.yaml"]),
    "backbone-missing-dir": (["--data", "{good.csv}", "--backbone", "/no/such/dir"],
                             ["/no/such/dir", "tiny"]),
    "backbone-unknown-hub-id-offline": (["--data", "{good.csv}", "--backbone",
                                         "some-org/no-such-model"],
                                        ["some-org/no-such-model", "tiny"]),
    "out-not-empty": (["--data", "{good.csv}"], ["OUT", "not empty"]),
    "test-year-without-year-split": (["--data", "{good.csv}", "--test-year", "2019"],
                                     ["test_year (2019)", "add --split year or drop "
                                      "--test-year"]),
    "same-file-twice": (["--data", "{good.csv}", "{good.csv}"],
                        ["good.csv", "same file given twice"]),
    "same-content": (["--data", "{good.csv}", "{good_copy.csv}"],
                     ["good_copy.csv", "same content as", "good.csv", "pass each file once"]),
}


#: Product bugs found while writing these tests: case id -> what goes wrong.
#: Edge cases that once crashed with a traceback (regression tests).
EDGE_CASES = {
    "out-is-cwd": "--out . in an empty directory is a valid output directory",
    "out-parent-is-a-file": "--out below a regular file: one line, exit 2",
    "checkpoint-not-a-checkpoint": "evaluate --checkpoint FILE.csv: one line, exit 2",
}
#: Checkpoints whose unpickling would create a marker file: evaluate must refuse them unread.
CRAFTED = {"crafted-zip": True, "crafted-bare-pickle": False}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, crafted_checkpoint) -> Path:
    d = tmp_path_factory.mktemp("cli-inputs")
    for name, make in FILES.items():
        (d / name).write_text(make())
    (d / "a_directory").mkdir()
    (d / "a_directory" / "x.csv").write_text(FILES["good.csv"]())
    for case, zip_format in CRAFTED.items():
        crafted_checkpoint(d / case / "best.pt", d / f"{case}.marker", zip_format=zip_format)
    return d


def _expand(items: list[str], inputs: Path) -> list[str]:
    return [re.sub(r"^\{([^{}]+)\}$", lambda m: str(inputs / m.group(1)), s) for s in items]


@pytest.fixture(scope="module")
def bad_runs(inputs, tmp_path_factory):
    """All bad-input cases plus a control run on good.csv, side by side.

    Each case gets its own empty working directory so that 'nothing was written' can be
    checked as 'the directory looks exactly as before'.
    """
    root = tmp_path_factory.mktemp("cli-bad")
    jobs, before = {}, {}
    for case, (extra, _) in BAD_CASES.items():
        cwd = root / case
        cwd.mkdir()
        if case == "out-not-empty":
            (cwd / "OUT").mkdir()
            (cwd / "OUT" / "keep.txt").write_text("user data\n")
        jobs[case] = ([*BASE, *_expand(extra, inputs)], cwd)
        before[case] = listing(cwd)
    good = inputs / "good.csv"
    quick = ["--data", good, "--language-only", "--epochs", "1", "--d-model", "32",
             "--head-hidden", "32"]
    for case in ("control", *EDGE_CASES):
        (root / case).mkdir()
        before[case] = []
    jobs["control"] = ([*BASE, *quick], root / "control")
    jobs["out-is-cwd"] = ([*BASE[:-1], ".", *quick], root / "out-is-cwd")
    jobs["out-parent-is-a-file"] = ([*BASE[:-1], good / "OUT", "--data", good],
                                    root / "out-parent-is-a-file")
    jobs["checkpoint-not-a-checkpoint"] = (["evaluate", "--checkpoint", good, "--data", good],
                                           root / "checkpoint-not-a-checkpoint")
    for case in (*CRAFTED, "duplicate-rows"):
        (root / case).mkdir()
        before[case] = []
    for case in CRAFTED:
        jobs[case] = (["evaluate", "--checkpoint", inputs / case, "--data", good], root / case)
    jobs["duplicate-rows"] = ([*BASE, *quick[:1], inputs / "dupe_rows.csv", *quick[2:]],
                              root / "duplicate-rows")
    return run_many(jobs), before


def test_control_run_on_the_good_file_succeeds(bad_runs):
    """The bad files differ from good.csv in one defect, and good.csv trains."""
    run = bad_runs[0]["control"]
    assert run.returncode == 0, run
    assert (run.cwd / "OUT" / "metrics.json").exists()


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(bad_runs, case):
    runs, before = bad_runs
    run = runs[case]
    assert_one_line_error(run, 2, *BAD_CASES[case][1])
    assert listing(run.cwd) == before[case]  # no OUT, no .OUT.partial-* sibling
    if case == "out-not-empty":
        assert listing(run.cwd / "OUT") == ["keep.txt"]
        assert (run.cwd / "OUT" / "keep.txt").read_text() == "user data\n"


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_output_and_checkpoint_edge_cases(bad_runs, case):
    """Edge cases that once crashed with a traceback."""
    run = bad_runs[0][case]
    if case == "out-is-cwd":  # valid input: the empty working directory is the output
        assert run.returncode == 0, run
        assert (run.cwd / "config.yaml").exists() and (run.cwd / "metrics.json").exists()
        return
    assert_one_line_error(run, 2, "good.csv")
    assert listing(run.cwd) == []


@pytest.mark.parametrize("case", list(CRAFTED))
def test_evaluate_refuses_a_crafted_checkpoint_without_running_it(bad_runs, inputs, case):
    run = bad_runs[0][case]
    assert_one_line_error(run, 2, "best.pt", "not a timesclip checkpoint")
    assert not (inputs / f"{case}.marker").exists()
    assert listing(run.cwd) == []


def test_duplicate_rows_warn_in_one_line_and_train(bad_runs):
    run = bad_runs[0]["duplicate-rows"]
    assert run.returncode == 0, run
    warnings = [ln for ln in run.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, run
    assert "2 of 22 rows repeat an earlier row exactly" in warnings[0]
    assert "2 within a file, 0 across files" in warnings[0]
    assert (run.cwd / "OUT" / "metrics.json").exists()


# ----------------------------------------------------------------------------- non-finite loss
def test_non_finite_loss_exits_1_with_one_line_and_no_output(small_csvs, tmp_path):
    # A temperature that passes validation (> 0) but underflows to exactly 0 in float32
    # (exp(-log(1/T))): the contrastive logits are divided by 0 at the very first step, so
    # the loss is NaN deterministically, whatever the weights or the batch.
    run = run_cli(["train", *SMALL, "--temperature", "1e-300", "--epochs", "2", "--bands",
                   "ndvi", "--data", *small_csvs[:2], "--out", "OUT"], tmp_path)
    assert_one_line_error(run, 1, "non-finite loss")
    assert listing(tmp_path) == []


# ----------------------------------------------------------------------------- help
@pytest.mark.parametrize("argv, needles", [
    ([], ["train", "evaluate"]),
    (["train"], ["--data", "--out", "--config", "--contrastive-weight", "--language-only",
                 "--ablation", "--quick", "--temperature", "--backbone", "--test-year"]),
    (["evaluate"], ["--checkpoint", "--data", "--subset"]),
], ids=["top", "train", "evaluate"])
def test_help(argv, needles, tmp_path):
    run = run_cli([*argv, "--help"], tmp_path)
    assert run.returncode == 0, run
    assert run.stderr == ""
    for needle in needles:
        assert needle in run.stdout, needle


def test_help_shows_real_defaults_and_one_spelling_per_flag():
    from dataclasses import fields

    from timesclip.cli_args import UNDERSCORE_NOTE

    subcommands = next(a for a in build_parser()._actions
                       if isinstance(a, argparse._SubParsersAction))
    train = subcommands.choices["train"]
    text = train.format_help()
    assert "default: None" not in text
    flags, note = text.split("Every --a-b flag")  # the one sentence about underscores
    assert " ".join(f"Every --a-b flag{note}".split()) == UNDERSCORE_NOTE
    assert not re.search(r"--[a-z0-9-]*_", flags)  # help lists one spelling per flag
    by_dest = {a.dest: a for a in train._actions}
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        value = getattr(defaults, f.name)
        help_text = by_dest[f.name].help
        if isinstance(value, bool):
            assert help_text.endswith(f"(default: {'on' if value else 'off'})"), f.name
        elif isinstance(value, float):
            assert help_text.endswith(f"(default: {value:g})"), f.name
        elif value is not None:
            assert help_text.endswith(f"(default: {value})"), f.name
        else:
            assert "None" not in help_text, f.name
    assert by_dest["input_steps"].help.endswith("(default: 12)")
    assert by_dest["contrastive_weight"].help.endswith("(default: 0.1)")
    assert "default" not in by_dest["test_year"].help  # nothing rather than None


@pytest.mark.parametrize("underscore, kebab", [
    (["--input_steps", "6"], ["--input-steps", "6"]),
    (["--input_steps=6"], ["--input-steps", "6"]),
    (["--contrastive_weight", "0.3"], ["--contrastive-weight", "0.3"]),
    (["--batch_size", "16"], ["--batch-size", "16"]),
    (["--language_only"], ["--language-only"]),
    (["--no_contrastive"], ["--no-contrastive"]),
    (["--no_variate_selection"], ["--no-variate-selection"]),
    (["--no_freeze_text", "--backbone_lr", "1e-6"], ["--no-freeze-text", "--backbone-lr",
                                                     "1e-6"]),
    (["--split", "year", "--test_year", "2019", "--split_seed", "3"],
     ["--split", "year", "--test-year", "2019", "--split-seed", "3"]),
])
def test_underscore_spellings_are_aliases(underscore, kebab):
    assert _parsed(*underscore) == _parsed(*kebab) != _parsed()


def test_every_field_flag_accepts_underscores():
    from timesclip.cli_args import flag

    parser = build_parser()
    for name in TrainConfig.field_names():
        if "_" not in name:
            continue
        alias = flag(name).replace("-", "_").replace("__", "--", 1)
        value = [] if str(TrainConfig.__dataclass_fields__[name].type) == "bool" else ["1"]
        a = parser.parse_args(["train", alias, *value])
        b = parser.parse_args(["train", flag(name), *value])
        assert getattr(a, name) == getattr(b, name) is not None, name


def test_underscores_leave_values_and_unknown_flags_alone(capsys):
    from timesclip.cli_args import OneLineErrorParser, add_data_flags

    parser = OneLineErrorParser(prog="search-like")  # what tuner.search builds on
    add_data_flags(parser)
    args = parser.parse_args(["--data", "my_file.csv", "--input_steps", "6", "--bands",
                              "a_b,c_d"])
    assert args.data == ["my_file.csv"] and args.input_steps == 6 and args.bands == "a_b,c_d"
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--no_such_flag", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--no_such_flag" in err[0]


def test_test_year_needs_the_year_split(tmp_path):
    with pytest.raises(ConfigError, match=r"add --split year or drop --test-year"):
        TrainConfig(test_year=2020)
    with pytest.raises(ConfigError, match=r"test_year \(2020\).*split is 'random'"):
        _parsed("--test-year", "2020")
    # a full TrainConfig written to YAML (best_config.yaml holds every field) loads again
    for config in (TrainConfig(), TrainConfig(split="year", test_year=2020, bands=["a", "b"])):
        path = tmp_path / "full.yaml"
        config.to_yaml(path, provenance={"experiment": "x"})
        assert TrainConfig.from_yaml(path) == config
        assert _parsed("--config", str(path)) == config
    # --split random over a year-split config drops the file's test_year with its split
    assert _parsed("--config", str(path), "--split", "random") == config.replace(
        split="random", test_year=None)
    with pytest.raises(ConfigError, match="drop --test-year"):
        _parsed("--config", str(path), "--split", "random", "--test-year", "2020")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"test_year": 2019}))
    with pytest.raises(ConfigError, match="add --split year"):
        TrainConfig.from_yaml(bad)
