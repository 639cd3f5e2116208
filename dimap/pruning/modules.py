"""Which weights belong to which DIMAP module (docs/method.md, section 2), read from what each layer does.

The map is built from timm's building blocks, not from parameter names: every attention module of a known
class gives its input projections (a fused `qkv`, `q` + `kv`, or `q`/`k`/`v`) to QKV-M and its output
projection (`proj`) to PRJ-M; every MLP module of a known class gives its linear layers (`fc1`/`fc2`, and
the gated `fc1_g`/`fc1_x`) to MLP-M. Everything else is AUX-M and never pruned: norms, patch embedding,
downsampling, convolutions, position embeddings, biases (SwinV2's `q_bias`/`v_bias`), relative-position
tables and their MLPs (`cpb_mlp`, a plain Sequential), class token, head. Only weight matrices are pruned.

QKV-M, PRJ-M and MLP-M are network-wide: each holds that kind of layer from every block of every stage. For
timm's Swin this is exactly the spec's name table (tests/pruning/test_module_map.py checks it on Swin-T/S/B).
"""
import collections
import sys

import torch
from torch import nn

from dimap.errors import UserError

QKV, PRJ, MLP, AUX = "QKV-M", "PRJ-M", "MLP-M", "AUX-M"
PRUNABLE_MODULES = (QKV, PRJ, MLP)

INPUT_PROJECTIONS = ("qkv", "q", "kv", "k", "v")  # the attention's linear layers that read its input
OUTPUT_PROJECTION = "proj"
MLP_LINEARS = ("fc1", "fc2", "fc1_g", "fc1_x")  # SwiGLU splits fc1 into a gate and a value half

# (module, class) pairs: timm's attention and MLP building blocks, and FasterViT's when its package is loaded.
_ATTENTION = (
    ("timm.layers.attention", "Attention"),  # ViT, DeiT, DeiT3
    ("timm.models.swin_transformer", "WindowAttention"),
    ("timm.models.swin_transformer_v2", "WindowAttention"),
    ("timm.models.pvt_v2", "Attention"),  # q and kv
    ("timm.models.twins", "LocallyGroupedAttn"),
    ("timm.models.twins", "GlobalSubSampleAttn"),  # q and kv
    ("timm.models.hiera", "MaskUnitAttention"),
    ("timm.models.davit", "WindowAttention"),
    ("timm.models.davit", "ChannelAttention"),
    ("timm.models.mvitv2", "MultiScaleAttention"),
    ("timm.models.mvitv2", "MultiScaleAttentionPoolFirst"),  # q, k and v
    ("fastervit.models.faster_vit", "WindowAttention"),  # attn and hat_attn (carrier tokens)
)
_MLP = (
    ("timm.layers.mlp", "Mlp"),
    ("timm.layers.mlp", "GluMlp"),
    ("timm.layers.mlp", "SwiGLU"),
    ("timm.layers.mlp", "GatedMlp"),  # its spatial gate's token-mixing `gate.proj` is not an MLP layer: AUX-M
    ("timm.models.pvt_v2", "MlpWithDepthwiseConv"),  # its depthwise conv is AUX-M
    ("fastervit.models.faster_vit", "Mlp"),  # mlp and hat_mlp
)


def _classes(table) -> tuple[type, ...]:
    """The classes of `table` whose module is imported (a model's own module always is once it is built)."""
    import timm.models  # noqa: F401  (imports every timm model module)
    return tuple(getattr(sys.modules[m], c) for m, c in table if m in sys.modules and hasattr(sys.modules[m], c))


class PrunableWeights(dict):
    """{parameter name: weight} of the prunable layers in `named_parameters()` order; `.module[name]` is the
    DIMAP module (QKV-M, PRJ-M or MLP-M) of each. A criterion groups layers by it (`modules_of`)."""

    def __init__(self, weights: dict[str, torch.Tensor], module: dict[str, str]):
        super().__init__(weights)
        self.module = {n: module[n] for n in weights}


def _roles(model: nn.Module) -> tuple[dict[str, str], collections.Counter]:
    """{weight name: module} of the recognised layers, and a count of the recognised blocks by class."""
    attention, mlp = _classes(_ATTENTION), _classes(_MLP)
    roles, found = {}, collections.Counter()
    for prefix, block in model.named_modules():
        if isinstance(block, attention):
            table = {**dict.fromkeys(INPUT_PROJECTIONS, QKV), OUTPUT_PROJECTION: PRJ}
        elif isinstance(block, mlp):
            table = dict.fromkeys(MLP_LINEARS, MLP)
        else:
            continue
        found[type(block).__name__] += 1
        for child, module in table.items():
            layer = getattr(block, child, None)
            if isinstance(layer, nn.Linear):
                roles[f"{prefix}.{child}.weight" if prefix else f"{child}.weight"] = module
    return roles, found


def _refuse(model: nn.Module, found: collections.Counter, why: str):
    holders = collections.Counter(type(m).__name__ for m in model.modules()
                                  if any(isinstance(c, nn.Linear) for c in m.children()))
    # a recognised block is usually a holder too: | takes the larger count of the two, + would name it twice over
    listing = ", ".join(f"{c} x{n}" for c, n in (found | holders).most_common(8)) or "no linear layers"
    raise UserError(f"{type(model).__name__} {why} (found {listing}): DIMAP prunes vision transformers built "
                    "from timm's attention and MLP blocks; see docs/families.md")


def module_map(model: nn.Module) -> dict[str, str]:
    """{weight name: QKV-M | PRJ-M | MLP-M} for every prunable weight of `model`, in `named_parameters()` order.

    Refuses (UserError) a model without recognised attention and MLP blocks, and one with an attention-like
    block of a class we do not know (it would otherwise stay dense without anyone noticing).
    """
    roles, found = _roles(model)
    modules = set(roles.values())
    if QKV not in modules or MLP not in modules:
        _refuse(model, found, "has no attention and MLP blocks dimap recognises")
    known = _classes(_ATTENTION)
    unknown = sorted({type(m).__name__ for m in model.modules()
                      if type(m).__name__.endswith(("Attention", "Attn")) and not isinstance(m, known)
                      and any(isinstance(c, nn.Linear) for c in m.children())})
    if unknown:
        _refuse(model, found, f"has attention blocks of unknown classes ({', '.join(unknown)})")
    return {n: roles[n] for n, _ in model.named_parameters() if n in roles}


def prunable_weights(model: nn.Module) -> PrunableWeights:
    """The prunable weight matrices of `model`, by parameter name, in `named_parameters()` order."""
    params = dict(model.named_parameters())
    modules = module_map(model)
    return PrunableWeights({n: params[n] for n in modules}, modules)


def modules_of(names, module: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Group prunable names by module, keeping their order; `module` defaults to `names.module`."""
    module = module if module is not None else getattr(names, "module", None)
    if module is None:
        raise TypeError("modules_of needs the module of each name: pass prunable_weights(model) or module=")
    groups = {m: [] for m in PRUNABLE_MODULES}
    for n in names:
        groups[module[n]].append(n)
    return {m: ns for m, ns in groups.items() if ns}
