"""Rendering speed: the vectorised torch renderer vs a per-image matplotlib baseline, one run.

    python benchmarks/render_speed.py [--batch 32] [--variates 7] [--steps 12] [--sizes 224 64]

Times `render_series` on one batch of B x V series (B*V images) at each size and, side by
side on the same data in the same process, the approach TimesCLIP's original code used: one
matplotlib figure per image, drawn with Agg and read back as an array. Prints images/second
for both and the ratio. matplotlib is optional (not a project dependency): without it the
baseline is skipped and said so.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from timesclip.model.render import CLIP_MEAN, CLIP_STD, render_series, variate_colours


def _time(fn, repeats: int) -> float:
    """Median wall-clock seconds of fn() over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _matplotlib_renderer():
    """A per-image renderer in the style of the original code, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None

    mean = np.asarray(CLIP_MEAN, dtype=np.float32)
    std = np.asarray(CLIP_STD, dtype=np.float32)

    def render(x: np.ndarray, size: int, line_width: float) -> np.ndarray:
        b, t, v = x.shape
        colours = variate_colours(v).numpy()
        out = np.empty((b, v, 3, size, size), dtype=np.float32)
        for i in range(b):  # one figure per image: the cost being measured
            for j in range(v):
                fig = plt.figure(figsize=(1, 1), dpi=size)
                ax = fig.add_axes((0, 0, 1, 1))
                ax.plot(np.arange(t), x[i, :, j], color=colours[j],
                        linewidth=2 * line_width * 72 / 224)  # points at 224 px
                ax.axis("off")
                fig.canvas.draw()
                rgba = np.asarray(fig.canvas.buffer_rgba(), dtype=np.float32)[..., :3] / 255
                plt.close(fig)
                out[i, j] = ((rgba - mean) / std).transpose(2, 0, 1)
        return out

    return render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--variates", type=int, default=7)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--line-width", type=float, default=1.5)
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.steps, args.variates, generator=g).cumsum(dim=1)
    x_np = x.numpy()
    n_images = args.batch * args.variates
    print(f"batch {args.batch} x {args.variates} variates x {args.steps} steps = {n_images} "
          f"images; torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    mpl = _matplotlib_renderer()
    if mpl is None:
        print("matplotlib not importable: baseline skipped (pip install matplotlib to compare)")

    for size in args.sizes:
        seconds = _time(lambda s=size: render_series(x, s, args.line_width), args.repeats)
        fast = n_images / seconds
        line = f"{size:>4} px  torch vectorised: {fast:>10.0f} images/s ({seconds * 1e3:.1f} ms)"
        if mpl is not None:
            base_s = _time(lambda s=size: mpl(x_np, s, args.line_width), 1)
            slow = n_images / base_s
            line += (f" | matplotlib per image: {slow:>7.1f} images/s "
                     f"({base_s * 1e3 / n_images:.1f} ms/image) | speed-up x{fast / slow:.0f}")
        print(line)


if __name__ == "__main__":
    main()
