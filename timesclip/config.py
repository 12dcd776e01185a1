"""TrainConfig: the one list of hyperparameters.

Every hyperparameter has exactly one name — the field name here — and that name is used
unchanged by the training CLI (`--contrastive-weight`), the YAML search spaces, the trial
configs, the results tables and the exported best configuration. Defaults follow the
user's own training recipe (AdamW 1e-4, ReduceLROnPlateau, clip 1.0, batch 32, ...).
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from timesclip import atomic
from timesclip.errors import ConfigError
from timesclip.metrics import METRIC_MODES, TASK_EPOCH_METRICS

DEFAULT_BACKBONE = "openai/clip-vit-base-patch16"
#: What a run does: predict one yield per season ("yield") or the next `horizon` steps of
#: every variate of a Time-Series-Library file ("forecast").
TASKS = ("yield", "forecast")
#: How a forecasting file is split (timesclip.data.forecast applies them): auto (from the
#: file name, as TSLib), etth / ettm (12/4/4 months of hourly / 15-minute rows), ratio
#: (70/10/20 %).
BORDERS = ("auto", "etth", "ettm", "ratio")
#: What a field left unset (None) means, per task: the yield task keeps its long-standing
#: values; the forecast values are the choices of README "Forecasting" (PatchTST's 16/8
#: patches for a 96-step lookback, the paper's cross-attention variate selection, and the
#: task's error metric as the monitor).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "yield": {"patch_length": 6, "stride": 3, "variate_selection": "gate",
              "monitor": "val_rmse"},
    "forecast": {"patch_length": 16, "stride": 8, "variate_selection": "cross",
                 "monitor": "val_mse"},
}
#: Image size of a forecast run on the tiny backbone when `image_size` is unset. A
#: forecasting file is 10^5-10^6 images (ETTm1 ~400k), and the tiny tower encodes them
#: ~8x faster at 32 px (17 tokens) than at its native 64 px (65 tokens): measured 2500 vs
#: 310 images/s on one busy CPU core. Real towers keep their native size (224 px).
FORECAST_TINY_IMAGE_SIZE = 32
#: The metric best.pt and early stopping follow when `monitor` is not set: the task's own
#: error metric (the yield task's val_rmse; see TASK_DEFAULTS for the forecast task's).
DEFAULT_MONITOR = TASK_DEFAULTS["yield"]["monitor"]
#: What `monitor` may name, per task: the metrics with a direction that the task reports
#: per epoch.
TASK_MONITOR_CHOICES: dict[str, tuple[str, ...]] = {
    task: tuple(m for m in METRIC_MODES if m in TASK_EPOCH_METRICS[task]) for task in TASKS}
#: The yield task's monitor choices (kept under this name for existing callers).
MONITOR_CHOICES = TASK_MONITOR_CHOICES["yield"]
#: Fields only one task reads. A value other than the default for the other task is
#: refused (never silently ignored); at the default it is unused by that task.
YIELD_ONLY = ("bands", "input_steps", "split", "test_year", "val_fraction", "test_fraction",
              "split_seed", "head_hidden")
FORECAST_ONLY = ("lookback", "horizon", "train_stride", "borders", "forecast_anchor")
#: What a forecast is relative to on the window's normalised scale (see `forecast_anchor`).
FORECAST_ANCHORS = ("mean", "last")

#: The ablation matrix of SEED.md: id -> the TrainConfig switches it sets.
ABLATIONS: dict[str, dict[str, Any]] = {
    "E1": dict(use_vision=True, use_contrastive=True, use_variate_selection=True,
               language_backbone="clip"),
    "E2": dict(use_vision=True, use_contrastive=False, use_variate_selection=True,
               language_backbone="clip"),
    "E3": dict(use_vision=True, use_contrastive=True, use_variate_selection=False,
               language_backbone="clip"),
    "E4": dict(use_vision=False, use_contrastive=False, use_variate_selection=False,
               language_backbone="clip"),
    "E5": dict(use_vision=True, use_contrastive=False, use_variate_selection=False,
               language_backbone="scratch"),
}

ABLATION_MEANINGS: dict[str, str] = {
    "E1": "full TimesCLIP",
    "E2": "no contrastive loss",
    "E3": "no variate selection",
    "E4": "language only (CLIP-Text, no vision)",
    "E5": "baseline: frozen CLIP-Vision + Transformer from scratch, plain MSE",
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "split": ("random", "year"),
    "scheduler": ("plateau", "cosine"),
    "contrastive_mode": ("variate", "global", "hybrid"),
    "language_backbone": ("clip", "scratch"),
    "precision": ("fp32", "bf16"),
    "task": TASKS,
    "borders": BORDERS,
    "forecast_anchor": FORECAST_ANCHORS,
}
#: Choices of fields that may be None (None: the task's default, TASK_DEFAULTS).
_OPTIONAL_CHOICES: dict[str, tuple[str, ...]] = {"variate_selection": ("gate", "cross")}


@dataclass
class TrainConfig:
    """All hyperparameters of one TimesCLIP training run (data window, model, optimiser)."""

    # --- the task: "yield" (one value per season, the user's CSV schema) or "forecast"
    # (Time-Series-Library files, the next `horizon` steps of every variate)
    task: str = "yield"

    # --- yield: data window and split (part of the config so a best config reproduces
    # its split)
    bands: list[str] | None = None  # None: every band found in the CSVs, in file order
    input_steps: int = 12  # first N ten-day steps of the season fed to the model
    split: str = "random"  # "random" (seeded) or "year" (hold out test_year)
    test_year: int | None = None  # required when split == "year", an error otherwise
    val_fraction: float = 0.15
    test_fraction: float = 0.15  # used by the random split only
    split_seed: int = 42  # seeds the split only, so training seeds never move the test set

    # --- forecast: window and split, exactly as Time-Series-Library
    lookback: int = 96  # L: input steps of every window
    horizon: int = 96  # H: steps forecast
    train_stride: int = 1  # use every N-th training window (val/test: every window)
    borders: str = "auto"  # auto (from the file name) | etth | ettm | ratio (70/10/20)
    # mean: the head's output is the forecast on the window's RevIN scale (the paper's);
    # last: it is a change from the window's last value (NLinear's anchor, head starts at 0,
    # so an untrained model forecasts the naive repeat-last-value)
    forecast_anchor: str = "mean"

    # --- backbone and rendering
    backbone: str = DEFAULT_BACKBONE  # hub id, local directory, or "tiny" (random, small)
    image_size: int | None = None  # None: the vision tower's native size
    line_width: float = 1.5  # rendered line half-thickness, in pixels at 224 px

    # --- model
    patch_length: int | None = None  # None: the task's (yield 6, forecast 16)
    stride: int | None = None  # None: the task's (yield 3, forecast 8)
    d_model: int = 128
    n_heads: int = 4
    dropout: float = 0.1
    head_hidden: int = 128
    use_vision: bool = True
    use_contrastive: bool = True
    use_variate_selection: bool = True
    # gate: self-attention across variates + a gate; cross: the paper's cross-attention
    # with each variate's text CLS as query (None: the task's, yield gate, forecast cross)
    variate_selection: str | None = None
    language_backbone: str = "clip"  # "clip" (pretrained CLIP-Text) or "scratch"
    freeze_text: bool = True  # False: fine-tune CLIP-Text with backbone_lr

    # --- contrastive alignment
    contrastive_mode: str = "hybrid"  # variate | global | hybrid
    contrastive_weight: float = 0.1
    temperature: float = 0.07
    learnable_temperature: bool = False
    hybrid_alpha: float = 0.5

    # --- optimisation
    batch_size: int = 32
    lr: float = 1e-4
    backbone_lr: float = 1e-5  # for unfrozen pretrained weights (CLIP-Text when fine-tuned)
    weight_decay: float = 1e-5
    epochs: int = 100
    patience: int = 15  # early stopping: epochs without improvement of the monitor
    # the per-epoch metric best.pt keeps and early stopping follows (None: DEFAULT_MONITOR)
    monitor: str | None = None
    scheduler: str = "plateau"  # plateau (ReduceLROnPlateau) | cosine
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # fp32 | bf16: bf16 runs the CLIP towers under autocast (less memory and time on
    # hardware with bf16 units); the trainable parts and the loss stay fp32
    precision: str = "fp32"
    # CPU threads of torch for this run (0: torch's default). Float sums depend on the
    # thread count, so a trial records the count it ran with and a re-run uses it again.
    threads: int = 0

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ConfigError with one line naming the bad field, its value and the rule."""

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        for name, choices in _CHOICES.items():
            need(getattr(self, name) in choices, name, "one of " + ", ".join(choices))
        self._check_task_fields()
        for name, choices in _OPTIONAL_CHOICES.items():
            need(getattr(self, name) is None or getattr(self, name) in choices, name,
                 f"one of {', '.join(choices)} (unset: the task's, "
                 f"{TASK_DEFAULTS[self.task][name]} for {self.task})")
        for name in ("input_steps", "d_model", "n_heads", "head_hidden", "batch_size",
                     "epochs", "patience", "plateau_patience", "lookback", "horizon",
                     "train_stride", "patch_length", "stride"):
            value = getattr(self, name)
            if value is None and name in ("patch_length", "stride"):
                continue
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 name, "an integer >= 1")
        for name in ("temperature", "lr", "backbone_lr"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                 name, "> 0")
        for name in ("contrastive_weight", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                 name, ">= 0")
        for name in ("hybrid_alpha",):
            need(0.0 <= getattr(self, name) <= 1.0, name, "between 0 and 1")
        choices = TASK_MONITOR_CHOICES[self.task]
        need(self.monitor is None or self.monitor in choices, "monitor",
             f"one of {', '.join(choices)} (unset: {TASK_DEFAULTS[self.task]['monitor']})"
             + (" for the forecast task" if self.task == "forecast" else ""))
        need(0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)")
        need(0.0 < self.plateau_factor < 1.0, "plateau_factor", "in (0, 1)")
        need(0.0 < self.val_fraction < 0.5, "val_fraction", "in (0, 0.5)")
        need(0.0 < self.test_fraction < 0.5, "test_fraction", "in (0, 0.5)")
        need(self.line_width > 0, "line_width", "> 0")
        need(self.image_size is None or (isinstance(self.image_size, int)
                                          and self.image_size >= 16),
             "image_size", "None or an integer >= 16")
        need(isinstance(self.seed, int), "seed", "an integer")
        need(isinstance(self.threads, int) and not isinstance(self.threads, bool)
             and self.threads >= 0, "threads", "an integer >= 0 (0: torch's default)")
        need(isinstance(self.split_seed, int), "split_seed", "an integer")
        need(isinstance(self.backbone, str) and self.backbone != "", "backbone",
             "a hub id, a local directory or 'tiny'")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             "device", "auto, cpu, cuda or cuda:N")
        if self.bands is not None:
            need(isinstance(self.bands, list) and len(self.bands) > 0
                 and all(isinstance(b, str) and b for b in self.bands),
                 "bands", "a non-empty list of band names")
        if self.split == "year" and self.test_year is None:
            raise ConfigError("test_year must be given when split is 'year' "
                              "(e.g. --test-year 2020)")
        if self.split != "year" and self.test_year is not None:
            # the random split would ignore it: the user believes a year is held out
            raise ConfigError(f"test_year ({self.test_year}) only applies to the year split "
                              f"but split is {self.split!r}: add --split year or drop "
                              "--test-year (or test_year in the config file)")
        patch, stride = self.resolved("patch_length"), self.resolved("stride")
        window = "input_steps" if self.task == "yield" else "lookback"
        if patch > self.window_steps:
            raise ConfigError(f"patch_length ({patch}) must be <= {window} "
                              f"({self.window_steps})")
        if stride > patch:
            raise ConfigError(f"stride ({stride}) must be <= patch_length "
                              f"({patch}), or some steps are never seen")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads "
                              f"({self.n_heads})")
        if self.use_contrastive and not self.use_vision:
            raise ConfigError("use_contrastive needs use_vision: the contrastive loss aligns "
                              "the vision and language branches (use --no-contrastive with "
                              "--language-only)")

    def _check_task_fields(self) -> None:
        """A field the other task reads, set away from its default, is refused: the run
        would ignore it while the user believes it applies."""
        defaults = _defaults()
        if self.task == "forecast":
            foreign, other, fix = YIELD_ONLY, "yield", (
                "drop it (a forecast run uses every column of the file, splits it by "
                "--borders and reads --lookback steps)")
        else:
            foreign, other, fix = FORECAST_ONLY, "forecast", (
                "add --task forecast or drop it (the yield window is --input-steps)")
        for name in foreign:
            if getattr(self, name) != defaults[name]:
                raise ConfigError(f"{name} ({getattr(self, name)!r}) only applies to the "
                                  f"{other} task but task is {self.task!r}: {fix}")

    # ------------------------------------------------------------------ derived values
    def resolved(self, name: str) -> Any:
        """The value of field `name` this run uses: its own, or when None the task's
        default (TASK_DEFAULTS: patch_length, stride, variate_selection, monitor)."""
        value = getattr(self, name)
        if value is None and name in TASK_DEFAULTS[self.task]:
            return TASK_DEFAULTS[self.task][name]
        return value

    def image_px(self, native: int) -> int:
        """The rendered image size for a vision tower of `native` pixels: `image_size`, else
        FORECAST_TINY_IMAGE_SIZE for a forecast run on the tiny backbone, else `native`."""
        if self.image_size is not None:
            return self.image_size
        if self.task == "forecast" and self.backbone == "tiny":
            return FORECAST_TINY_IMAGE_SIZE
        return int(native)

    @property
    def window_steps(self) -> int:
        """Time steps of one model input: `input_steps` (yield) or `lookback` (forecast)."""
        return self.input_steps if self.task == "yield" else self.lookback

    @property
    def n_patches(self) -> int:
        """Number of patches the language branch cuts from the `window_steps` steps."""
        return ((self.window_steps - self.resolved("patch_length"))
                // self.resolved("stride") + 1)

    @property
    def monitor_metric(self) -> str:
        """The metric best.pt and early stopping follow: `monitor`, else the task's own."""
        return self.resolved("monitor")

    @property
    def monitor_mode(self) -> str:
        """The direction in which `monitor_metric` is better: "min" or "max"."""
        return METRIC_MODES[self.monitor_metric]

    @property
    def ablation_id(self) -> str | None:
        """The E1..E5 id whose switches this config matches, or None."""
        for key, switches in ABLATIONS.items():
            if all(getattr(self, k) == v for k, v in switches.items()):
                return key
        return None

    # ------------------------------------------------------------------ conversions
    @classmethod
    def field_names(cls) -> list[str]:
        return list(_field_types())

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.field_names()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build a config from a mapping; unknown keys are an error naming the source.

        A top-level `provenance` key (written by the best-config export) is ignored.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of parameter: value")
        known = set(cls.field_names())
        data = {k: v for k, v in data.items() if k != "provenance"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown parameter(s) {', '.join(unknown)}; "
                              f"known parameters are TrainConfig fields, e.g. "
                              f"{', '.join(sorted(known)[:6])}, ...")
        cleaned = {k: coerce_field(k, v, source) for k, v in data.items()}
        return cls(**cleaned)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed (unknown names raise ConfigError)."""
        merged = self.to_dict()
        merged.update(changes)
        return TrainConfig.from_dict(merged, source="override")

    def to_yaml(self, path: str | Path | None = None,
                provenance: dict[str, Any] | None = None) -> str:
        data: dict[str, Any] = self.to_dict()
        if provenance is not None:
            data["provenance"] = provenance
        # libyaml's emitter when present: same text, ~5x faster (every trial writes one)
        text = yaml.dump(data, Dumper=_SAFE_DUMPER, sort_keys=False)
        if path is not None:
            atomic.write_text(path, text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
            raise ConfigError(f"{path}: not valid YAML ({first})") from None
        return cls.from_dict(data, source=str(path))


_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@functools.cache
def _defaults() -> dict[str, Any]:
    """Every field's default value (read once; see _field_types)."""
    return {f.name: f.default for f in fields(TrainConfig)}


@functools.cache
def _field_types() -> dict[str, str]:
    """TrainConfig's field names (in order) and types, read once: every trial of a search
    builds several configs, and `dataclasses.fields` per value made that quadratic."""
    return {f.name: str(f.type) for f in fields(TrainConfig)}


def coerce_field(name: str, value: Any, source: str) -> Any:
    """`value` as the type of TrainConfig field `name`; ConfigError naming `source` if not.

    The one reading of a hyperparameter value, whether it comes from a --config YAML, a
    search-space file or a command-line flag, so a value means the same thing in all three.
    Accepted besides the field's own type, because each is only another spelling of the
    same value: a number written as text ("1e-3": YAML 1.1 reads an exponent without a dot
    as a string), a whole number written as a float for an integer (12.0), the words
    true/false/yes/no for a switch, and "a,b" for a list (the --bands form). Refused,
    because the value would have to be guessed: null for a field that cannot be None,
    true/false where a number is meant (YAML reads an unquoted `yes` as true), a
    non-finite number, a fraction for an integer, a non-string where text is meant.
    """
    kind = _field_types().get(name)
    if kind is None:
        raise ConfigError(f"{source}: unknown parameter {name!r}")
    if value is None:
        if kind.endswith(" | None"):
            return None
        raise ConfigError(f"{source}: {name} cannot be null (it is {kind})")
    reader = _READERS.get(kind.removesuffix(" | None"))
    if reader is None:
        return value
    try:
        return reader[0](value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{source}: {name} must be {reader[1]}, got {value!r}") from None


def _read_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise TypeError(value)
    number = float(value)  # float(" 1e-3 ") == 0.001
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _read_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            value = float(value)  # "1e3": YAML 1.1 text for 1000
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    raise ValueError(value)


def _read_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return value.strip().lower() in ("true", "yes")
    raise ValueError(value)


def _read_str(value: Any) -> str:
    if not isinstance(value, str):  # a number for a name is a YAML reading; quote it
        raise TypeError(value)
    return value


def _read_names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(value)
    return list(value)


#: Field type (without "| None") -> (reader, what the error says the value must be).
_READERS: dict[str, tuple[Any, str]] = {
    "float": (_read_float, "a finite number"),
    "int": (_read_int, "an integer"),
    "bool": (_read_bool, "true or false"),
    "str": (_read_str, "a string (quote it in YAML)"),
    "list[str]": (_read_names, "a list of names or a comma-separated string"),
}


def apply_ablation(config: TrainConfig, ablation: str) -> TrainConfig:
    """Return `config` with the switches of ablation id E1..E5."""
    key = ablation.upper()
    if key not in ABLATIONS:
        raise ConfigError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    return config.replace(**ABLATIONS[key])


__all__ = ["ABLATIONS", "ABLATION_MEANINGS", "BORDERS", "DEFAULT_BACKBONE", "DEFAULT_MONITOR",
           "FORECAST_ONLY", "FORECAST_TINY_IMAGE_SIZE", "MONITOR_CHOICES", "TASKS",
           "TASK_DEFAULTS", "TASK_MONITOR_CHOICES", "YIELD_ONLY", "TrainConfig",
           "apply_ablation", "coerce_field"]
