"""Command-line flags generated from TrainConfig, shared by `timesclip train` and the tuner.

Every TrainConfig field gets a kebab-case flag (`contrastive_weight` -> `--contrastive-weight`)
so a hyperparameter has the same name everywhere. The user's familiar switches
(`--language-only`, `--no-contrastive`, `--quick`, ...) are layered on top.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from timesclip.config import ABLATIONS, TrainConfig, apply_ablation


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`error: ...; see --help`) with exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        import sys

        print(f"error: {self.prog}: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


#: One-line help for the flags a user reaches for first; others get a generic line.
FIELD_HELP: dict[str, str] = {
    "bands": "comma-separated band names to use, in this order (default: every band found)",
    "input_steps": "use the first N ten-day steps of the season (default 12)",
    "split": "random: seeded random split; year: hold out --test-year as the test set",
    "test_year": "the year held out as test set with --split year",
    "backbone": "CLIP checkpoint: hub id, local directory, or 'tiny' (small random towers "
                "for CPU smoke runs; its numbers say nothing about pretrained CLIP)",
    "image_size": "rendered image size in pixels (default: the vision tower's native size)",
    "epochs": "maximum number of epochs (default 100)",
    "batch_size": "mini-batch size (default 32); lower it on CUDA out-of-memory",
    "lr": "AdamW learning rate of the trainable parts (default 1e-4)",
    "backbone_lr": "learning rate of CLIP-Text when fine-tuned (--no-freeze-text)",
    "contrastive_weight": "weight of the InfoNCE term in the loss (default 0.1); lower it if "
                          "the contrastive loss exceeds ~10",
    "temperature": "InfoNCE temperature (default 0.07)",
    "hybrid_alpha": "hybrid contrastive loss = alpha*variate + (1-alpha)*global",
    "contrastive_mode": "variate, global or hybrid InfoNCE",
    "freeze_text": "keep CLIP-Text frozen (--no-freeze-text fine-tunes it with --backbone-lr)",
    "seed": "random seed of initialisation, dropout and shuffling",
    "split_seed": "random seed of the train/val/test split (kept apart from --seed so "
                  "seeds compare models on one test set)",
    "device": "auto (CUDA if present), cpu, cuda or cuda:N",
    "scheduler": "plateau (ReduceLROnPlateau) or cosine",
    "patience": "early stopping patience on val_loss, in epochs",
}

#: Fields that belong to the data flags group (shared with `python -m tuner.search`).
DATA_FIELDS = ("bands", "input_steps", "split", "test_year", "split_seed")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """--data plus the data-window fields, identical in both CLIs."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", nargs="+", metavar="CSV",
                       help="CSV file(s) in the user schema ({band}_{NN} features, y{YYYY} "
                            "target); omitted: the built-in synthetic data set")
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
    types = {f.name: str(f.type) for f in fields(TrainConfig)}
    defaults = TrainConfig().to_dict()
    for name in names:
        kind = types[name]
        default = defaults[name]
        text = FIELD_HELP.get(name, name.replace("_", " "))
        text = f"{text} [{name}, default {default!r}]"
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
    return TrainConfig.from_dict({**config.to_dict(), **switches, **explicit}, source="flags")
