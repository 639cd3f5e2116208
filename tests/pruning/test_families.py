"""Every supported family at test size: its module map, its FLOP counts against an independent count, and a
prune + count + save/load round trip into plain timm. The tiny configurations are in tests/families.py."""
import re

import pytest
import timm
import torch
from fvcore.nn import FlopCountAnalysis
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from dimap import account, apply_masks, compute_masks, masks_from_state_dict, read_pruned, save_pruned
from dimap.models import build_model, create_model, load_dense_weights
from dimap.pruning.accounting import unfused_attention
from dimap.pruning.modules import MLP, PRJ, QKV, module_map
from tests.families import FAMILIES, family_params

CONF = "conf/model/{}.yaml"
ROLE_NAMES = {QKV: re.compile(r"(^|\.)(hat_)?attn\.(qkv|q|kv|k|v)\.weight$"),
              PRJ: re.compile(r"(^|\.)(hat_)?attn\.proj\.weight$"),
              MLP: re.compile(r"(^|\.)(hat_)?mlp\.fc[12]\.weight$")}
# parameters each family must keep dense (AUX-M): SwinV2's biases and cpb_mlp, PVT's reductions, heads, ...
AUX_EXAMPLES = {
    "swinv2_t": ["layers.0.blocks.0.attn.q_bias", "layers.0.blocks.0.attn.v_bias", "layers.0.blocks.0.attn.logit_scale",
                 "layers.0.blocks.0.attn.cpb_mlp.0.weight", "layers.0.blocks.0.attn.cpb_mlp.2.weight",
                 "layers.1.downsample.reduction.weight", "head.fc.weight"],
    "vit_s": ["cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.bias", "head.weight"],
    "deit_s": ["cls_token", "pos_embed", "head.weight"],
    "deit3_s": ["blocks.0.ls1.gamma", "head.weight"],
    "pvt_v2_b2": ["stages.0.blocks.0.attn.sr.weight", "stages.0.blocks.0.mlp.dwconv.weight", "head.weight"],
    "hiera_t": ["blocks.1.proj.weight", "pos_embed", "head.fc.weight"],  # blocks.1.proj: the width change
    "twins_svt_s": ["blocks.0.1.attn.sr.weight", "pos_block.0.proj.0.weight", "head.weight"],
    "davit_t": ["stages.0.blocks.0.0.cpe1.proj.weight", "head.fc.weight"],
    "fastervit_0": ["levels.0.blocks.0.conv1.weight", "levels.2.blocks.0.attn.pos_emb_funct.cpb_mlp.0.weight",
                    "levels.2.blocks.0.hat_attn.pos_emb_funct.cpb_mlp.0.weight", "head.weight"],
}


def model_cfg(family: str) -> dict:
    """The family's conf/model file with its tiny kwargs and random weights (10 classes)."""
    kwargs, img_size, _ = FAMILIES[family]
    cfg = OmegaConf.to_container(OmegaConf.load(CONF.format(family)))
    return {**cfg, "kwargs": {**kwargs, "num_classes": 10}, "img_size": img_size, "weights": "random"}


def tiny(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(model_cfg(family)).eval()


@pytest.mark.parametrize("family", family_params())
def test_module_map_counts_and_aux(family):
    model = tiny(family)
    modules = module_map(model)
    expected = FAMILIES[family][2](FAMILIES[family][0])
    assert tuple(list(modules.values()).count(m) for m in (QKV, PRJ, MLP)) == expected
    for name, module in modules.items():
        assert ROLE_NAMES[module].search(name), (name, module)  # every selected layer is an attention/MLP linear
    params = dict(model.named_parameters())
    for name in AUX_EXAMPLES[family]:
        assert name in params and name not in modules, name
    if family == "fastervit_0":
        assert any(".hat_attn.qkv." in n for n in modules) and any(".hat_mlp.fc2." in n for n in modules)
        assert not any(n.startswith(("levels.0.", "levels.1.")) for n in modules)  # the conv stages


def linear_flops_by_hooks(model, img_size: int, in_chans: int) -> dict[str, int]:
    """Independent count: tokens x in x out for every call of every prunable linear layer, at batch 1."""
    counts, hooks = {}, []
    for name in module_map(model):
        layer = model.get_submodule(name.removesuffix(".weight"))

        def hook(layer, inputs, output, name=name):
            tokens = inputs[0].numel() // layer.in_features
            counts[name] = counts.get(name, 0) + tokens * layer.in_features * layer.out_features
        hooks.append(layer.register_forward_hook(hook))
    with torch.no_grad(), unfused_attention(model):  # SwinV2 calls its qkv layer only with timm's switch set
        model(torch.zeros(1, in_chans, img_size, img_size))
    for h in hooks:
        h.remove()
    return counts


@pytest.mark.parametrize("family", family_params())
def test_flops_per_layer_equal_an_independent_count_and_attention_is_counted(family):
    model, img_size = tiny(family), FAMILIES[family][1]
    masks = compute_masks(model, "dimap", 0.55)
    a = account(model, masks, img_size)
    hooks = linear_flops_by_hooks(model, img_size, 3)
    assert {l["name"]: l["flops"] for l in a["layers"]} == hooks
    assert a["flops_prunable"] == sum(hooks.values()) < a["flops_dense"]
    per_module = {m: sum(f for n, f in hooks.items() if module_map(model)[n] == m) for m in (QKV, PRJ, MLP)}
    assert {m: v["flops"] for m, v in a["modules"].items()} == per_module
    kept = {l["name"]: l["kept_fraction"] for l in a["layers"]}
    assert a["flops_sparse"] == pytest.approx(a["flops_dense"] - sum(f * (1 - kept[n]) for n, f in hooks.items()))
    assert a["flops_paper"] == pytest.approx(a["flops_dense"] - a["prunable_removed_fraction"] * sum(hooks.values()))
    with unfused_attention(model):  # fvcore sees the attention matmuls, not an uncounted fused kernel
        analysis = FlopCountAnalysis(model, torch.zeros(1, 3, img_size, img_size))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).total()
        assert "aten::scaled_dot_product_attention" not in analysis.unsupported_ops()
        assert analysis.by_operator().get("matmul", 0) + analysis.by_operator().get("bmm", 0) > 0


