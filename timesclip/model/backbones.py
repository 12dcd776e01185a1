"""CLIP backbones: the pretrained towers, or a tiny random pair for tests and CPU smoke runs.

Loading never falls back silently: a checkpoint that cannot be found raises `BackboneError`
with one line naming what was tried and how to fix it, and it does so quickly -- a machine
without network access must not sit through the hub client's retry loop (about 25 s) before
hearing that the weights are missing.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import torch
from transformers import (
    CLIPConfig,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
)
from transformers.utils import logging as hf_logging

from timesclip.errors import BackboneError

TINY = "tiny"
#: The file a CLIP checkpoint directory (or hub snapshot) describes its towers in.
CLIP_CONFIG_FILE = "config.json"

#: Seed of the tiny towers. Fixed so that every process (trial workers included) builds the
#: very same random weights and results stay comparable across processes.
_TINY_SEED = 1234
#: Attention kernel for every tower. SDPA is deterministic on CPU and, with no mask and
#: `is_causal` left False on CLIPAttention, attends bidirectionally.
_ATTN = "sdpa"
#: Seconds to wait for a TCP connection to the hub before declaring it unreachable.
_HUB_PROBE_TIMEOUT = 3.0


@dataclass
class Backbone:
    """The CLIP towers one run uses, plus what the rest of the model needs to know about them."""

    name: str  # "tiny", hub id or local dir
    text_config: CLIPTextConfig
    text: CLIPTextModel  # pretrained (or tiny random) weights
    vision: CLIPVisionModel | None  # None when need_vision=False
    image_size: int  # native image size of the vision tower (tiny: 64)
    # extra (compatible addition): the vision tower's config, also when the tower itself was
    # not loaded, so a model fed precomputed features still knows their width
    vision_config: CLIPVisionConfig | None = None

    @functools.cached_property
    def vision_tower_size(self) -> int:
        """Parameters of the frozen vision tower; counted on the meta device (no memory, no
        weights) when the tower was not loaded because its features were handed in.

        Kept on the object: building even a meta-device tower costs ~10 ms, and the trials
        a worker runs share one Backbone (tuner.trainable caches it)."""
        if self.vision is not None:
            return sum(p.numel() for p in self.vision.parameters())
        assert self.vision_config is not None
        with torch.device("meta"):
            tower = CLIPVisionModel(copy.deepcopy(self.vision_config))  # init may edit it
        return sum(p.numel() for p in tower.parameters())


# ---------------------------------------------------------------------------- tiny towers
def tiny_configs() -> tuple[CLIPTextConfig, CLIPVisionConfig]:
    """Configs of the tiny backbone: the real CLIP code path at toy size."""
    text = CLIPTextConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=64, projection_dim=64,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, attn_implementation=_ATTN,
    )
    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        image_size=64, patch_size=8, projection_dim=64, attn_implementation=_ATTN,
    )
    return text, vision


def _load_tiny(need_vision: bool) -> Backbone:
    text_config, vision_config = tiny_configs()
    # fork_rng: the global RNG state is restored afterwards, so building the backbone never
    # shifts the random stream of the training run that asked for it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        text = CLIPTextModel(text_config)
        torch.manual_seed(_TINY_SEED + 1)  # vision weights do not depend on need_vision
        vision = CLIPVisionModel(vision_config) if need_vision else None
    text.eval()
    if vision is not None:
        vision.eval().requires_grad_(False)  # the vision tower is frozen by design
    return Backbone(name=TINY, text_config=text.config, text=text, vision=vision,
                    image_size=int(vision_config.image_size), vision_config=vision_config)


def scratch_text_model(text_config: CLIPTextConfig) -> CLIPTextModel:
    """A text tower of the same shape as `text_config`, freshly initialised (ablation E5).

    Uses the global RNG on purpose: the training seed decides these weights.
    """
    config = copy.deepcopy(text_config)
    config._attn_implementation = _ATTN
    return CLIPTextModel(config)


# ---------------------------------------------------------------------------- error text
def _classify(name: str) -> str:
    """'dir' for an existing local directory or anything path-like, 'hub' for a hub id."""
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return "dir"
    # A hub id is "owner/name" (or a bare "name"); a leading / . ~ or a deeper path is a
    # directory the user meant, even if it does not exist.
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or (
            os.altsep is not None and os.altsep in name):
        return "dir"
    return "hub"


def _error_for(name: str, reason: str) -> BackboneError:
    return (_dir_error if _classify(name) == "dir" else _hub_error)(name, reason)


def _short(exc: BaseException) -> str:
    """First line of an exception message, bounded, so the error stays one line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _hub_error(name: str, reason: str) -> BackboneError:
    return BackboneError(
        f"cannot load CLIP backbone '{name}': {reason}; download it once "
        f"(hf download {name}), point HF_HOME at a cache that has it, pass a local "
        "directory with --backbone PATH, or use --backbone tiny for a CPU smoke run")


