"""`python -m timesclip train|evaluate`: one training run, or scoring a saved model.

Exit codes: 0 success, 2 bad input or configuration (one line on stderr), 1 internal failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from timesclip import atomic
from timesclip.cli_args import (
    OneLineErrorParser,
    add_ablation_flags,
    add_config_flags,
    add_data_flags,
    config_from_args,
)
from timesclip.errors import NonFiniteLossError, UserError


def _print(msg: str) -> None:
    print(msg, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m timesclip", underscore_note=False,
        description="Train or evaluate the TimesCLIP crop-yield model (one run, no Ray).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train", help="train one configuration",
        description="Train one TimesCLIP configuration and write config.yaml, metrics.json, "
                    "the best checkpoint (best.pt) and TensorBoard events (tb/) into --out.")
    train.add_argument("--config", metavar="YAML",
                       help="a TrainConfig YAML (e.g. an exported best_config.yaml); flags "
                            "override it, its provenance: block is ignored")
    train.add_argument("--out", metavar="DIR",
                       help="output directory, must not exist or be empty "
                            "(default: runs/train-<time>)")
    add_data_flags(train)
    add_ablation_flags(train)
    add_config_flags(train)
    _add_vision_pass_flags(train, cache=True)
    train.add_argument("--no-baselines", action="store_true",
                       help="--task forecast: do not train DLinear after the run (the naive "
                            "baseline is still scored; metrics.json then has no 'dlinear')")

    ev = sub.add_parser(
        "evaluate", help="score a saved model",
        description="Score a checkpoint written by `train` on CSV data (or the synthetic "
                    "data set). Inputs are scaled with the TRAINING statistics stored in the "
                    "checkpoint; metrics are in the target's own units.")
    ev.add_argument("--checkpoint", required=True, metavar="PATH",
                    help="a training --out directory or its best.pt")
    ev.add_argument("--data", nargs="+", metavar="CSV",
                    help="CSV file(s); omitted: the synthetic data set (a forecasting model: "
                         "its one Time-Series-Library file, required)")
    ev.add_argument("--subset", choices=("all", "train", "val", "test"),
                    help="rows to score: 'all' rows of the files (default with --data), or one "
                         "part of the checkpoint's own split (default without --data: test); "
                         "a forecasting model: every window of one TSLib split (default test)")
    ev.add_argument("--device", default="auto",
                    help="auto (CUDA if present), cpu, cuda or cuda:N (default: auto)")
    ev.add_argument("--json", metavar="FILE", help="also write the metrics to FILE")
    _add_vision_pass_flags(ev, cache=False)
    ev.add_argument("--plots", metavar="DIR",
                    help="also write predictions.csv, predicted_vs_actual.png and, for a "
                         "model with variate selection, attention.csv (band x band, mean "
                         "over the scored rows) and attention.png into DIR (a forecasting "
                         "model: forecast_examples.csv/png, horizon_mse.csv/png, attention)")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _add_vision_pass_flags(parser: argparse.ArgumentParser, *, cache: bool) -> None:
    """How the one-time vision pass runs; none of these change a result."""
    group = parser.add_argument_group("vision pass")
    group.add_argument("--image-batch", type=_positive_int, metavar="N",
                       help="images per vision-tower call (default: as many as fit a memory "
                            "budget: 8 for ViT-B/16 on CPU, from free memory on CUDA)")
    if cache:
        where = group.add_mutually_exclusive_group()
        where.add_argument("--feature-cache", metavar="DIR",
                           help="directory of cached vision features (default: "
                                "$XDG_CACHE_HOME/timesclip/features or "
                                "~/.cache/timesclip/features)")
        where.add_argument("--no-feature-cache", action="store_true",
                           help="compute the vision features without reading or writing "
                                "the cache")


def cmd_train(args: argparse.Namespace) -> int:
    from timesclip.data import load_bundle  # pandas only: bad input fails before torch loads

    config = config_from_args(args)
    forecast = config.task == "forecast"
    if args.no_baselines and not forecast:
        raise UserError("--no-baselines applies to --task forecast (a yield run trains no "
                        "baselines); drop it")
    out = Path(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output directory {out} already exists and is not empty; "
                        "choose another --out or remove it")
    _check_writable(out)
    data = load_bundle(config, args.data)  # all input checks happen before anything is written
    from timesclip.model import check_backbone
    from timesclip.runtime import resolve_device
    from timesclip.train import fit

    check_backbone(config.backbone)
    ablation = config.ablation_id or "custom"
    if forecast:
        _print(f"data: {data.description}; variates {','.join(data.bands)}")
    else:
        _print(f"data: {data.description}; split {data.split}: train {len(data.train)}, "
               f"val {len(data.val)}, test {len(data.test)}; bands {','.join(data.bands)}; "
               f"first {config.input_steps} steps")
    _print(f"model: ablation {ablation}, backbone {config.backbone}"
           f"{' (random toy weights)' if config.backbone == 'tiny' else ''}, "
           f"device {resolve_device(config.device)}, up to {config.epochs} epochs")

    # Work in a sibling temp dir and rename at the end: a failed run leaves no half output.
    work = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"cannot create output directory {out}: {exc.strerror or exc}; "
                        "choose another --out") from None
    try:
        config.to_yaml(work / "config.yaml")
        features, backbone = _vision_features(config, data, args)
        result = fit(config, data, checkpoint_dir=work, tb_dir=work / "tb", log=_print,
                     vision_features=features, backbone=backbone)
        (work / "last.pt").unlink(missing_ok=True)  # resumable state is not needed after success
        metrics = result.metrics_json()
        metrics.update(task=config.task, ablation=config.ablation_id, data=data.description,
                       data_fingerprint=data.fingerprint, synthetic=data.synthetic)
        if forecast:
            metrics["baselines"] = _forecast_baselines(config, data, not args.no_baselines)
        (work / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    v, t = result.val, result.test or {}
    _print(f"done in {result.train_seconds:.1f}s ({result.epochs_run} epochs, best epoch "
           f"{result.best_epoch}); params total {result.params['total']:,}, trainable "
           f"{result.params['trainable']:,}, frozen {result.params['frozen']:,}")
    if forecast:
        for name, scores in (("TimesCLIP", {"val": v, "test": t}),
                             *metrics["baselines"].items()):
            _print(f"{name:<9}  val MSE {scores['val']['mse']:.4f}  MAE "
                   f"{scores['val']['mae']:.4f}   test MSE {scores['test']['mse']:.4f}  MAE "
                   f"{scores['test']['mae']:.4f}")
        _print(f"(standardised scale, every window; backbone {config.backbone}; "
               f"{data.description})")
    else:
        _print(f"val  RMSE {v['rmse']:.3f}  MAE {v['mae']:.3f}  R2 {v['r2']:+.3f}  "
               f"MAPE {v['mape']:.1f}%")
        if t:
            _print(f"test RMSE {t['rmse']:.3f}  MAE {t['mae']:.3f}  R2 {t['r2']:+.3f}  "
                   f"MAPE {t['mape']:.1f}%   [backbone {config.backbone}; {data.description}]")
    _print(f"wrote {out}/config.yaml, metrics.json, best.pt, tb/")
    return 0


def _forecast_baselines(config, data, dlinear: bool) -> dict:
    """metrics.json `baselines` of a forecasting run: naive and DLinear on the same windows
    (DLinear trained with TSLib's recipe on the same training windows, seeded by the run)."""
    from timesclip.forecast_baselines import forecast_baselines

    if not dlinear:
        _print("baselines: DLinear not trained (--no-baselines); naive only")
    return forecast_baselines(data, dlinear=dlinear, seed=config.seed, log=_print)


def _vision_features(config, data, args: argparse.Namespace):
    """(features, backbone) for fit: loaded from the feature cache, or computed (and cached)
    here with the backbone fit then reuses, so the towers are read from disk once."""
    if not config.use_vision:
        return None, None
    from dataclasses import replace

    from timesclip.feature_cache import load_or_compute
    from timesclip.features import compute_features
    from timesclip.model import load_backbone

    loaded = []

    def compute():
        loaded.append(load_backbone(config.backbone, need_vision=True))
        return compute_features(config, data, loaded[0], log=_print,
                                image_batch=args.image_batch)

    if args.no_feature_cache:
        features = compute()
    else:
        features, _ = load_or_compute(config, data, cache_dir=args.feature_cache,
                                      compute=compute, log=_print)
    # fit needs the text tower only; dropping the vision tower frees its memory for training
    return features, (replace(loaded[0], vision=None) if loaded else None)


def _check_writable(out: Path) -> None:
    """Fail before any work if --out cannot be created (a file in the way, no permission)."""
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot create output directory {out}: {ancestor} is not a writable "
                        "directory; choose another --out")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from timesclip.data import load_bundle, load_csvs, refuse_forecast_files
    from timesclip.inference import load_for_inference, predict_with_attention
    from timesclip.metrics import regression_metrics

    model, config, scaler, bands, backbone = load_for_inference(args.checkpoint, args.device)
    if config.task == "forecast":
        return _evaluate_forecast(args, model, config, bands, backbone)
    if args.data:
        refuse_forecast_files(args.data)
    # The model's own bands, in its order: a config that auto-detected its bands (bands None)
    # would otherwise detect whatever these files hold and feed the model the wrong columns.
    config = config.replace(bands=list(bands))
    subset = args.subset or ("all" if args.data else "test")
    if subset == "all":
        if args.data:
            table = load_csvs(args.data, bands=bands, min_steps=config.input_steps,
                              for_model=True)
            x_raw, y_raw, source = table.x[:, :config.input_steps], table.y, ", ".join(args.data)
            years = table.years
        else:
            bundle = load_bundle(config, None)
            parts = (bundle.train, bundle.val, bundle.test)
            import numpy as np

            x_raw = np.concatenate([p.x_raw for p in parts])
            y_raw = np.concatenate([p.y_raw for p in parts])
            years = np.concatenate([p.years for p in parts])
            source = bundle.description
    else:
        bundle = load_bundle(config, args.data, for_model=True)
        part = getattr(bundle, subset)
        x_raw, y_raw, source = part.x_raw, part.y_raw, bundle.description
        years = part.years
    # One pass gives the metrics and, for --plots, the predictions and attention alike
    # (evaluate_arrays is the same pass without the attention). stdout is the JSON result:
    # progress of a long vision pass goes to stderr.
    y_pred, attention = predict_with_attention(model, config, scaler, backbone, x_raw,
                                               image_batch=args.image_batch,
                                               progress_file=sys.stderr)
    metrics = regression_metrics(y_raw, y_pred)
    result = {"subset": subset, "n": int(len(y_raw)), "data": source,
              "backbone": config.backbone, **metrics}
    text = json.dumps(result, indent=2)
    if args.json:
        atomic.write_text(args.json, text + "\n")
    _print(text)
    if args.plots:
        caption = _plots_caption(
            ", ".join(Path(f).name for f in args.data) if args.data else source,
            config.backbone, not args.data)
        _write_plots(Path(args.plots), bands, y_raw, y_pred, attention, years,
                     caption=caption, subset=subset)
    return 0


