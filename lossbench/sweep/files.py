"""The sweep's own files (plan.json, optimization_results.yaml, the figures, the trials'
``.hydra/`` files), each written whole or not at all: to a temporary name in the same folder,
then renamed; a write that fails (a full disk) removes the temporary file and raises. A file
that holds a usable URL with credentials is private (mode 0600)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from lossbench.urls import has_credentials


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(path: Path, write: Callable[[str], None], private: bool = False) -> Path:
    """``write(tmp_path)``, then rename to ``path``: the file is complete or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o600 if private else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write(path: Path, text: str, private: bool | None = None) -> Path:
    """``text`` into ``path``; private unless told otherwise when it holds credentials."""
    if private is None:
        private = has_credentials(text)

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_save(path, write, private)
