"""The paper's Figure 5 for a finished run: kept fraction per prunable layer, coloured by module.

    python scripts/plot_kept_fraction.py results/runs/prune_only/table1/swin_s_dimap2 [--out fig5.png]

Reads RUN/summary.json (prune.py, train.py or an inspect run) and writes RUN/kept_fraction.png unless --out.
The paper's figure is Swin-S at 45% removed, from pretrained weights:
    python prune.py model=swin_s prune=dimap prune.ratio=0.45 output_dir=results/runs/figure5/swin_s_dimap_45
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dimap.report import plot_kept_fraction  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders holding a summary.json")
    p.add_argument("--out", type=Path, help="output image (only with one run); default RUN/kept_fraction.png")
    args = p.parse_args(argv)
    if args.out and len(args.runs) > 1:
        p.error("--out takes one run; leave it out to write RUN/kept_fraction.png for each")
    for run in args.runs:
        path = run / "summary.json"
        if not path.is_file():
            sys.exit(f"error: {path} does not exist: pass the folder of a finished prune.py or train.py run")
        s = json.loads(path.read_text())
        out = args.out or run / "kept_fraction.png"
        weights = "random weights" if s.get("weights") == "random" else s.get("weights")
        plot_kept_fraction(s["layers"], out, f"{s['model_short']} {s['method']} r={s['ratio']:.4g} ({weights})")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
