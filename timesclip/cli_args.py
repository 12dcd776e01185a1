"""Command-line flags generated from TrainConfig, shared by `timesclip train` and the tuner.

Every TrainConfig field gets a kebab-case flag (`contrastive_weight` -> `--contrastive-weight`)
so a hyperparameter has the same name everywhere. The user's familiar switches
(`--language-only`, `--no-contrastive`, `--quick`, ...) are layered on top.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from timesclip.config import ABLATIONS, TrainConfig, apply_ablation

#: Appended to the help of every parser: the alias is real but would double every line.
UNDERSCORE_NOTE = ("Every --a-b flag may also be written --a_b (e.g. --input_steps 12, "
                   "--batch_size 16, --no_contrastive).")


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`error: ...; see --help`) with exit code 2,
    and `--a_b` is accepted for every `--a-b` flag.

    The underscore spellings are what many training scripts (the user's own included) use;
    rewriting them before parsing keeps `--help` to one spelling per flag.
    """

    def __init__(self, *args: Any, underscore_note: bool = True, **kwargs: Any) -> None:
        if underscore_note:
            epilog = kwargs.get("epilog")
            kwargs["epilog"] = f"{epilog} {UNDERSCORE_NOTE}" if epilog else UNDERSCORE_NOTE
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        import sys

        print(f"error: {self.prog}: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None):
        import sys

        argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._kebab_case(argv), namespace)

    def _kebab_case(self, argv: list[str]) -> list[str]:
        """`--input_steps 6` / `--input_steps=6` -> `--input-steps ...` for known flags only.

        Tokens after `--`, values and unknown flags are left alone (an unknown flag is then
        reported as the user wrote it). Sub-commands apply their own flags the same way.
        """
        known = self._option_string_actions
        out: list[str] = []
        for i, arg in enumerate(argv):
            if arg == "--":
                return out + argv[i:]
            if arg.startswith("--") and "_" in arg:
                name, eq, value = arg.partition("=")
                kebab = name.replace("_", "-")
                if name not in known and kebab in known:
                    arg = kebab + eq + value
            out.append(arg)
        return out


#: One-line help per TrainConfig field; the default is appended from TrainConfig itself.
FIELD_HELP: dict[str, str] = {
    "task": "yield: one yield per season from CSVs in the user schema; forecast: the next "
            "--horizon steps of every variate of one Time-Series-Library CSV (date first, "
            "OT last), split, scaled and scored as TSLib does",
    "lookback": "forecast: input steps of every window (TSLib seq_len)",
    "horizon": "forecast: steps to forecast (TSLib pred_len)",
    "train_stride": "forecast: use every N-th training window (CPU budgets); validation "
                    "and test always use every window",
    "borders": "forecast: the split: auto (from the file name, as TSLib: ETTh*, ETTm*, "
               "else 70/10/20), etth, ettm or ratio",
    "forecast_anchor": "forecast: mean: the head forecasts on the window's RevIN scale (the "
                       "paper's); last: it forecasts the change from the window's last value "
                       "and starts at the naive forecast (NLinear's anchor)",
    "variate_selection": "gate: self-attention across variates and a gate; cross: the "
                         "paper's cross-attention with each variate's text CLS as query",
    "bands": "comma-separated band names to use, in this order",
    "input_steps": "use the first N ten-day steps of the season",
    "split": "random: seeded random split; year: hold out --test-year as the test set "
             "(--split random also drops a test_year that --config sets)",
    "test_year": "the year held out as test set; needs --split year",
    "val_fraction": "share of the rows (year split: of the other years) used for validation",
    "test_fraction": "share of the rows held out as test set by the random split",
    "split_seed": "random seed of the train/val/test split (kept apart from --seed so "
                  "seeds compare models on one test set)",
    "backbone": "CLIP checkpoint: hub id, local directory, or 'tiny' (small random towers "
                "for CPU smoke runs; its numbers say nothing about pretrained CLIP)",
    "image_size": "rendered image size in pixels",
    "line_width": "half-thickness of the drawn line, in pixels of a 224 px image",
    "patch_length": "time steps per patch of the language branch",
    "stride": "steps between patch starts (<= --patch-length)",
    "d_model": "width of the image, text and selection embeddings",
    "n_heads": "attention heads of the variate selection (must divide --d-model)",
    "dropout": "dropout of the variate selection and the regression head",
    "head_hidden": "hidden width of the regression head (yield; the forecast head is "
                   "flatten + linear)",
    "use_vision": "the vision branch (--no-use-vision = --language-only)",
    "use_contrastive": "the contrastive (InfoNCE) loss",
    "use_variate_selection": "the variate-selection attention",
    "language_backbone": "clip: pretrained CLIP-Text; scratch: the same shape trained from "
                         "scratch",
    "freeze_text": "keep CLIP-Text frozen (--no-freeze-text fine-tunes it with --backbone-lr)",
    "contrastive_mode": "variate, global or hybrid InfoNCE",
    "contrastive_weight": "weight of the InfoNCE term in the loss; lower it if the "
                          "contrastive loss exceeds ~10",
    "temperature": "InfoNCE temperature (the initial value if learnable)",
    "learnable_temperature": "learn the temperature, CLIP-style",
    "hybrid_alpha": "hybrid contrastive loss = alpha*variate + (1-alpha)*global",
    "batch_size": "mini-batch size; lower it on CUDA out-of-memory",
    "lr": "AdamW learning rate of the trainable parts",
    "backbone_lr": "learning rate of CLIP-Text when fine-tuned (--no-freeze-text)",
    "weight_decay": "AdamW weight decay",
    "epochs": "maximum number of epochs",
    "patience": "early stopping: stop after this many epochs without improvement of "
                "--monitor",
    "monitor": "the validation metric best.pt keeps the best epoch of and early stopping "
               "follows: val_rmse, val_loss, val_mae, val_mape or val_r2 (forecast: "
               "val_mse, val_mae or val_loss)",
    "scheduler": "plateau (ReduceLROnPlateau) or cosine",
    "plateau_factor": "ReduceLROnPlateau: multiply the learning rate by this",
    "plateau_patience": "ReduceLROnPlateau: epochs without improvement before it does",
    "grad_clip": "maximum gradient norm; 0 disables clipping",
    "seed": "random seed of initialisation, dropout and shuffling",
    "device": "auto (CUDA if present), cpu, cuda or cuda:N",
    "precision": "fp32 or bf16: bf16 runs the CLIP towers under autocast, for GPUs (on a "
                 "CPU without bf16 units it is many times slower)",
    "threads": "torch CPU threads; 0: torch's default (a search records each trial's CPU "
               "count here so a re-run uses the same)",
}

