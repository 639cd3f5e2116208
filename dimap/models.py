"""Build timm vision transformers and load their dense weights: a timm hub tag, a local file, or random init.

FasterViT comes from NVIDIA's optional `fastervit` package, which registers its models with timm on import.
"""
import collections
import importlib
import os
import pickle
import re
import socket
from pathlib import Path

import timm
import torch
from torch import nn

from dimap.errors import UserError


OPTIONAL_PACKAGES = {"faster_vit_": "fastervit"}  # model name prefix -> the package that registers it


def _import_registering_package(name: str) -> None:
    for prefix, package in OPTIONAL_PACKAGES.items():
        if name.startswith(prefix):
            try:
                importlib.import_module(package)
            except ImportError:
                raise UserError(f"model.name={name!r} needs the optional package {package!r}: "
                                f"pip install {package}==1.0.0 (see requirements.txt)") from None


def create_model(name: str, kwargs: dict | None = None, drop_path_rate: float = 0.0) -> nn.Module:
    """A randomly initialised timm model; `kwargs` override the architecture (used by the demo's nano Swin)."""
    _import_registering_package(name)
    try:
        return timm.create_model(name, pretrained=False, drop_path_rate=drop_path_rate, **dict(kwargs or {}))
    except (RuntimeError, ValueError, TypeError) as e:  # unknown name or bad architecture argument
        raise UserError(f"timm cannot build model.name={name!r} with {dict(kwargs or {})} ({e}): "
                        "check model.name and model.kwargs") from None


# Official Swin training checkpoints (its save_checkpoint: model, optimizer, lr_scheduler, max_accuracy, scaler,
# epoch, config) hold the run's yacs CfgNode under 'config'. A CfgNode pickles as the class yacs.config.CfgNode
# (a dict subclass: its items, then a __dict__ of bools, a set and a dict). torch's weights-only unpickler fills no
# dict subclass, so that one class name is read as the OrderedDict it behaves as: no yacs code runs, yacs need not
# be installed, and every other class still stops the load.
OFFICIAL_SWIN_GLOBALS = [(collections.OrderedDict, "yacs.config.CfgNode")]


def _torch_load(path: Path):
    try:
        with torch.serialization.safe_globals(OFFICIAL_SWIN_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a pickled class outside the allow-list: refuse to run its code
        found = re.search(r"GLOBAL (\S+)|unsupported class (\S+)", str(e))
        if not found:  # not a pickle at all (a text file, a torn download): the caller's message applies
            raise
        what = next(g for g in found.groups() if g)
        raise UserError(f"{path} holds pickled Python objects ({what}) that cannot be read without running "
                        "their code: if you trust it, re-save its weights with torch.save(torch.load(PATH, "
                        "weights_only=False)['model'], 'weights.pth') and pass that file") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch checkpoint (timm's, or an official Swin file: `{'model': ...}`,
    training checkpoints with optimizer, scheduler and yacs config included)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model.weights={str(path)!r} is not a file: pass model.weights=PATH to a checkpoint, "
                        "model.weights=hub or model.weights=random")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = _torch_load(path)
    except UserError:
        raise
    except Exception as e:  # a torn download, a text file
        raise UserError(f"{path} could not be read as a checkpoint ({type(e).__name__}; truncated or not a torch or "
                        "safetensors file): download it again or pass another model.weights") from None
    for key in ("model", "state_dict", "model_ema"):  # official Swin, Lightning-style, EMA-only files
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        keys = ", ".join(map(str, list(sd)[:6])) if isinstance(sd, dict) else type(sd).__name__
        raise UserError(f"{path} holds no model weights (it holds {keys or 'nothing'}): pass the checkpoint file that "
                        "holds the weights (official Swin files keep them under 'model')")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def checkpoint_filter(model: nn.Module):
    """The checkpoint filter of the model's own timm module (official layouts -> timm, e.g. Microsoft's Swin or
    the original PVT-v2 and Hiera files; a timm state dict passes through), or none if the module has none."""
    module = importlib.import_module(type(model).__module__)
    return getattr(module, "checkpoint_filter_fn", lambda state_dict, model: state_dict)


def load_state_dict_checked(model: nn.Module, sd: dict[str, torch.Tensor], source: str, model_name: str) -> None:
    """Load strictly through the model's own timm checkpoint filter; mismatch -> UserError."""
    try:
        model.load_state_dict(checkpoint_filter(model)(sd, model), strict=True)
    except Exception as e:
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0] if first else type(e).__name__
        raise UserError(f"{source} does not fit {model_name} ({detail[:160]}): pass weights for this "
                        "architecture or choose the matching model=") from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cached(pretrained_cfg) -> bool:
    from huggingface_hub import try_to_load_from_cache
    hub_id = pretrained_cfg.hf_hub_id
    if not hub_id:
        return False
    return any(isinstance(try_to_load_from_cache(hub_id, f), str)
               for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))


def load_hub_weights(model: nn.Module, name: str, tag: str) -> None:
    """timm's pretrained weights for `name.tag`; fails fast, in one sentence, when they cannot be had offline."""
    full = f"{name}.{tag}" if tag else name
    if any(name.startswith(prefix) for prefix in OPTIONAL_PACKAGES):
        raise UserError(f"{name} has no timm hub weights: download its checkpoint from the package's release "
                        "page and pass model.weights=PATH")
    cfg = timm.models.get_pretrained_cfg(full)
    if cfg is None:
        raise UserError(f"timm has no pretrained tag {full!r}: set model.hub_tag (e.g. ms_in1k) or model.weights=PATH")
    if not _hub_cached(cfg) and not _hub_reachable():
        raise UserError(f"the pretrained weights {full!r} are not cached and the hub cannot be reached: download "
                        "them elsewhere and pass model.weights=PATH (timm, safetensors or official Swin file)")
    try:
        reference = timm.create_model(full, pretrained=True)
    except Exception as e:
        raise UserError(f"downloading {full!r} failed ({type(e).__name__}): pass model.weights=PATH instead") from None
    load_state_dict_checked(model, reference.state_dict(), f"hub weights {full}", name)


def load_dense_weights(model: nn.Module, weights: str, name: str, hub_tag: str = "") -> None:
    """Fill `model` with dense weights: 'hub' (timm tag), 'random' (keep the init) or a file path."""
    if weights == "random":
        return
    if weights == "hub":
        return load_hub_weights(model, name, hub_tag)
    load_state_dict_checked(model, read_state_dict(weights), str(weights), name)


def build_model(cfg) -> nn.Module:
    """The dense model a `model` config describes (name, kwargs, drop_path_rate, weights, hub_tag)."""
    model = create_model(cfg["name"], cfg.get("kwargs"), cfg.get("drop_path_rate", 0.0))
    load_dense_weights(model, str(cfg.get("weights", "random")), cfg["name"], cfg.get("hub_tag", ""))
    return model
