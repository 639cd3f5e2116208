"""Masks: compute them for a model, apply them, keep them applied, recover them from a pruned state dict.

A mask is a plain bool tensor per prunable weight (True = kept), keyed by `named_parameters()` name. No
torch.nn.utils.prune reparametrisation: it breaks deepcopy, EMA copies and state dicts.
"""
import hashlib

import torch
from torch import nn

from dimap.pruning.criteria import CRITERIA
from dimap.errors import UserError
from dimap.pruning.modules import PRUNABLE_MODULES, module_map, prunable_weights
from dimap.pruning.sparsegpt import sparsegpt
from dimap.pruning.wanda import wanda, wanda_module

# Data-aware criteria (docs/baselines.md): criterion(weights, ratio, *, model, batches, **options), where
# `batches()` gives a fresh iterator over the calibration images on the model's device. `options` are the
# method's own settings (METHOD_OPTIONS: the prune.* keys passed through).
DATA_AWARE = {f.__name__: f for f in (wanda, wanda_module, sparsegpt)}
METHOD_OPTIONS = {"sparsegpt": ("blocksize", "percdamp")}


def check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise UserError(f"prune.ratio={ratio!r} is not a share in [0, 1): pass e.g. prune.ratio=0.55")
    return float(ratio)


def check_method(method: str):
    if method not in CRITERIA and method not in DATA_AWARE:
        raise UserError(f"prune.method={method!r} is unknown: use one of {', '.join([*CRITERIA, *DATA_AWARE])}")
    return CRITERIA.get(method) or DATA_AWARE[method]


def needs_calibration(method: str) -> bool:
    """Whether `method` scores weights from calibration images (Wanda, SparseGPT) rather than from weights alone."""
    return method in DATA_AWARE


def method_options(method: str, prune_cfg: dict) -> dict:
    """The settings of `method` found in the prune config (e.g. prune.blocksize for sparsegpt)."""
    return {k: prune_cfg[k] for k in METHOD_OPTIONS.get(method, ()) if prune_cfg.get(k) is not None}


def check_module_ratios(module_ratios, ratio: float) -> dict[str, float] | None:
    """prune.module_ratios as {module: share} for every prunable module (unnamed modules take `ratio`), or None."""
    if not module_ratios:
        return None
    if not isinstance(module_ratios, dict) or set(module_ratios) - set(PRUNABLE_MODULES):
        raise UserError(f"prune.module_ratios={module_ratios!r} must map modules ({', '.join(PRUNABLE_MODULES)}) to "
                        "shares, e.g. prune.module_ratios={QKV-M:0.5,PRJ-M:0.4,MLP-M:0.6}")
    shares = {m: module_ratios.get(m, ratio) for m in PRUNABLE_MODULES}
    for m, share in shares.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
            raise UserError(f"prune.module_ratios.{m}={share!r} is not a share in [0, 1): pass e.g. 0.5")
    return {m: float(v) for m, v in shares.items()}


@torch.no_grad()
def compute_masks(model: nn.Module, method: str, ratio: float, module_ratios: dict | None = None,
                  calibration=None, options: dict | None = None) -> dict[str, torch.Tensor]:
    """Masks of `method` at `ratio` for every prunable weight of `model` (True = kept).

    `module_ratios` ({"QKV-M": 0.5, ...}) removes a different share from each module (modules it does not name
    keep `ratio`); only for criteria that rank each module, or each layer, on its own (all but single_module
    and global_magnitude). The data-free criteria use no data. The data-aware ones (DATA_AWARE) need
    `calibration` (`dimap.pruning.calibration.Calibration`), run on the device `model` is on, and take
    `options` (METHOD_OPTIONS); sparsegpt also UPDATES the kept weights of `model` in place.
    """
    criterion = check_method(method)
    ratio = check_ratio(ratio)
    shares = check_module_ratios(module_ratios, ratio)
    weights = prunable_weights(model)
    if method in DATA_AWARE:
        if calibration is None:
            raise UserError(f"prune.method={method} needs calibration images: give the run a data group "
                            "(e.g. data=mnist5k, or data=imagenet data.root=/path/to/imagenet)")
        device = next(iter(weights.values())).device
        masks = criterion(weights, shares if shares is not None else ratio, model=model,
                          batches=lambda: calibration.batches(device), **(options or {}))
    else:
        masks = criterion(weights, shares if shares is not None else ratio)
    return {n: masks[n] for n in weights}  # network order, whatever order the criterion grouped them in


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights of `model` in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(device=params[name].device, dtype=params[name].dtype))


