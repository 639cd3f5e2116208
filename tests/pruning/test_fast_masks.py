"""The fast criteria against the straightforward oracle (dimap.pruning.reference), bit for bit, on awkward layers."""
import numpy as np
import pytest
import torch

from dimap.pruning import criteria, reference, scores
from dimap.pruning.modules import MLP, PRJ, QKV, PrunableWeights, prunable_weights
from tests.conftest import make_tiny_swin

RATIOS = [0.0, 0.15, 0.5, 0.55, 0.9, 0.99]
KINDS = ["qkv", "proj", "fc1", "fc2"]


def layers(shapes, fill, seed=0):
    """Swin-named weights (modules interleaved like a real network) filled by fill(generator, shape)."""
    g = torch.Generator().manual_seed(seed)
    out, module = {}, {}
    for i, shape in enumerate(shapes):
        kind = KINDS[i % 4]
        name = f"layers.{i // 8}.blocks.{i // 4 % 2}.{'attn' if kind in ('qkv', 'proj') else 'mlp'}.{kind}.weight"
        out[name], module[name] = fill(g, shape), {"qkv": QKV, "proj": PRJ}.get(kind, MLP)
    return PrunableWeights(out, module)


SHAPES = [(48, 16), (16, 16), (64, 16), (16, 64), (96, 32), (32, 32), (1, 1), (32, 128), (7, 3), (5,)]
CASES = {
    "gaussian": lambda g, s: torch.randn(s, generator=g),
    "laplace": lambda g, s: torch.randn(s, generator=g).sign() * -torch.log1p(-torch.rand(s, generator=g)),
    "uniform_scaled": lambda g, s: (torch.rand(s, generator=g) - 0.5) * 10 ** torch.randint(-6, 3, (1,), generator=g),
    "ties": lambda g, s: torch.randint(-3, 4, s, generator=g).float() * 0.25,  # few values, many zeros
    "sparse": lambda g, s: torch.randn(s, generator=g) * (torch.rand(s, generator=g) < 0.4),  # a pruned model
    "zeros": lambda g, s: torch.zeros(s),
    "float64": lambda g, s: torch.randn(s, generator=g, dtype=torch.float64),
    "float64_tiny": lambda g, s: torch.randn(s, generator=g, dtype=torch.float64) * 1e-160,  # squares underflow
    "bfloat16": lambda g, s: torch.randn(s, generator=g).bfloat16(),
}


def same_layers(g, s):
    """Every layer of a kind is the same matrix: Eq. 10 scores tie exactly across layers."""
    return torch.arange(int(np.prod(s)), dtype=torch.float32).reshape(s).remainder(7) - 3


@pytest.fixture(params=[True, False], ids=["numpy", "torch"])
def backend(request, monkeypatch):
    """numpy is the CPU path; the torch path is what runs on a GPU, exercised here on CPU."""
    monkeypatch.setattr(scores, "USE_NUMPY_ON_CPU", request.param)


def assert_identical(weights, ratio):
    for name, fast in criteria.CRITERIA.items():
        got, want = fast(weights, ratio), reference.CRITERIA[name](weights, ratio)
        assert set(got) == set(want)
        for n in want:
            assert got[n].dtype == torch.bool and got[n].shape == weights[n].shape, (name, n)
            assert torch.equal(got[n], want[n]), (name, ratio, n, int((got[n] != want[n]).sum()))


@pytest.mark.parametrize("case", list(CASES))
def test_criteria_equal_the_reference_bit_for_bit(backend, case):
    weights = layers(SHAPES, CASES[case], seed=len(case))
    for ratio in RATIOS:
        assert_identical(weights, ratio)


def test_exact_score_ties_across_layers_go_to_the_earlier_layer(backend):
    weights = layers([(12, 8)] * 8, same_layers)
    for ratio in RATIOS + [0.3, 0.37, 0.61]:
        assert_identical(weights, ratio)


def test_mixed_layers_and_real_swin(backend):
    fills = list(CASES.values())[:5]
    mixed = layers(SHAPES * 2, lambda g, s: fills[int(torch.randint(0, 5, (1,), generator=g))](g, s), seed=3)
    model_weights = prunable_weights(make_tiny_swin(seed=11))
    for ratio in RATIOS:
        assert_identical(mixed, ratio)
        assert_identical(model_weights, ratio)


@pytest.mark.parametrize("ratio", RATIOS)
def test_removal_counts_are_exact(ratio):
    weights = layers(SHAPES * 3, CASES["ties"], seed=5)
    groups = {"dimap": [[n for n in weights if f".{k}." in n] for k in ("qkv", "proj")]
              + [[n for n in weights if ".mlp." in n]],
              "single_module": [list(weights)], "global_magnitude": [list(weights)],
              "uniform": [[n] for n in weights]}
    for name, fn in criteria.CRITERIA.items():
        masks = fn(weights, ratio)
        for names in groups[name]:
            size = sum(weights[n].numel() for n in names)
            assert sum(int((~masks[n]).sum()) for n in names) == criteria.n_removed(size, ratio), name


