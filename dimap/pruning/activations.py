"""What the prunable layers see: their inputs on the calibration images, through forward hooks on timm's modules.

A layer's input is taken as the layer sees it, all leading dimensions flattened into rows of `in_features` values
(tokens of every image, every window of Swin's window attention, every carrier token...). Most layers are called
as modules, so a forward hook on the `nn.Linear` itself sees the input. A few call `F.linear` on the layer's
weight instead (SwinV2's qkv adds its own q/v bias that way): their hook never fires, and the input is read from
the enclosing attention block instead, which receives the same tensor. Which of the two applies is found by one
probe forward (`input_sources`); a layer that neither sees is refused rather than scored on nothing.

Two consumers: `dimap.pruning.wanda` (sums of squares per input feature) and `dimap.pruning.sparsegpt` (X^T X per
layer, block by block: `run_until` stops the forward once a block is done, so later blocks cost nothing).
"""
import torch
from torch import nn

from dimap.errors import UserError


class _BlockDone(Exception):
    """Raised by a hook after the block being calibrated has run: the rest of the forward is not needed."""


def module_of(model: nn.Module, weight_name: str) -> nn.Module:
    """The nn.Linear holding the parameter `weight_name` ("...qkv.weight" -> the qkv layer)."""
    return model.get_submodule(weight_name.rsplit(".", 1)[0])


def block_of(weight_name: str) -> str:
    """The transformer block of a prunable weight: the parent of its attention or MLP module
    ("layers.0.blocks.1.attn.qkv.weight" -> "layers.0.blocks.1"; "" is the model itself)."""
    parts = weight_name.split(".")
    return ".".join(parts[:-3])


def _first_tensor(args):
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


def _probe(model: nn.Module, names: list[str], sample: torch.Tensor) -> tuple[dict, list[str]]:
    """One forward of `sample`: which prunable layers are called as modules, and the order blocks first run in."""
    fired, order, handles = set(), [], []
    blocks = {block_of(n) for n in names}
    try:
        for n in names:
            handles.append(module_of(model, n).register_forward_hook(lambda m, a, o, n=n: fired.add(n)))
        for b in blocks:
            handles.append(model.get_submodule(b).register_forward_pre_hook(
                lambda m, a, b=b: order.append(b) if b not in order else None))
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    return fired, order + sorted(blocks - set(order))


def input_sources(model: nn.Module, names: list[str], sample: torch.Tensor) -> tuple[dict[str, nn.Module], list[str]]:
    """({weight name: the module whose first input is that layer's input}, blocks in the order they run)."""
    was_training = model.training
    model.eval()
    try:
        return _sources(model, names, sample)
    finally:
        model.train(was_training)


def _sources(model, names, sample):
    fired, order = _probe(model, names, sample)
    sources = {}
    for n in names:
        layer = module_of(model, n)
        if n in fired:
            sources[n] = layer
            continue
        parent = model.get_submodule(n.rsplit(".", 2)[0])  # the attention (or MLP) block holding the layer
        seen = []
        h = parent.register_forward_pre_hook(lambda m, a: seen.append(_first_tensor(a)))
        try:
            with torch.no_grad():
                model(sample)
        finally:
            h.remove()
        if not seen or seen[0] is None or seen[0].shape[-1] != layer.in_features:
            raise UserError(f"{n} is never called on an input this code can observe (neither its layer nor "
                            f"{type(parent).__name__} receives it): this family cannot be calibrated; use a data-free "
                            "prune.method")
        sources[n] = parent
    return sources, order


def observe(sources: dict[str, nn.Module], names: list[str], consume, stop_after: nn.Module | None = None):
    """Register hooks calling `consume(name, x)` with each input of the layers `names` as a 2-D (rows, in_features)
    tensor; with `stop_after`, that module's forward hook ends the forward. Returns the handles (remove them)."""
    handles = []
    for n in names:
        def hook(m, args, n=n):
            x = _first_tensor(args)
            consume(n, x.detach().reshape(-1, x.shape[-1]))
        handles.append(sources[n].register_forward_pre_hook(hook))
    if stop_after is not None:
        def stop(m, a, o):
            raise _BlockDone
        handles.append(stop_after.register_forward_hook(stop))
    return handles


@torch.no_grad()
def run_calibration(model: nn.Module, batches, handles) -> None:
    """Forward every calibration batch in eval mode (no dropout or drop path), then remove `handles`."""
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            try:
                model(x)
            except _BlockDone:
                pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def sample_of(batches) -> torch.Tensor:
    """The first image of a calibration set, for the probe forward."""
    for x in batches:
        return x[:1]
    raise UserError("the calibration set is empty: pass prune.calibration.images=N with N >= 1")