class FixedMask:
    """Keeps a model's pruned weights at exactly zero during finetuning.

    Call `apply()` after every optimizer step: AdamW's momentum and weight decay would otherwise regrow them.
    The hot path is one `_foreach_mul_` over precomputed lists (masks pre-cast to each parameter's dtype and
    device, fully kept layers left out), with no Python loop over parameters. On CPU the lists hold chunks
    smaller than torch's parallel grain: a multiply is memory-bound, and one thread per chunk avoids OpenMP
    barriers, which cost 10x on a loaded machine (scripts/bench_mask_overhead.py measures all of this).

    Masking gradients is not needed for the mask to hold (apply() re-zeros after the step); `mask_grads()`
    exists for one case: call it before gradient clipping to clip by the norm of the kept weights only.
    """

    CHUNK = 16384  # elements; below at::internal::GRAIN_SIZE (32768), so each chunk runs on one thread

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        params = dict(model.named_parameters())
        missing = [n for n in masks if n not in params]
        if missing:
            raise UserError(f"the masks name {missing[0]!r}, which this model lacks: prune this architecture again")
        self.names = list(masks)
        self.params = [params[n] for n in self.names]
        self.factors = [masks[n].to(device=p.device, dtype=p.dtype) for n, p in zip(self.names, self.params)]
        self._pruned = [i for i, n in enumerate(self.names) if not bool(masks[n].all())]
        self._bind()

    def _bind(self) -> None:
        self._storage = [self.params[i].data_ptr() for i in self._pruned]
        self._targets, self._multipliers = self._split([self.params[i].detach() for i in self._pruned],
                                                       [self.factors[i] for i in self._pruned])

    def _split(self, targets: list[torch.Tensor], factors: list[torch.Tensor]):
        """(targets, factors) as pairs of equal chunks on CPU; a non-contiguous target stays whole with its factor."""
        if not targets or targets[0].device.type != "cpu":
            return targets, factors  # CUDA: _foreach_mul_ is one fused kernel over whole tensors
        out_t, out_f = [], []
        for t, f in zip(targets, factors):
            if t.is_contiguous() and f.is_contiguous():
                out_t += t.view(-1).split(self.CHUNK)
                out_f += f.view(-1).split(self.CHUNK)
            else:
                out_t.append(t)
                out_f.append(f)
        return out_t, out_f

    @torch.no_grad()
    def apply(self) -> None:
        if [self.params[i].data_ptr() for i in self._pruned] != self._storage:
            self._bind()  # someone replaced a parameter's .data (model.half(), p.data = ...): follow it
        if self._targets:
            torch._foreach_mul_(self._targets, self._multipliers)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients of pruned weights (optional, see the class docstring)."""
        pairs = [(self.params[i].grad, self.factors[i]) for i in self._pruned if self.params[i].grad is not None]
        if pairs:
            grads, factors = zip(*pairs)
            torch._foreach_mul_(*self._split(list(grads), list(factors)))

    @torch.no_grad()
    def violations(self) -> int:
        """Number of pruned weights that are not exactly zero (0 when the mask holds)."""
        return int(sum(((f == 0) & (p != 0)).sum() for p, f in zip(self.params, self.factors)))


def masks_from_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Recover masks from a pruned state dict of `model`'s architecture: a prunable weight is pruned iff it is
    exactly zero (`model` says which weights are prunable; a model on the meta device is enough).

    Exact for DIMAP-pruned files (pruned weights are stored as 0.0); a pretrained weight that is exactly 0.0
    would read as pruned, which does not happen in the timm or official Swin checkpoints. prune.py also writes
    the masks themselves (masks.safetensors) for an exact copy.
    """
    prunable = module_map(model)
    missing = [n for n in prunable if n not in state_dict]
    if missing:
        raise UserError(f"this state dict lacks the prunable weight {missing[0]!r} of {type(model).__name__}: "
                        "pass a checkpoint of this architecture")
    return {n: state_dict[n] != 0 for n in prunable}


def mask_checksum(masks: dict[str, torch.Tensor]) -> str:
    """A short digest of the masks (names, shapes, bits) to compare ranks, resumed runs and files."""
    h = hashlib.sha256()
    for name in sorted(masks):
        m = masks[name].detach().to("cpu", torch.bool).contiguous()
        h.update(name.encode())
        h.update(str(tuple(m.shape)).encode())
        h.update(m.numpy().tobytes())
    return h.hexdigest()[:16]
