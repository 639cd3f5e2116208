"""Save and load a pruned model.

`model.safetensors` is a plain timm state dict with pruned weights stored as 0.0: it loads into a fresh
`timm.create_model(name, **kwargs)` with no code of ours. `masks.safetensors` holds the exact masks (bool);
`dimap.pruning.masks.masks_from_state_dict` recovers them from the model file alone.
"""
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dimap.errors import UserError
from dimap.pruning.masks import masks_from_state_dict


def save_pruned(model: nn.Module, masks: dict[str, torch.Tensor], out_dir: str | Path, meta: dict) -> Path:
    """Write model.safetensors and masks.safetensors to `out_dir`; `meta` (timm name, kwargs, method, ratio)
    goes into the model file's metadata. Each file is written to a temporary name first, then renamed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu").contiguous()
        if v.untyped_storage().data_ptr() in seen:  # safetensors refuses tied tensors (FasterViT's pos_embed)
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        state[k] = v
    metadata = {"dimap": json.dumps(meta, default=str)}
    mask_md = {"pattern": str(meta.get("pattern", "unstructured"))}  # "2:4": every layer dense or exactly 2:4
    for fname, tensors, md in (("model.safetensors", state, metadata),
                               ("masks.safetensors", {k: v.cpu().contiguous() for k, v in masks.items()}, mask_md)):
        tmp = out_dir / (fname + ".tmp")
        save_file(tensors, str(tmp), metadata=md)
        tmp.replace(out_dir / fname)
    return out_dir / "model.safetensors"


def read_pruned(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(state_dict, masks, meta) from a model.safetensors written by `save_pruned`, or from the run folder
    holding it (prune.py's or train.py's output_dir).

    Masks come from masks.safetensors beside it when present, else from the zeros of the prunable weights
    (the architecture named in the metadata says which weights those are).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass a model.safetensors written by prune.py or train.py, "
                        "or the output_dir holding it")
    try:
        state = load_file(str(path))
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("dimap", "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a readable pruned model ({e}): write it again with prune.py") from None
    mask_file = path.with_name("masks.safetensors")
    if mask_file.is_file():
        return state, load_file(str(mask_file)), meta
    if "model" not in meta:
        raise UserError(f"{path} names no architecture in its metadata and has no masks.safetensors beside it: "
                        "use masks_from_state_dict(state_dict, model) with the model it belongs to")
    from dimap.models import create_model
    try:
        with torch.device("meta"):  # only the architecture is needed to know which weights are prunable
            architecture = create_model(meta["model"], meta.get("kwargs"))
    except UserError:  # a model whose constructor computes on its tensors (FasterViT): build it for real
        architecture = create_model(meta["model"], meta.get("kwargs"))
    masks = masks_from_state_dict(state, architecture)
    return state, masks, meta