def _evaluate_forecast(args: argparse.Namespace, model: Any, config: Any,
                       variates: list[str], backbone: Any) -> int:
    """evaluate for a forecasting checkpoint: every window of one TSLib split of the file,
    scored on the standardised scale (the file's own training scaler, as TSLib scores)."""
    from timesclip.data import load_bundle
    from timesclip.errors import DataError
    from timesclip.inference import evaluate_forecast

    if not args.data:
        raise UserError("a forecasting model needs --data FILE: the Time-Series-Library CSV "
                        "to score (e.g. the file it was trained on)")
    subset = args.subset or "test"
    if subset == "all":
        raise UserError("--subset all is for yield files; a forecasting file is scored on "
                        "the windows of one TSLib split: --subset train, val or test")
    bundle = load_bundle(config.replace(train_stride=1), args.data, warn=None)
    if bundle.columns != variates:
        raise DataError(f"{args.data[0]}: its variates {','.join(bundle.columns)} differ from "
                        f"the model's {','.join(variates)}; score a file with the same "
                        "columns in the same order")
    for quirk in bundle.quirks:  # said once the file is known to be usable
        print(f"warning: {quirk}", file=sys.stderr, flush=True)
    evaluation = evaluate_forecast(model, config, backbone, bundle.split(subset), bundle.scaler,
                                   image_batch=args.image_batch, progress_file=sys.stderr)
    result = {"subset": subset, "n": evaluation.n_windows, "data": bundle.description,
              "backbone": config.backbone, **evaluation.metrics, "naive": evaluation.naive}
    text = json.dumps(result, indent=2)
    if args.json:
        atomic.write_text(args.json, text + "\n")
    _print(text)
    if args.plots:
        from timesclip.forecast_plots import write_forecast_plots

        out = Path(args.plots)
        if out.exists() and not out.is_dir():
            raise UserError(f"--plots {out} exists and is not a directory; choose another")
        caption = _plots_caption(Path(args.data[0]).name, config.backbone, False)
        try:
            written = write_forecast_plots(out, evaluation, variates, caption=caption,
                                           subset=subset)
        except OSError as exc:
            raise UserError(f"cannot write --plots {out}: {exc.strerror or exc}") from None
        _print("plots: " + ", ".join(str(p) for p in written))
    return 0


