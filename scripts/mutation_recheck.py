"""Re-test surviving mutants against the current tests, without a full mutmut run: `mutmut apply` writes one
mutant into the working tree, the fast pruning tests run, `git checkout` restores the file. Only for functions
unchanged since the run (mutmut apply would bring back the old body of a changed one).

    python scripts/mutation_recheck.py [--mutmut mutmut] [--skip GLOB ...]

Needs a clean dimap/pruning (it refuses otherwise). Writes results/quality/mutmut_pruning_recheck.json.
"""
import argparse
import fnmatch
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dimap.provenance import git_commit  # noqa: E402

# the survivors were not killed by the other pruning tests in the full run; these files hold the tests added since
TESTS = ["tests/pruning/test_edges.py", "tests/pruning/test_masks.py", "tests/pruning/test_pruned_file.py", "-x", "-q",
         "-p", "no:cacheprovider"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mutmut", default="mutmut")
    p.add_argument("--skip", nargs="*", default=[], help="glob patterns: mutants of functions changed since the run")
    args = p.parse_args(argv)
    if subprocess.run(["git", "status", "--porcelain", "dimap/pruning"], cwd=ROOT, capture_output=True,
                      text=True).stdout.strip():
        sys.exit("dimap/pruning has uncommitted changes: commit them first (this script restores files with git)")
    out = subprocess.run([args.mutmut, "results"], cwd=ROOT, capture_output=True, text=True).stdout
    equivalent = {line.split()[0] for line in (ROOT / "results/quality/equivalent_mutants.txt").read_text()
                  .splitlines() if line.strip() and not line.startswith("#")}
    survivors = [line.split(":")[0].strip() for line in out.splitlines() if line.strip().endswith("survived")]
    todo = [n for n in survivors if n not in equivalent and not any(fnmatch.fnmatch(n, s) for s in args.skip)]
    results = {}
    for name in todo:
        subprocess.run([args.mutmut, "apply", name], cwd=ROOT, check=True, capture_output=True)
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", *TESTS], cwd=ROOT, capture_output=True, text=True)
            results[name] = "killed" if proc.returncode != 0 else "survived"
        finally:
            subprocess.run(["git", "checkout", "-q", "--", "dimap/pruning"], cwd=ROOT, check=True)
        print(f"{name}: {results[name]}", flush=True)
    record = {"command": "python scripts/mutation_recheck.py " + " ".join(sys.argv[1:]), "git_commit": git_commit(),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "tests": " ".join(TESTS),
              "skipped_changed_functions": args.skip, "results": results}
    (ROOT / "results" / "quality" / "mutmut_pruning_recheck.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
