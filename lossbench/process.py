"""The process-level fast-start tricks, in one place.

:func:`one_blas_thread` keeps BLAS to one thread in a training process on a machine with at
most 2 cores while the MLflow side process (``tracking.worker``) imports MLflow beside it; the
tracker (``tracking.mlflow_run``) asks for it when it starts a cold side process and releases
it once the run exists.

:func:`exit_now` ends a lossbench process without the interpreter's teardown: after a run,
unloading numba, matplotlib and Hydra took 0.35 s, and after a sweep (MLflow and SQLAlchemy
too) 0.9 s, all spent once every file was written. It is used only where that holds: the
command line's ``entry`` and a sweep worker's ``__main__``, after their work returned. The
logs and the output streams are flushed first, and what ``before_exit_now`` registered is
called (closing a sqlite store's connections, so its log is in its file); closing stdin on
exit ends the MLflow side process (``tracking.worker``), which reads it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

_BEFORE_EXIT: list[Callable[[], None]] = []


def before_exit_now(fn: Callable[[], None]) -> None:
    """Have ``exit_now`` call ``fn`` first (once, however often it is registered)."""
    if fn not in _BEFORE_EXIT:
        _BEFORE_EXIT.append(fn)


def exit_now(code: object = 0) -> None:
    """Call what ``before_exit_now`` registered, flush the logs and streams, then
    ``os._exit``. ``code`` is what ``SystemExit`` carries: ``None`` is 0, an int is the exit
    status, anything else is printed and exits 1 (as Python's own exit does)."""
    for fn in _BEFORE_EXIT:
        try:
            fn()
        except Exception:  # exiting anyway: a failed clean-up must not change the exit code
            pass
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()  # Hydra's job log file
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code or 0)


def one_blas_thread(cores: int | None = None) -> Callable[[], None] | None:
    """Limit BLAS to one thread now, on a machine with at most 2 cores (``cores``, by default
    ``os.cpu_count()``); returns the function that gives BLAS its threads back (call it from
    the thread that runs the GEMMs, never while one runs), or None when nothing was limited.

    Why: while the side process imports MLflow (about 1.4 s of CPU), a 2-thread BLAS in the
    trainer fights it for 2 cores: measured, a 200-epoch digits run's epochs took 4x longer.
    One BLAS thread until the run exists costs nothing on small models."""
    if (cores or os.cpu_count() or 1) > 2:
        return None
    # start-up time: only a tracked run on a small machine needs threadpoolctl (about 45 ms)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas").restore_original_limits
