"""Vision branch: frozen CLIP features of the rendered series, and the trainable projection.

The frozen tower sees fixed images of fixed data, so its output is a pure function of
(data, render settings, backbone). It is computed once per data set here, never inside a
training step, and the model only learns the small projection on top.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from transformers import CLIPVisionModel

from timesclip.model.render import render_series


@torch.no_grad()
def compute_vision_features(x_raw: np.ndarray | torch.Tensor, vision: CLIPVisionModel, *,
                            image_size: int, line_width: float = 1.5, batch_size: int = 64,
                            device: str | torch.device = "cpu",
                            progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Render x_raw [N, T, V] and return the tower's pooled output [N, V, Hv] (CPU, float32).

    `batch_size` counts samples, so one tower call sees batch_size * V images. The tower is
    run in eval mode on `device` and put back where (and in the mode) it was afterwards.
    `progress(done, total)` is called after every batch with sample counts.
    """
    # np.array copies: arrays from Ray's object store are read-only
    x = x_raw if isinstance(x_raw, torch.Tensor) else torch.from_numpy(np.array(x_raw))
    if x.dim() != 3:
        raise ValueError(f"x_raw must have shape [N, T, V], got {tuple(x.shape)}")
    x = x.to(torch.float32)
    n, _, v = x.shape
    hidden = int(vision.config.hidden_size)
    if n == 0:
        return torch.zeros(0, v, hidden)
    device = torch.device(device)
    original_device = next(vision.parameters()).device
    was_training = vision.training
    native = vision.config.image_size
    interpolate = int(image_size) != int(native if isinstance(native, int) else native[0])
    vision.eval().to(device)
    chunks: list[torch.Tensor] = []
    try:
        for start in range(0, n, batch_size):
            batch = x[start:start + batch_size].to(device)  # [b, T, V]
            images = render_series(batch, image_size, line_width)  # [b, V, 3, H, W]
            b = images.shape[0]
            pixels = images.reshape(b * v, 3, image_size, image_size)
            out = vision(pixel_values=pixels, interpolate_pos_encoding=interpolate)
            chunks.append(out.pooler_output.reshape(b, v, hidden).float().cpu())  # [b, V, Hv]
            if progress is not None:
                progress(min(start + batch_size, n), n)
    finally:
        vision.to(original_device)
        vision.train(was_training)
    return torch.cat(chunks, dim=0)


class VisionProjection(nn.Module):
    """Trainable map from frozen CLIP vision features to the model width: Linear -> LayerNorm."""

    def __init__(self, vision_hidden: int, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(vision_hidden, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(features))  # [B, V, Hv] -> [B, V, D]


__all__ = ["VisionProjection", "compute_vision_features"]
