"""Language branch: time-series patches read by the CLIP text encoder, one sequence per variate.

CLIP's own text model applies a causal mask, under which a [CLS] token placed first would
see only itself. This branch therefore skips `CLIPTextModel.forward` (and CLIP's token and
position embeddings) and calls the encoder stack directly with no mask: every token attends
to every other, and the [CLS] output summarises the whole window.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import CLIPTextModel

from timesclip.config import TrainConfig
from timesclip.model.revin import instance_norm


class LanguageBranch(nn.Module):
    """Instance-norm -> patches -> tokenizer -> [CLS] + positions -> CLIP text encoder -> [CLS].

    Only the encoder layers and the final LayerNorm of `text_model` are used and registered
    (copied, so training never alters the caller's backbone); CLIP's token and position
    tables are not needed and are not counted as parameters.
    """

    def __init__(self, text_model: CLIPTextModel, config: TrainConfig, *,
                 pretrained: bool) -> None:
        super().__init__()
        self.input_steps = config.window_steps  # input_steps (yield) or lookback (forecast)
        self.patch_length = config.resolved("patch_length")
        self.stride = config.resolved("stride")
        self.n_patches = config.n_patches
        self.bf16 = config.precision == "bf16"  # the text encoder under bf16 autocast
        width = int(text_model.config.hidden_size)

        # trainable time-series "tokenizer" into the text width
        self.tokenizer = nn.Sequential(
            nn.Linear(self.patch_length, width), nn.LayerNorm(width), nn.GELU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)  # [1, 1, H]
        self.position = nn.Parameter(torch.randn(1, self.n_patches + 1, width) * 0.02)

        self.encoder = copy.deepcopy(text_model.encoder)
        self.final_layer_norm = copy.deepcopy(text_model.final_layer_norm)
        self.out = nn.Linear(width, config.d_model)

        # frozen only for pretrained weights: a scratch encoder (E5) is always trained
        self.frozen = bool(pretrained and config.freeze_text)
        for p in self.encoder_parameters():
            p.requires_grad_(not self.frozen)
        self.train()  # the copied encoder may come in eval mode; a frozen one stays there

    def train(self, mode: bool = True) -> LanguageBranch:
        """Like nn.Module.train, but a frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
            self.final_layer_norm.eval()
        return self

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The CLIP text encoder's parameters (for backbone_lr when it is fine-tuned)."""
        return [*self.encoder.parameters(), *self.final_layer_norm.parameters()]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, V] -> encoder input [B*V, P+1, H] (CLS first, positions added)."""
        if x.dim() != 3 or x.shape[1] != self.input_steps:
            raise ValueError(f"expected x of shape [B, {self.input_steps}, V], "
                             f"got {tuple(x.shape)}")
        series, _, _ = instance_norm(x.permute(0, 2, 1))  # [B, V, T] per variate
        return self.embed_normalised(series)

    def embed_normalised(self, series: torch.Tensor) -> torch.Tensor:
        """series [B, V, T] already instance-normalised -> encoder input [B*V, P+1, H]."""
        b, v, _ = series.shape
        patches = series.unfold(-1, self.patch_length, self.stride)  # [B, V, P, L]
        tokens = self.tokenizer(patches)  # [B, V, P, H]
        tokens = tokens.reshape(b * v, self.n_patches, -1)  # [B*V, P, H]
        cls = self.cls_token.expand(b * v, -1, -1)  # [B*V, 1, H]
        return torch.cat([cls, tokens], dim=1) + self.position  # [B*V, P+1, H]

    def encode(self, h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the text encoder on embeddings [N, L, H] -> normalised states [N, L, H].

        attention_mask None means full bidirectional attention (what the model uses); an
        additive mask may be passed only to study other masks (e.g. the causal one) in tests.
        """
        with torch.autocast(device_type=h.device.type, dtype=torch.bfloat16,
                            enabled=self.bf16):
            states = self.encoder(inputs_embeds=h, attention_mask=attention_mask
                                  ).last_hidden_state
        return self.final_layer_norm(states.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, V] (scaled) -> CLS_text [B, V, D]."""
        b, _, v = x.shape
        states = self.encode(self.embed(x))  # [B*V, P+1, H]
        return self.out(states[:, 0]).reshape(b, v, -1)  # [B, V, D]

    def forward_tokens(self, series: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """series [B, V, T] instance-normalised -> (CLS_text [B, V, D], patch tokens
        [B, V, P, D]): the forecasting head reads every patch's output, projected to d_model
        by the same map as the [CLS]."""
        if series.dim() != 3 or series.shape[2] != self.input_steps:
            raise ValueError(f"expected series of shape [B, V, {self.input_steps}], "
                             f"got {tuple(series.shape)}")
        b, v, _ = series.shape
        states = self.out(self.encode(self.embed_normalised(series)))  # [B*V, P+1, D]
        states = states.reshape(b, v, self.n_patches + 1, -1)  # [B, V, P+1, D]
        return states[:, :, 0], states[:, :, 1:]  # [B, V, D], [B, V, P, D]


__all__ = ["LanguageBranch"]
