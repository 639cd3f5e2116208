"""Tiny configurations of every supported family (conf/model/<family>.yaml at test size), with the layer counts
per module that each architecture's published structure implies, counted from its config, not from our map."""
import importlib.util

import pytest

HAS_FASTERVIT = importlib.util.find_spec("fastervit") is not None
NEEDS_FASTERVIT = pytest.mark.skipif(not HAS_FASTERVIT, reason="the optional package fastervit==1.0.0 is not "
                                     "installed (pip install -r requirements.txt installs it)")


def _blocks(kw, key="depths"):
    return sum(kw[key])


# family (conf/model file) -> tiny timm kwargs, image size, and (QKV, PRJ, MLP) layer counts from the config
FAMILIES = {
    "swinv2_t": (dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(1, 1, 2, 1),
                      num_heads=(1, 2, 2, 4)), 32, lambda kw: (_blocks(kw),) * 2 + (2 * _blocks(kw),)),
    "vit_s": (dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2), 32,
              lambda kw: (kw["depth"], kw["depth"], 2 * kw["depth"])),
    "deit_s": (dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2), 32,
               lambda kw: (kw["depth"], kw["depth"], 2 * kw["depth"])),
    "deit3_s": (dict(img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2), 32,
                lambda kw: (kw["depth"], kw["depth"], 2 * kw["depth"])),
    # PVT-v2: separate q and kv in every block (two QKV-M layers per block)
    "pvt_v2_b2": (dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 64), num_heads=(1, 2, 2, 4)), 64,
                  lambda kw: (2 * _blocks(kw), _blocks(kw), 2 * _blocks(kw))),
    "hiera_t": (dict(img_size=64, embed_dim=16, num_heads=1, stages=(1, 1, 1, 1)), 64,
                lambda kw: (_blocks(kw, "stages"),) * 2 + (2 * _blocks(kw, "stages"),)),
    # Twins-SVT: blocks alternate locally-grouped (qkv) and global sub-sampled (q + kv) attention
    "twins_svt_s": (dict(img_size=64, depths=(2, 2, 2, 2), embed_dims=(16, 32, 64, 64), num_heads=(1, 2, 2, 4)), 64,
                    lambda kw: (_blocks(kw) * 3 // 2, _blocks(kw), 2 * _blocks(kw))),
    # DaViT: each depth unit is a spatial (window) block and a channel block, each with attention and MLP
    "davit_t": (dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 64), num_heads=(1, 2, 2, 4)), 64,
                lambda kw: (2 * _blocks(kw), 2 * _blocks(kw), 4 * _blocks(kw))),
    # FasterViT: stages 0-1 convolutional; in stage 2 (hat) every block also attends over carrier tokens
    "fastervit_0": (dict(dim=16, in_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=[4, 4, 2, 2],
                         resolution=64, ct_size=1), 64,
                    lambda kw: (2 * kw["depths"][2] + kw["depths"][3],) * 2 + (2 * (2 * kw["depths"][2] + kw["depths"][3]),)),
}


def family_params(families=FAMILIES):
    return [pytest.param(f, marks=NEEDS_FASTERVIT) if f.startswith("fastervit") else f for f in families]
