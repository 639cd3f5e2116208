"""Conversion to 2:4 kernels: everything up to torch's conversion on CPU; the kernels where CUDA sm80+ is present."""
import pytest
import torch

from dimap import UserError, apply_masks, compute_masks
from dimap.pruning.semi_structured import SemiStructuredLinear, plan, to_semi_structured, unavailable_reason
from tests.conftest import make_tiny_swin

SM80 = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def pruned(ratio=0.3, **kw):
    model = make_tiny_swin(embed_dim=64, **kw).eval()
    masks = compute_masks(model, "dimap", ratio, pattern="2:4")
    apply_masks(model, masks)
    return model, masks


@pytest.mark.skipif(SM80, reason="2:4 kernels are available here: nothing to refuse")
def test_refused_in_one_sentence_without_kernels():
    model, masks = pruned()
    with pytest.raises(UserError, match="2:4 sparse kernels need") as e:
        to_semi_structured(model, masks)
    assert str(e.value).count(". ") == 0 and unavailable_reason("cpu")


def test_plan_converts_exactly_the_two_four_layers_of_an_accepted_shape():
    model, masks = pruned()
    p = plan(masks, torch.bfloat16)
    assert {n for n, k in p.items() if k == "2:4"} | {n for n, k in p.items() if k == "shape"} == \
        {n for n, m in masks.items() if not bool(m.all())}
    assert {n for n, k in p.items() if k == "dense"} == {n for n, m in masks.items() if bool(m.all())}
    small = make_tiny_swin(embed_dim=12)  # 12-wide layers are 2:4, but no kernel takes a width of 12
    sm = compute_masks(small, "dimap", 0.5, pattern="2:4")
    assert "shape" in plan(sm, torch.bfloat16).values()


def test_everything_around_the_conversion_on_cpu_equals_the_masked_model():
    """With the identity in place of to_sparse_semi_structured: the right layers replaced, masked weights, the
    same logits as the masked dense model in bf16, float32 out."""
    model, masks = pruned()
    x = torch.randn(3, 3, 32, 32)
    import copy
    with torch.no_grad():
        want = copy.deepcopy(model).to(torch.bfloat16)(x.bfloat16()).float()
    calls = []
    sparse, record = to_semi_structured(model, masks, torch.bfloat16, device="cpu",
                                        convert=lambda w: calls.append(w.shape) or w)
    assert len(calls) == len(record["converted"]) > 0
    assert all(isinstance(sparse.model.get_submodule(n.removesuffix(".weight")), SemiStructuredLinear)
               for n in record["converted"])
    with torch.no_grad():
        got = sparse(x)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    with pytest.raises(UserError, match="bf16 or fp16"):
        to_semi_structured(model, masks, torch.float32, device="cpu", convert=lambda w: w)


@pytest.mark.skipif(not SM80, reason="needs a CUDA GPU of compute capability 8.0 or newer (2:4 kernels)")
def test_two_four_kernels_match_the_masked_dense_model_in_bf16():
    model, masks = pruned(0.5)
    import copy
    x = torch.randn(64, 3, 32, 32, device="cuda")
    with torch.no_grad():
        want = copy.deepcopy(model).cuda().to(torch.bfloat16)(x.bfloat16()).float()
        sparse, record = to_semi_structured(model, masks, torch.bfloat16)
        got = sparse(x)
    from torch.sparse import SparseSemiStructuredTensor
    assert len(record["converted"]) > 0 and all(
        isinstance(sparse.model.get_submodule(n.removesuffix(".weight")).weight, SparseSemiStructuredTensor)
        for n in record["converted"])
    torch.testing.assert_close(got, want, atol=0.05 * float(want.abs().max()), rtol=0.05)
