"""TimesCLIP on the paper's own task, side by side with the paper's Table 4.

    python benchmarks/forecast_table.py --quick [--out FILE]          # CPU, tiny backbone
    python benchmarks/forecast_table.py --full --backbone openai/clip-vit-base-patch16 \\
        --device cuda --out forecast_table_b16.md                     # the real row, on a GPU

One table for Exchange, Weather, ETTm1 and ETTm2 at lookback 96, horizon 96 (`--full` adds
192). Every number of ours is trained and scored here, by one seed, on the same windows:
TimesCLIP (the backbone named), its E4 language-only arm (CLIP-Text, no vision), the naive
forecast (repeat the last value) and DLinear (TSLib's recipe, `timesclip.forecast_baselines`),
each as MSE / MAE on the standardised scale over every test window. Printed beside them:
the paper's Table 4 (PAPER_TABLE4), with its TimesCLIP's gap to DLinear and whether it
beats naive, per data set.

Why each choice:
- The runs go through `timesclip.train.fit`, the loop `python -m timesclip train --task
  forecast` runs, with the vision features read from (or computed into) the feature cache:
  the vision pass is the slow part (weather is 21 images per window), and it does not change
  between the TimesCLIP arm, a re-run, or another horizon with the same windows... only the
  file, the lookback, the training stride and the backbone name its features.
- `--quick` (CPU; its run time is in benchmarks/RESULTS.md) trains on every N-th training window
  (QUICK_STRIDES, so each file has ~1,000-2,600 training windows) for a few epochs with the
  QUICK_OVERRIDES, chosen on validation MSE only. Validation and test are always every
  window. DLinear trains on the same strided windows. Without `--quick` every training
  window is used for up to FULL_EPOCHS epochs (TSLib's train_epochs / patience).
- The tiny backbone is random weights at toy size: its numbers say how the pipeline
  behaves, not what pretrained CLIP does. The table says so under it and prints the
  command that produces the pretrained row (`gpu_command`).

Progress: one line per run with its seconds (stdout); then the Markdown table and its notes
(and `--out FILE`, written atomically). Bad arguments: one line, exit 2, nothing run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `timesclip` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.data_files import find_data, places_text  # noqa: E402
from timesclip import atomic  # noqa: E402
from timesclip.cli_args import OneLineErrorParser  # noqa: E402
from timesclip.config import TrainConfig, apply_ablation, coerce_field  # noqa: E402
from timesclip.errors import UserError  # noqa: E402

#: The data sets' folder among the real-data places (benchmarks/data_files.py).
FORECASTING = "forecasting"
#: The four files of the table, in its order, with the names the paper uses.
DATASETS: dict[str, str] = {"exchange_rate": "Exchange", "weather": "Weather",
                            "ETTm1": "ETTm1", "ETTm2": "ETTm2"}
LOOKBACK = 96
HORIZONS = (96,)
FULL_HORIZONS = (96, 192)
SEED = 42  # TrainConfig's default seed; DLinear gets the same

#: The paper's numbers, printed for comparison (never computed here).
PAPER_SOURCE = ("Teaching Time Series to See and Speak (arXiv 2506.24124), Table 4, "
                "lookback 96")
#: model -> data set -> horizon -> (MSE, MAE), as PAPER_SOURCE prints them.
PAPER_TABLE4: dict[str, dict[str, dict[int, tuple[float, float]]]] = {
    "TimesCLIP": {"exchange_rate": {96: (0.083, 0.204), 192: (0.172, 0.298)},
                  "weather": {96: (0.153, 0.199), 192: (0.202, 0.246)},
                  "ETTm1": {96: (0.319, 0.358), 192: (0.367, 0.387)},
                  "ETTm2": {96: (0.176, 0.258), 192: (0.242, 0.302)}},
    "iTransformer": {"exchange_rate": {96: (0.086, 0.206)}, "weather": {96: (0.174, 0.214)},
                     "ETTm1": {96: (0.334, 0.368)}, "ETTm2": {96: (0.180, 0.264)}},
    "PatchTST": {"exchange_rate": {96: (0.088, 0.205)}, "weather": {96: (0.177, 0.218)},
                 "ETTm1": {96: (0.329, 0.367)}, "ETTm2": {96: (0.175, 0.259)}},
    "DLinear": {"exchange_rate": {96: (0.088, 0.218)}, "weather": {96: (0.196, 0.255)},
                "ETTm1": {96: (0.345, 0.372)}, "ETTm2": {96: (0.193, 0.292)}},
}

#: --quick: every N-th training window per file (~1,000-2,600 windows each; weather's 21
#: variates make each window 3x the work of ETT's 7).
QUICK_STRIDES: dict[str, int] = {"exchange_rate": 2, "weather": 32, "ETTm1": 16, "ETTm2": 16}
QUICK_EPOCHS = 6
#: --quick's TrainConfig changes, chosen on validation MSE (see README "Forecasting").
QUICK_OVERRIDES: dict[str, Any] = {"lr": 1e-3, "batch_size": 64}
#: Without --quick: every training window, TSLib's train_epochs and patience.
FULL_EPOCHS, FULL_PATIENCE = 10, 3
FULL_OVERRIDES: dict[str, Any] = {}

#: The arms of ours, in table order: key -> column title.
ARMS = {"timesclip": "TimesCLIP", "e4": "E4 language only", "naive": "naive",
        "dlinear": "DLinear"}

Scores = dict[str, float]  # {"mse", "mae"}


# ----------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """What one table run trains: the same for every arm and every file, but the stride."""

    backbone: str
    quick: bool
    horizons: tuple[int, ...]
    datasets: tuple[str, ...]
    strides: dict[str, int]
    epochs: int
    patience: int
    overrides: dict[str, Any]
    seed: int = SEED
    device: str = "auto"

    def config(self, dataset: str, horizon: int) -> TrainConfig:
        """The TimesCLIP (E1) configuration of one file and horizon."""
        base = TrainConfig(task="forecast", backbone=self.backbone, lookback=LOOKBACK,
                           horizon=horizon, train_stride=self.strides[dataset],
                           epochs=self.epochs, patience=self.patience, seed=self.seed,
                           device=self.device)
        return base.replace(**self.overrides)

    def describe(self) -> str:
        """One line: stride per file, epochs, patience, changed TrainConfig fields, seed."""
        strides = ", ".join(f"{DATASETS[d]} {self.strides[d]}" for d in self.datasets)
        changed = ", ".join(f"{k}={v}" for k, v in self.overrides.items()) or "none"
        return (f"training stride {strides}; up to {self.epochs} epochs (patience "
                f"{self.patience}, val MSE picks the epoch); TrainConfig changes: {changed}; "
                f"seed {self.seed}")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`NAME=VALUE` pairs -> {field: value}, read as the training CLI and the YAML files
    read a TrainConfig field (`coerce_field`); an unknown name or bad value is one line."""
    out: dict[str, Any] = {}
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or not name:
            raise UserError(f"--set {item!r}: expected NAME=VALUE, e.g. --set lr=1e-3")
        if name in ("task", "backbone", "lookback", "horizon", "train_stride", "epochs",
                    "patience", "seed", "device"):
            raise UserError(f"--set {name}: the table sets it; use its own flag "
                            f"(--{name.replace('_', '-')}) or leave it")
        out[name] = coerce_field(name, value, f"--set {item}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="benchmarks/forecast_table.py", underscore_note=False,
                           description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CPU budget: strided training windows (QUICK_STRIDES), "
                        f"{QUICK_EPOCHS} epochs, {QUICK_OVERRIDES}; the test is still "
                        "every window")
    p.add_argument("--full", action="store_true", help="add horizon 192")
    p.add_argument("--backbone", default="tiny",
                   help="CLIP backbone of the TimesCLIP arms: tiny (random, CPU), a hub id "
                        "or a local directory (default: tiny)")
    p.add_argument("--datasets", default=",".join(DATASETS),
                   help=f"comma-separated subset of {', '.join(DATASETS)}")
    p.add_argument("--data-dir", type=Path,
                   help="folder of the Time-Series-Library files (<name>.csv.gz; default: "
                        f"{FORECASTING}/ in $TIMESCLIP_REAL_DATA or shared/data/ in or beside "
                        "the checkout)")
    p.add_argument("--train-stride", type=int, metavar="N",
                   help="every N-th training window for every file (default: 1, or "
                        "QUICK_STRIDES with --quick)")
    p.add_argument("--epochs", type=int, metavar="N", help="most epochs per TimesCLIP run")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="NAME=VALUE",
                   help="change a TrainConfig field of both TimesCLIP arms (repeatable), "
                        "e.g. --set freeze_text=false")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--feature-cache", metavar="DIR",
                       help="vision-feature cache (default: the trainer's)")
    cache.add_argument("--no-feature-cache", action="store_true",
                       help="compute the vision features without the cache")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="also write the table and its notes (Markdown) to FILE")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings of one run from parsed flags; UserError (one line) on a bad value."""
    names = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    unknown = [d for d in names if d not in DATASETS]
    if not names or unknown:
        raise UserError(f"--datasets: unknown {', '.join(unknown) or '(empty)'}; choose from "
                        f"{', '.join(DATASETS)}")
    for flag, value in (("--train-stride", args.train_stride), ("--epochs", args.epochs)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be an integer >= 1, got {value}")
    if args.quick:
        strides = dict(QUICK_STRIDES)
        epochs, patience, overrides = QUICK_EPOCHS, QUICK_EPOCHS, dict(QUICK_OVERRIDES)
    else:
        strides = dict.fromkeys(DATASETS, 1)
        epochs, patience, overrides = FULL_EPOCHS, FULL_PATIENCE, dict(FULL_OVERRIDES)
    if args.train_stride is not None:
        strides = dict.fromkeys(DATASETS, args.train_stride)
    overrides.update(parse_overrides(args.overrides))
    settings = Settings(backbone=args.backbone, quick=args.quick,
                        horizons=FULL_HORIZONS if args.full else HORIZONS, datasets=names,
                        strides=strides, epochs=args.epochs or epochs,
                        patience=min(patience, args.epochs or epochs), overrides=overrides,
                        seed=args.seed, device=args.device)
    for dataset in names:  # every configuration valid before anything runs
        for horizon in settings.horizons:
            apply_ablation(settings.config(dataset, horizon), "E4")
    return settings


def data_files(settings: Settings, data_dir: Path | None) -> dict[str, Path]:
    """{name: file} for the table's data sets (in `data_dir`, or where every benchmark and
    test looks: `benchmarks/data_files.py`); UserError naming the first missing one."""
    files: dict[str, Path] = {}
    for d in settings.datasets:
        if data_dir is not None:
            path = Path(data_dir) / f"{d}.csv.gz"
            found, where = ([path] if path.is_file() else []), str(data_dir)
        else:
            found, places = find_data(FORECASTING, f"{d}.csv.gz")
            where = places_text([p / FORECASTING for p in places])
        if not found:
            raise UserError(f"forecasting file {d}.csv.gz not found in {where}; pass "
                            "--data-dir, the folder of the Time-Series-Library files")
        files[d] = found[0]
    return files


def check_out(path: Path | None) -> None:
    """Fail before any training if --out cannot be written."""
    if path is None:
        return
    parent = path.resolve().parent
    if path.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"--out {path}: not a writable file path (its folder must exist); "
                        "choose another")


# ----------------------------------------------------------------------------- results
@dataclass
class Row:
    """One file at one horizon: each arm's {"val"|"test": {"mse", "mae"}} and seconds."""

    dataset: str
    horizon: int
    train_windows: int
    test_windows: int
    scores: dict[str, dict[str, Scores]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    epochs: dict[str, str] = field(default_factory=dict)  # arm -> "run (best b)"

    def test(self, arm: str) -> Scores | None:
        return self.scores.get(arm, {}).get("test")


def gap(ours: Scores, reference: Scores, metric: str = "mse") -> tuple[float, float]:
    """(difference, relative difference in %) of `ours` over `reference`; > 0: ours is
    worse (the metrics are errors)."""
    diff = ours[metric] - reference[metric]
    return diff, 100.0 * diff / reference[metric]


def beats(ours: Scores, reference: Scores, metric: str = "mse") -> bool:
    """Strictly lower error: a tie does not beat."""
    return ours[metric] < reference[metric]


def _cell(scores: Scores | tuple[float, float] | None) -> str:
    if scores is None:
        return "–"
    mse, mae = (scores["mse"], scores["mae"]) if isinstance(scores, dict) else scores
    return f"{mse:.3f} / {mae:.3f}"


def paper(model: str, dataset: str, horizon: int) -> tuple[float, float] | None:
    """(MSE, MAE) of `model` in PAPER_TABLE4, None where the paper has none."""
    return PAPER_TABLE4.get(model, {}).get(dataset, {}).get(horizon)


def _gap_cell(ours: Scores | None, reference: Scores | None) -> str:
    if ours is None or reference is None:
        return "–"
    diff, rel = gap(ours, reference)
    return f"{diff:+.3f} ({rel:+.0f} %)"


def _beats_cell(ours: Scores | None, naive: Scores | None) -> str:
    if ours is None or naive is None:
        return "–"
    return " / ".join("yes" if beats(ours, naive, m) else "**no**" for m in ("mse", "mae"))


def markdown_table(rows: Sequence[Row], backbone: str) -> str:
    """The one table: ours (test) beside the paper's Table 4, per file and horizon."""
    head = ["data (H)", f"TimesCLIP ({backbone})", "E4 language only", "naive", "DLinear",
            "TimesCLIP vs DLinear (MSE)", "TimesCLIP beats naive (MSE / MAE)",
            "paper TimesCLIP", "paper iTransformer", "paper PatchTST", "paper DLinear"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ours = r.test("timesclip")
        cells = [f"{DATASETS[r.dataset]} ({r.horizon})", _cell(ours), _cell(r.test("e4")),
                 _cell(r.test("naive")), _cell(r.test("dlinear")),
                 _gap_cell(ours, r.test("dlinear")), _beats_cell(ours, r.test("naive")),
                 *(_cell(paper(m, r.dataset, r.horizon)) for m in PAPER_TABLE4)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(rows: Sequence[Row], settings: Settings) -> list[str]:
    """The lines under the table: what the numbers are, and what they do not say."""
    out = [f"MSE / MAE on the standardised scale over every test window; ours trained and "
           f"scored here (lookback {LOOKBACK}, one seed), the paper's from {PAPER_SOURCE}. "
           f"'vs DLinear' is TimesCLIP's MSE minus our DLinear's (> 0: TimesCLIP worse)."]
    windows = ", ".join(f"{DATASETS[r.dataset]} ({r.horizon}) {r.train_windows} / "
                        f"{r.test_windows}" for r in rows)
    out.append(f"Settings: {settings.describe()}. Training / test windows: {windows}.")
    if settings.quick:
        out.append("--quick: TimesCLIP, E4 and DLinear all train on the strided training "
                   "windows above (DLinear with TSLib's recipe, lr/batch of LTSF-Linear); "
                   "the test is every window. DLinear on every training window: "
                   "`python -m timesclip.forecast_baselines FILE`.")
    if settings.backbone == "tiny":
        out.append("The tiny backbone is a random toy CLIP (2 layers, 64 wide): it cannot "
                   "reproduce pretrained-CLIP numbers, and these rows say how the pipeline "
                   "trains, not what TimesCLIP reaches. The pretrained row: "
                   f"`{gpu_command(settings)}`.")
    for verdict, chosen in (("beats", True), ("does not beat", False)):
        names = [f"{DATASETS[r.dataset]} ({r.horizon})" for r in rows
                 if r.test("timesclip") and r.test("naive")
                 and beats(r.test("timesclip"), r.test("naive")) is chosen]
        if names:
            out.append(f"TimesCLIP ({settings.backbone}) {verdict} naive on test MSE: "
                       f"{', '.join(names)}.")
    losing = [f"{DATASETS[r.dataset]} ({r.horizon}: {r.scores['timesclip']['val']['mse']:.3f} "
              f"against {r.scores['naive']['val']['mse']:.3f})" for r in rows
              if r.test("timesclip") and r.test("naive")
              and not beats(r.test("timesclip"), r.test("naive"))
              and "val" in r.scores["timesclip"] and "val" in r.scores["naive"]]
    if losing:
        out.append("Where TimesCLIP loses to naive on test, its validation MSE against "
                   f"naive's: {', '.join(losing)} (whether validation saw it coming).")
    hard = [f"{DATASETS[r.dataset]} ({r.horizon}: naive {r.test('naive')['mse']:.3f}, paper "
            f"{paper('TimesCLIP', r.dataset, r.horizon)[0]:.3f})" for r in rows
            if r.test("naive") and paper("TimesCLIP", r.dataset, r.horizon)
            and r.test("naive")["mse"] <= paper("TimesCLIP", r.dataset, r.horizon)[0]]
    if hard:
        out.append("Repeating the last value already matches or beats the paper's own "
                   f"TimesCLIP MSE on {', '.join(hard)}: a near random walk, where every "
                   "learned model is measured against noise.")
    return out


def gpu_command(settings: Settings | None = None) -> str:
    """The command that produces the pretrained row (every training window, H 96 and 192)."""
    datasets = "" if settings is None or settings.datasets == tuple(DATASETS) else (
        f" --datasets {','.join(settings.datasets)}")
    return ("python benchmarks/forecast_table.py --full --backbone "
            f"openai/clip-vit-base-patch16 --device cuda{datasets} "
            "--out forecast_table_clip_b16.md")


def report(rows: Sequence[Row], settings: Settings) -> str:
    """The table and its notes, as printed and as --out holds them."""
    title = (f"## Forecasting: TimesCLIP ({settings.backbone}) beside the paper's Table 4 "
             f"(lookback {LOOKBACK}{', --quick' if settings.quick else ''})")
    return "\n\n".join([title, markdown_table(rows, settings.backbone),
                        "\n".join(f"- {line}" for line in notes(rows, settings))]) + "\n"


# ----------------------------------------------------------------------------- running
def run_file(settings: Settings, dataset: str, path: Path, horizon: int,
             say: Callable[[str], None], cache: dict[str, Any], backbone: Any) -> Row:
    """Every arm on one file at one horizon: the same windows, the same seed."""
    from timesclip.data import load_bundle
    from timesclip.feature_cache import load_or_compute
    from timesclip.features import compute_features
    from timesclip.forecast_baselines import forecast_baselines
    from timesclip.train import fit

    config = settings.config(dataset, horizon)
    start = time.perf_counter()
    data = load_bundle(config, [path], warn=lambda msg: say(f"  note: {msg}"))
    row = Row(dataset, horizon, len(data.train), len(data.test))
    label = f"{DATASETS[dataset]} H={horizon}"

    def done(arm: str, seconds: float, extra: str = "") -> None:
        row.seconds[arm] = seconds
        t = row.test(arm)
        say(f"{label} {ARMS[arm]}: test MSE {t['mse']:.4f} MAE {t['mae']:.4f}{extra}, "
            f"{seconds:.1f} s")

    say(f"{label}: {data.description}; {len(data.train)} training windows (stride "
        f"{config.train_stride}), {len(data.val)} val, {len(data.test)} test "
        f"({time.perf_counter() - start:.1f} s to load)")
    start = time.perf_counter()
    base = forecast_baselines(data, dlinear=False)
    row.scores["naive"] = base["naive"]
    done("naive", time.perf_counter() - start, f" (val MSE {base['naive']['val']['mse']:.4f})")
    start = time.perf_counter()
    base = forecast_baselines(data, seed=settings.seed)
    row.scores["dlinear"] = base["dlinear"]
    done("dlinear", time.perf_counter() - start,
         f" (val MSE {base['dlinear']['val']['mse']:.4f})")

    start = time.perf_counter()
    if cache.get("off"):
        features, hit = compute_features(config, data, backbone, progress=None), False
    else:
        features, hit = load_or_compute(
            config, data, cache_dir=cache.get("dir"),
            compute=lambda: compute_features(config, data, backbone, progress=None))
    images = sum(len(data.split(s)) for s in ("train", "val", "test")) * len(data.bands)
    how = ("read from the cache" if hit else "computed" if cache.get("off")
           else "computed and cached")
    say(f"{label} vision features: {images:,} images {how}, "
        f"{time.perf_counter() - start:.1f} s")
    text_only = dataclasses.replace(backbone, vision=None)
    for arm, arm_config, feats in (("timesclip", config, features),
                                   ("e4", apply_ablation(config, "E4"), None)):
        start = time.perf_counter()
        result = fit(arm_config, data, vision_features=feats, backbone=text_only)
        row.scores[arm] = {"val": result.val, "test": result.test}
        row.epochs[arm] = f"{result.epochs_run} (best {result.best_epoch})"
        done(arm, time.perf_counter() - start,
             f" (val MSE {result.val['mse']:.4f}; {result.epochs_run} epochs, best "
             f"{result.best_epoch})")
    return row


def run(settings: Settings, files: dict[str, Path], cache: dict[str, Any],
        say: Callable[[str], None]) -> list[Row]:
    """Every file x horizon, in table order."""
    from timesclip.model import check_backbone, load_backbone

    check_backbone(settings.backbone)
    backbone = load_backbone(settings.backbone, need_vision=True)
    return [run_file(settings, d, files[d], h, say, cache, backbone)
            for d in settings.datasets for h in settings.horizons]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        settings = settings_from_args(args)
        files = data_files(settings, args.data_dir)
        check_out(args.out)
        start = time.perf_counter()
        say(f"forecast table: {len(files)} files x H {settings.horizons}; "
            f"{settings.describe()}; backbone {settings.backbone}; load average "
            f"{' / '.join(f'{v:.2f}' for v in os.getloadavg())}")
        rows = run(settings, files, {"dir": args.feature_cache,
                                     "off": args.no_feature_cache}, say)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = report(rows, settings)
    say(f"\nall runs: {time.perf_counter() - start:.0f} s; load average "
        f"{' / '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    say(text)
    say(f"the pretrained row, on a GPU: {gpu_command(settings)}")
    if args.out is not None:
        atomic.write_text(args.out, text)
        say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ARMS", "DATASETS", "PAPER_SOURCE", "PAPER_TABLE4", "QUICK_EPOCHS",
           "QUICK_OVERRIDES", "QUICK_STRIDES", "Row", "Settings", "beats", "gap", "gpu_command",
           "markdown_table", "notes", "paper", "parse_overrides", "report", "run",
           "settings_from_args"]
