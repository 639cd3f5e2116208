"""The supported families at full size: `prune.py model=<family> prune=dimap prune.ratio=R model.weights=random`
for each, in process, and one table of what it measured (layers and weights per module, parameters, FLOPs).

    python scripts/families_table.py [--families swinv2_t vit_s ...] [--ratio 0.55] [--out results/families]

Writes OUT/<family>/summary.json (prune.py's own, with config and git commit; the pruned weights go to a
temporary folder, not to git), OUT/families.json and OUT/families.md. Random weights, seeded: parameter counts and paper-style FLOPs do not depend on the weights (each
module loses the same share); sparse FLOPs do (which layers DIMAP prunes hardest), hence the seed.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import prune  # noqa: E402
from dimap.provenance import git_commit, portable  # noqa: E402

FAMILIES = ("swin_t", "swinv2_t", "vit_s", "deit_s", "deit3_s", "pvt_v2_b2", "hiera_t", "twins_svt_s", "davit_t",
            "fastervit_0")
MODULES = ("QKV-M", "PRJ-M", "MLP-M")


def run_family(family: str, ratio: float, out: Path, seed: int) -> dict:
    torch.manual_seed(seed)  # the random init, hence the per-layer kept fractions and the sparse FLOPs
    with tempfile.TemporaryDirectory() as work:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("prune", overrides=[f"model={family}", "prune=dimap", f"prune.ratio={ratio}",
                                              "model.weights=random", "plot=false", f"output_dir={work}"])
        s = prune.run(cfg)
        (out / family).mkdir(parents=True, exist_ok=True)
        # the record names the temporary output folder as $TMPDIR/..., not this machine's path
        summary = portable(json.loads((Path(work) / "summary.json").read_text()), ROOT)
        (out / family / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    layers = {m: sum(l["module"] == m for l in s["layers"]) for m in MODULES}
    return {"family": family, "timm_name": s["model"], "img_size": cfg.model.img_size, "ratio": ratio,
            "layers": layers, "weights": {m: s["modules"][m]["weights"] for m in MODULES},
            "params_total": s["params_total"], "prunable_weights": s["prunable_weights"],
            "params_reduction_pct": s["params_reduction_pct"], "flops_dense": s["flops_dense"],
            "flops_paper_reduction_pct": s["flops_paper_reduction_pct"],
            "flops_sparse_reduction_pct": s["flops_sparse_reduction_pct"], "seed": seed, "git_commit": s["git_commit"],
            "command": f"python prune.py model={family} prune=dimap prune.ratio={ratio} model.weights=random"}


def markdown(rows: list[dict]) -> str:
    lines = ["| family | timm model | px | layers QKV/PRJ/MLP | prunable / total params (M) | FLOPs (G) | "
             f"params -% | FLOPs -% paper | FLOPs -% sparse |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['timm_name']} | {r['img_size']} | "
                     f"{'/'.join(str(r['layers'][m]) for m in MODULES)} | "
                     f"{r['prunable_weights'] / 1e6:.2f} / {r['params_total'] / 1e6:.2f} | "
                     f"{r['flops_dense'] / 1e9:.2f} | {r['params_reduction_pct']:.1f} | "
                     f"{r['flops_paper_reduction_pct']:.1f} | {r['flops_sparse_reduction_pct']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--ratio", type=float, default=0.55)
    p.add_argument("--seed", type=int, default=0, help="torch seed of each family's random init")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "families")
    args = p.parse_args()
    rows = []
    for family in args.families:
        rows.append(run_family(family, args.ratio, args.out, args.seed))
        print(f"{family}: layers {rows[-1]['layers']}, FLOPs {rows[-1]['flops_dense'] / 1e9:.2f} G", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "families.json").write_text(json.dumps({"git_commit": git_commit(), "rows": rows}, indent=1) + "\n")
    (args.out / "families.md").write_text(
        f"DIMAP at r={args.ratio} on random weights (torch seed {args.seed}; only the sparse FLOPs depend on the "
        f"weights); `python scripts/families_table.py`, commit {git_commit()}.\n\n" + markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
