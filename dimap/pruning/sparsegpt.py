"""SparseGPT (Frantar and Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
ICML 2023): prune each layer to minimise ||W X - W' X||^2 on calibration inputs X, choosing the weights to remove
by w^2 / [H^-1]_jj^2 and updating the kept ones through the inverse Hessian H^-1 = (X X^T + damping)^-1.

Followed: IST-DASLab/sparsegpt, sparsegpt.py (`SparseGPT.fasterprune`: dead inputs, dampening percdamp = 0.01 of
the mean diagonal, the upper Cholesky factor of H^-1, lazy updates in column blocks of 128, a mask chosen per
block of columns, or N:M with prunen/prunem within every group of m columns) and opt.py (`opt_sequential`: the
model is processed block by block, each block's layers calibrated on inputs computed by the already pruned and
updated blocks before it; all layers of a block see the block's inputs before any of them is pruned).

Decisions (docs/baselines.md): each column block removes exactly its share, counted so that every layer loses
exactly n_removed(its size, r) weights (the reference removes every score <= the k-th, at least one more per block,
and more on ties); ties go to the lower flat index. H is accumulated and the solve runs in float64 (the reference:
float32), so the result does not depend on the order in which the batches were summed. H's scale (the reference's
2 / nsamples) changes nothing: damping is relative to its diagonal and the update is scale-free.
"""
import torch

from dimap.errors import UserError
from dimap.pruning.activations import block_of, input_sources, observe, run_calibration, sample_of
from dimap.pruning.criteria import _share
from dimap.pruning.removal_count import n_removed

BLOCKSIZE = 128  # sparsegpt.py: fasterprune(blocksize=128)
PERCDAMP = 0.01  # sparsegpt.py: fasterprune(percdamp=.01)


def _lowest(score: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (True = removed) of the k lowest entries of `score`, ties to the lower flat index."""
    out = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    out[torch.argsort(score.reshape(-1), stable=True)[:k]] = True
    return out.reshape(score.shape)


def upper_inverse_factor(H: torch.Tensor, percdamp: float = PERCDAMP) -> torch.Tensor:
    """The upper Cholesky factor U of (H + damp I)^-1 (H^-1 = U^T U), damp = percdamp x mean diag(H). Row i of U is
    row 0 of (H[i:, i:])^-1 divided by the square root of its first entry: the OBS update for column i given
    that columns < i are fixed."""
    H = H.clone()
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    try:
        return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError:
        raise UserError(f"the calibration Hessian is not positive definite even with percdamp={percdamp}: raise "
                        "prune.percdamp (e.g. 0.1) or prune.calibration.images") from None


@torch.no_grad()
def sparsegpt_layer(W: torch.Tensor, H: torch.Tensor, sparsity: float, *, prunen: int = 0, prunem: int = 0,
                    blocksize: int = BLOCKSIZE, percdamp: float = PERCDAMP) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer of SparseGPT (its Algorithm 1). W: (rows, columns), H = X X^T over the calibration inputs
    (columns x columns), both in the dtype to compute in. Returns (updated W with the removed weights at 0,
    keep-mask). Unstructured: exactly n_removed(W.numel(), sparsity) weights go; with prunen/prunem (N:M): in every
    row, prunen of every prunem consecutive columns go, chosen when the group's first column is reached."""
    W, H = W.clone(), H.clone()
    rows, columns = W.shape
    dead = torch.diag(H) == 0  # inputs that are always zero: their weights do nothing, remove them first
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = upper_inverse_factor(H, percdamp)
    removed = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        d = torch.diag(Hinv1)
        if prunen == 0:  # this block's share of the layer's exact count
            k = n_removed(rows * i2, sparsity) - n_removed(rows * i1, sparsity)
            mask1 = _lowest(W1 ** 2 / d[None, :] ** 2, k)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if prunen and i % prunem == 0:
                group = W1[:, i:i + prunem] ** 2 / d[None, i:i + prunem] ** 2
                mask1.scatter_(1, i + torch.argsort(group, dim=1, stable=True)[:, :prunen], True)
            w = W1[:, i]
            q = torch.where(mask1[:, i], torch.zeros_like(w), w)
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        removed[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W, ~removed


def check_pattern(prunen: int, prunem: int) -> None:
    if prunen or prunem:
        if not (isinstance(prunen, int) and isinstance(prunem, int) and 0 < prunen < prunem):
            raise UserError(f"the N:M pattern {prunen}:{prunem} is not N < M with both positive: pass e.g. 2:4")


@torch.no_grad()
def sparsegpt(weights, ratio, *, model, batches, blocksize: int = BLOCKSIZE, percdamp: float = PERCDAMP,
              prunen: int = 0, prunem: int = 0):
    """SparseGPT on every prunable layer, block by block in the order the blocks run: each block's layers get
    H = X^T X from inputs computed by the already pruned blocks before it, then each loses `ratio` (its module's
    share with prune.module_ratios; prunen:prunem instead, when given) and its kept weights are UPDATED in place in
    `model`. Returns the masks; the model holds the weights to finetune from."""
    check_pattern(prunen, prunem)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise UserError(f"prune.blocksize={blocksize!r} must be a whole number >= 1: pass e.g. prune.blocksize=128")
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not percdamp > 0:
        raise UserError(f"prune.percdamp={percdamp!r} must be a number > 0: pass e.g. prune.percdamp=0.01")
    names = list(weights)
    sources, order = input_sources(model, names, sample_of(batches()))
    by_block = {}
    for n in names:
        by_block.setdefault(block_of(n), []).append(n)
    masks = {}
    for block in [b for b in order if b in by_block]:
        layer_names = by_block[block]
        H = {n: torch.zeros(weights[n].shape[1], weights[n].shape[1], dtype=torch.float64, device=weights[n].device)
             for n in layer_names}

        def consume(name, x):
            x = x.to(torch.float64)
            H[name].addmm_(x.T, x)

        stop = model.get_submodule(block) if block else None
        run_calibration(model, batches(), observe(sources, layer_names, consume, stop_after=stop))
        for n in layer_names:
            w = weights[n]
            new, keep = sparsegpt_layer(w.detach().to(torch.float64), H.pop(n), _share(ratio, weights.module[n]),
                                        prunen=prunen, prunem=prunem, blocksize=blocksize, percdamp=percdamp)
            w.copy_(new.to(w.dtype))
            masks[n] = keep.cpu()
    return masks
