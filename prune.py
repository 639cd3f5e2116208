"""One-shot pruning of a dense Swin (or another supported timm vision transformer) with parameter and FLOP
accounting: data-free (DIMAP and its baselines), or from calibration images (Wanda, SparseGPT: docs/baselines.md).

    python prune.py model=swin_b prune=dimap prune.ratio=0.55 output_dir=DIR
    python prune.py model=swin_nano prune=wanda prune.ratio=0.5 data=mnist5k   # data-aware: needs a data group

Writes DIR/summary.json, DIR/model.safetensors (+ masks.safetensors), DIR/kept_fraction.png, and prints a table.

Inspect mode (prune=none) prunes nothing: it reads a pruned checkpoint (e.g. the authors' DIMAP files), derives
its masks from its zeros and reports them in the same summary format (ratio = the measured removed share);
prune.compare_dense=PATH also compares them with the masks prune.compare_method computes from those dense weights:

    python prune.py prune=none model=swin_t model.weights=PATH [prune.compare_dense=DENSE] output_dir=DIR
"""
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from dimap.pruning.accounting import account
from dimap.errors import UserError, check_config_groups, exit_on_user_error
from dimap.pruning.inspect_checkpoint import inspect_checkpoint
from dimap.pruning.masks import (apply_masks, check_method, check_module_ratios, check_pattern, check_ratio,
                                 compute_masks, method_options, needs_calibration)
from dimap.models import build_model
from dimap.pruning.pruned_file import save_pruned
from dimap.pruning.semi_structured import check_available, to_semi_structured
from dimap.report import check_output_dir, format_table, plot_kept_fraction, prune_summary, write_json


@exit_on_user_error
def run(cfg: DictConfig) -> dict:
    config = OmegaConf.to_container(cfg, resolve=True)
    method, ratio = cfg.prune.method, cfg.prune.ratio
    if method == "none":
        return inspect(cfg, config)
    check_method(method)
    check_ratio(ratio)
    module_ratios = check_module_ratios(config["prune"].get("module_ratios"), ratio)
    pattern = check_pattern(config["prune"], method, ratio, module_ratios)
    if pattern["semi_structured"]:
        check_available()
    check_output_dir(cfg.output_dir, config)  # all checks before anything is written
    calibration = None
    if needs_calibration(method):
        from dimap.training.calibration_data import calibration_for_run
        calibration = calibration_for_run(config, method)

    torch.manual_seed(cfg.seed)  # model.weights=random: the same weights, masks and sparse FLOPs on every run
    model = build_model(config["model"]).eval()
    nm_record = {}
    t0 = time.perf_counter()
    masks = compute_masks(model, method, ratio, module_ratios, pattern["pattern"], pattern["allocation"] or "auto",
                          record=nm_record, calibration=calibration,
                          options=method_options(method, config["prune"]))
    prune_time_s = time.perf_counter() - t0
    apply_masks(model, masks)
    acc = account(model, masks, cfg.model.img_size, cfg.model.in_chans, pattern=pattern["nm"])
    if module_ratios:  # the summary's ratio is then the share removed over all modules, as measured
        ratio = acc["prunable_removed_fraction"]
    extra = {"nm": dict(nm_record, ratio_asked=ratio, ratio_achieved=acc["prunable_removed_fraction"])} \
        if pattern["nm"] else {}
    if calibration is not None:
        extra["calibration"] = calibration.record()
    if pattern["semi_structured"]:
        extra["semi_structured"] = semi_structured_check(model, masks, cfg.model.img_size, cfg.model.in_chans)
    summary = prune_summary(config["model"], method, ratio, acc, module_ratios=module_ratios, config=config,
                            pattern=pattern["pattern"], prune_time_s=round(prune_time_s, 3), **extra)

    meta = {"model": cfg.model.name, "kwargs": config["model"]["kwargs"], "method": method, "ratio": ratio,
            "pattern": pattern["pattern"], "weights": str(cfg.model.weights), "git_commit": summary["git_commit"]}
    save_pruned(model, masks, cfg.output_dir, meta)
    if cfg.plot:
        plot_kept_fraction(acc["layers"], f"{cfg.output_dir}/kept_fraction.png",
                           f"{cfg.model.short} {method} r={ratio}: kept fraction per layer")
    write_json(f"{cfg.output_dir}/summary.json", summary)  # last: its presence marks a finished run
    print(format_table(summary))
    print(f"wrote {cfg.output_dir}/summary.json, model.safetensors, masks.safetensors")
    return summary


