"""One-shot, data-free pruning of a dense Swin with parameter and FLOP accounting.

    python prune.py model=swin_b prune=dimap prune.ratio=0.55 output_dir=DIR

Writes DIR/summary.json, DIR/model.safetensors (+ masks.safetensors), DIR/kept_fraction.png, and prints a table.
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from dimap.accounting import account
from dimap.errors import exit_on_user_error
from dimap.masks import apply_masks, check_method, check_ratio, compute_masks
from dimap.models import build_model
from dimap.pruned_file import save_pruned
from dimap.report import check_output_dir, format_table, plot_kept_fraction, prune_summary, write_json


@exit_on_user_error
def run(cfg: DictConfig) -> dict:
    config = OmegaConf.to_container(cfg, resolve=True)
    method, ratio = cfg.prune.method, cfg.prune.ratio
    check_method(method)
    check_ratio(ratio)
    check_output_dir(cfg.output_dir, config)  # all checks before anything is written

    model = build_model(config["model"]).eval()
    masks = compute_masks(model, method, ratio)
    apply_masks(model, masks)
    acc = account(model, masks, cfg.model.img_size, cfg.model.in_chans)
    summary = prune_summary(config["model"], method, ratio, acc, config=config)

    meta = {"model": cfg.model.name, "kwargs": config["model"]["kwargs"], "method": method, "ratio": ratio,
            "weights": str(cfg.model.weights), "git_commit": summary["git_commit"]}
    save_pruned(model, masks, cfg.output_dir, meta)
    if cfg.plot:
        plot_kept_fraction(acc["layers"], f"{cfg.output_dir}/kept_fraction.png",
                           f"{cfg.model.short} {method} r={ratio}: kept fraction per layer")
    write_json(f"{cfg.output_dir}/summary.json", summary)  # last: its presence marks a finished run
    print(format_table(summary))
    print(f"wrote {cfg.output_dir}/summary.json, model.safetensors, masks.safetensors")
    return summary


@hydra.main(config_path="conf", config_name="prune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
