"""Variate selection: let each band's fused embedding look at the other bands, then gate.

Self-attention across the variate axis relates bands to each other (the attention map
[B, V, V] is returned for inspection); a learned sigmoid gate decides, per feature, how much
of the attended mixture replaces the band's own fused embedding.
"""

from __future__ import annotations

import torch
from torch import nn


class VariateSelection(nn.Module):
    """MHA across variates + gate: selected = g * attended + (1 - g) * fused."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, n_heads, dropout=dropout,
                                               batch_first=True)
        self.gate = nn.Linear(2 * d_model, d_model)

    def forward(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fused [B, V, D] -> (selected [B, V, D], attention [B, V, V] averaged over heads).

        In training mode the returned weights carry attention dropout; in eval mode each
        row sums to 1.
        """
        attended, weights = self.attention(fused, fused, fused, need_weights=True,
                                           average_attn_weights=True)  # [B,V,D], [B,V,V]
        g = torch.sigmoid(self.gate(torch.cat([fused, attended], dim=-1)))  # [B, V, D]
        return g * attended + (1 - g) * fused, weights


__all__ = ["VariateSelection"]
