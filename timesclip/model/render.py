"""Series -> line-plot images, drawn with tensor operations for a whole batch at once.

The user's version drew every image with matplotlib (about 17 ms each; 224 images per batch).
Here a batch of B samples x V variates is rasterised in one pass: each pixel column is filled
over the vertical span the polyline covers inside that column, widened by the line's
half-thickness, with anti-aliased (area-coverage) edges. No axes, white background, one fixed
colour per variate, then the mean/std normalisation CLIP was trained with.
"""

from __future__ import annotations

import colorsys

import torch
import torch.nn.functional as F

#: Version of the drawing. Bump it whenever a change to this file changes any pixel: cached
#: vision features (timesclip.feature_cache) are keyed by it and would otherwise go stale.
RENDER_VERSION = 1

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Ten well-separated, saturated colours (none close to white), used in this order.
_PALETTE = (
    (0.122, 0.467, 0.706),  # blue
    (1.000, 0.498, 0.055),  # orange
    (0.173, 0.627, 0.173),  # green
    (0.839, 0.153, 0.157),  # red
    (0.580, 0.404, 0.741),  # purple
    (0.549, 0.337, 0.294),  # brown
    (0.890, 0.467, 0.761),  # pink
    (0.498, 0.498, 0.498),  # grey
    (0.737, 0.741, 0.133),  # olive
    (0.090, 0.745, 0.812),  # cyan
)
#: Blank border, as a fraction of the image size, so the line never touches the edge.
_MARGIN = 0.08
#: Reference image size for `line_width` (given in pixels at 224 px).
_REF_SIZE = 224.0
#: The line is never thinner than 1.5 pixels in total, whatever the image size.
_MIN_HALF_WIDTH = 0.75


def variate_colours(n_variates: int) -> torch.Tensor:
    """Fixed distinct colours [V, 3] in [0, 1]: the palette, then darker golden-ratio hues.

    Fixed per variate index, so a band has the same colour in every image and every run.
    """
    colours = [_PALETTE[i] for i in range(min(n_variates, len(_PALETTE)))]
    for i in range(len(_PALETTE), n_variates):
        hue = (i * 0.618033988749895) % 1.0
        colours.append(colorsys.hsv_to_rgb(hue, 0.9, 0.5))  # darker than the palette
    return torch.tensor(colours, dtype=torch.float32).reshape(n_variates, 3)


