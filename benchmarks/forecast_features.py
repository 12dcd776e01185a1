"""The forecasting vision pass at full scale: seconds, images/s and peak memory on this CPU.

    python benchmarks/forecast_features.py [--data ETTm1.csv.gz] [--train-stride 1]
        [--threads N] [--image-size N] [--real-windows 16] [--checkpoint DIR] [--no-real]

Two processes; the peak RSS (VmHWM) is reset before each step, so one step's peak cannot
hide another's:
1. tiny: `compute_features` over every window of the file (train at --train-stride, val and
   test whole; lookback 96, horizon 96) with the tiny backbone at the forecast task's image
   size (32 px unless --image-size): seconds, images/s, the features' size, and the peak RSS
   of the process next to its RSS before the pass; then the features stored into a fresh
   feature cache and loaded back (`load_or_compute`, fp16 safetensors): seconds and the
   peak RSS over the RSS before each step;
2. real: the vision pass of ViT-B/16 (random weights of the real architecture,
   benchmarks/clip_checkpoint.py, ~600 MB written once into --checkpoint) over the first
   --real-windows windows of the file at 224 px: its images/s, from which the whole file's
   pass is extrapolated (images / rate), with the size its features would have.
The load average is printed with every measurement: timings depend on other processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `timesclip` importable
    sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "forecasting" / "ETTm1.csv.gz"


def rss_kb(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in kB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def reset_peak() -> None:
    """VmHWM := VmRSS, so the next VmHWM is the peak of what follows (Linux clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


# ----------------------------------------------------------------------------- workers
def _bundle(job: dict):
    from timesclip.config import TrainConfig
    from timesclip.data import load_bundle

    config = TrainConfig(task="forecast", backbone=job["backbone"], lookback=96, horizon=96,
                         train_stride=job["train_stride"], image_size=job["image_size"],
                         device="cpu", threads=job["threads"])
    return config, load_bundle(config, [job["data"]], warn=None)


def worker(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    config, data = _bundle(job)
    windows = {s: len(data.split(s)) for s in ("train", "val", "test")}
    v = len(data.bands)
    if job["kind"] == "real":
        import numpy as np

        from timesclip.model import compute_vision_features, load_backbone

        backbone = load_backbone(config.backbone)
        n = job["real_windows"]
        x = data.train.x(np.arange(n))  # [n, L, V]
        compute_vision_features(x[:1], backbone.vision, image_size=224)  # warm-up
        rss_before = rss_kb("VmRSS")
        reset_peak()
        start = time.perf_counter()
        compute_vision_features(x, backbone.vision, image_size=224)
        seconds = time.perf_counter() - start
        return {"windows": windows, "variates": v, "images": n * v, "seconds": seconds,
                "width": int(backbone.vision.config.hidden_size), "load": _load(),
                "rss_before_mb": rss_before / 1024, "peak_rss_mb": rss_kb("VmHWM") / 1024}
    from timesclip.features import compute_features

    rss_before = rss_kb("VmRSS")
    reset_peak()
    start = time.perf_counter()
    feats = compute_features(config, data, progress="vision features",
                             progress_file=sys.stderr)
    out = {"windows": windows, "variates": v, "seconds": time.perf_counter() - start,
           "rss_before_mb": rss_before / 1024, "peak_rss_mb": rss_kb("VmHWM") / 1024,
           "features_mb": sum(t.numel() * t.element_size() for t in feats.values()) / 2**20,
           "dtype": str(feats["train"].dtype), "load": _load()}
    if job["kind"] == "tiny":
        from timesclip.feature_cache import load_or_compute

        cache = tempfile.mkdtemp(prefix="forecast-features-")
        rss = rss_kb("VmRSS")
        reset_peak()
        start = time.perf_counter()
        load_or_compute(config, data, cache_dir=cache, compute=lambda: feats)
        out.update(store_seconds=time.perf_counter() - start,
                   store_extra_mb=(rss_kb("VmHWM") - rss) / 1024,
                   file_mb=sum(p.stat().st_size for p in Path(cache).glob("*.safetensors"))
                   / 2**20)
        del feats
        rss = rss_kb("VmRSS")
        reset_peak()
        start = time.perf_counter()
        loaded, hit = load_or_compute(config, data, cache_dir=cache)
        out.update(load_seconds=time.perf_counter() - start,
                   load_extra_mb=(rss_kb("VmHWM") - rss) / 1024, hit=hit)
        shutil.rmtree(cache, ignore_errors=True)
    return out


def run(job: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


# ----------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--train-stride", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--image-size", type=int, default=None,
                   help="tiny pass image size (default: the forecast task's, 32 px)")
    p.add_argument("--real-windows", type=int, default=16,
                   help="windows of the timed ViT-B/16 pass (x variates images)")
    p.add_argument("--checkpoint", type=Path, default=Path(tempfile.gettempdir())
                   / "timesclip-clip-b16-random", help="real-size CLIP directory (reused)")
    p.add_argument("--no-real", action="store_true", help="skip the ViT-B/16 measurement")
    p.add_argument("--no-tiny", action="store_true",
                   help="skip the tiny pass (the ViT-B/16 figure then extrapolates to the "
                        "windows of --data)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    base = {"data": args.data, "train_stride": args.train_stride, "threads": args.threads,
            "image_size": args.image_size, "backbone": "tiny"}
    print(f"{Path(args.data).name}, lookback 96, horizon 96, training stride "
          f"{args.train_stride}; {os.cpu_count()} CPUs, {args.threads} torch threads")
    if args.no_tiny:
        real_only(args, base)
        return
    tiny = run({**base, "kind": "tiny"})
    images = sum(tiny["windows"].values()) * tiny["variates"]
    print(f"tiny pass: {tiny['windows']} windows x {tiny['variates']} variates = {images} "
          f"images in {tiny['seconds']:.1f} s ({images / tiny['seconds']:.0f} images/s); "
          f"features {tiny['features_mb']:.1f} MB {tiny['dtype']}; peak RSS "
          f"{tiny['peak_rss_mb']:.0f} MB (RSS before the pass {tiny['rss_before_mb']:.0f} MB) "
          f"[load {tiny['load']}]")
    cache = tiny
    print(f"cache: stored in {cache['store_seconds']:.1f} s (file {cache['file_mb']:.1f} MB, "
          f"peak RSS +{cache['store_extra_mb']:.1f} MB over before), loaded in "
          f"{cache['load_seconds']:.1f} s (hit {cache['hit']}, peak RSS "
          f"+{cache['load_extra_mb']:.1f} MB for {cache['features_mb']:.1f} MB of features) "
          f"[load {cache['load']}]")
    if not args.no_real:
        real_only(args, base)


def real_only(args: argparse.Namespace, base: dict) -> None:
    """The timed ViT-B/16 pass over the first windows, extrapolated to the whole file."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from clip_checkpoint import ensure_clip_checkpoint

    ckpt = ensure_clip_checkpoint(args.checkpoint)
    real = run({**base, "kind": "real", "backbone": str(ckpt), "image_size": None,
                "real_windows": args.real_windows})
    images = sum(real["windows"].values()) * real["variates"]
    rate = real["images"] / real["seconds"]
    hours = images / rate / 3600
    size_gb = images * real["width"] * 2 / 2**30
    print(f"ViT-B/16 at 224 px: {real['images']} images in {real['seconds']:.1f} s = "
          f"{rate:.2f} images/s on this CPU; the whole file ({images} images) extrapolates to "
          f"{hours:.1f} h; its features {size_gb:.2f} GB fp16; peak RSS "
          f"{real['peak_rss_mb']:.0f} MB (before the pass {real['rss_before_mb']:.0f} MB) "
          f"[load {real['load']}]")


if __name__ == "__main__":
    main()
