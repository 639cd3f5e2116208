"""A pruned model whose 2:4 layers run on the GPU's sparse tensor cores (torch.sparse.to_sparse_semi_structured).

Every prunable layer that is exactly 2:4 along its input (dimap.pruning.patterns) and whose shape the kernels
accept gets a `SparseSemiStructuredTensor` weight (cuSPARSELt, or CUTLASS where cuSPARSELt is absent); every
other layer stays dense. The whole model runs in bf16 or fp16 (the kernels' dtypes): `to_semi_structured` returns
it wrapped so that it takes and returns float32 like the model it came from. Inference only.
"""
import torch
import torch.nn.functional as F
from torch import nn

from dimap.errors import UserError
from dimap.pruning.patterns import layer_kind

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def unavailable_reason(device: torch.device | str = "cuda") -> str | None:
    """Why 2:4 kernels cannot run here, or None when they can (CUDA, compute capability 8.0 or newer)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "2:4 sparse kernels need a CUDA GPU of compute capability 8.0 or newer (Ampere, Hopper), and none is here"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"2:4 sparse kernels need compute capability 8.0 or newer, this GPU has {major}.{minor}"
    return None


def check_available(device: torch.device | str = "cuda") -> None:
    reason = unavailable_reason(device)
    if reason:
        raise UserError(f"{reason}: run the conversion on such a GPU or leave prune.semi_structured=false")


def shape_ok(shape, dtype: torch.dtype) -> bool:
    """Does torch's 2:4 backend accept a weight of this shape (rows and columns multiples of its minimum)?"""
    from torch.sparse import SparseSemiStructuredTensor, SparseSemiStructuredTensorCUSPARSELT
    from torch.sparse import SparseSemiStructuredTensorCUTLASS
    cusparselt = torch.backends.cusparselt.is_available() and not SparseSemiStructuredTensor._FORCE_CUTLASS
    cls = SparseSemiStructuredTensorCUSPARSELT if cusparselt else SparseSemiStructuredTensorCUTLASS
    c = cls._DTYPE_SHAPE_CONSTRAINTS[dtype]
    rows, cols = shape
    return rows >= c.sparse_min_rows and rows % c.sparse_min_rows == 0 and cols >= c.sparse_min_cols \
        and cols % c.sparse_min_cols == 0


def plan(masks: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, str]:
    """{prunable weight: "2:4" (converted) | "dense" (not 2:4) | "shape" (2:4, but a shape the kernels refuse)}."""
    out = {}
    for name, mask in masks.items():
        out[name] = "dense" if layer_kind(mask, 2, 4) != "2:4" else "2:4" if shape_ok(mask.shape, dtype) else "shape"
    return out


class SemiStructuredLinear(nn.Module):
    """nn.Linear with a 2:4 sparse weight, convert(masked weight, cast to `dtype` if given); flattens leading
    dimensions (the kernels take 2-D inputs) and casts its input to the weight's dtype."""

    def __init__(self, linear: nn.Linear, mask: torch.Tensor, convert, dtype: torch.dtype | None = None):
        super().__init__()
        dtype = dtype or linear.weight.dtype
        w = (linear.weight.detach() * mask.to(linear.weight.device, linear.weight.dtype)).to(dtype).contiguous()
        self.weight = nn.Parameter(convert(w), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)

    def forward(self, x):
        y = F.linear(x.reshape(-1, x.shape[-1]).to(self.weight.dtype), self.weight, self.bias)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class CastIO(nn.Module):
    """Runs `model` in `dtype`: casts its input to it and its output back to float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x):
        return self.model(x.to(self.dtype)).float()


def replace_linears(model: nn.Module, names, make) -> nn.Module:
    """Replace each nn.Linear named by its weight's name with make(linear, weight name)."""
    for name in names:
        path = name.removesuffix(".weight")
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, make(model.get_submodule(path), name))
    return model


@torch.no_grad()
def to_semi_structured(model: nn.Module, masks: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16,
                       device: str = "cuda", convert=None):
    """(`model` in `dtype` on `device` with its 2:4 layers as semi-structured weights, record). Modifies `model`.

    Refuses (UserError) where the kernels are unavailable. `convert` replaces to_sparse_semi_structured (tests
    pass an identity to check, on CPU, everything around the conversion). record = {converted, dense, refused_shape}.
    """
    if convert is None:
        check_available(device)
        from torch.sparse import to_sparse_semi_structured as convert
    if dtype not in DTYPES.values():
        raise UserError(f"2:4 kernels run in bf16 or fp16, not {dtype}: pass one of {', '.join(DTYPES)}")
    layers = plan(masks, dtype)
    model = model.to(device=device, dtype=dtype).eval()
    converted = [n for n, k in layers.items() if k == "2:4"]
    replace_linears(model, converted, lambda lin, n: SemiStructuredLinear(lin, masks[n], convert))
    record = {"converted": converted, "dense": [n for n, k in layers.items() if k == "dense"],
              "refused_shape": [n for n, k in layers.items() if k == "shape"], "dtype": str(dtype).split(".")[-1]}
    return CastIO(model, dtype), record
