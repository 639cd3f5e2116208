#!/usr/bin/env bash
# Mutation testing (a measurement, not CI): mutmut 3.8.1 mutates one half of dimap one change at a time and runs
# that half's fast tests against each mutant. Settings: pyproject.toml, [tool.mutmut] (the pruning half).
# mutmut reads only [tool.mutmut] and has no option to override it, so `--half training` swaps its only_mutate
# and test selection for dimap/training/* and tests/training for the run and puts pyproject.toml back after.
# Function globs after the options narrow the run (e.g. "dimap.training.checkpoint*").
# Writes results/quality/mutmut_<half>.{md,json} with the command, commit and date.
# `--rerun` (after tests were added) keeps the last run's mutants/ and re-tests only what it left unkilled and not
# judged equivalent (results/quality/equivalent_mutants.txt), plus the function globs given (functions changed since,
# whose mutants mutmut regenerates); mutmut's test-to-function map is rebuilt first so that new tests are selected.
#   pip install mutmut==3.8.1        # not in requirements.txt: CI does not run this
#   bash scripts/mutation_test.sh [--half pruning|training] [--rerun] [--max-children N] [function globs...]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 WANDB_MODE=offline OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore DIMAP_MUTATION_TEST=1
MUTMUT=${MUTMUT:-mutmut}
half=pruning
if [[ "${1:-}" == "--half" ]]; then half=$2; shift 2; fi
# the commit mutated, taken before --half training edits pyproject.toml (which would read as "+dirty")
commit=$(python -c "from dimap.provenance import git_commit; print(git_commit())")
if [[ "${1:-}" == "--rerun" && "$commit" == *+dirty ]]; then  # the record names the commit whose tests killed
  echo "commit your new tests and the earlier record (results/quality) first: the re-run's record names that commit" >&2
  exit 2
fi
case "$half" in
  pruning) ;;
  training)
    cp pyproject.toml pyproject.toml.mutation-backup
    trap 'mv pyproject.toml.mutation-backup pyproject.toml' EXIT
    sed -i -e 's|^only_mutate = .*|only_mutate = ["dimap/training/*"]|' \
           -e 's|^pytest_add_cli_args_test_selection = .*|pytest_add_cli_args_test_selection = ["tests/training", "-m", "not slow"]|' \
           pyproject.toml ;;
  *) echo "--half must be pruning or training, not '$half'" >&2; exit 2 ;;
esac
start=$(date -u +%FT%TZ)
if [[ "${1:-}" == "--rerun" ]]; then
  shift
  [[ -d mutants ]] || { echo "--rerun needs the mutants/ of an earlier run here" >&2; exit 2; }
  # the earlier record's start and command, read before anything changes: the new record names every run since
  record="results/quality/mutmut_$half.json"
  started=$(python -c "import json; print(json.load(open('$record'))['started'])")
  previous=$(python -c "import json; r = json.load(open('$record')); print(r['command'], 'at', r['git_commit'][:7])")
  todo=$("$MUTMUT" results --all true | python scripts/mutation_report.py --half "$half" --unkilled)
  [[ -n "$todo$*" ]] || { echo "nothing to re-test: every mutant is killed or judged equivalent" >&2; exit 0; }
  rm -f mutants/mutmut-stats.json   # else mutmut keeps its old map and never runs the new tests on old mutants
  nice -n 15 "$MUTMUT" run "$@" $todo || true
  python scripts/mutation_report.py --half "$half" --started "$started" --mutmut "$MUTMUT" --commit "$commit" \
    --command "$previous; then bash scripts/mutation_test.sh --half $half --rerun $*" \
    --note "Re-run from $start: $(echo $todo | wc -w) unkilled, non-equivalent mutants and the globs given, with the tests of $commit."
  exit 0
fi
rm -rf mutants
nice -n 15 "$MUTMUT" run "$@" || true   # mutmut exits non-zero when mutants survive
python scripts/mutation_report.py --half "$half" --started "$start" --mutmut "$MUTMUT" --commit "$commit" \
  --command "bash scripts/mutation_test.sh --half $half $*"
