"""Speed and peak memory of the one-time vision pass, next to the vision tower's own best rate.

    python benchmarks/vision_pass.py [--sizes tiny real] [--bands 7 15] [--samples N]
        [--checkpoint DIR] [--image-batch N] [--tower-batches 8 16 32] [--no-before]

For each backbone size and band count, the feature pass (`compute_vision_features`: render
and encode every (sample, band) image, a bounded number of images per tower call) runs on
the first N rows of the Illinois data (`/work/shared/data/yield_illinois_soybean`, first
`--input-steps` steps; the first 7 of its 15 bands for 7; synthetic data when the files are
absent). Printed per run: images/second, the process's peak RSS and its RSS before the pass,
and the ratio of the pass's rate to the tower's best single-call rate -- the tower alone on
ready-made pixels, best over `--tower-batches` images per call, measured in the same
invocation; and, right after each pass in the same process (after its peak RSS is taken),
the tower alone at the pass's own batch: a paired ratio that a change of load between
processes cannot skew as much. "before" runs the previous, sample-batched pass on the same
rows (64 samples per tower call, i.e. up to 64 x V images at once, under no_grad): its
memory grows with the band count. With the default 24 rows at real size that is one call
of 24 x V images; the previous default on the full data set was 64 x V (960 at 15 bands).

Every measurement runs in a fresh subprocess so one configuration's peak RSS cannot hide
another's. "real" is the architecture of openai/clip-vit-base-patch16 with random weights
(written once by benchmarks/clip_checkpoint.py into --checkpoint, ~600 MB): same cost as
the pretrained weights, no download. Timings depend on the load from other processes: the
load average is printed with every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `timesclip` and `benchmarks` importable
    sys.path.insert(0, str(ROOT))

ILLINOIS = Path("/work/shared/data/yield_illinois_soybean")
OLD_SAMPLE_BATCH = 64  # samples per tower call of the previous pass


def _rss_mb() -> float:
    """Current resident set size of this process, MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


# ----------------------------------------------------------------------------- worker side
def _series(n_bands: int, samples: int, input_steps: int, data_dir: str | None):
    """x_raw [N, T, V] float32: the first `samples` rows, first `n_bands` bands."""
    import numpy as np

    from timesclip.data import default_synthetic_paths, load_csvs

    files = sorted(Path(data_dir).glob("*.csv")) if data_dir else []
    table = load_csvs(files or default_synthetic_paths())
    if n_bands > len(table.bands):
        raise SystemExit(f"the data has {len(table.bands)} bands, asked for {n_bands}")
    x = table.x[:samples, :input_steps, :n_bands]
    return np.ascontiguousarray(x, dtype=np.float32), ("illinois" if files else "synthetic")


def _sample_batched_features(x, vision, *, image_size: int, line_width: float,
                             batch_size: int):
    """The previous vision pass, kept for the comparison: `batch_size` SAMPLES per tower
    call (batch_size * V images), every image of the batch rendered at once, no_grad."""
    import torch

    from timesclip.model.render import render_series

    x = torch.from_numpy(x)
    n, _, v = x.shape
    hidden = int(vision.config.hidden_size)
    chunks = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            images = render_series(x[start:start + batch_size], image_size, line_width)
            b = images.shape[0]  # [b, V, 3, H, W]
            out = vision(pixel_values=images.reshape(b * v, 3, image_size, image_size))
            chunks.append(out.pooler_output.reshape(b, v, hidden))
    return torch.cat(chunks)


def worker(job: dict) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    import torch

    from timesclip.model import load_backbone
    from timesclip.model.vision import compute_vision_features, default_image_batch

    backbone = load_backbone(job["backbone"])
    vision = backbone.vision
    assert vision is not None
    size = backbone.image_size
    result: dict = {"threads": torch.get_num_threads(), "load_before": _load()}
    if job["kind"] == "tower":
        rates = {}
        for batch in job["tower_batches"]:
            pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                vision(pixel_values=pixels)  # warm-up
                best = float("inf")
                for _ in range(job["repeats"]):
                    start = time.perf_counter()
                    vision(pixel_values=pixels)
                    best = min(best, time.perf_counter() - start)
            rates[batch] = batch / best
        result.update(rates=rates)
    else:
        x, source = _series(job["bands"], job["samples"], job["input_steps"], job["data"])
        images = x.shape[0] * x.shape[2]
        rss_before = _rss_mb()
        start = time.perf_counter()
        if job["kind"] == "after":
            batch = job["image_batch"] or default_image_batch("cpu", vision.config, size)
            feats = compute_vision_features(x, vision, image_size=size, image_batch=batch)
            per_call = batch
        else:
            feats = _sample_batched_features(x, vision, image_size=size, line_width=1.5,
                                             batch_size=OLD_SAMPLE_BATCH)
            per_call = min(OLD_SAMPLE_BATCH, x.shape[0]) * x.shape[2]
        seconds = time.perf_counter() - start
        result.update(images=images, seconds=seconds, rate=images / seconds,
                      rss_before_mb=rss_before, peak_rss_mb=_peak_rss_mb(),
                      images_per_call=per_call, source=source,
                      shape=list(feats.shape))
        if job["kind"] == "after":
            # paired reference, after the peak RSS is taken: the tower alone on ready pixels
            # at the same batch, right away in this process (same load, same warm caches)
            pixels = torch.randn(per_call, 3, size, size)
            with torch.inference_mode():
                start = time.perf_counter()
                for _ in range(job["repeats"]):
                    vision(pixel_values=pixels)
                paired = per_call * job["repeats"] / (time.perf_counter() - start)
            result.update(tower_same_batch_rate=paired)
    result["load_after"] = _load()
    return result


