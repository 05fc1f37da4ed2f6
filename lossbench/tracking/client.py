"""The trainer's side of the MLflow side process (``lossbench.tracking.worker``): start it once
per training process, send it JSON-line requests, hand its replies to the run being served."""

from __future__ import annotations

import atexit
import json
import subprocess
import sys
import tempfile
import threading


class SideProcess:
    """The ``lossbench.tracking.worker`` process of this training process, shared by its runs
    one after another (started on first use, ended when this process exits).

    Two threads share it: the training thread (``attach``, ``send``, ``detach``, ``warm``) and
    the reader thread ``lossbench-mlflow`` (``_read_replies``), which reads the replies. What
    both touch is guarded by ``_lock``: ``_runs`` (the trackers attached, by run: the spool id
    of their ``start``), ``_served`` and the position in the stderr log (``died``).

    A run's life here: detached -> ``attach(run_key, tracker)`` (trainer, before its
    ``start`` is sent) -> attached: the reader hands it each reply naming its run, holding
    ``_lock`` while ``tracker.on_reply`` runs -> ``detach(run_key)`` (trainer, once it has
    stopped waiting) -> detached. So ``detach`` returning means no reply of that run is being
    or will be handed over: from then on the tracker's state is the trainer's alone. Replies of
    a run not attached (one whose end the trainer stopped waiting for) are dropped, never given
    to the next run. When the process's output ends, every attached tracker gets an ``error``.
    ``_served`` only goes from False to True (the reader, on a run's first answer)."""

    _current: SideProcess | None = None

    def __init__(self) -> None:
        self.log = tempfile.TemporaryFile(mode="w+")  # its stderr, for error reports
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lossbench.tracking.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the trainer only; it ends the run
        )
        self._lock = threading.Lock()
        self._runs: dict[str, object] = {}  # run key -> its tracker (has ``on_reply``)
        self._served = False  # it has answered a run: MLflow is imported, the store is open
        threading.Thread(target=self._read_replies, name="lossbench-mlflow", daemon=True).start()

    @classmethod
    def get(cls) -> SideProcess:
        if cls._current is None or cls._current.proc.poll() is not None:
            cls._current = SideProcess()
            atexit.register(cls._current.close)
        return cls._current

    @classmethod
    def warm(cls) -> bool:
        """True when this process's side process is alive and has already served a run."""
        side = cls._current
        if side is None or side.proc.poll() is not None:
            return False
        with side._lock:
            return side._served

    def attach(self, run_key: str, tracker) -> None:
        """Hand the replies naming ``run_key`` to ``tracker.on_reply`` (from the reader)."""
        with self._lock:
            self._runs[run_key] = tracker

    def detach(self, run_key: str) -> None:
        """Stop handing ``run_key``'s replies over; returns once none is being handed over."""
        with self._lock:
            self._runs.pop(run_key, None)

    def send(self, **request) -> str | None:
        """Send a request; the error text if the process is gone."""
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            return None
        except (BrokenPipeError, OSError, ValueError):
            return self.died()

    def died(self) -> str:
        """Why the process is gone: the tail of its stderr."""
        with self._lock:
            return self._died()

    def _died(self) -> str:
        self.log.seek(0)
        tail = self.log.read()[-2000:].strip()
        return f"the MLflow process ended unexpectedly{': ' + tail if tail else ''}"

    def _read_replies(self) -> None:
        for line in self.proc.stdout:
            try:
                reply = json.loads(line)
            except json.JSONDecodeError:
                continue  # not a reply (the worker keeps stdout for replies; be safe anyway)
            with self._lock:
                if reply.get("op") in ("started", "offline", "finished"):
                    self._served = True
                tracker = self._runs.get(reply.get("run"))
                if tracker is not None:
                    tracker.on_reply(reply)
        with self._lock:
            gone = {"op": "error", "message": self._died()}
            for tracker in list(self._runs.values()):
                tracker.on_reply(gone)

    def close(self) -> None:
        """At exit: closing its input ends the side process. Not waiting for it spares the
        trainer MLflow's interpreter teardown; every run it served was already acknowledged."""
        try:
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass


def prestart_side_process() -> None:
    """Start the side process now, before the run's set-up, so that its ``import mlflow``
    (about a second, on the other core) overlaps composing, loading the data and the kernels
    rather than the epochs; the run's tracker then finds it running. Unused (a run that turns
    out not to track), it exits when this process does."""
    SideProcess.get()