@pytest.mark.parametrize("family", family_params())
def test_prune_count_save_and_load_into_plain_timm(family, tmp_path):
    cfg = model_cfg(family)
    model = tiny(family, seed=1)
    masks = compute_masks(model, "dimap", 0.55)
    apply_masks(model, masks)
    a = account(model, masks, cfg["img_size"])
    assert all(abs(m["kept_fraction"] - 0.45) < 2e-3 for m in a["modules"].values())
    save_pruned(model, masks, tmp_path, {"model": cfg["name"], "kwargs": cfg["kwargs"], "method": "dimap"})

    fresh = timm.create_model(cfg["name"], pretrained=False, **cfg["kwargs"]).eval()  # no code of ours
    fresh.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    x = torch.randn(2, 3, cfg["img_size"], cfg["img_size"])
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    state, loaded, _ = read_pruned(tmp_path / "model.safetensors")
    assert set(loaded) == set(masks) and all(torch.equal(loaded[n], masks[n]) for n in masks)
    from_zeros = masks_from_state_dict(state, fresh)
    assert all(torch.equal(from_zeros[n], masks[n]) for n in masks)
    (tmp_path / "masks.safetensors").unlink()  # the architecture in the metadata says which weights are prunable
    assert all(torch.equal(m, masks[n]) for n, m in read_pruned(tmp_path / "model.safetensors")[1].items())


@pytest.mark.parametrize("family", family_params())
def test_local_weights_load_through_the_family_checkpoint_filter(family, tmp_path):
    cfg = model_cfg(family)
    source = tiny(family, seed=2)
    save_file({k: v.clone() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    target = create_model(cfg["name"], cfg["kwargs"])
    load_dense_weights(target, str(tmp_path / "w.safetensors"), cfg["name"])
    assert all(torch.equal(p, source.state_dict()[n]) for n, p in target.state_dict().items())


@pytest.mark.parametrize("family", [f for f in FAMILIES if not f.startswith("fastervit")])
def test_each_family_config_names_an_existing_timm_hub_tag(family):
    cfg = OmegaConf.load(CONF.format(family))
    assert f"{cfg.name}.{cfg.hub_tag}" in timm.list_pretrained(cfg.name + "*")


def test_vit_weights_of_another_resolution_go_through_vits_own_filter(tmp_path):
    """timm's ViT filter resamples pos_embed to the model's grid: a 32 px file loads into a 48 px ViT."""
    cfg = model_cfg("vit_s")
    source = tiny("vit_s")
    save_file({k: v.clone() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    target = create_model(cfg["name"], {**cfg["kwargs"], "img_size": 48})
    load_dense_weights(target, str(tmp_path / "w.safetensors"), cfg["name"])
    assert target.pos_embed.shape[1] == 1 + 36 and torch.equal(target.blocks[0].attn.qkv.weight,
                                                               source.blocks[0].attn.qkv.weight)


def test_masks_from_a_state_dict_of_another_architecture_is_one_sentence():
    from dimap import UserError
    with pytest.raises(UserError, match=r"lacks the prunable weight 'blocks.0.attn.qkv.weight' .*this architecture"):
        masks_from_state_dict(tiny("swinv2_t").state_dict(), tiny("vit_s"))
