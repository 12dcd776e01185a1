"""The TimesCLIP model: CLIP backbones, series rendering, the two branches and their assembly."""

from timesclip.model.backbones import TINY, Backbone, check_backbone, load_backbone
from timesclip.model.contrastive import ContrastiveLoss, info_nce
from timesclip.model.render import render_series
from timesclip.model.timesclip import ModelOutput, TimesCLIP, count_parameters
from timesclip.model.vision import compute_vision_features

__all__ = [
    "TINY",
    "Backbone",
    "ContrastiveLoss",
    "ModelOutput",
    "TimesCLIP",
    "check_backbone",
    "compute_vision_features",
    "count_parameters",
    "info_nce",
    "load_backbone",
    "render_series",
]
