"""TimesCLIP assembled: vision projection + language branch + alignment + selection + head.

The frozen vision tower is NOT part of this module: its features come in precomputed
(`compute_vision_features`), so a training step only runs the trainable parts and the text
encoder, and checkpoints do not carry the vision tower.

Two tasks share every part but the ends. yield: the [CLS] tokens of both branches and the
selected token, flattened through an MLP to one value. forecast (the paper's Fig. 2): the
window is instance-normalised per variate (RevIN), the language branch's patch tokens and
the selected token go through the flatten + linear generator to H values per variate, and
the forecast is put back into the window's level and spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from timesclip.config import TrainConfig
from timesclip.model.backbones import Backbone, scratch_text_model
from timesclip.model.contrastive import ContrastiveLoss
from timesclip.model.cross_selection import CrossVariateSelection
from timesclip.model.forecast_head import ForecastHead
from timesclip.model.heads import RegressionHead
from timesclip.model.language import LanguageBranch
from timesclip.model.revin import denormalise, instance_norm
from timesclip.model.variate_selection import VariateSelection
from timesclip.model.vision import VisionProjection


@dataclass
class ModelOutput:
    """What one forward pass returns; the trainer combines the losses."""

    y_pred: torch.Tensor  # yield [B], forecast [B, H, V] (the data's standardised scale)
    contrastive_loss: torch.Tensor  # scalar; zeros(()) when contrastive is off
    attention: torch.Tensor | None  # [B, V, V] or None without variate selection
    cls_img: torch.Tensor | None  # [B, V, D]
    cls_text: torch.Tensor  # [B, V, D]


def _vision_hidden(backbone: Backbone) -> int:
    """Hidden width of the vision tower, also when it was not loaded (need_vision=False)."""
    if backbone.vision is not None:
        return int(backbone.vision.config.hidden_size)
    if backbone.vision_config is not None:
        return int(backbone.vision_config.hidden_size)
    raise ValueError("use_vision needs the backbone's vision config (load_backbone sets it)")


class TimesCLIP(nn.Module):
    """The yield predictor of SEED.md or the forecaster of the paper (`config.task`), with
    the ablation switches of TrainConfig."""

    def __init__(self, config: TrainConfig, n_variates: int, backbone: Backbone) -> None:
        super().__init__()
        self.config = config
        self.n_variates = int(n_variates)
        self.forecast = config.task == "forecast"
        d = config.d_model

        if config.language_backbone == "clip":
            self.language = LanguageBranch(backbone.text, config, pretrained=True)
        else:  # "scratch": same shape as CLIP-Text, fresh weights, always trained
            self.language = LanguageBranch(scratch_text_model(backbone.text_config), config,
                                           pretrained=False)

        self.vision_proj = (VisionProjection(_vision_hidden(backbone), d)
                            if config.use_vision else None)
        self.contrastive = (ContrastiveLoss(config.contrastive_mode, config.temperature,
                                            config.learnable_temperature, config.hybrid_alpha)
                            if config.use_contrastive else None)
        self.cross = config.resolved("variate_selection") == "cross"
        selection = CrossVariateSelection if self.cross else VariateSelection
        self.selection = (selection(d, config.n_heads, config.dropout)
                          if config.use_variate_selection else None)
        self.head: nn.Module
        if self.forecast:
            self.anchor_last = config.forecast_anchor == "last"
            self.head = ForecastHead(config.n_patches, d, config.horizon, config.dropout,
                                     zero_init=self.anchor_last)
        else:
            n_streams = 3 if config.use_vision else 2
            self.head = RegressionHead(n_streams * self.n_variates * d, config.head_hidden,
                                       config.dropout)

    def forward(self, x: torch.Tensor, vision_features: torch.Tensor | None) -> ModelOutput:
        """x [B, T, V] scaled (forecast: T = lookback); vision_features [B, V, Hv] (required
        iff use_vision; any float dtype, e.g. the fp16 of the forecasting feature cache)."""
        if x.dim() != 3 or x.shape[2] != self.n_variates:
            raise ValueError(f"expected x of shape [B, T, {self.n_variates}], "
                             f"got {tuple(x.shape)}")
        patches = mean = std = None
        if self.forecast:
            series, mean, std = instance_norm(x.permute(0, 2, 1))  # [B, V, L], [B, V, 1] x2
            cls_text, patches = self.language.forward_tokens(series)  # [B,V,D], [B,V,P,D]
        else:
            cls_text = self.language(x)  # [B, V, D]

        cls_img = None
        if self.vision_proj is not None:
            if vision_features is None:
                raise ValueError("this model uses the vision branch: pass vision_features "
                                 "[B, V, Hv] from compute_vision_features")
            if vision_features.shape[:2] != x.shape[:1] + x.shape[2:]:
                raise ValueError(f"vision_features {tuple(vision_features.shape)} do not match "
                                 f"x {tuple(x.shape)} (expected [B, V, Hv])")
            cls_img = self.vision_proj(vision_features.to(cls_text.dtype))  # [B, V, D]
            fused = cls_img + cls_text  # [B, V, D]
        else:
            fused = cls_text

        attention = None
        if self.selection is not None and self.cross:
            # the text CLS asks; every variate's fused token answers
            selected, attention = self.selection(cls_text, fused)  # [B, V, D], [B, V, V]
        elif self.selection is not None:
            selected, attention = self.selection(fused)  # [B, V, D], [B, V, V]
        else:
            selected = fused

        if self.forecast:
            y_norm = self.head(patches, selected)  # [B, V, H] on the window's own scale
            if self.anchor_last:  # the head forecasts the change from the last value
                y_norm = y_norm + series[..., -1:]  # [B, V, H] + [B, V, 1]
            y_pred = denormalise(y_norm, mean, std).transpose(1, 2)  # [B, H, V]
        else:
            streams = [cls_text, selected] if cls_img is None else [cls_img, cls_text,
                                                                     selected]
            y_pred = self.head(torch.stack(streams, dim=1))  # [B, S, V, D] -> [B]

        if self.contrastive is not None and cls_img is not None:
            contrastive_loss = self.contrastive(cls_img, cls_text)
        else:
            contrastive_loss = torch.zeros((), device=x.device, dtype=y_pred.dtype)
        return ModelOutput(y_pred=y_pred, contrastive_loss=contrastive_loss,
                           attention=attention, cls_img=cls_img, cls_text=cls_text)

    def pretrained_trainable_parameters(self) -> list[nn.Parameter]:
        """Unfrozen pretrained CLIP-Text parameters (they get backbone_lr); empty when frozen
        or when the language backbone is trained from scratch."""
        if self.config.language_backbone != "clip" or self.language.frozen:
            return []
        return [p for p in self.language.encoder_parameters() if p.requires_grad]

    def other_trainable_parameters(self) -> list[nn.Parameter]:
        """Every other parameter with requires_grad (they get the main lr)."""
        pretrained = {id(p) for p in self.pretrained_trainable_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in pretrained]


def count_parameters(module: nn.Module) -> dict[str, int]:
    """{"total", "trainable", "frozen"} parameter counts (shared parameters counted once)."""
    total = trainable = 0
    for p in module.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


__all__ = ["ModelOutput", "TimesCLIP", "count_parameters"]