# ----------------------------------------------------------------------------- driver side
def run_job(job: dict) -> dict:
    """Run `worker(job)` in a fresh interpreter; its last stdout line is the JSON result."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker {job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _backbone_for(size: str, checkpoint: str | None) -> str:
    if size == "tiny":
        return "tiny"
    from benchmarks.clip_checkpoint import ensure_clip_checkpoint

    directory = checkpoint or str(Path(tempfile.gettempdir()) / "timesclip-clip-vit-b16-random")
    return str(ensure_clip_checkpoint(directory))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "real"], choices=["tiny", "real"])
    parser.add_argument("--bands", nargs="+", type=int, default=[7, 15])
    parser.add_argument("--samples", type=int, default=None,
                        help="rows of the data to encode (default: tiny all, real 24)")
    parser.add_argument("--input-steps", type=int, default=12)
    parser.add_argument("--checkpoint", default=None,
                        help="directory of the real-size random CLIP checkpoint (written if "
                             "missing; default: a directory under the temp dir)")
    parser.add_argument("--image-batch", type=int, default=None,
                        help="images per tower call (default: the pass's own default)")
    parser.add_argument("--tower-batches", nargs="+", type=int, default=None,
                        help="images per call for the tower-alone rate (default: tiny "
                             "64 256 1024, real 8 16 32)")
    parser.add_argument("--repeats", type=int, default=2, help="timed tower calls per batch")
    parser.add_argument("--no-before", action="store_true",
                        help="skip the previous (sample-batched) pass")
    parser.add_argument("--data", default=str(ILLINOIS) if ILLINOIS.is_dir() else None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import torch

    print(f"vision pass benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU; load average {_load()}; every line from a fresh process")
    summary = []
    for size in args.sizes:
        backbone = _backbone_for(size, args.checkpoint)
        samples = args.samples or (24 if size == "real" else 421)
        batches = args.tower_batches or ([8, 16, 32] if size == "real" else [64, 256, 1024])
        tower = run_job({"kind": "tower", "backbone": backbone, "tower_batches": batches,
                         "repeats": args.repeats})
        rates = {int(k): v for k, v in tower["rates"].items()}
        best_batch = max(rates, key=rates.get)
        best = rates[best_batch]
        listing = ", ".join(f"{b}: {r:.1f}" for b, r in sorted(rates.items()))
        print(f"\n[{size}] backbone {backbone}")
        print(f"  tower alone      best {best:8.1f} img/s at {best_batch} img/call "
              f"(img/s by batch: {listing}); load {tower['load_before']} -> "
              f"{tower['load_after']}")
        for bands in args.bands:
            kinds = ["after"] if args.no_before else ["after", "before"]
            for kind in kinds:
                r = run_job({"kind": kind, "backbone": backbone, "bands": bands,
                             "samples": samples, "input_steps": args.input_steps,
                             "data": args.data, "image_batch": args.image_batch,
                             "repeats": args.repeats})
                label = "image-batched" if kind == "after" else "before (old)"
                paired = r.get("tower_same_batch_rate")
                if paired:
                    r["paired"] = (f" | tower alone at {r['images_per_call']}/call right "
                                   f"after: {paired:.1f} img/s, pass = "
                                   f"{r['rate'] / paired:.2f}x")
                print(f"  {label:14s} {bands:2d} bands {r['images']:5d} img "
                      f"({r['images_per_call']:4d}/call, {r['source']}): "
                      f"{r['rate']:8.1f} img/s = {r['rate'] / best:4.2f}x tower best "
                      f"({best / r['rate']:.2f}x slower) | peak RSS {r['peak_rss_mb']:7.0f} MB "
                      f"(before pass {r['rss_before_mb']:.0f} MB) | "
                      f"load {r['load_before']} -> {r['load_after']}{r.get('paired', '')}",
                      flush=True)
                summary.append((size, kind, bands, r, best))
    print("\ngoal: image-batched pass within 1.2x of the tower's best rate; peak RSS "
          "independent of the band count")
    for size in args.sizes:
        rows = [(b, r, best) for s, k, b, r, best in summary if s == size and k == "after"]
        if not rows:
            continue
        slow = ", ".join(f"{b} bands {best / r['rate']:.2f}x" for b, r, best in rows)
        peaks = ", ".join(f"{b} bands {r['peak_rss_mb']:.0f} MB" for b, r, _ in rows)
        print(f"  [{size}] slowdown vs tower best: {slow}; peak RSS: {peaks}")


if __name__ == "__main__":
    main()
