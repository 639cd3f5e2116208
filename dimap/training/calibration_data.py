"""Calibration images of a run (prune.py and train.py alike): the data config's training split through the
evaluation transform, drawn as prune.calibration says (dimap.pruning.calibration)."""
import os

import torch

from dimap.errors import UserError
from dimap.pruning.calibration import Calibration, check_calibration_config, draw_calibration
from dimap.pruning.inspect_checkpoint import masks_for_run
from dimap.pruning.masks import method_options, needs_calibration
from dimap.pruning.modules import prunable_weights
from dimap.training.distributed import is_main, on_main_shared
from dimap.training.data import MNISTSubset, _image_folder, _imagenet, _mnist5k


def calibration_dataset(data):
    """The TRAINING split of the data config `data` seen through the EVALUATION transform (no augmentation): where
    the data-aware pruning criteria draw their calibration images (dimap.pruning.calibration)."""
    name = data.get("name")
    if name == "mnist5k":
        train, val, _ = _mnist5k(data)
        return MNISTSubset(train.images, train.labels, train.indices, val.mean.view(-1).tolist(),
                           val.std.view(-1).tolist(), val.in_chans, train=False)
    if name == "imagenet":
        root = data.get("root")
        if not root or not os.path.isdir(os.path.join(str(root), "train")):
            raise UserError(f"calibration images come from the training split, and data.root={root} has no train/ "
                            "folder: pass data.root=PATH to an ImageNet folder with train/ (or use a data-free "
                            "prune.method)")
        _, val, _ = _imagenet(data, train_split=False)
        return _image_folder(os.path.join(str(root), "train"), val.transform, int(data.get("max_bad_images", 0)))
    raise UserError(f"data.name={name} is unknown: pass data=imagenet or data=mnist5k.")


def calibration_for_run(config: dict, method: str) -> Calibration:
    """The calibration images of a run whose prune.method is the data-aware `method`: one sentence naming the fix
    when the run has no data group, or data whose images the model cannot take."""
    data, model = config.get("data"), config["model"]
    if not data:
        raise UserError(f"prune.method={method} needs calibration images from a training split: add a data group, "
                        "e.g. data=mnist5k, or data=imagenet data.root=/path/to/imagenet")
    shape = (data.get("in_chans"), data.get("img_size"))
    if shape != (model.get("in_chans"), model.get("img_size")):
        raise UserError(f"data={data.get('name')} gives {shape[0]}-channel {shape[1]}px images and model="
                        f"{model.get('short')} takes {model.get('in_chans')}-channel {model.get('img_size')}px ones: "
                        "pick the matching model and data")
    cal = check_calibration_config((config.get("prune") or {}).get("calibration"))
    return draw_calibration(calibration_dataset(data), cal["images"], cal["seed"], cal["batch_size"])


def masks_for_training_run(model, config: dict, method: str, ratio: float, module_ratios: dict | None = None,
                           device: torch.device | str = "cpu", pattern: str = "unstructured", allocation: str = "auto"):
    """`masks_for_run` for train.py, `model` on the CPU. A data-aware method runs once, on rank 0 and on `device`
    (its forward passes and Hessians are a GPU's job), and every rank receives its masks, its record (with the
    calibration images' count and seed) and, for sparsegpt, the updated prunable weights: float sums in another
    order on another rank could flip a near-tie, and every rank must finetune the same model."""
    if not needs_calibration(method):
        return masks_for_run(model, method, ratio, module_ratios, pattern, allocation)

    def compute():
        cal = calibration_for_run(config, method)
        try:
            masks, record = masks_for_run(model.to(device), method, ratio, module_ratios, pattern, allocation,
                                          calibration=cal, options=method_options(method, config["prune"]))
        finally:
            model.cpu()
        masks = {n: m.cpu() for n, m in masks.items()}
        weights = {n: w.detach().clone() for n, w in prunable_weights(model).items()} if method == "sparsegpt" else {}
        return masks, {**record, "calibration": cal.record()}, weights

    masks, record, weights = on_main_shared(compute)
    if weights and not is_main():
        with torch.no_grad():
            for n, w in prunable_weights(model).items():
                w.copy_(weights[n])
    return masks, record
