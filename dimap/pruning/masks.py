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
from dimap.pruning.patterns import check_nm_ratio, parse_pattern, pattern_masks
from dimap.pruning.scores import dimap_scores


def check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise UserError(f"prune.ratio={ratio!r} is not a share in [0, 1): pass e.g. prune.ratio=0.55")
    return float(ratio)


def check_method(method: str):
    if method not in CRITERIA:
        raise UserError(f"prune.method={method!r} is unknown: use one of {', '.join(CRITERIA)}")
    return CRITERIA[method]


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


class _LazyScores(dict):
    """{name: score} computed per layer when asked (one layer's float64 Eq. 10 scores at a time)."""

    def __init__(self, weights, score):
        super().__init__()
        self.weights, self.score = weights, score

    def __missing__(self, name):
        return self.score(self.weights[name])


def _magnitude(w: torch.Tensor) -> torch.Tensor:
    return w.detach().abs()


# Per criterion, for N:M: (cost of a weight for the allocation, allocation when prune.nm_allocation=auto). Inside a
# group of M every built-in criterion ranks by |w|: Eq. 10 is a monotone function of a weight's |w| rank within
# its layer, so it keeps the same N (magnitude ties go by index for all, lower removed first). A data-aware
# criterion (a per-weight score) adds a line here, or calls `dimap.pruning.patterns.pattern_masks` itself.
NM_CRITERIA = {"dimap": (dimap_scores, "module"), "single_module": (dimap_scores, "global"),
               "uniform": (_magnitude, "module"), "global_magnitude": (_magnitude, "global")}


def check_allocation(allocation: str, method: str) -> str:
    """prune.nm_allocation, with auto resolved to the criterion's own grouping (per module, or all layers)."""
    allocation = str(allocation)
    if allocation == "auto":
        return NM_CRITERIA[method][1]
    if allocation not in ("module", "global", "first"):
        raise UserError(f"prune.nm_allocation={allocation!r} is unknown: use one of auto, module, global, first")
    return allocation


def check_pattern(prune: dict, method: str, ratio: float, shares: dict | None) -> dict:
    """prune.pattern / nm_allocation / semi_structured of a run, checked before anything is written:
    {pattern: "unstructured" | "N:M", nm: (N, M) | None, allocation, semi_structured}."""
    nm = parse_pattern(prune.get("pattern", "unstructured"))
    semi = prune.get("semi_structured", False)
    if not isinstance(semi, bool):
        raise UserError(f"prune.semi_structured={semi!r} must be true or false")
    if nm is None:
        if semi:
            raise UserError("prune.semi_structured=true needs 2:4 layers: pass prune.pattern=2:4 as well")
        return {"pattern": "unstructured", "nm": None, "allocation": None, "semi_structured": False}
    if semi and nm != (2, 4):
        raise UserError(f"prune.semi_structured=true runs 2:4 kernels, not {nm[0]}:{nm[1]}: pass prune.pattern=2:4")
    if method in NM_CRITERIA:
        check_nm_ratio({f"prune.module_ratios.{k}": v for k, v in shares.items()} if shares else {"prune.ratio": ratio},
                       *nm)
    allocation = check_allocation(prune.get("nm_allocation", "auto"), method) if method in NM_CRITERIA else None
    return {"pattern": f"{nm[0]}:{nm[1]}", "nm": nm, "allocation": allocation, "semi_structured": semi}


@torch.no_grad()
def compute_masks(model: nn.Module, method: str, ratio: float, module_ratios: dict | None = None,
                  pattern: str = "unstructured", allocation: str = "auto", record: dict | None = None
                  ) -> dict[str, torch.Tensor]:
    """Masks of `method` at `ratio` for every prunable weight of `model` (True = kept). Uses no data.

    `module_ratios` ({"QKV-M": 0.5, ...}) removes a different share from each module (modules it does not name
    keep `ratio`); only for criteria that rank each module, or each layer, on its own (dimap, uniform).
    `pattern` "N:M" (e.g. "2:4"): every layer dense or exactly N:M (`dimap.pruning.patterns.pattern_masks`),
    the N:M layers chosen by `allocation` (auto: per module for dimap/uniform, over all layers for the one-group
    criteria); `record`, a dict, receives which layers are N:M, dense and ineligible.
    """
    criterion = check_method(method)
    ratio = check_ratio(ratio)
    shares = check_module_ratios(module_ratios, ratio)
    nm = parse_pattern(pattern)
    weights = prunable_weights(model)
    if nm is None:
        masks = criterion(weights, shares if shares is not None else ratio)
        return {n: masks[n] for n in weights}  # network order, whatever order the criterion grouped them in
    check_nm_ratio({f"prune.module_ratios.{k}": v for k, v in shares.items()} if shares else {"prune.ratio": ratio},
                   *nm)
    allocation = check_allocation(allocation, method)
    cost = _LazyScores(weights, NM_CRITERIA[method][0])
    rank = {n: _magnitude(w) for n, w in weights.items()}
    masks, rec = pattern_masks(rank, weights.module, *nm, shares if shares is not None else ratio, allocation, cost)
    if record is not None:
        record.update(rec)
    return masks


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
    device), with no Python loop over parameters. On CPU the lists hold chunks smaller than torch's parallel
    grain: a multiply is memory-bound, and one thread per chunk avoids OpenMP barriers, which cost 10x on a loaded
    machine (scripts/bench_mask_overhead.py measures all of this).

    Only layers with something pruned are held (`names`, `params`, `factors`): a fully kept layer costs nothing.
    `like`: another FixedMask of the same masks (the model's, for its EMA copy) whose multipliers this one reuses
    where device, dtype and shape agree, so a GPU holds one dense copy of the masks, not one per model.

    Masking gradients is not needed for the mask to hold (apply() re-zeros after the step); `mask_grads()`
    exists for one case: call it before gradient clipping to clip by the norm of the kept weights only.
    """

    CHUNK = 16384  # elements; below at::internal::GRAIN_SIZE (32768), so each chunk runs on one thread

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor], like: "FixedMask | None" = None):
        params = dict(model.named_parameters())
        missing = [n for n in masks if n not in params]
        if missing:
            raise UserError(f"the masks name {missing[0]!r}, which this model lacks: prune this architecture again")
        self.names = [n for n in masks if not bool(masks[n].all())]
        self.params = [params[n] for n in self.names]
        shared = dict(zip(like.names, like.factors)) if like is not None else {}
        self.factors = []
        for n, p in zip(self.names, self.params):
            f = shared.get(n)
            if f is None or (f.device, f.dtype, f.shape) != (p.device, p.dtype, p.shape):
                f = masks[n].to(device=p.device, dtype=p.dtype)
            self.factors.append(f)
        self._bind()

    def _bind(self) -> None:
        self._storage = [p.data_ptr() for p in self.params]
        self._targets, self._multipliers = self._split([p.detach() for p in self.params], self.factors)

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
        if [p.data_ptr() for p in self.params] != self._storage:
            self._bind()  # someone replaced a parameter's .data (model.half(), p.data = ...): follow it
        if self._targets:
            torch._foreach_mul_(self._targets, self._multipliers)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients of pruned weights (optional, see the class docstring)."""
        pairs = [(p.grad, f) for p, f in zip(self.params, self.factors) if p.grad is not None]
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
