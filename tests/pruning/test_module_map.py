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


def test_the_refusal_lists_the_eight_most_common_layer_holders():
    """What was found, most common first, capped so that the refusal stays one readable sentence."""
    kinds = [type(f"Block{i}", (nn.Module,), {}) for i in range(10)]
    model = nn.Sequential()
    for i, kind in enumerate(kinds):
        for j in range(i + 1):  # Block9 holds a linear layer 10 times, Block0 once
            block = kind()
            block.fc = nn.Linear(2, 2)
            model.add_module(f"b{i}_{j}", block)
    with pytest.raises(UserError) as e:
        module_map(model)
    found = re.search(r"\(found (.*)\)", str(e.value))[1]
    assert found == ", ".join(f"Block{i} x{i + 1}" for i in range(9, 1, -1))


def test_attention_without_mlp_or_mlp_without_attention_is_refused():
    from timm.layers import Attention, Mlp
    for model in (nn.Sequential(Attention(8, num_heads=2)), nn.Sequential(Mlp(8, 16))):
        with pytest.raises(UserError, match="has no attention and MLP blocks dimap recognises"):
            module_map(model)


def test_the_refusal_counts_recognised_blocks_once():
    """Two MLP blocks found (their layers not nn.Linear, so only the block count can name them) and two holding
    linear layers: each class named once with its number of blocks."""
    from timm.layers import Mlp
    odd = [Mlp(8, 16) for _ in range(2)]
    for m in odd:
        m.fc1, m.fc2 = nn.Identity(), nn.Identity()
    with pytest.raises(UserError) as e:
        module_map(nn.Sequential(*odd))
    assert "(found Mlp x2)" in str(e.value)
    with pytest.raises(UserError) as e:
        module_map(nn.Sequential(Mlp(8, 16), Mlp(8, 16)))
    assert "(found Mlp x2)" in str(e.value)  # was "Mlp x4": each block counted as found and as a holder


def test_unknown_attention_classes_are_found_by_either_suffix_and_all_named(tiny_swin):
    class FooAttn(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_q = nn.Linear(4, 4)

    class BarAttention(FooAttn):
        pass

    tiny_swin.extra = FooAttn()
    with pytest.raises(UserError, match=r"unknown classes \(FooAttn\)"):
        module_map(tiny_swin)
    tiny_swin.more = BarAttention()
    with pytest.raises(UserError, match=r"unknown classes \(BarAttention, FooAttn\)"):
        module_map(tiny_swin)


def test_classes_of_modules_not_imported_or_lacking_the_class_are_skipped():
    """Another timm version may lack a class, and FasterViT's package is loaded only when it is used."""
    from timm.layers.mlp import Mlp
    from dimap.pruning.modules import _classes
    table = (("no_such_package.models", "Mlp"), ("timm.layers.mlp", "NoSuchMlp"), ("timm.layers.mlp", "Mlp"))
    assert _classes(table) == (Mlp,)


def test_modules_of_needs_the_module_of_each_name():
    from dimap.pruning.modules import modules_of
    with pytest.raises(TypeError, match=r"^modules_of needs the module of each name: pass prunable_weights\(model\) "
                                        r"or module=$"):
        modules_of({"a.weight": None})
    assert modules_of(["b", "a"], {"a": "QKV-M", "b": "QKV-M"}) == {"QKV-M": ["b", "a"]}
