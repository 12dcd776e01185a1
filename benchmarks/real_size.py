"""The real-size path on a CPU, offline: ViT-B/16 + text-512 CLIP with random weights.

    python benchmarks/real_size.py [--checkpoint DIR] [--rows 48] [--bands 7] [--epochs 2]

Writes (or reuses) a CLIP checkpoint directory with the exact architecture of
`openai/clip-vit-base-patch16` (benchmarks/clip_checkpoint.py) and loads it with
`--backbone DIR`, the same local-directory path a user without network access takes. On a
subset of the Illinois soybean data (real rows, `--rows` of them, `--bands` bands,
12 input steps), in one run it measures:

1. the one-time vision pass (render + encode every sample x band once): images per second,
   in fp32 and in bf16 autocast (`precision: bf16`);
2. seconds per training epoch of E1 (vision features + CLIP-Text + contrastive + variate
   selection) and of E4 (CLIP-Text alone), fp32 and bf16, with the features computed once;
3. what that one pass saves against the naive implementation the user first had (render and
   encode each sample's images inside every training step): the naive epoch pays the vision
   pass over the training rows again, every epoch, so over E epochs the search pays one pass
   where the naive loop pays E (plus the validation passes).

Numbers are per configuration in this process, on this machine; bf16 on a CPU without
bf16 units is usually slower (it is for accelerators); see the printed ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA = ROOT.parent / "shared" / "data" / "yield_illinois_soybean"


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="CLIP directory to write or reuse "
                   "(default: a temp dir, ~600 MB)")
    p.add_argument("--rows", type=int, default=48, help="data rows used (default 48)")
    p.add_argument("--bands", type=int, default=7, help="bands used (default 7)")
    p.add_argument("--epochs", type=int, default=2, help="epochs timed per arm (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()

    import numpy as np
    import torch
    from clip_checkpoint import ensure_clip_checkpoint

    from timesclip.config import TrainConfig, apply_ablation
    from timesclip.data import load_bundle
    from timesclip.features import compute_features
    from timesclip.model import load_backbone
    from timesclip.train import fit

    torch.set_num_threads(args.threads)
    ckpt = ensure_clip_checkpoint(args.checkpoint or Path(tempfile.gettempdir()) /
                                  "timesclip-clip-b16-random")
    files = sorted(DATA.glob("*.csv"))
    if not files:
        sys.exit(f"no Illinois CSV files in {DATA}")
    bands = ["ndvi", "evi", "gndvi", "lswi", "savi", "msavi", "wdvi", "satvi", "tsavi",
             "ci", "grvi", "msi", "v", "sm", "pr"][:args.bands]
    base = TrainConfig(backbone=str(ckpt), bands=bands, input_steps=12, split="year",
                       test_year=2022, batch_size=16, device="cpu", threads=args.threads)
    full = load_bundle(base, [str(f) for f in files])
    # keep the first rows of each split (real rows, the split and its scaling unchanged)
    share = args.rows / sum(len(getattr(full, s)) for s in ("train", "val", "test"))
    from dataclasses import replace

    def head(split):
        n = max(2, int(round(len(split) * share)))
        return replace(split, **{k: v[:n] for k, v in vars(split).items()
                                 if isinstance(v, np.ndarray) and len(v) == len(split)})
    data = replace(full, train=head(full.train), val=head(full.val), test=head(full.test))
    n_rows = sum(len(getattr(data, s)) for s in ("train", "val", "test"))
    print(f"{os.cpu_count()} CPUs, {args.threads} torch threads, load {_load()}; checkpoint "
          f"{ckpt}; Illinois rows train/val/test {len(data.train)}/{len(data.val)}/"
          f"{len(data.test)}, {len(bands)} bands", flush=True)

    t0 = time.perf_counter()
    backbone = load_backbone(str(ckpt), need_vision=True)
    print(f"load_backbone({ckpt.name}): {time.perf_counter() - t0:.1f}s", flush=True)

    rates, features = {}, {}
    for precision in ("fp32", "bf16"):
        cfg = base.replace(precision=precision)
        t0 = time.perf_counter()
        features[precision] = compute_features(cfg, data, backbone, progress=None)
        seconds = time.perf_counter() - t0
        rates[precision] = n_rows * len(bands) / seconds
        print(f"vision pass {precision}: {n_rows * len(bands)} images in {seconds:.1f}s = "
              f"{rates[precision]:.2f} images/s", flush=True)

    # the on-disk cache: what a second run on the same data pays instead of the pass
    from timesclip.feature_cache import load_or_compute

    cache = Path(tempfile.mkdtemp(prefix="real-size-cache-"))
    load_or_compute(base, data, cache_dir=cache, compute=lambda: features["fp32"])
    t0 = time.perf_counter()
    cached, hit = load_or_compute(base, data, cache_dir=cache)
    load_s = time.perf_counter() - t0
    assert hit and all(torch.equal(cached[k], features["fp32"][k]) for k in cached)
    pass_s = n_rows * len(bands) / rates["fp32"]
    print(f"feature cache: a second run loads them in {load_s * 1000:.1f} ms instead of a "
          f"{pass_s:.1f}s pass", flush=True)

    epoch_s: dict[tuple[str, str], float] = {}
    for arm in ("E1", "E4"):
        for precision in ("fp32", "bf16"):
            cfg = apply_ablation(base, arm).replace(precision=precision, epochs=args.epochs,
                                                    patience=100)
            times: list[float] = []

            def report(epoch, metrics, _ckpt, times=times):
                times.append(metrics["epoch_seconds"])

            feats = features[precision] if cfg.use_vision else None
            fit(cfg, data, vision_features=feats, backbone=backbone, report=report,
                evaluate_test=False)
            epoch_s[(arm, precision)] = min(times)
            print(f"{arm} {precision}: epoch {min(times):.2f}s (best of {len(times)}; "
                  f"{len(data.train)} training rows)", flush=True)

    train_images = len(data.train) * len(bands)
    val_images = len(data.val) * len(bands)
    once = n_rows * len(bands) / rates["fp32"]
    print("\nsummary (fp32 unless said otherwise)")
    print(f"  vision pass: {rates['fp32']:.2f} images/s; bf16/fp32 rate "
          f"{rates['bf16'] / rates['fp32']:.2f}")
    for arm in ("E1", "E4"):
        print(f"  {arm}: {epoch_s[(arm, 'fp32')]:.2f} s/epoch for {len(data.train)} rows = "
              f"{epoch_s[(arm, 'fp32')] / len(data.train) * 1000:.0f} ms per training row; "
              f"bf16/fp32 epoch time {epoch_s[(arm, 'bf16')] / epoch_s[(arm, 'fp32')]:.2f}")
    naive_epoch = (train_images + val_images) / rates["fp32"]
    print(f"  vision cost of a 100-epoch run: once {once:.0f}s (this search) vs "
          f"{100 * naive_epoch:.0f}s re-rendering and re-encoding every step (naive): "
          f"{100 * naive_epoch / once:.0f}x; the naive E1 epoch would take "
          f"{epoch_s[('E1', 'fp32')] + naive_epoch:.1f}s instead of "
          f"{epoch_s[('E1', 'fp32')]:.2f}s")
    per_row = {arm: epoch_s[(arm, "fp32")] / len(data.train) for arm in ("E1", "E4")}
    all_images = sum(len(getattr(full, s)) for s in ("train", "val", "test")) * len(bands)
    print(f"  on the full Illinois year split ({len(full.train)} training rows, "
          f"{len(bands)} bands): ~{per_row['E1'] * len(full.train):.0f} s/epoch E1, "
          f"~{per_row['E4'] * len(full.train):.0f} s/epoch E4, one vision pass "
          f"~{all_images / rates['fp32'] / 60:.0f} min "
          "(extrapolated linearly from this subset)")
    print(f"load average after {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
