"""An independent view of what every linear layer receives: every call of torch's linear function, caught with a
TorchFunctionMode (not with module hooks, which the code under test uses), keyed by the weight's storage."""
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class LinearInputs(TorchFunctionMode):
    """Inside `with LinearInputs() as seen:`, seen.inputs[weight.data_ptr()] lists each input to F.linear
    with that weight, flattened to (rows, in_features), in float64."""

    def __init__(self):
        super().__init__()
        self.inputs = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, w = args[0], kwargs.get("weight", args[1] if len(args) > 1 else None)
            self.inputs.setdefault(w.data_ptr(), []).append(x.detach().reshape(-1, x.shape[-1]).to(torch.float64))
        return func(*args, **kwargs)


@torch.no_grad()
def linear_inputs(model, images: torch.Tensor, names) -> dict[str, torch.Tensor]:
    """{weight name: every input row the layer saw on `images`, concatenated} (eval mode, one forward)."""
    model.eval()
    with LinearInputs() as seen:
        model(images)
    params = dict(model.named_parameters())
    return {n: torch.cat(seen.inputs[params[n].data_ptr()]) for n in names}
