"""Regression head: every stream of every variate, flattened, through a small MLP to one yield."""

from __future__ import annotations

import torch
from torch import nn


class RegressionHead(nn.Module):
    """Flatten [B, S, V, D] (or any [B, ...]) -> Linear -> GELU -> Dropout -> Linear -> [B].

    Flattening (rather than pooling) keeps which band and which stream a feature came from,
    so the head can weigh bands differently.
    """

    def __init__(self, in_features: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features.flatten(1)).squeeze(-1)  # [B, S*V*D] -> [B]


__all__ = ["RegressionHead"]
