"""Score of a finished mutmut run (scripts/mutation_test.sh): killed / (checked - equivalent), per file, with
every surviving mutant's diff and, for the ones judged equivalent, why (results/quality/equivalent_mutants.txt).

    python scripts/mutation_report.py --started 2026-11-27T13:33:40Z --command "bash scripts/mutation_test.sh"

Writes results/quality/mutmut_<half>.{json,md}.
"""
import argparse
import collections
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dimap.provenance import git_commit, portable  # noqa: E402

OUT = ROOT / "results" / "quality"


def mutmut(mutmut_bin: str, *args: str) -> str:
    return subprocess.run([mutmut_bin, *args], cwd=ROOT, capture_output=True, text=True).stdout


def equivalents() -> dict[str, str]:
    path = OUT / "equivalent_mutants.txt"
    rows = [line.split(None, 1) for line in path.read_text().splitlines() if line.strip() and line[0] != "#"] \
        if path.is_file() else []
    return {name: reason.strip() for name, reason in rows}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unkilled", action="store_true", help="print the names, read from `mutmut results --all true` "
                   "on stdin, of the mutants neither killed nor judged equivalent (what --rerun re-tests), and stop")
    p.add_argument("--started")
    p.add_argument("--command", default="bash scripts/mutation_test.sh")
    p.add_argument("--mutmut", default="mutmut")
    p.add_argument("--half", choices=["pruning", "training"], default="pruning",
                   help="which half was mutated (names the output files)")
    p.add_argument("--commit", help="the commit the run mutated (default: this checkout's)")
    p.add_argument("--finished", help="when the run ended (default: now)")
    p.add_argument("--note", default="", help="a sentence on how the run ended (e.g. stopped early)")
    args = p.parse_args(argv)
    if args.unkilled:
        rows = dict(line.strip().rsplit(": ", 1) for line in sys.stdin if ": " in line)
        print(" ".join(n for n, st in rows.items() if st in ("survived", "no tests")
                       and n not in equivalents()))
        return {}
    if not args.started:
        p.error("--started is required")
    status = dict(line.strip().rsplit(": ", 1) for line in mutmut(args.mutmut, "results", "--all", "true").splitlines()
                  if ": " in line)
    equiv = equivalents()
    per_file = collections.defaultdict(collections.Counter)
    for name, st in status.items():
        st = "equivalent" if st == "survived" and name in equiv else st
        per_file[name.split(".x")[0]][st] += 1
    total = sum(per_file.values(), collections.Counter())
    scored = total["killed"] + total["survived"]
    # "no tests": no selected test calls the mutated function, so the mutant escapes as surely as a survivor
    reached = scored + total["no tests"]
    untested = collections.Counter(n.rsplit("__mutmut_", 1)[0] for n, st in status.items() if st == "no tests")
    survivors = {n: mutmut(args.mutmut, "show", n) for n, st in status.items() if st == "survived"}
    record = {"what": f"mutation testing of dimap/{args.half} (pyproject.toml [tool.mutmut], "
                      f"scripts/mutation_test.sh --half {args.half})", "command": args.command,
              "git_commit": args.commit or git_commit(), "started": args.started,
              "finished": args.finished or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "note": args.note,
              "counts": dict(total), "per_file": {f: dict(c) for f, c in sorted(per_file.items())},
              "score_non_equivalent": total["killed"] / scored if scored else None,
              "score_counting_untested": total["killed"] / reached if reached else None,
              "no_tests_by_function": dict(sorted(untested.items())),
              "equivalent": {n: equiv[n] for n in status if n in equiv and status[n] == "survived"},
              "survived": {n: d for n, d in survivors.items() if n not in equiv}}
    OUT.mkdir(parents=True, exist_ok=True)
    record = portable(record, ROOT)  # no machine's folders (e.g. a mutmut outside the clone) in the record
    (OUT / f"mutmut_{args.half}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Mutation testing: dimap/{args.half}", "",
             f"`{args.command}` at commit {record['git_commit']}, {args.started} to {record['finished']} (mutmut 3.8.1)."
             + (f" {args.note}" if args.note else ""),
             "", f"Score: {total['killed']} killed of {scored} non-equivalent mutants checked = "
             f"**{100 * record['score_non_equivalent']:.1f}%**; {total['equivalent']} judged equivalent (reasons "
             f"below), {total['not checked']} not checked, {total['timeout']} timeouts."
             + (f" {total['no tests']} mutants are in functions no selected test calls; counting them as escaped: "
                f"{total['killed']} of {reached} = **{100 * record['score_counting_untested']:.1f}%**."
                if total["no tests"] else ""), "",
             "| file | killed | survived | no tests | timeout | equivalent | not checked |", "|---|---|---|---|---|---|---|"]
    for f, c in sorted(per_file.items()):
        lines.append(f"| {f} | {c['killed']} | {c['survived']} | {c['no tests']} | {c['timeout']} | {c['equivalent']} | {c['not checked']} |")
    lines += ["", "## Surviving mutants", ""] + [f"```\n{d.strip()}\n```" for d in record["survived"].values()]
    lines += ["", "## Functions no selected test calls (mutants)", ""] + [f"- `{f}`: {n}" for f, n in untested.items()]
    lines += ["", "## Equivalent mutants", ""] + [f"- `{n}`: {r}" for n, r in record["equivalent"].items()]
    (OUT / f"mutmut_{args.half}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))
    return record


if __name__ == "__main__":
    main()
