"""lossbench modules as they were at an earlier commit, loaded from git for side-by-side
benchmarks: the built-in optimizers before plugin interface version 2 (hyperparameters and lr
in the run's dtype), the fused epoch before its kernel-exception checks."""

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
    return old_module("lossbench/builtin/optimizers.py", rev)


def old_module(path: str, rev: str):
    """The lossbench module at ``path`` as it was at commit ``rev``, imported as a module of
    its own (``NAME_REV``, its file in a temporary folder, so numba caches it there)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    name = f"{Path(path).stem}_{rev}"
    folder = Path(tempfile.gettempdir()) / f"lossbench-{name}"
    folder.mkdir(exist_ok=True)
    file = folder / f"{name}.py"
    if not file.exists() or file.read_text() != source:
        file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
