"""Instance normalisation of each window and variate (RevIN without affine parameters).

Why: forecasting windows of one variate drift in level and spread over the years of a file
(the ETT transformers' load, the exchange rates); a model that sees every window shifted to
mean 0 and scaled to std 1 learns shapes, not levels, and the forecast is put back into the
window's own level and spread at the output (Kim et al. 2022, "Reversible Instance
Normalization"; PatchTST and the TimesCLIP paper do the same). The yield task's language
branch uses the same normalisation on its input and never needs the inverse.
"""

from __future__ import annotations

import torch

#: Keeps the normalisation finite on a constant window.
EPS = 1e-5


def instance_norm(series: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """series [..., T] -> (normalised [..., T], mean [..., 1], std [..., 1]), over the last
    axis (population variance, EPS inside the square root)."""
    mean = series.mean(dim=-1, keepdim=True)  # [..., 1]
    std = torch.sqrt(series.var(dim=-1, keepdim=True, unbiased=False) + EPS)  # [..., 1]
    return (series - mean) / std, mean, std


def denormalise(values: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """values [..., H] on the normalised scale -> [..., H] on the input's scale (the
    inverse of `instance_norm` with its statistics [..., 1])."""
    return values * std + mean


__all__ = ["EPS", "denormalise", "instance_norm"]