#: How a default of None reads in --help; fields absent here show no default.
NONE_DEFAULTS: dict[str, str] = {
    "bands": "every band found, in file order",
    "image_size": "the vision tower's native size (forecast with the tiny backbone: 32)",
    "monitor": "the task's error metric: val_rmse (yield), val_mse (forecast)",
    "patch_length": "the task's: 6 (yield), 16 (forecast)",
    "stride": "the task's: 3 (yield), 8 (forecast)",
    "variate_selection": "the task's: gate (yield), cross (forecast)",
}

#: Fields that belong to the data flags group (shared with `python -m tuner.search`):
#: the task, the yield window and split, the forecasting window and split.
DATA_FIELDS = ("task", "bands", "input_steps", "split", "test_year", "split_seed",
               "lookback", "horizon", "train_stride", "borders")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def default_text(name: str) -> str | None:
    """The TrainConfig default of `name` as --help shows it, or None to show nothing."""
    value = getattr(TrainConfig(), name)
    if value is None:
        return NONE_DEFAULTS.get(name)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """--data plus the data-window fields, identical in both CLIs."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", nargs="+", metavar="CSV",
                       help="CSV file(s) in the user schema ({band}_{NN} features, y{YYYY} "
                            "target); omitted: the built-in synthetic data set. --task "
                            "forecast: one Time-Series-Library CSV (.csv or .csv.gz)")
    _add_field_flags(group, DATA_FIELDS)


def add_config_flags(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()) -> None:
    """One flag per remaining TrainConfig field, defaulting to 'not given' (None)."""
    group = parser.add_argument_group("hyperparameters (TrainConfig fields; flags override "
                                      "--config)")
    names = [f.name for f in fields(TrainConfig)
             if f.name not in DATA_FIELDS and f.name not in exclude]
    _add_field_flags(group, names)


def add_ablation_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ablation switches")
    group.add_argument("--ablation", choices=sorted(ABLATIONS), type=str.upper,
                       help="set the switches of one row of the ablation matrix (E1 = full "
                            "model ... E5 = baseline)")
    group.add_argument("--language-only", action="store_true",
                       help="no vision branch (implies --no-contrastive)")
    group.add_argument("--no-contrastive", action="store_true", help="no contrastive loss")
    group.add_argument("--no-variate-selection", action="store_true",
                       help="no variate-selection attention")
    group.add_argument("--quick", action="store_true",
                       help="10 epochs (unless --epochs is given): a fast sanity run")


def _add_field_flags(group: Any, names: Any) -> None:
    """The argparse default stays None ("not given") so that --config and ablation switches
    are only overridden by flags the user typed; --help shows TrainConfig's default."""
    types = {f.name: str(f.type) for f in fields(TrainConfig)}
    for name in names:
        kind = types[name]
        text = FIELD_HELP.get(name, name.replace("_", " "))
        default = default_text(name)
        if default is not None:
            text = f"{text} (default: {default})"
        if kind == "bool":
            group.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction,
                               default=None, help=text)
        elif kind == "float":
            group.add_argument(flag(name), dest=name, type=float, default=None, help=text,
                               metavar="X")
        elif kind.startswith("int"):
            group.add_argument(flag(name), dest=name, type=int, default=None, help=text,
                               metavar="N")
        elif kind.startswith("list"):
            group.add_argument(flag(name), dest=name, default=None, help=text, metavar="A,B")
        else:
            group.add_argument(flag(name), dest=name, default=None, help=text, metavar="VALUE")


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """defaults <- --config file <- ablation switches <- explicit field flags."""
    config = base if base is not None else (
        TrainConfig.from_yaml(args.config) if getattr(args, "config", None) else TrainConfig())
    if getattr(args, "ablation", None):
        config = apply_ablation(config, args.ablation)
    switches: dict[str, Any] = {}
    if getattr(args, "language_only", False):
        switches.update(use_vision=False, use_contrastive=False)
    if getattr(args, "no_contrastive", False):
        switches["use_contrastive"] = False
    if getattr(args, "no_variate_selection", False):
        switches["use_variate_selection"] = False
    if getattr(args, "quick", False):
        switches["epochs"] = 10
    explicit = {name: getattr(args, name) for name in TrainConfig.field_names()
                if getattr(args, name, None) is not None}
    if explicit.get("use_vision") is False and "use_contrastive" not in explicit:
        switches["use_contrastive"] = False
    if explicit.get("split", "year") != "year" and "test_year" not in explicit:
        # --split random over a year-split --config: the file's test_year went with its split
        switches["test_year"] = None
    return TrainConfig.from_dict({**config.to_dict(), **switches, **explicit}, source="flags")
