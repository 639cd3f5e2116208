"""The module map by role (attention and MLP blocks) against the spec's Swin name table, and its refusals."""
import re

import pytest
import timm
import torch
from torch import nn

from dimap import UserError
from dimap.pruning.modules import AUX, MLP, PRJ, QKV, module_map

# The table of docs/method.md, section 2, as the name-based map the project used before the map by role.
_BLOCK = r"^layers\.\d+\.blocks\.\d+\."
SWIN_NAMES = ((re.compile(_BLOCK + r"attn\.qkv\.weight$"), QKV), (re.compile(_BLOCK + r"attn\.proj\.weight$"), PRJ),
              (re.compile(_BLOCK + r"mlp\.fc[12]\.weight$"), MLP))


def swin_module_by_name(name: str) -> str:
    return next((module for pattern, module in SWIN_NAMES if pattern.match(name)), AUX)


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224",
                                  "swin_base_patch4_window7_224"])
def test_swin_map_by_role_equals_the_spec_name_table(name):
    with torch.device("meta"):  # the architecture only: Swin-B's shapes without its memory
        model = timm.create_model(name)
    by_name = {n: swin_module_by_name(n) for n, _ in model.named_parameters() if swin_module_by_name(n) != AUX}
    by_role = module_map(model)
    assert list(by_role.items()) == list(by_name.items())  # same layers, same modules, same order
    depth = sum(len(stage.blocks) for stage in model.layers)
    assert [list(by_role.values()).count(m) for m in (QKV, PRJ, MLP)] == [depth, depth, 2 * depth]


def test_wrapped_model_keeps_the_map_under_its_prefix(tiny_swin):
    wrapped = nn.Sequential(tiny_swin)  # DDP's `module.` and torch.compile's `_orig_mod.` work the same way
    assert module_map(wrapped) == {f"0.{n}": m for n, m in module_map(tiny_swin).items()}


def test_a_model_without_attention_is_refused_with_what_was_found():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    with pytest.raises(UserError, match=r"ResNet has no attention and MLP blocks .*found .*ResNet x1"):
        module_map(model)
    with pytest.raises(UserError, match=r"found no linear layers"):
        module_map(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_an_unknown_attention_class_is_refused_not_left_dense(tiny_swin):
    class MyAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_qkv = nn.Linear(4, 12)

    tiny_swin.extra = MyAttention()
    with pytest.raises(UserError, match="unknown classes \\(MyAttention\\)"):
        module_map(tiny_swin)