def _plots_caption(source: str, backbone: str, synthetic: bool) -> str:
    """What every figure of --plots says about its origin."""
    toy = " (random toy weights, NOT pretrained CLIP)" if backbone == "tiny" else ""
    return f"{'SYNTHETIC data' if synthetic else 'data'}: {source} · backbone {backbone}{toy}"


def _write_plots(out: Path, bands: Sequence[str], y_raw: Any, y_pred: Any, attention: Any,
                 years: Any, *, caption: str, subset: str) -> None:
    """evaluate --plots: predictions and attention of the scored rows, as CSV and PNG."""
    from timesclip.plots import attention_frame, predictions_frame, write_evaluation_plots

    if out.exists() and not out.is_dir():
        raise UserError(f"--plots {out} exists and is not a directory; choose another")
    frame = predictions_frame(y_raw, y_pred, years)
    matrix = None if attention is None else attention_frame(attention, bands)
    try:
        written = write_evaluation_plots(out, frame, matrix, caption=caption, subset=subset)
    except OSError as exc:
        raise UserError(f"cannot write --plots {out}: {exc.strerror or exc}") from None
    if matrix is None:
        _print(f"plots: {out} (no attention: the model has no variate selection)")
    _print("plots: " + ", ".join(str(p) for p in written))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        return cmd_evaluate(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"error: training stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
