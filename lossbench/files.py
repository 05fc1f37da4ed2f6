"""Every file lossbench writes, written whole or not at all, and the one plotting import.

A file goes to a temporary name in its own folder, is flushed to disk (``fsync``), then renamed
over its final name, and the folder's entry is flushed too: after a crash or a power cut the
file is the old one or the new one, never a torn mix. A write that fails (a full disk) removes
the temporary file and raises. A run's summary.json, history.csv and model.npz and a sweep's
plan.json and figures all go through :func:`atomic_save`, so they are equally durable. A file
that holds a usable URL with credentials is private (mode 0600).

:func:`pyplot` is the only place matplotlib is imported: it costs about a second, so only the
code that draws pays for it, and it always uses the Agg backend (no screen is needed).
"""

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


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk; not every filesystem allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_save(path: Path, write: Callable[[str], None], private: bool = False) -> Path:
    """``write(tmp_path)``, flush it to disk, then rename it to ``path``: the file is complete
    or absent. Mode 0600 when ``private``, else the usual mode under the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600 if private else 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write(path: Path, text: str, private: bool | None = None) -> Path:
    """``text`` into ``path``; private unless told otherwise when it holds credentials."""
    if private is None:
        private = has_credentials(text)
    return atomic_save(path, lambda tmp: Path(tmp).write_text(text), private)


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use."""
    # start-up: matplotlib costs about a second to import; only the code that draws pays for it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Save ``fig`` as PNG through :func:`atomic_save` and close it, also when saving fails."""
    try:
        atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        pyplot().close(fig)
    return path
