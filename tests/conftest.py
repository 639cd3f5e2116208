"""Shared fixtures. Nothing here reaches the network: the hub is offline and wandb writes locally."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402
import timm  # noqa: E402

if os.environ.get("DIMAP_MUTATION_TEST"):  # set by scripts/mutation_test.sh
    # tqdm's default lock is a multiprocessing semaphore that forked processes share; mutmut forks every test
    # run from one parent, so a run that dies holding it (a mutant raising inside tqdm) blocks all later ones.
    import threading
    from tqdm import tqdm
    tqdm.set_lock(threading.RLock())

TINY_SWIN = dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(1, 1, 2, 1),
                 num_heads=(1, 2, 2, 4), in_chans=3, num_classes=10)


def make_tiny_swin(seed: int = 0, **overrides):
    """A timm SwinTransformer with Swin-T's module structure, small enough for a unit test."""
    import torch
    torch.manual_seed(seed)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **{**TINY_SWIN, **overrides})


@pytest.fixture
def tiny_swin():
    return make_tiny_swin()
