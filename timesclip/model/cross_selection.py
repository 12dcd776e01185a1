"""Variate selection as the paper draws it: each variate's text [CLS] asks the variates.

Cross-attention across the variate axis with the language branch's [CLS] token of a variate
as the query and every variate's token as keys and values (the fused image + text token,
or the text token alone without the vision branch: the same tokens the gate variant
attends over, so the two variants compare on equal inputs), then the usual transformer
sub-layer: residual + LayerNorm, a feed-forward network, residual + LayerNorm. The output
is each variate's "selected-variate" token. The query is the text [CLS] because it is the
token the contrastive loss aligns with the image; the attention map [B, V, V] (row: the
asking variate, column: the variate it reads) is returned for the figures.
"""

from __future__ import annotations

import torch
from torch import nn

#: Width of the feed-forward network, as a multiple of d_model (the transformer's usual 4).
FFN_FACTOR = 4


class CrossVariateSelection(nn.Module):
    """Q = text [CLS] [B, V, D], K = V = variate tokens [B, V, D] -> selected [B, V, D]."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, n_heads, dropout=dropout,
                                               batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, FFN_FACTOR * d_model), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(FFN_FACTOR * d_model, d_model),
                                 nn.Dropout(dropout))
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, query: torch.Tensor, tokens: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """query [B, V, D] (text CLS), tokens [B, V, D] -> (selected [B, V, D], attention
        [B, V, V] averaged over heads; rows sum to 1 in eval mode)."""
        attended, weights = self.attention(query, tokens, tokens, need_weights=True,
                                           average_attn_weights=True)  # [B,V,D], [B,V,V]
        h = self.norm1(query + attended)  # [B, V, D]
        return self.norm2(h + self.ffn(h)), weights  # [B, V, D], [B, V, V]


__all__ = ["FFN_FACTOR", "CrossVariateSelection"]
