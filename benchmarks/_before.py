"""The built-in optimizers as they were before plugin interface version 2 (hyperparameters and lr
in the run's dtype), loaded from git for side-by-side benchmarks."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the last commit of main before interface version 2
BEFORE = "8b3091a"


def old_optimizers(rev: str = BEFORE):
    """``lossbench/builtin/optimizers.py`` at ``rev``, imported as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{rev}:lossbench/builtin/optimizers.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    folder = Path(tempfile.gettempdir()) / f"lossbench-optimizers-{rev}"
    folder.mkdir(exist_ok=True)
    path = folder / f"optimizers_{rev}.py"
    if not path.exists() or path.read_text() != source:
        path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"optimizers_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