def _interp(y: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear value of y [..., T] at fractional indices pos [K] -> [..., K]."""
    t = y.shape[-1]
    pos = pos.clamp(0, t - 1)
    left = pos.floor().long().clamp(max=t - 2)  # [K]
    frac = (pos - left).to(y.dtype)  # [K]
    return y[..., left] * (1 - frac) + y[..., left + 1] * frac


def render_series(x: torch.Tensor, image_size: int, line_width: float = 1.5,
                  normalize: bool = True) -> torch.Tensor:
    """Draw each variate of each sample as its own line plot.

    x [B, T, V] (raw or scaled: per-variate min-max over the window makes it scale-free)
    -> [B, V, 3, H, W] float32 with H = W = image_size. A constant series becomes a flat line
    through the middle. `line_width` is the half-thickness in pixels at 224 px and scales
    with the image. normalize=True applies CLIP's mean/std; otherwise values are in [0, 1].
    """
    if x.dim() != 3:
        raise ValueError(f"render_series expects x of shape [B, T, V], got {tuple(x.shape)}")
    b, t, v = x.shape
    series = x.permute(0, 2, 1).reshape(b * v, t)  # [B*V, T], image i = sample i // V
    variate = torch.arange(v, device=x.device).repeat(b)  # [B*V] colour index of image i
    images = render_lines(series, variate, image_size, line_width, normalize)
    return images.reshape(b, v, 3, images.shape[-2], images.shape[-1])  # [B, V, 3, H, W]


def render_lines(series: torch.Tensor, variate: torch.Tensor, image_size: int,
                 line_width: float = 1.5, normalize: bool = True) -> torch.Tensor:
    """Draw M single series, each as its own image: the unit `render_series` is made of.

    series [M, T]; variate [M] (int) is each series' variate index, which picks its colour.
    -> [M, 3, H, W]. Every image depends on its own row only, so any slice of the
    (sample, variate) pairs can be drawn on its own: the vision pass draws a bounded number
    of images at a time instead of materialising all N * V of them.
    """
    if series.dim() != 2 or variate.shape != series.shape[:1]:
        raise ValueError(f"render_lines expects series [M, T] and variate [M], got "
                         f"{tuple(series.shape)} and {tuple(variate.shape)}")
    series = series.detach().to(torch.float32)
    if series.shape[1] == 1:  # one step: draw it as a flat segment
        series = series.repeat(1, 2)
    m, t = series.shape
    size = int(image_size)
    dev = series.device

    # --- per-series min-max over the window -> [0, 1]; constant -> 0.5
    lo = series.amin(dim=-1, keepdim=True)  # [M, 1]
    hi = series.amax(dim=-1, keepdim=True)
    span = hi - lo
    flat = span <= 1e-12 * (1 + hi.abs())
    unit = torch.where(flat, torch.full_like(series, 0.5), (series - lo) / span.clamp_min(1e-30))

    # --- pixel geometry (pixel k covers [k - 0.5, k + 0.5]; row 0 is the top)
    margin = _MARGIN * size
    extent = (size - 1) - 2 * margin
    rows = unit.new_tensor(margin) + (1 - unit) * extent  # [M, T] row of each point
    x_start, step = margin, extent / (t - 1)  # column of point i: x_start + i * step

    # --- value of the polyline at every column edge, and its extremes inside each column
    edges = torch.arange(size + 1, device=dev, dtype=torch.float32) - 0.5  # [W+1]
    at_edges = _interp(rows, (edges - x_start) / step)  # [M, W+1]
    top = torch.minimum(at_edges[..., :-1], at_edges[..., 1:])  # [M, W]
    bottom = torch.maximum(at_edges[..., :-1], at_edges[..., 1:])
    # vertices inside a column may poke out beyond both edge values (a peak)
    vertex_col = (x_start + torch.arange(t, device=dev, dtype=torch.float32) * step).round()
    vertex_col = vertex_col.long().clamp(0, size - 1).expand(m, t)  # [M, T]
    top = top.scatter_reduce(-1, vertex_col, rows, reduce="amin", include_self=True)
    bottom = bottom.scatter_reduce(-1, vertex_col, rows, reduce="amax", include_self=True)

    # --- square pen: widen the span by the half-thickness vertically, and take it over the
    # neighbouring columns too so steep segments are as thick as flat ones
    half = max(line_width * size / _REF_SIZE, _MIN_HALF_WIDTH)
    reach = int(round(half))  # neighbouring columns on each side
    if reach > 0:
        kernel = 2 * reach + 1
        top = -F.max_pool1d(-top.reshape(m, 1, size), kernel, 1, reach).reshape(m, size)
        bottom = F.max_pool1d(bottom.reshape(m, 1, size), kernel, 1, reach).reshape(m, size)
    top = (top - half).unsqueeze(-2)  # [M, 1, W]
    bottom = (bottom + half).unsqueeze(-2)

    # --- area coverage of pixel (r, c) by the span [top, bottom] of column c
    r = torch.arange(size, device=dev, dtype=torch.float32).view(1, size, 1)  # [1, H, 1]
    alpha = torch.minimum(r + 0.5, bottom)  # [M, H, W]
    alpha.sub_(torch.maximum(r - 0.5, top)).clamp_(0, 1)  # in place: this is the big tensor
    cols = torch.arange(size, device=dev, dtype=torch.float32)
    x_end = x_start + (t - 1) * step
    horizontal = (torch.clamp(cols + 0.5, max=x_end + half)
                  - torch.clamp(cols - 0.5, min=x_start - half)).clamp(0, 1)  # [W]
    alpha.mul_(horizontal)

    # --- composite the coloured line over white (and normalise) in one fused pass:
    # pixel = white + alpha * (colour - white), then (pixel - mean) / std
    variate = variate.to(device=dev, dtype=torch.long)
    n_colours = int(variate.max()) + 1 if m else 1
    colours = variate_colours(n_colours).to(dev)[variate].view(m, 3, 1, 1)  # [M, 3, 1, 1]
    offset = torch.ones(1, 3, 1, 1, device=dev)
    scale = colours - 1
    if normalize:
        mean = torch.tensor(CLIP_MEAN, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=dev).view(1, 3, 1, 1)
        offset, scale = (offset - mean) / std, scale / std
    images = torch.addcmul(offset, scale, alpha.unsqueeze(1))  # [M, 3, H, W]
    return images


__all__ = ["CLIP_MEAN", "CLIP_STD", "RENDER_VERSION", "render_lines", "render_series",
           "variate_colours"]
