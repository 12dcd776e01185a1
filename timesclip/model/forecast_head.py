"""The forecasting head (the paper's "generator"): patch tokens + selected token -> H values.

Flatten + linear, as the paper says and as PatchTST's head does: each variate's patch tokens
[P, D] and its selected-variate token [D] are concatenated into one vector and mapped to
the H forecast steps by one linear layer shared by every variate (channel-independent:
the same weights whatever the number of variates, so weather's 21 variates cost no more
parameters than ETT's 7). Flattening keeps which patch a feature came from, which a
forecast of "what follows the last patch" needs.

With `forecast_anchor: last` the model adds the window's last value to what this head
gives, and the head starts at zero: training begins at the naive forecast and learns the
change from it (NLinear's anchor, Zeng et al. 2023), which matters on near random walks
such as the exchange rates, where repeating the last value is hard to beat.
"""

from __future__ import annotations

import torch
from torch import nn


class ForecastHead(nn.Module):
    """[B, V, P, D] patch tokens + [B, V, D] selected -> [B, V, H] (normalised scale)."""

    def __init__(self, n_patches: int, d_model: int, horizon: int, dropout: float, *,
                 zero_init: bool = False) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear((n_patches + 1) * d_model, horizon)
        if zero_init:  # output 0 until trained: a residual on an anchor starts at the anchor
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, patches: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        features = torch.cat([patches.flatten(2), selected], dim=-1)  # [B, V, (P+1)*D]
        return self.proj(self.dropout(features))  # [B, V, H]


__all__ = ["ForecastHead"]
