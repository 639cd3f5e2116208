"""The two halves: the method (dimap.pruning) must stay usable without the training engine."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pruning_half_imports_nothing_from_training():
    code = ("import sys, pkgutil, importlib, dimap.pruning as p\n"
            "for m in pkgutil.iter_modules(p.__path__): importlib.import_module('dimap.pruning.' + m.name)\n"
            "import dimap\n"
            "print(sorted(n for n in sys.modules if n.startswith('dimap.training')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_of_a_notebook():
    import dimap
    for name in ("compute_masks", "apply_masks", "FixedMask", "account", "read_pruned", "masks_from_state_dict"):
        assert callable(getattr(dimap, name)), name
