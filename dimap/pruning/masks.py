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
from dimap.pruning.patterns import check_nm_ratio, eligible, max_ratio, parse_pattern, pattern_masks
from dimap.pruning.scores import dimap_scores
from dimap.pruning.sparsegpt import sparsegpt
from dimap.pruning.wanda import wanda, wanda_module, wanda_score_tensors

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
               "uniform": (_magnitude, "module"), "global_magnitude": (_magnitude, "global"),
               # Wanda's score both ranks inside each group of M (Wanda's own N:M) and prices a layer's N:M loss
               "wanda": (None, "global"), "wanda_module": (None, "module")}


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
    if method == "sparsegpt" and (shares or abs(ratio - max_ratio(*nm)) > 1e-12):
        raise UserError(f"prune=sparsegpt with prune.pattern={nm[0]}:{nm[1]} makes every layer {nm[0]}:{nm[1]}: pass "
                        f"prune.ratio={max_ratio(*nm):g} (and no prune.module_ratios), or use prune=dimap for a "
                        "module-aware mix of dense and N:M layers")
    if method in NM_CRITERIA:
        check_nm_ratio({f"prune.module_ratios.{k}": v for k, v in shares.items()} if shares else {"prune.ratio": ratio},
                       *nm)
    allocation = check_allocation(prune.get("nm_allocation", "auto"), method) if method in NM_CRITERIA else None
    return {"pattern": f"{nm[0]}:{nm[1]}", "nm": nm, "allocation": allocation, "semi_structured": semi}


@torch.no_grad()
def compute_masks(model: nn.Module, method: str, ratio: float, module_ratios: dict | None = None,
                  pattern: str = "unstructured", allocation: str = "auto", record: dict | None = None,
                  calibration=None, options: dict | None = None) -> dict[str, torch.Tensor]:
    """Masks of `method` at `ratio` for every prunable weight of `model` (True = kept).

    `module_ratios` ({"QKV-M": 0.5, ...}) removes a different share from each module (modules it does not name
    keep `ratio`); only for criteria that rank each module, or each layer, on its own (all but single_module
    and global_magnitude). The data-free criteria use no data. The data-aware ones (DATA_AWARE) need
    `calibration` (`dimap.pruning.calibration.Calibration`), run on the device `model` is on, and take
    `options` (METHOD_OPTIONS); sparsegpt also UPDATES the kept weights of `model` in place.
    `pattern` "N:M" (e.g. "2:4"): every layer dense or exactly N:M (`dimap.pruning.patterns.pattern_masks`),
    the N:M layers chosen by `allocation` (auto: per module for dimap/uniform/wanda_module, over all layers for
    the one-group criteria and wanda); sparsegpt prunes every layer N:M with its own update (prunen/prunem), so
    it takes only the ratio (M-N)/M. `record`, a dict, receives which layers are N:M, dense and ineligible.
    """
    criterion = check_method(method)
    ratio = check_ratio(ratio)
    shares = check_module_ratios(module_ratios, ratio)
    nm = parse_pattern(pattern)
    weights = prunable_weights(model)
    share = shares if shares is not None else ratio
    if nm is not None:
        check_nm_ratio({f"prune.module_ratios.{k}": v for k, v in shares.items()} if shares else {"prune.ratio": ratio},
                       *nm)
    batches = None
    if method in DATA_AWARE:
        if calibration is None:
            raise UserError(f"prune.method={method} needs calibration images: give the run a data group "
                            "(e.g. data=mnist5k, or data=imagenet data.root=/path/to/imagenet)")
        device = next(iter(weights.values())).device
        batches = lambda: calibration.batches(device)  # noqa: E731
    if nm is None:
        if batches is not None:
            masks = criterion(weights, share, model=model, batches=batches, **(options or {}))
        else:
            masks = criterion(weights, share)
        return {n: masks[n] for n in weights}  # network order, whatever order the criterion grouped them in
    if method == "sparsegpt":
        return _sparsegpt_nm(weights, model, batches, nm, shares, ratio, options, record)
    allocation = check_allocation(allocation, method)
    if method in DATA_AWARE:  # wanda's score ranks inside each group of M and prices a layer's N:M loss
        scores = {n: s.cpu() for n, s in wanda_score_tensors(weights, model, batches).items()}
        rank = cost = scores
    else:
        cost = _LazyScores(weights, NM_CRITERIA[method][0])
        rank = {n: _magnitude(w) for n, w in weights.items()}
    masks, rec = pattern_masks(rank, weights.module, *nm, share, allocation, cost)
    if record is not None:
        record.update(rec)
    return masks


def _sparsegpt_nm(weights, model, batches, nm, shares, ratio, options, record):
    """SparseGPT at N:M as its reference code does it: every layer N:M (prunen/prunem), kept weights updated."""
    n, m = nm
    asked = set(shares.values()) if shares else {ratio}
    if any(abs(r - max_ratio(n, m)) > 1e-12 for r in asked):
        raise UserError(f"prune=sparsegpt with prune.pattern={n}:{m} makes every layer {n}:{m}: pass "
                        f"prune.ratio={max_ratio(n, m):g} (and no prune.module_ratios), or use prune=dimap for a "
                        "module-aware mix of dense and N:M layers")
    bad = [name for name, w in weights.items() if not eligible(w.shape, m)]
    if bad:
        raise UserError(f"prune=sparsegpt with prune.pattern={n}:{m} needs every prunable layer's input size to be a "
                        f"multiple of {m}, and {bad[0]} has {weights[bad[0]].shape[-1]}: use another pattern or method")
    masks = sparsegpt(weights, max_ratio(n, m), model=model, batches=batches, prunen=m - n, prunem=m, **(options or {}))
    if record is not None:
        record.update(pattern=f"{n}:{m}", allocation="all", nm_layers=list(weights), dense_layers=[],
                      ineligible_layers=[])
    return {name: masks[name] for name in weights}


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
