"""benchmarks/clip_checkpoint.py: the real ViT-B/16 CLIP architecture, written offline.

The architecture is checked on the meta device (no memory, no weights); the writing and
loading path runs at toy size, the same code as at real size.
"""

from __future__ import annotations

import pytest
import torch
from search_helpers import benchmark_module
from transformers import CLIPConfig, CLIPModel

from timesclip.model import load_backbone
from timesclip.model.backbones import tiny_configs


@pytest.fixture(scope="module")
def helper():
    return benchmark_module("clip_checkpoint")


def test_config_is_clip_vit_b16(helper):
    config = helper.clip_b16_config()
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size,
            v.image_size, v.patch_size) == (768, 12, 12, 3072, 224, 16)
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size,
            t.vocab_size, t.max_position_embeddings) == (512, 12, 8, 2048, 49408, 77)
    assert config.projection_dim == 512
    with torch.device("meta"):
        model = CLIPModel(config)
    assert sum(p.numel() for p in model.parameters()) == helper.N_PARAMETERS == 149_620_737


def test_written_checkpoint_loads_as_a_local_backbone(helper, tmp_path):
    text, vision = tiny_configs()
    small = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                       projection_dim=16)
    path = helper.write_clip_checkpoint(tmp_path / "clip", seed=3, config=small)
    loaded = load_backbone(str(path))
    assert loaded.vision is not None and loaded.image_size == 64
    with pytest.raises(FileExistsError):  # never overwrites silently
        helper.write_clip_checkpoint(path, config=small)
    # the seed decides the weights: same seed, same weights; another seed, others
    same = load_backbone(str(helper.write_clip_checkpoint(tmp_path / "same", seed=3,
                                                          config=small)))
    other = load_backbone(str(helper.write_clip_checkpoint(tmp_path / "other", seed=4,
                                                           config=small)))
    for a, b, c in ((loaded.vision, same.vision, other.vision),
                    (loaded.text, same.text, other.text)):
        sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not list(tmp_path.glob(".*partial"))
