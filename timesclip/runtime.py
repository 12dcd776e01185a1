"""Where and how a run executes: its device, its CPU thread count, its seeds.

Shared by training, the frozen-feature pass and inference, so "auto" means the same device
and a seed draws the same numbers whichever of them runs first.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from timesclip.config import TrainConfig
from timesclip.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA on a machine without it is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def apply_threads(config: TrainConfig) -> None:
    """Use `config.threads` CPU threads (0: leave torch's setting). Float reductions depend
    on the thread count: the same count is what makes a re-run repeat a run exactly."""
    if config.threads > 0 and torch.get_num_threads() != config.threads:
        torch.set_num_threads(config.threads)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators: every source of randomness of a run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


__all__ = ["apply_threads", "resolve_device", "seed_everything"]