def _dir_error(name: str, reason: str) -> BackboneError:
    return BackboneError(
        f"cannot load CLIP backbone '{name}': {reason}; pass a directory holding a CLIP "
        "checkpoint (config.json + weights, e.g. made by `hf download "
        "openai/clip-vit-base-patch16 --local-dir DIR`), a hub id, or use --backbone tiny "
        "for a CPU smoke run")


# ---------------------------------------------------------------------------- hub access
def _offline() -> bool:
    """Offline mode, read at call time (huggingface_hub reads its env vars only at import)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(
        f.strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def _hub_unreachable() -> str | None:
    """None when a TCP connection to the hub endpoint opens quickly, else the reason."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT):
            return None
    except OSError as exc:
        return f"the Hugging Face Hub ({host}) is unreachable ({_short(exc)})"


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the load report and progress bars (a full CLIP checkpoint holds both towers,
    so loading one tower lists every weight of the other as 'unexpected')."""
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _resolve(name: str) -> tuple[str, bool]:
    """Where to load `name` from: (path or hub id, local_files_only). Raises BackboneError.

    A hub id is looked up in the local cache first (fast, no network); only when it is not
    cached, offline mode is off and the hub answers does the download path run.
    """
    if _classify(name) == "dir":
        path = os.path.expanduser(name)
        if not os.path.isdir(path):
            raise _dir_error(name, "no such directory")
        if not os.path.isfile(os.path.join(path, CLIP_CONFIG_FILE)):
            raise _dir_error(name, f"the directory has no {CLIP_CONFIG_FILE}")
        return path, True
    try:
        with _quiet_transformers():
            CLIPConfig.from_pretrained(name, local_files_only=True)
        return name, True
    except Exception:  # not cached (or a broken cache entry): try the hub
        pass
    if _offline():
        raise _hub_error(name, "not a local directory, not in the local Hugging Face cache, "
                               "and offline mode (HF_HUB_OFFLINE) is on")
    reason = _hub_unreachable()
    if reason is not None:
        raise _hub_error(name, f"not a local directory, not in the local Hugging Face cache, "
                               f"and {reason}")
    return name, False


def _check_config(source: str, local_only: bool, name: str) -> CLIPConfig:
    """Read the checkpoint's config and insist on a full CLIP model (text AND vision tower)."""
    try:
        with _quiet_transformers():
            config_dict, _ = CLIPConfig.get_config_dict(source, local_files_only=local_only)
            kind = config_dict.get("model_type")
            if kind != "clip":
                raise _error_for(name, f"its config.json describes a {kind!r} model, not a full "
                                       "CLIP checkpoint (model_type 'clip', text + vision)")
            return CLIPConfig.from_pretrained(source, local_files_only=local_only)
    except BackboneError:
        raise
    except Exception as exc:  # any hub/parse failure is the same user error
        raise _error_for(name, _short(exc)) from None


def check_backbone(name: str) -> None:
    """Cheap pre-flight: is `name` loadable? Reads config files only, never weights.

    Run before a search starts so a missing checkpoint fails in one line instead of in every
    trial. Raises BackboneError.
    """
    if name == TINY:
        return
    source, local_only = _resolve(name)
    _check_config(source, local_only, name)


def _load_tower(cls: type, source: str, local_only: bool, name: str) -> torch.nn.Module:
    try:
        with _quiet_transformers():
            model, info = cls.from_pretrained(
                source, local_files_only=local_only, dtype=torch.float32,
                attn_implementation=_ATTN, output_loading_info=True)
    except Exception as exc:  # OSError, ValueError, hub errors alike
        reason = _short(exc)
        if "mismatched" in reason:
            reason = "its weights do not match the shapes in its config.json"
        raise _error_for(name, reason) from None
    missing = info.get("missing_keys") or []
    if missing:
        # transformers would fill them with random values; a half-random "pretrained"
        # tower must not pass unnoticed.
        raise _error_for(name, f"the checkpoint lacks {len(missing)} {cls.__name__} weights "
                          f"(e.g. {sorted(missing)[0]}); is it a CLIP checkpoint?")
    model.eval()
    return model


def load_backbone(name: str, *, need_vision: bool = True) -> Backbone:
    """Load the CLIP text (and vision) tower named by `name`: 'tiny', a hub id or a directory.

    Both towers come from one combined CLIP checkpoint; transformers picks the sub-model's
    weights out of it. Honours HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE. Raises BackboneError.
    """
    if name == TINY:
        return _load_tiny(need_vision)
    source, local_only = _resolve(name)
    config = _check_config(source, local_only, name)
    text = _load_tower(CLIPTextModel, source, local_only, name)
    vision = _load_tower(CLIPVisionModel, source, local_only, name) if need_vision else None
    if vision is not None:
        vision.requires_grad_(False)  # the vision tower is frozen by design
    vision_config = vision.config if vision is not None else config.vision_config
    size = vision_config.image_size
    image_size = int(size if isinstance(size, int) else size[0])
    return Backbone(name=name, text_config=text.config, text=text, vision=vision,
                    image_size=image_size, vision_config=vision_config)


__all__ = ["TINY", "Backbone", "check_backbone", "load_backbone", "scratch_text_model",
           "tiny_configs"]
