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
    one after another (started on first use, ended when this process exits)."""

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
        self.tracker = None  # the run being served
        self.served = False  # it has answered a run: MLflow is imported, the store is open
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
        return side is not None and side.proc.poll() is None and side.served

    def send(self, **request) -> str | None:
        """Send a request; the error text if the process is gone."""
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            return None
        except (BrokenPipeError, OSError, ValueError):
            return self.died()

    def died(self) -> str:
        self.log.seek(0)
        tail = self.log.read()[-2000:].strip()
        return f"the MLflow process ended unexpectedly{': ' + tail if tail else ''}"

    def _read_replies(self) -> None:
        for line in self.proc.stdout:
            try:
                reply = json.loads(line)
            except json.JSONDecodeError:
                continue  # not a reply (the worker keeps stdout for replies; be safe anyway)
            if reply.get("op") in ("started", "offline", "finished"):
                self.served = True
            tracker = self.tracker
            if tracker is not None:
                tracker.on_reply(reply)
        tracker = self.tracker
        if tracker is not None:
            tracker.on_reply({"op": "error", "message": self.died()})

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