def test_sorted_scores_are_the_reference_scores_sorted(backend):
    for case in ("gaussian", "ties", "sparse", "float64_tiny", "zeros"):
        for w in layers(SHAPES, CASES[case], seed=9).values():
            ref = np.sort(reference.dimap_scores(w).reshape(-1).numpy())
            got = scores.sorted_dimap_scores(scores.sorted_magnitudes(w))
            assert np.array_equal(np.asarray(got), ref), case
            assert np.all(np.diff(np.asarray(got)) >= 0)


def test_masks_for_ratio_on_arbitrary_scores_with_ties(backend):
    g = torch.Generator().manual_seed(2)
    s = {f"s{i}": torch.randint(0, 5, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g).double()
         for i in range(6)}
    groups = [["s0", "s1", "s2"], ["s3"], ["s4", "s5"]]
    for ratio in RATIOS:
        got, want = criteria.masks_for_ratio(s, groups, ratio), reference.masks_for_ratio(s, groups, ratio)
        assert all(torch.equal(got[n], want[n]) for n in want)


def test_non_finite_weights_fall_back_to_the_reference():
    weights = layers(SHAPES[:4], CASES["gaussian"])
    next(iter(weights.values())).view(-1)[3] = float("inf")
    for ratio in (0.15, 0.55):
        got, want = criteria.dimap(weights, ratio), reference.dimap(weights, ratio)
        assert all(torch.equal(got[n], want[n]) for n in want)


def test_kth_of_sorted_finds_the_kth_value():
    rng = np.random.default_rng(0)
    arrays = [np.sort(rng.random(n) ** 8) for n in (1, 10, 1000, 77)]
    everything = np.sort(np.concatenate(arrays))
    for k in (1, 2, 500, len(everything)):
        assert criteria._kth_of_sorted(arrays, k)[0] == everything[k - 1]


@pytest.mark.parametrize("where", [0, 5])  # in the first group (QKV-M) or a later one (MLP-M)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_every_group_gets_masks_when_one_holds_a_non_finite_weight(where, value):
    weights = layers(SHAPES[:8], CASES["gaussian"])
    list(weights.values())[where].view(-1)[3] = value
    for ratio in (0.15, 0.55):
        got, want = criteria.dimap(weights, ratio), reference.dimap(weights, ratio)
        assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)


def test_a_group_that_loses_exactly_one_weight_loses_one(backend):
    weights = layers(SHAPES, CASES["gaussian"], seed=4)
    sizes = {m: sum(weights[n].numel() for n in weights if weights.module[n] == m) for m in (QKV, PRJ, MLP)}
    ratio = 1 / max(sizes.values())  # the largest module loses exactly 1, the smallest none
    masks = criteria.dimap(weights, ratio)
    for m, size in sizes.items():
        assert sum(int((~masks[n]).sum()) for n in weights if weights.module[n] == m) == criteria.n_removed(size, ratio)
    assert criteria.n_removed(max(sizes.values()), ratio) == 1
    want = reference.dimap(weights, ratio)
    assert all(torch.equal(masks[n], want[n]) for n in want)


@pytest.mark.parametrize("numpy_arrays", [True, False], ids=["numpy", "torch"])
def test_kth_of_sorted_equals_a_full_sort_on_values_spread_over_every_exponent(numpy_arrays):
    """Values drawn uniformly over the bit patterns of [0, 1] (every exponent, subnormals and zeros included), so
    the k-th value falls into every slice of the search's fan-out, including the first ones."""
    rng = np.random.default_rng(1)
    one = np.array(1.0).view(np.int64)
    for trial in range(60):
        arrays = [np.sort(rng.integers(0, one, size=int(rng.integers(1, 300))).view(np.float64))
                  for _ in range(int(rng.integers(2, 5)))]
        everything = np.sort(np.concatenate(arrays))
        searched = arrays if numpy_arrays else [torch.from_numpy(a) for a in arrays]
        for k in rng.integers(1, len(everything) + 1, size=5):
            assert float(criteria._kth_of_sorted(searched, int(k))[0]) == everything[k - 1], (trial, k)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_group_whose_every_layer_holds_a_non_finite_weight_falls_back_to_the_reference(value):
    weights = layers(SHAPES[:8], CASES["gaussian"])
    for name in weights:
        if weights.module[name] == MLP:
            weights[name].view(-1)[0] = value
    for ratio in (0.15, 0.55):
        got, want = criteria.dimap(weights, ratio), reference.dimap(weights, ratio)
        assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)
