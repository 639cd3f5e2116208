"""pyproject.toml: `pip install -e .` installs every dimap package, and its loose dependencies are the pinned ones."""
import re
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_installs_every_dimap_package_and_only_those():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    found = set(find_packages(str(ROOT), include=include))
    on_disk = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "dimap").rglob("__init__.py")}
    assert found == on_disk and {"dimap", "dimap.pruning", "dimap.training"} <= found


def test_every_dependency_is_pinned_in_requirements():
    name = lambda spec: re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower().replace("_", "-")  # noqa: E731
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    pinned = {name(line) for line in (ROOT / "requirements.txt").read_text().split() if "==" in line}
    assert {name(d) for d in deps} <= pinned
