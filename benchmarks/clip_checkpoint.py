"""A CLIP checkpoint directory of the real ViT-B/16 architecture with random weights, offline.

    python benchmarks/clip_checkpoint.py DIR [--seed 0] [--force]

Writes what `CLIPModel.save_pretrained` writes (config.json + model.safetensors, ~600 MB)
for the exact architecture of `openai/clip-vit-base-patch16`: a ViT-B/16 vision tower
(768 wide, 12 layers, 12 heads, 224 px, 16 px patches) and the 512-wide 12-layer text
tower, projection 512, 149,620,737 parameters. The numbers are written down here (they are
the published config's; transformers' CLIPConfig defaults differ only in the patch size, 32,
and the text special-token ids), so no download is needed. Loading it with
`--backbone DIR` runs every real-size code path (loading, the vision pass, training) with
real-size cost on a machine without network access; its numbers say nothing about accuracy.

Importable: `write_clip_checkpoint(DIR)` writes one, `ensure_clip_checkpoint(DIR)` reuses a
matching one (so several benchmarks share one 600 MB directory), `clip_b16_config()` is the
configuration.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

#: openai/clip-vit-base-patch16 (config.json of the hub checkpoint).
TEXT_CONFIG = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                   num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                   hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=512,
                   pad_token_id=1, bos_token_id=0, eos_token_id=2)
VISION_CONFIG = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, image_size=224, patch_size=16, num_channels=3,
                     hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=512)
PROJECTION_DIM = 512
LOGIT_SCALE_INIT = 2.6592
#: Parameters of CLIPModel with this config (the published ViT-B/16 CLIP count).
N_PARAMETERS = 149_620_737


def clip_b16_config() -> CLIPConfig:
    """CLIPConfig of openai/clip-vit-base-patch16 (both towers)."""
    return CLIPConfig(text_config=dict(TEXT_CONFIG), vision_config=dict(VISION_CONFIG),
                      projection_dim=PROJECTION_DIM, logit_scale_init_value=LOGIT_SCALE_INIT)


def write_clip_checkpoint(directory: str | Path, *, seed: int = 0,
                          config: CLIPConfig | None = None, force: bool = False) -> Path:
    """Write a randomly initialised CLIPModel (default: ViT-B/16 size) to `directory`.

    `config` exists so tests can exercise the same code at toy size. Refuses to write into
    a non-empty directory unless `force`. Written beside the target, then renamed into
    place, so an interrupted write never leaves a half checkpoint that loads.
    """
    target = Path(directory).expanduser().resolve()
    if target.exists() and any(target.iterdir()) and not force:
        raise FileExistsError(f"{target} is not empty; pass force=True (--force) to replace it")
    work = target.with_name(f".{target.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config if config is not None else clip_b16_config())
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line from the CLI, not a shard-writing bar
    model.save_pretrained(str(work), safe_serialization=True)
    (work / "RANDOM_WEIGHTS.json").write_text(json.dumps(
        {"what": "random weights, architecture of openai/clip-vit-base-patch16",
         "seed": seed, "parameters": sum(p.numel() for p in model.parameters())}, indent=2)
        + "\n")
    del model
    if target.exists():
        shutil.rmtree(target)
    work.rename(target)
    return target


def ensure_clip_checkpoint(directory: str | Path, *, seed: int = 0) -> Path:
    """`directory` if it already holds this architecture (config.json and weights), else
    a freshly written one."""
    target = Path(directory).expanduser().resolve()
    config_file = target / "config.json"
    if config_file.is_file() and (target / "model.safetensors").is_file():
        found = CLIPConfig.from_pretrained(str(target))
        wanted = clip_b16_config()
        same = all(getattr(found.vision_config, k) == v for k, v in VISION_CONFIG.items()) and \
            all(getattr(found.text_config, k) == v for k, v in TEXT_CONFIG.items())
        if same and found.projection_dim == wanted.projection_dim:
            return target
    return write_clip_checkpoint(target, seed=seed, force=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", help="where to write the checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--force", action="store_true", help="replace a non-empty DIR")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        path = write_clip_checkpoint(args.directory, seed=args.seed, force=args.force)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    print(f"wrote {path} ({size / 2**20:.0f} MiB, random weights, ViT-B/16 + text-512 CLIP) "
          f"in {time.perf_counter() - start:.1f}s; use it with --backbone {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
