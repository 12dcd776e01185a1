"""CLIP-style InfoNCE between the vision and language [CLS] outputs.

Within a batch, sample i's image embedding should match sample i's text embedding and no
other: cosine-similarity logits divided by a temperature, the diagonal as targets, cross-
entropy in both directions (image->text and text->image), averaged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: CLIP's cap on the logit scale: 1/T <= 100, i.e. T >= 0.01.
_MAX_LOGIT_SCALE = math.log(100.0)
#: Lower cap for a learnable temperature: T <= 100 (a runaway temperature is useless too).
_MIN_LOGIT_SCALE = -math.log(100.0)

MODES = ("variate", "global", "hybrid")


def _symmetric_ce(logits: torch.Tensor) -> torch.Tensor:
    """logits [..., B, B] with positives on the diagonal -> mean symmetric cross-entropy."""
    n = logits.shape[-1]
    flat = logits.reshape(-1, n, n)  # [G, B, B]
    targets = torch.arange(n, device=logits.device).repeat(flat.shape[0])  # [G*B]
    a_to_b = F.cross_entropy(flat.reshape(-1, n), targets)
    b_to_a = F.cross_entropy(flat.transpose(1, 2).reshape(-1, n), targets)
    return (a_to_b + b_to_a) / 2


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE of a, b [B, D]: row i of a belongs to row i of b. Returns a scalar."""
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    return _symmetric_ce(a @ b.T / temperature)  # logits [B, B]


def variate_contrastive(img: torch.Tensor, txt: torch.Tensor,
                        temperature: torch.Tensor | float) -> torch.Tensor:
    """One InfoNCE per variate, averaged: img, txt [B, V, D] -> scalar."""
    a = F.normalize(img, dim=-1).transpose(0, 1)  # [V, B, D]
    b = F.normalize(txt, dim=-1).transpose(0, 1)
    logits = torch.bmm(a, b.transpose(1, 2)) / temperature  # [V, B, B]
    # every variate has the same batch size, so the mean over all rows = mean over variates
    return _symmetric_ce(logits)


def global_contrastive(img: torch.Tensor, txt: torch.Tensor,
                       temperature: torch.Tensor | float) -> torch.Tensor:
    """InfoNCE on each sample's variates flattened into one vector [B, V*D] -> scalar."""
    return info_nce(img.flatten(1), txt.flatten(1), temperature)


class ContrastiveLoss(nn.Module):
    """The alignment loss with its temperature: variate, global or hybrid.

    The temperature is stored as a logit scale log(1/T), like CLIP: a Parameter when
    learnable (clamped to T in [0.01, 100] when used), a buffer when fixed, so both
    variants have the same state_dict key.
    """

    def __init__(self, mode: str, temperature: float, learnable: bool, alpha: float) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"contrastive mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.mode = mode
        self.alpha = float(alpha)
        self.learnable = bool(learnable)
        scale = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if self.learnable:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)

    @property
    def temperature(self) -> torch.Tensor:
        """The temperature in use, a scalar tensor (differentiable when learnable)."""
        scale = self.logit_scale
        if self.learnable:
            scale = scale.clamp(_MIN_LOGIT_SCALE, _MAX_LOGIT_SCALE)
        return torch.exp(-scale)

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """img, txt [B, V, D] -> scalar loss."""
        t = self.temperature
        if self.mode == "variate":
            return variate_contrastive(img, txt, t)
        if self.mode == "global":
            return global_contrastive(img, txt, t)
        return (self.alpha * variate_contrastive(img, txt, t)
                + (1 - self.alpha) * global_contrastive(img, txt, t))


__all__ = ["MODES", "ContrastiveLoss", "global_contrastive", "info_nce", "variate_contrastive"]
