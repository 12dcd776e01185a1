"""Vision branch: frozen CLIP features of the rendered series, and the trainable projection.

The frozen tower sees fixed images of fixed data, so its output is a pure function of
(data, render settings, backbone). It is computed once per data set here, never inside a
training step, and the model only learns the small projection on top.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from timesclip.model.render import render_lines

#: Memory one tower call may plan for on CPU (activations of the images in the call, by
#: `image_bytes_estimate`). It sets the images per call, whatever the band count: ViT-B/16
#: at 224 px -> 8. Measured on a 2-core CPU (benchmarks/vision_pass.py): the tower alone
#: ran 4.1-4.5 img/s at 1 to 8 images per call and 3.8 img/s at 16 to 32, so more images
#: per call buy nothing on a CPU but memory. A toy tower gets a few hundred images per
#: call, where its per-call overhead would otherwise dominate.
CPU_MEMORY_BUDGET = 128 * 2**20
#: Share of the currently free CUDA memory one tower call may plan for.
CUDA_MEMORY_SHARE = 0.5
#: Environment override of the images per tower call (any device), e.g. for a Ray task.
IMAGE_BATCH_ENV = "TIMESCLIP_IMAGE_BATCH"
MAX_IMAGE_BATCH = 1024


def image_bytes_estimate(vision_config: CLIPVisionConfig, image_size: int) -> int:
    """Upper estimate of the memory one image costs inside one inference-mode tower call.

    Rendering (line coverage + RGB image) plus, for one layer, the hidden states in and
    out, the MLP's intermediate activations and the full attention matrix (which an SDPA
    kernel may not need), all float32, doubled for allocator slack. ViT-B/16 at 224 px:
    ~14 MB.
    """
    size = int(image_size)
    tokens = (size // int(vision_config.patch_size)) ** 2 + 1
    hidden, inner = int(vision_config.hidden_size), int(vision_config.intermediate_size)
    heads = int(vision_config.num_attention_heads)
    render = 4 * size * size * 4  # alpha [H, W] + image [3, H, W]
    layer = tokens * (3 * hidden + inner) * 4 + heads * tokens * tokens * 4
    return 2 * (render + layer)


def default_image_batch(device: str | torch.device, vision_config: CLIPVisionConfig,
                        image_size: int) -> int:
    """Images per tower call: the TIMESCLIP_IMAGE_BATCH override, else as many images as
    fit in the memory budget (CPU: CPU_MEMORY_BUDGET; CUDA: half of the memory free right
    now), rounded down to a multiple of 8 from 8 on, between 1 and MAX_IMAGE_BATCH."""
    override = os.environ.get(IMAGE_BATCH_ENV, "").strip()
    if override:
        try:
            value = int(override)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"{IMAGE_BATCH_ENV} must be an integer >= 1, got {override!r}")
        return value
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * CUDA_MEMORY_SHARE)
    else:
        budget = CPU_MEMORY_BUDGET
    fit = budget // image_bytes_estimate(vision_config, image_size)
    if fit >= 8:
        fit -= fit % 8
    return max(1, min(MAX_IMAGE_BATCH, fit))


def compute_vision_features(x_raw: np.ndarray | torch.Tensor, vision: CLIPVisionModel, *,
                            image_size: int, line_width: float = 1.5,
                            image_batch: int | None = None,
                            device: str | torch.device = "cpu",
                            progress: Callable[[int], None] | None = None,
                            precision: str = "fp32") -> torch.Tensor:
    """Render x_raw [N, T, V] and return the tower's pooled output [N, V, Hv] (CPU, float32).

    The N * V (sample, variate) images are drawn and encoded `image_batch` at a time
    (default: `default_image_batch`), so memory is bounded by the batch, not by the number
    of samples or bands, and the full [N*V, 3, H, W] image tensor never exists. Each image's
    features depend on that image only, so the result does not depend on the batch (up to
    float rounding of the matrix kernels). The tower runs in eval mode under
    inference_mode on `device` and is put back where (and in the mode) it was afterwards.
    `progress(k)` is called after every tower call with the number of images it encoded.
    """
    # np.array copies: arrays from Ray's object store are read-only
    x = x_raw if isinstance(x_raw, torch.Tensor) else torch.from_numpy(np.array(x_raw))
    if x.dim() != 3:
        raise ValueError(f"x_raw must have shape [N, T, V], got {tuple(x.shape)}")
    x = x.to(torch.float32)
    n, t, v = x.shape
    hidden = int(vision.config.hidden_size)
    if n == 0 or v == 0:
        return torch.zeros(n, v, hidden)
    device = torch.device(device)
    size = int(image_size)
    batch = int(image_batch) if image_batch is not None else default_image_batch(
        device, vision.config, size)
    if batch < 1:
        raise ValueError(f"image_batch must be >= 1, got {image_batch!r}")
    native = vision.config.image_size
    interpolate = size != int(native if isinstance(native, int) else native[0])
    # image i is (sample i // V, variate i % V): the order of features.reshape(N, V, Hv)
    series = x.permute(0, 2, 1).reshape(n * v, t)  # [N*V, T]
    variate = torch.arange(v).repeat(n)  # [N*V] colour index of each image
    out = torch.empty(n * v, hidden)  # [N*V, Hv] a normal (not inference) tensor
    original_device = next(vision.parameters()).device
    dtype = next(vision.parameters()).dtype
    was_training = vision.training
    vision.eval().to(device)
    try:
        for start in range(0, n * v, batch):
            stop = min(start + batch, n * v)
            with torch.inference_mode():
                pixels = render_lines(series[start:stop].to(device), variate[start:stop],
                                      size, line_width)  # [b, 3, H, W]
                with torch.autocast(device_type=torch.device(device).type,
                                    dtype=torch.bfloat16, enabled=precision == "bf16"):
                    pooled = vision(pixel_values=pixels.to(dtype),
                                    interpolate_pos_encoding=interpolate
                                    ).pooler_output  # [b, Hv]
            out[start:stop] = pooled.float().cpu()
            del pixels, pooled
            if progress is not None:
                progress(stop - start)
    finally:
        vision.to(original_device)
        vision.train(was_training)
    return out.reshape(n, v, hidden)  # [N, V, Hv]


class VisionProjection(nn.Module):
    """Trainable map from frozen CLIP vision features to the model width: Linear -> LayerNorm."""

    def __init__(self, vision_hidden: int, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(vision_hidden, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(features))  # [B, V, Hv] -> [B, V, D]


__all__ = ["CPU_MEMORY_BUDGET", "IMAGE_BATCH_ENV", "VisionProjection", "compute_vision_features",
           "default_image_batch", "image_bytes_estimate"]
