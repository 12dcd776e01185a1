"""The forecasting head (the paper's "generator"): patch tokens + selected token -> H values.

Flatten + linear, as the paper says and as PatchTST's head does: each variate's patch tokens
[P, D] and its selected-variate token [D] are concatenated into one vector and mapped to
the H forecast steps by one linear layer shared by every variate (channel-independent:
the same weights whatever the number of variates, so weather's 21 variates cost no more
parameters than ETT's 7). Flattening keeps which patch a feature came from, which a
forecast of "what follows the last patch" needs.
"""

from __future__ import annotations

import torch
from torch import nn


class ForecastHead(nn.Module):
    """[B, V, P, D] patch tokens + [B, V, D] selected -> [B, V, H] (normalised scale)."""

    def __init__(self, n_patches: int, d_model: int, horizon: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear((n_patches + 1) * d_model, horizon)

    def forward(self, patches: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        features = torch.cat([patches.flatten(2), selected], dim=-1)  # [B, V, (P+1)*D]
        return self.proj(self.dropout(features))  # [B, V, H]


__all__ = ["ForecastHead"]
