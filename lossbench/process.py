"""The process-level fast-start tricks, in one place.

:func:`exit_now` ends a lossbench process without the interpreter's teardown: after a run,
unloading numba, matplotlib and Hydra took 0.35 s, and after a sweep (MLflow and SQLAlchemy
too) 0.9 s, all spent once every file was written. It is used only where that holds: the
command line's ``entry`` and a sweep worker's ``__main__``, after their work returned. The
logs and the output streams are flushed first; closing stdin on exit ends the MLflow side
process (``tracking.worker``), which reads it.
"""

from __future__ import annotations

import logging
import os
import sys


def exit_now(code: object = 0) -> None:
    """Flush the logs and streams, then ``os._exit``. ``code`` is what ``SystemExit`` carries:
    ``None`` is 0, an int is the exit status, anything else is printed and exits 1 (as
    Python's own exit does)."""
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
