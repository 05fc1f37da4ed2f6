"""What is left when compiled code crashes the process: ``RUN_DIR/crash.log``.

Compiled code has no bounds checks, so a kernel that writes far past its buffers ends the
process with a fatal signal (a segmentation fault), and nothing in Python runs after it:
it cannot be caught, and the kernel that did it cannot be named for certain. So while a run
compiles and trains, ``arm`` keeps ``crash.log`` in the run directory: a note naming every
kernel the run calls (and its plugin) and the command that finds the culprit (the conformance
kit's bounds-checked run, ``python -m lossbench check PLUGIN``), and ``faulthandler`` set to
append Python's traceback to it on a fatal signal. ``disarm`` removes it when the run ends, so
a ``crash.log`` in a run directory means the run crashed. ``crash_reason`` reads it back for
whoever outlives the process: the CLI's watcher (``lossbench.cli``) prints it, the MLflow side
process puts it in the run's failure reason.
"""

from __future__ import annotations

import faulthandler
import sys
from pathlib import Path

from lossbench.plugins import DEFAULT_PLUGINS
from lossbench.training.fused import ROLES

CRASH_LOG = "crash.log"
FATAL = "Fatal Python error"  # how faulthandler's report begins
_STATE = "crash.note"  # run.plugin_state key: (the open file, faulthandler was on before)


def note_text(run, path: Path) -> str:
    """The note's one paragraph: the kernels that were running, and what to run."""
    kernels, plugins = [], []
    for group, roles in ROLES.items():
        spec = run.specs[group]
        for attr, role in roles:
            kernel = getattr(spec, attr)
            if kernel is None:
                continue
            name = getattr(getattr(kernel, "py_func", kernel), "__qualname__", repr(kernel))
            kernels.append(f"the {role} kernel {name} of {group} {spec.name!r} from plugin "
                           f"{spec.plugin!r}")  # fmt: skip
            if spec.plugin not in DEFAULT_PLUGINS and spec.plugin not in plugins:
                plugins.append(spec.plugin)
    check = " and ".join(f"python -m lossbench check {p}" for p in plugins) or (
        "python -m lossbench check PLUGIN for the plugins named"
    )
    return (
        f"lossbench: error: the run in {path.parent} crashed while compiled code ran (a fatal "
        "signal such as a segmentation fault: most often a kernel that wrote or read far past "
        "its buffers). Compiled code has no bounds checks, so which kernel did it cannot be "
        f"told; these were running: {'; '.join(kernels)}. Fix: run `{check}` (the "
        "conformance kit runs every kernel with bounds checking and names the one that goes "
        f"out of bounds). Python's traceback at the crash is in {path}."
    )


def arm(run) -> None:
    """Write ``crash.log`` and point faulthandler at it (runs with a directory only)."""
    if run.output_dir is None or _STATE in run.plugin_state:
        return
    path = Path(run.output_dir).absolute() / CRASH_LOG
    try:
        f = open(path, "w", encoding="utf-8")  # noqa: SIM115 -- open until disarm
        f.write(note_text(run, path) + "\n\n")
        f.flush()
    except OSError:  # a full disk: the run goes on without the note
        return
    run.plugin_state[_STATE] = (f, faulthandler.is_enabled())
    faulthandler.enable(file=f, all_threads=True)


def disarm(run) -> None:
    """The run ended: faulthandler as it was (on stderr if it was on), the note removed."""
    f, was_enabled = run.plugin_state.pop(_STATE, (None, False))
    if f is None:
        return
    faulthandler.disable()
    if was_enabled and sys.__stderr__ is not None:
        faulthandler.enable(file=sys.__stderr__, all_threads=True)
    f.close()
    Path(f.name).unlink(missing_ok=True)


def crash_reason(run_dir) -> str | None:
    """The note of a run that crashed (its ``crash.log`` holds faulthandler's report), without
    the ``lossbench: error:`` prefix; None when it did not crash."""
    path = Path(run_dir) / CRASH_LOG
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if FATAL not in text:
        return None
    return text.split("\n\n", 1)[0].removeprefix("lossbench: error: ").strip()