def semi_structured_check(model, masks, img_size: int, in_chans: int) -> dict:
    """Convert a copy of the pruned model to 2:4 kernels (bf16, CUDA) and compare its outputs with the masked
    dense model's in bf16 on a random batch: the converted layers and the largest logit difference."""
    import copy
    ref = copy.deepcopy(model).to("cuda", torch.bfloat16).eval()
    sparse, record = to_semi_structured(copy.deepcopy(model), masks, torch.bfloat16)
    x = torch.randn(8, in_chans, img_size, img_size, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        a, b = ref(x.bfloat16()).float(), sparse(x)
    record["max_abs_logit_diff_vs_dense_bf16"] = float((a - b).abs().max())
    record["logit_scale"] = float(a.abs().max())
    print(f"2:4 kernels on {len(record['converted'])} layers ({len(record['dense'])} dense, "
          f"{len(record['refused_shape'])} refused by shape): largest logit difference to the dense bf16 model "
          f"{record['max_abs_logit_diff_vs_dense_bf16']:.4g} (logits up to {record['logit_scale']:.3g})")
    return record


def inspect(cfg: DictConfig, config: dict) -> dict:
    """prune=none: the masks, sparsity and accounting of an already pruned checkpoint; writes no model file."""
    if str(cfg.model.weights) in ("hub", "random"):
        raise UserError("prune=none inspects a pruned checkpoint: pass model.weights=PATH to it")
    check_output_dir(cfg.output_dir, config)
    compare_dense = cfg.prune.get("compare_dense")
    if compare_dense:
        check_method(cfg.prune.compare_method)
    nm = check_pattern(config["prune"], "none", 0.0, None)["nm"]  # prune.pattern=2:4: classify the layers too
    model, masks, comparison = inspect_checkpoint(config["model"], compare_dense, cfg.prune.get("compare_method"))
    acc = account(model, masks, cfg.model.img_size, cfg.model.in_chans, pattern=nm)
    summary = prune_summary(config["model"], "none", acc["prunable_removed_fraction"], acc, config=config,
                            inspect=True, compare=comparison)
    if cfg.plot:
        plot_kept_fraction(acc["layers"], f"{cfg.output_dir}/kept_fraction.png",
                           f"{cfg.model.short} checkpoint {cfg.model.weights}: kept fraction per layer")
    write_json(f"{cfg.output_dir}/summary.json", summary)
    print(format_table(summary))
    if comparison:
        print("checkpoint's kept fraction per module: " + ", ".join(
            f"{m} {k:.4f}" for m, k in comparison["checkpoint_module_kept_fraction"].items())
            + f" (spread of the removed shares {comparison['module_share_spread']:.4f})")
        print(f"masks vs {comparison['method']} from {compare_dense} at r={comparison['ratio']:.4f} in every module: "
              + iou_line(comparison))
        if "per_module_ratio" in comparison:
            print(f"masks vs {comparison['method']} at each module's own measured share: "
                  + iou_line(comparison["per_module_ratio"]))
    print(f"wrote {cfg.output_dir}/summary.json")
    return summary


def iou_line(c: dict) -> str:
    return ", ".join(f"{m} IoU {v['iou_kept']:.4f}" for m, v in [("all", c["overall"]), *c["modules"].items()])


@hydra.main(config_path="conf", config_name="prune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    check_config_groups(Path(__file__).parent / "conf", sys.argv[1:])  # `prune=foo`: one sentence, not Hydra's 14 lines
    main()
