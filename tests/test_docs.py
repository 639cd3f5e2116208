"""The docs and the tracked files speak only of the repository: every relative link of README.md and docs/
resolves (file and heading), no tracked file holds an absolute path of someone's home, root, work or temporary
folder (placeholders such as /path/to/imagenet are fine), and CI runs the README's own test command."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
# "/" + one of these folder names, not preceded by a path or word character (so results/tmp/ is fine)
ABSOLUTE = re.compile(r"(?<![\w./~$-])/(?:" + "|".join(["ho" + "me", "ro" + "ot", "wo" + "rk", "t" + "mp",
                                                              "Us" + "ers", "private/var"]) + r")(?:/|\b)")


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation but `-` and `_` dropped, spaces to hyphens
    (a link in the heading counts by its text)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # a '#' comment in a code block is no heading
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)}


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [ROOT / p for p in out.decode().split("\0") if p]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    broken = []
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.relative_to(ROOT)}: {broken}"


def test_the_link_check_sees_a_broken_link(tmp_path):
    """The check itself: a missing file and a missing heading are both found."""
    (tmp_path / "a.md").write_text("# Title here\n\n[x](b.md) [y](#title-here) [z](#nope)\n")
    text = (tmp_path / "a.md").read_text()
    assert LINK.findall(text) == ["b.md", "#title-here", "#nope"]
    assert anchors(tmp_path / "a.md") == {"title-here"}
    assert slug("Tested on a real scheduler (Slurm)") == "tested-on-a-real-scheduler-slurm"
    assert slug("6. Counting [`dimap/pruning/accounting.py`]") == "6-counting-dimappruningaccountingpy"
    assert slug("Building the tables: `make_tables.py`") == "building-the-tables-make_tablespy"


def test_no_tracked_file_holds_an_absolute_machine_path():
    hits = []
    for path in tracked_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary (png, safetensors)
        for n, line in enumerate(text.splitlines(), 1):
            if ABSOLUTE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    assert not hits, "absolute machine paths (use a path relative to the clone or /path/to/...):\n" + "\n".join(hits)


def test_the_path_check_tells_a_machine_path_from_a_placeholder():
    bad = ["/" + "tmp/x", '"/' + 'work/main/results"', "--out=/" + "root/.cache", "/" + "home/me", "/" + "tmp"]
    good = ["/path/to/imagenet", "results/tmp/x", "outputs/" + "work/a", "$TMPDIR/x", "~/x", "https://x.org/home/y"]
    assert all(ABSOLUTE.search(s) for s in bad) and not any(ABSOLUTE.search(s) for s in good)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = "pip install -r requirements.txt && python -m pytest -q"
    assert command in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-r requirements.txt" in ci and re.search(r"^python -m pytest -q\s*$", ci, flags=re.M)
