#!/usr/bin/env bash
# Mutation testing of the pruning half (a measurement, not CI): mutmut 3.8.1 mutates dimap/pruning/*.py one
# change at a time and runs the fast tests of tests/pruning against each mutant (settings: pyproject.toml,
# [tool.mutmut]). Writes results/quality/mutmut_pruning.{md,json} with the command, commit and date.
#   pip install mutmut==3.8.1        # not in requirements.txt: CI does not run this
#   bash scripts/mutation_test.sh [--max-children N]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore
MUTMUT=${MUTMUT:-mutmut}
rm -rf mutants
start=$(date -u +%FT%TZ)
nice -n 15 "$MUTMUT" run "$@" || true   # mutmut exits non-zero when mutants survive
python scripts/mutation_report.py --started "$start" --command "bash scripts/mutation_test.sh $*" --mutmut "$MUTMUT"
