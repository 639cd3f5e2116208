"""Evaluation on 2:4 kernels (dimap.pruning.semi_structured): accuracy and end-to-end images/s, beside dense bf16."""
import copy
import time

import torch
from torch import nn

from dimap.pruning.semi_structured import CastIO, check_available, to_semi_structured
from dimap.training.engine import evaluate


def _timed_evaluation(model, loader, device, progress: bool, desc: str) -> tuple[dict, float]:
    with torch.no_grad():  # warm-up: kernel selection, allocations
        model(next(iter(loader))[0].to(device))
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    ev = evaluate(model, loader, device, progress=progress, desc=desc)
    torch.cuda.synchronize(device)
    return ev, time.perf_counter() - t0


def evaluate_semi_structured(model: nn.Module, masks: dict, loader, device, progress: bool = False) -> dict:
    """Top-1/top-5 of a copy of `model` on 2:4 kernels (bf16) over `loader`, and the end-to-end images/s of that
    evaluation (data loading included, one batch of warm-up before) beside the same model's in bf16 on dense
    kernels. The run's own model is left as it was."""
    check_available(device)
    dense = CastIO(copy.deepcopy(model).to(device, torch.bfloat16).eval(), torch.bfloat16)
    ev_dense, s_dense = _timed_evaluation(dense, loader, device, False, "eval dense bf16")
    del dense
    sparse, record = to_semi_structured(copy.deepcopy(model), masks, torch.bfloat16, device=str(device))
    ev, seconds = _timed_evaluation(sparse, loader, device, progress, "eval 2:4")
    return {"top1": ev["top1"], "top5": ev["top5"], "images": ev["n"], "seconds": seconds,
            "images_per_s": ev["n"] / seconds, "dense_bf16_top1": ev_dense["top1"],
            "dense_bf16_images_per_s": ev_dense["n"] / s_dense, "converted_layers": len(record["converted"]),
            "dense_layers": len(record["dense"]), "refused_shape_layers": len(record["refused_shape"])}
