"""How a lossbench process answers Ctrl-C (SIGINT) and SIGTERM, in one place.

SIGTERM is Ctrl-C everywhere: a command stopped either way ends with exit 130 and a line
saying what was kept, never 143 without a word. A signal becomes a ``KeyboardInterrupt``
(``sigterm_is_ctrl_c``); what each stage does with it is below. Only the main thread installs
handlers; a run trained in another thread (a test, a notebook) leaves signals alone.

A run (``python -m lossbench``; ``lossbench.train``)::

    importing, composing ──signal──> exit 130, "nothing was recorded"   (__main__, cli.main)
           │ the config is accepted: the run has started
           v
    loading, compiling, ──signal──> KeyboardInterrupt: run "interrupted" in the phase named,
    training                        on_run_end once, the outputs so far, exit 130
           │                        (SigtermAsInterrupt; KeepInterrupts raises again one that
           v                        numba's compiler callbacks dropped)
    writing outputs, ──1st signal──> held, a line says so; the record is finished, then raised
    ending records   ──2nd signal──> raised at once                       (HoldInterrupts)
           │
           v
    exit 0 (finished, stopped), 1 (failed, diverged, records lost)

A sweep worker (``python -m lossbench.sweep.worker``; ``StopOnSignal``)::

    asking, training ──1st signal, or the coordinator's pipe closing──> stopping set,
           │           KeyboardInterrupt: the trial is marked lost (the next worker that asks
           │           retries it), exit 130
           v
    cleaning up      ──any later signal──> stopping stays set, nothing raised: a second Ctrl-C
                       (the coordinator forwards one) never leaves a trial RUNNING

Two other processes: the storage proxy exits 0 on SIGTERM (``sigterm_exits``), and the run's
crash watcher, a forked child, ignores both (``ignore_interrupts``); a pool of processes a
launcher stops itself (a Dask ``LocalCluster``) is started with SIGINT ignored
(``children_ignore_ctrl_c``). tests/test_architecture.py
holds that no other module sets a handler (``__main__`` sets this module's, on its first line).

``stopping`` also turns any exception into "interrupted": a signal landing inside a storage
call can surface as another exception (Optuna's journal lock turns it into FileNotFoundError).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def sigterm_is_ctrl_c(signum, frame):
    """A SIGTERM handler: raise ``KeyboardInterrupt("SIGTERM")``, as Ctrl-C raises one."""
    raise KeyboardInterrupt("SIGTERM")


def sigterm_as_ctrl_c_unless_handled() -> None:
    """Install ``sigterm_is_ctrl_c`` for SIGTERM unless a handler is already set (the
    ``lossbench`` script; ``python -m lossbench`` sets it on its first line)."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, sigterm_is_ctrl_c)


def ignore_interrupts() -> None:
    """SIGINT and SIGTERM ignored from now on: the run's crash watcher (``cli``), a forked
    child that Ctrl-C is not meant for."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def children_ignore_ctrl_c():
    """Processes started inside the block inherit SIGINT ignored (an ignored signal stays
    ignored across exec; a handler does not), so a Ctrl-C at the terminal, sent to the whole
    foreground process group, does not reach them: a pool of processes a launcher starts and
    stops itself (a Dask ``LocalCluster``; the sweep workers it runs set their own handlers).
    This process ignores Ctrl-C inside the block too (the pool starting: seconds); its handler
    is back after it."""
    if not _main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def sigterm_exits(code: int = 0) -> None:
    """SIGTERM ends the process with ``sys.exit(code)`` (its ``finally`` blocks run): the
    storage proxy, a server for which SIGTERM is the normal way to stop."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(code))


class SigtermAsInterrupt:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only)."""

    def __enter__(self):
        self.old = signal.getsignal(signal.SIGTERM) if _main_thread() else None
        if self.old is not None:
            signal.signal(signal.SIGTERM, sigterm_is_ctrl_c)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


class KeepInterrupts:
    """Within the block (main thread only), a KeyboardInterrupt raised by the SIGINT or SIGTERM
    handler is noted: ``raise_pending()`` raises it again, and so does the end of the block,
    unless the interrupt itself ended it (then it propagates as usual).

    Two places in numba lose it. Its compiler calls back into Python through ctypes
    (llvmlite's object cache), and ctypes prints an exception raised in a callback and drops
    it ("Exception ignored on calling ctypes callback function"): the run went on to train.
    And every call of the fused epoch unboxes its kernel arguments by unpickling their
    signature, without checking for failure: an interrupt there becomes "TypeError:
    _get_wrapper_address() missing 1 required positional argument: 'sig'", and the run
    ended as failed instead of interrupted."""

    def __enter__(self):
        self.pending, self.old = None, {}
        if _main_thread():
            for sig in SIGNALS:
                handler = signal.getsignal(sig)
                if callable(handler):  # not SIG_IGN / SIG_DFL / None: leave those alone
                    self.old[sig] = handler
                    signal.signal(sig, self._call)
        return self

    def raise_pending(self) -> None:
        if self.pending is not None:
            raise self.pending

    def _call(self, signum, frame):
        try:
            self.old[signum](signum, frame)
        except KeyboardInterrupt as exc:
            self.pending = exc
            raise

    def __exit__(self, exc_type, exc, tb):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        if self.pending is not None and not (exc_type and issubclass(exc_type, KeyboardInterrupt)):
            raise self.pending from exc  # the exception it became, or none (dropped)
        return False


class HoldInterrupts:
    """Within the block (main thread only), the first SIGINT or SIGTERM is noted, not raised,
    with a line on stderr saying ``what`` is being finished; a second one raises
    KeyboardInterrupt at once. ``signal`` names the first one held; the caller raises it once
    the block's work is done."""

    def __init__(self, what: str = "the run's outputs are written"):
        self.what = what

    def __enter__(self):
        self.signal, self.old = None, {}
        if _main_thread():
            for sig in SIGNALS:
                self.old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._note)
        return self

    def _note(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.signal = signal.Signals(signum).name
        print(
            f"lossbench: {self.signal} received while {self.what}; "
            "finishing them (press Ctrl-C again to abort now)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        return False


class StopOnSignal:
    """A sweep worker's stop: the first Ctrl-C or SIGTERM sets ``stopping`` and raises
    KeyboardInterrupt; later ones only keep ``stopping`` set, so a clean-up in progress
    (marking the trial lost) is never itself interrupted. ``install`` sets the handlers;
    ``watch_pipe`` stops the same way when the coordinator's pipe on stdin closes."""

    def __init__(self):
        self.stopping = threading.Event()  # read by the ask/tell loop and the trial's records
        self._raised = threading.Event()  # the first signal has been raised

    def handler(self, signum, frame):
        self.stopping.set()
        if self._raised.is_set():
            return
        self._raised.set()
        raise KeyboardInterrupt

    def install(self) -> None:
        for sig in SIGNALS:
            signal.signal(sig, self.handler)

    def watch_pipe(self, fd: int = 0) -> None:
        """A daemon thread that reads ``fd`` (the coordinator's pipe) to its end, then stops
        this process as SIGTERM would: the coordinator died. A real SIGTERM to itself, not
        ``_thread.interrupt_main``: the signal also cuts short a blocking call of the main
        thread (a sleep, a lock wait), which a simulated one does not."""

        def wait():
            try:
                while os.read(fd, 1 << 12):  # the raw descriptor: no buffer lock at exit
                    pass
            except OSError:
                pass
            self.stopping.set()
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=wait, daemon=True, name="lossbench-parent-watch").start()
