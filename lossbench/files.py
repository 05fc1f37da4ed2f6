"""Every file lossbench writes, written whole or not at all, and the one plotting import.

A file goes to a temporary name in its own folder, is flushed to disk (``fsync``), then renamed
over its final name, and the folder's entry is flushed too: after a crash or a power cut the
file is the old one or the new one, never a torn mix. A write that fails (a full disk) removes
the temporary file and raises. A run's summary.json, history.csv and model.npz and a sweep's
plan.json and figures all go through :func:`atomic_save`, so they are equally durable. A file
that holds a usable URL with credentials is private (mode 0600).

:func:`save_together` writes several files the same way, their flushes issued at once from a
few threads: the filesystem commits them in one journal transaction, so a trial's three .hydra
files cost about one flush instead of six (4 ms each on these machines: a sweep trial's files
were a third of its overhead, ``benchmarks/sweep_overhead.py``).

:func:`pyplot` is the only place matplotlib is imported: it costs about a second, so only the
code that draws pays for it, and it always uses the Agg backend (no screen is needed).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
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
    (error,) = save_together([(path, write, private)])
    if error is not None:
        raise error
    return Path(path)


# what save_together writes: (path, write(tmp_path), private)
Item = tuple[Path, Callable[[str], None], bool]
_POOL: list = []  # one ThreadPoolExecutor, made on first use
_POOL_LOCK = threading.Lock()


def _flush_all(paths: Sequence, flush: Callable) -> list:
    """``flush(path)`` for each path, at once from a few threads when there are several (the
    filesystem then commits them together); the exception each raised, or None."""

    def one(path):
        try:
            flush(path)
        except OSError as exc:
            return exc
        return None

    if len(paths) < 2:
        return [one(p) for p in paths]
    with _POOL_LOCK:
        if not _POOL:
            # start-up: concurrent.futures costs 1.4 ms to import; only several files need it
            from concurrent.futures import ThreadPoolExecutor

            _POOL.append(ThreadPoolExecutor(8, thread_name_prefix="lossbench-fsync"))
    return list(_POOL[0].map(one, paths))


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_together(items: Sequence[Item]) -> list[OSError | None]:
    """Each ``(path, write, private)`` written as :func:`atomic_save` writes one, the flushes
    of all of them issued together; the files are renamed into place in the order given (so
    the last one is never there before the others). Returns, per item, None or the
    ``OSError`` that left that file unwritten (the old one, if any, stays); the other files are
    still written. Any other exception from a ``write`` is raised after the files before it
    are written (as one by one), and leaves no temporary file."""
    errors: list[OSError | None] = [None] * len(items)
    staged: list[tuple[int, Path, str, bool]] = []
    try:
        for i, (path, write, private) in enumerate(items):
            path, tmp = Path(path), None
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                os.close(fd)
                write(tmp)
            except OSError as exc:
                errors[i] = exc
                _unlink(tmp)
                continue
            except BaseException:  # the files before this one are still written
                _unlink(tmp)
                _commit(staged, errors)
                staged = []
                raise
            staged.append((i, path, tmp, private))
        _commit(staged, errors)
    except BaseException:
        for _, _, tmp, _ in staged:
            _unlink(tmp)
        raise
    return errors


def _commit(staged: list, errors: list) -> None:
    """Flush the written temporary files (together), rename each into place in order, then
    flush their folders' entries (together)."""
    flushed = _flush_all([tmp for _, _, tmp, _ in staged], _fsync_file)
    for (i, *_), error in zip(staged, flushed, strict=True):
        if error is not None:
            errors[i] = error
    mask = _umask()
    for i, path, tmp, private in staged:
        if errors[i] is not None:
            _unlink(tmp)
            continue
        try:
            os.chmod(tmp, 0o600 if private else 0o666 & ~mask)  # mkstemp makes 0600
            os.replace(tmp, path)
        except OSError as exc:
            errors[i] = exc
            _unlink(tmp)
    folders = list(dict.fromkeys(p.parent for i, p, _, _ in staged if errors[i] is None))
    _flush_all(folders, _fsync_dir)


def _unlink(tmp: str | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def text_file(path: Path, text: str, private: bool | None = None) -> Item:
    """What ``save_together`` writes for ``text`` into ``path``: private unless told otherwise
    when it holds credentials."""
    if private is None:
        private = has_credentials(text)
    return Path(path), lambda tmp: Path(tmp).write_text(text), private


def atomic_write(path: Path, text: str, private: bool | None = None) -> Path:
    """``text`` into ``path``; private unless told otherwise when it holds credentials."""
    return atomic_save(*text_file(path, text, private))


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
