#!/usr/bin/env bash
# The GPU checks of the three benchmarks in one short run (under 5 minutes on one H100):
#   1. DIMAP masks on CUDA for Swin-B vs torch global_unstructured, masks compared with the reference oracle
#      (timm init, then a pruned bf16-rounded model full of exact ties);
#   2. FixedMask overhead in a bf16 AdamW step (Swin-B, batch 64);
#   3. dense vs DIMAP-pruned latency, bf16 autocast, batch 1 and 64, with 2:4 semi-structured kernels.
# JSON goes to $OUT when set (the device machine's output folder), else results/bench.
# Without a GPU it runs the same scripts on CPU with the nano model (into $OUT or a temporary folder), as a
# quick check that it works.
#
#   bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  out="${OUT:-results/bench}"
  mkdir -p "$out"
  python scripts/bench_masks.py --device cuda --model swin_b --repeats 5 --reference --out "$out"
  python scripts/bench_masks.py --device cuda --model swin_b --init pruned --repeats 3 --reference --out "$out"
  python scripts/bench_mask_overhead.py --device cuda --amp bf16 --model swin_b --batch 64 --repeats 20 \
    --out "$out"
  python scripts/bench_latency.py --device cuda --models swin_t swin_s swin_b --batch-sizes 1 64 \
    --repeats 20 --warmup 3 --out "$out"
else
  out="${OUT:-$(mktemp -d)}"  # never over the committed CPU results
  echo "no CUDA device: CPU fallback with the nano model, writing to $out"
  python scripts/bench_masks.py --model swin_nano --methods dimap --repeats 1 --reference --out "$out"
  python scripts/bench_mask_overhead.py --model swin_nano --batch 8 --repeats 2 --warmup 1 --out "$out"
  python scripts/bench_latency.py --device cpu --models swin_nano --batch-sizes 1 --repeats 1 --warmup 0 \
    --ratios 0.55 --csr-ratios 0.9 --out "$out"
fi
ls -l "$out"
