"""SparseGPT against a direct float64 implementation of the same update (the inverse of each trailing block of H
formed explicitly, no Cholesky, no lazy batching), its reconstruction error against magnitude pruning, N:M, and
the block-by-block order on a model (each block calibrated on the already pruned blocks before it)."""
import pytest
import torch

from dimap.errors import UserError
from dimap.pruning.calibration import Calibration
from dimap.pruning.masks import compute_masks
from dimap.pruning.modules import prunable_weights
from dimap.pruning.removal_count import n_removed
from dimap.pruning.sparsegpt import sparsegpt_layer
from tests.conftest import make_tiny_swin
from tests.linear_inputs import linear_inputs


def direct_sparsegpt(W, H, sparsity, blocksize, percdamp=0.01, prunen=0, prunem=0):
    """Column by column: with columns < i fixed, the optimal change of the rest when column i becomes q is
    -(w_i - q_i) / [Hc^-1]_00 * [Hc^-1]_0,: with Hc = H[i:, i:] (OBS); a block's mask is chosen on the current
    weights when the block starts, by w^2 / [Hc^-1]_00, each block removing its exact share."""
    W, H = W.clone().double(), H.clone().double()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H = H + 0.01 * 0 + percdamp * torch.diag(H).mean() * torch.eye(cols, dtype=torch.float64)
    inv0 = [torch.linalg.inv(H[i:, i:]) for i in range(cols)]  # inv0[i][0] is row i of the OBS update
    d = torch.tensor([inv0[i][0, 0] for i in range(cols)], dtype=torch.float64)
    removed = torch.zeros(rows, cols, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        if not prunen:
            score = (W[:, i1:i2] ** 2 / d[i1:i2]).reshape(-1).tolist()
            k = n_removed(rows * i2, sparsity) - n_removed(rows * i1, sparsity)
            for f in sorted(range(len(score)), key=lambda f: (score[f], f))[:k]:
                removed[f // (i2 - i1), i1 + f % (i2 - i1)] = True
        for i in range(i1, i2):
            if prunen and (i - i1) % prunem == 0:
                for r in range(rows):
                    g = [(W[r, j] ** 2 / d[j]).item() for j in range(i, min(i + prunem, i2))]
                    for j in sorted(range(len(g)), key=lambda j: (g[j], j))[:prunen]:
                        removed[r, i + j] = True
            err = torch.where(removed[:, i], W[:, i], torch.zeros(rows, dtype=torch.float64)) / d[i]
            W[:, i:] -= err[:, None] * inv0[i][0][None, :]
            W[removed[:, i], i] = 0.0
    return W, ~removed


def problem(rows=6, cols=20, tokens=60, seed=0, dead=()):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ torch.randn(cols, cols, generator=g,
                                                                                 dtype=torch.float64)
    X[:, list(dead)] = 0
    return torch.randn(rows, cols, generator=g, dtype=torch.float64), X


@pytest.mark.parametrize("sparsity, blocksize, dead", [(0.5, 8, ()), (0.3, 20, ()), (0.7, 6, (3, 11)), (0.55, 128, ())])
def test_update_equals_the_direct_implementation(sparsity, blocksize, dead):
    W, X = problem(dead=dead)
    got_w, got_keep = sparsegpt_layer(W, X.T @ X, sparsity, blocksize=blocksize)
    want_w, want_keep = direct_sparsegpt(W, X.T @ X, sparsity, blocksize)
    assert torch.equal(got_keep, want_keep)
    torch.testing.assert_close(got_w, want_w, rtol=1e-9, atol=1e-9)
    assert int((~got_keep).sum()) == n_removed(W.numel(), sparsity)  # exact per layer, blocks summing to it
    assert not got_w[~got_keep].any()


def test_n_m_equals_the_direct_implementation_and_is_n_of_every_m():
    W, X = problem(rows=5, cols=16)
    got_w, got_keep = sparsegpt_layer(W, X.T @ X, 0.0, prunen=2, prunem=4, blocksize=8)
    want_w, want_keep = direct_sparsegpt(W, X.T @ X, 0.0, 8, prunen=2, prunem=4)
    assert torch.equal(got_keep, want_keep)
    torch.testing.assert_close(got_w, want_w, rtol=1e-9, atol=1e-9)
    assert ((~got_keep).reshape(5, 4, 4).sum(-1) == 2).all()


def magnitude_layer(W, sparsity):
    keep = torch.ones(W.numel(), dtype=torch.bool)
    keep[torch.argsort(W.abs().reshape(-1), stable=True)[:n_removed(W.numel(), sparsity)]] = False
    return W * keep.reshape(W.shape)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstruction_error_is_below_magnitude_pruning(sparsity, seed):
    W, X = problem(rows=16, cols=32, tokens=200, seed=seed)
    new, keep = sparsegpt_layer(W, X.T @ X, sparsity, blocksize=8)
    error = lambda w: ((X @ W.T - X @ w.T) ** 2).sum().item()  # noqa: E731
    assert error(new) < error(magnitude_layer(W, sparsity))
    assert error(new) < 0.9 * error(W * keep)  # the update of the kept weights is what wins most of it


def test_bad_pattern_is_one_sentence():
    model = make_tiny_swin()
    cal = Calibration(torch.randn(2, 3, 32, 32), [0, 1], 0, 2)
    with pytest.raises(UserError, match="N:M pattern 4:2"):
        compute_masks(model, "sparsegpt", 0.5, calibration=cal, options={"prunen": 4, "prunem": 2})


def test_model_blocks_are_calibrated_on_the_pruned_blocks_before_them():
    """Every layer's result is sparsegpt_layer on inputs from a model whose earlier blocks hold their pruned,
    updated weights and whose own block is still dense (inputs caught independently)."""
    torch.manual_seed(0)
    dense = make_tiny_swin(seed=4).eval()
    images = torch.randn(6, 3, 32, 32)
    pruned = make_tiny_swin(seed=4).eval()
    masks = compute_masks(pruned, "sparsegpt", 0.5, calibration=Calibration(images, list(range(6)), 0, 6, 4))
    names = list(prunable_weights(dense))
    blocks = sorted({n.split(".attn.")[0].split(".mlp.")[0] for n in names}, key=lambda b: names.index(
        next(n for n in names if n.startswith(b + "."))))
    assert len(blocks) == 5
    state = dense.state_dict()
    for block in blocks:
        probe = make_tiny_swin(seed=4).eval()  # earlier blocks pruned, this one and later ones dense
        earlier = names[:names.index(next(n for n in names if n.startswith(block + ".")))]
        probe.load_state_dict({**state, **{n: pruned.state_dict()[n] for n in earlier}})
        inputs = linear_inputs(probe, images, names)
        for n in [n for n in names if n.startswith(block + ".")]:
            want_w, want_keep = sparsegpt_layer(state[n].double(), inputs[n].T @ inputs[n], 0.5)
            assert torch.equal(masks[n], want_keep), n
            torch.testing.assert_close(pruned.state_dict()[n], want_w.float(), rtol=1e-4, atol=1e-5)
    assert int(sum((~m).sum() for m in masks.values())) == sum(n_removed(m.numel(), 0.5) for m in masks.values())
