"""The MLflow side process of ``tracking=mlflow``: ``python -m lossbench.tracking.worker``.

The training process never imports MLflow (about 1.4 s with opening a store, and pure Python
that would hold the GIL beside the epoch loop). It starts this process instead and talks to it
in JSON lines: requests on stdin, replies on stdout.

requests
    ``{"op": "start", "uri", "experiment", "run_name", "tags", "params", "flush_seconds",
    "retry_seconds", "spool_dir", "spool_id", "start_time", "datasets"}``
    ``{"op": "metrics", "items": [[key, value, timestamp_ms, step], ...]}``
    ``{"op": "finish", "state", "tags", "metrics", "artifacts": [path, ...], "model"}``
    (``datasets`` and ``model`` are described in ``lossbench.tracking.models``)
replies (each also carries ``"run"``: the ``spool_id`` of the run's ``start``, so the trainer
hands it to that run only)
    ``{"op": "started", "run_id"}``; ``{"op": "offline", "message", "spool"}`` (the store
    stopped answering: the rest of the run goes to the spool only); ``{"op": "finished",
    "complete", "message", "spool", "model_uri", "model_version"}``; ``{"op": "error",
    "message"}`` (a request it cannot read)

The training process journals every request of a run in the run directory's spool
(``lossbench.tracking.spool``); this process journals what the store did (``store.jsonl``:
the run created, the store failed, the run abandoned). Metrics are sent with ``log_batch``
every ``flush_seconds`` and at the end. A store that fails (after
MLflow's HTTP retries, bounded by ``retry_seconds``) is not tried again for that run, so a dead
server costs bounded time once, not at every epoch; what it did not get stays in the spool for
``python -m lossbench replay``.

One process serves its trainer's runs one after another (a sweep worker pays for ``import
mlflow`` once). If stdin closes during a run (the training process died, even by SIGKILL), the
run is ended as KILLED with a reason tag, so no run stays RUNNING; and once stdin has closed
the process exits, whatever else fails (a watchdog ends it if MLflow itself hangs). Terminal
signals do not reach this process (it runs in its own session); the training process ends the
run for it.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback
from pathlib import Path

from lossbench.tracking.models import log_datasets, log_run_model
from lossbench.tracking.spool import (
    METRICS_PER_BATCH,
    PARAMS_PER_BATCH,
    SPOOL_TAG,
    STORE_RECORDS,
    Spool,
    now_ms,
)
from lossbench.tracking.store import (
    MAX_KEY,
    MAX_NAME,
    MAX_PARAM,
    MAX_TAG,
    bound_http_retries,
    close_sqlite_stores,
    experiment_id,
    open_client,
    shorten,
)
from lossbench.training.crash import crash_reason


class Watchdog:
    """Ends this process ``seconds`` after the trainer's input closed, if it is still there
    (MLflow hanging on a store that neither answers nor refuses)."""

    seconds = 90.0

    @classmethod
    def arm(cls) -> None:
        timer = threading.Timer(cls.seconds, os._exit, args=(3,))
        timer.daemon = True
        timer.start()


def _read_requests(stream, inbox: queue.Queue) -> None:
    """Drain stdin at once (even while MLflow imports) so the trainer never blocks writing."""
    try:
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                inbox.put(json.loads(line))
            except json.JSONDecodeError:
                inbox.put({"op": "unreadable", "line": line[:200]})
    except (OSError, ValueError):
        pass
    finally:
        inbox.put(None)  # end of input, however it ended
        Watchdog.arm()


class Worker:
    def __init__(self, out) -> None:
        self.out = out
        self.run_key: str | None = None  # the spool_id of the run's start, in every reply
        self.client = None
        self.run_id = None
        self.pending: list = []
        self.spool = Spool(None)
        self.offline: str | None = None  # why the store is no longer written for this run
        self.model: dict = {}  # model_uri, model_version of the run's model

    def reply(self, **message) -> None:
        try:
            self.out.write(json.dumps({"run": self.run_key, **message}) + "\n")
            self.out.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the trainer is gone; its input closing will end the run

    def go_offline(self, exc: BaseException) -> None:
        """The store failed: journal why, tell the trainer, send nothing more for this run."""
        traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]  # SQLAlchemy adds the SQL after it
        self.offline = shorten(f"{type(exc).__name__}: {first}", 1000)
        self.pending = []
        self.spool.append({"op": "offline", "error": self.offline})
        self.reply(op="offline", message=self.offline)

    def start(self, req: dict) -> None:
        bound_http_retries(req.get("retry_seconds", 30.0))
        Watchdog.seconds = 3 * float(req.get("retry_seconds", 30.0)) + 30
        folder = req.get("spool_dir")
        self.spool = Spool(Path(folder) if folder else None, STORE_RECORDS)
        try:
            self._create(req)
        except Exception as exc:
            self.go_offline(exc)

    def _create(self, req: dict) -> None:
        # start-up: MLflow imports (about a second) while the reader thread already drains
        # the trainer's requests, so the trainer never waits to write
        from mlflow.entities import Param

        client = open_client(req.get("uri"))
        tags = {shorten(k, MAX_KEY): shorten(v, MAX_TAG) for k, v in req["tags"].items()}
        if req.get("spool_id"):
            tags[SPOOL_TAG] = req["spool_id"]
        run = client.create_run(
            experiment_id(client, req["experiment"]),
            start_time=req.get("start_time"),
            tags=tags,
            run_name=shorten(req["run_name"], MAX_NAME),
        )
        self.client, self.run_id = client, run.info.run_id
        self.spool.append({"op": "created", "run_id": self.run_id, "uri": client.tracking_uri})
        params = [
            Param(shorten(k, MAX_KEY), shorten(v, MAX_PARAM)) for k, v in req["params"].items()
        ]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=params[i : i + PARAMS_PER_BATCH])
        log_datasets(client, self.run_id, req.get("datasets") or [])

    def metrics(self, req: dict) -> None:
        if self.offline is None:
            self.pending.extend(req["items"])

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        if self.offline is not None or not batch:
            return
        from mlflow.entities import Metric  # loaded by start()

        metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in batch]
        try:
            for i in range(0, len(metrics), METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=metrics[i : i + METRICS_PER_BATCH])
        except Exception as exc:
            self.go_offline(exc)

    def finish(self, req: dict) -> None:
        end_time = now_ms()
        self.pending.extend(req.get("metrics", []))
        self.flush()
        if self.offline is None:
            try:
                self._end(req, end_time)
            except Exception as exc:
                self.go_offline(exc)
        self.spool.close()
        self.reply(op="finished", complete=self.offline is None, message=self.offline,
                   **self.model)

    def _end(self, req: dict, end_time: int) -> None:
        from mlflow.entities import RunTag  # loaded by start()

        tags = [RunTag(shorten(k, MAX_KEY), shorten(v, MAX_TAG)) for k, v in req["tags"].items()]
        if tags:
            self.client.log_batch(self.run_id, tags=tags)
        for path in req.get("artifacts", []):
            self.client.log_artifact(self.run_id, path)
        if req.get("model"):
            self.model = log_run_model(self.client, self.run_id, req["model"])
        self.client.set_terminated(self.run_id, req["state"], end_time=end_time)

    def abandon(self, reason: str) -> None:
        """End a run whose training process went away without finishing it."""
        end_time = now_ms()
        self.flush()
        if self.offline is None:
            from mlflow.entities import RunTag  # loaded by start()

            try:
                self.client.log_batch(self.run_id, tags=[
                    RunTag("lossbench.status", "interrupted"),
                    RunTag("lossbench.failure_reason", reason),
                ])  # fmt: skip
                self.client.set_terminated(self.run_id, "KILLED", end_time=end_time)
            except Exception as exc:
                self.go_offline(exc)
        # the spool stays: the store may lack what the trainer sent just before it died
        self.spool.append({"op": "abandoned", "reason": reason, "end_time": end_time,
                           "sent": self.offline is None})  # fmt: skip
        self.spool.close()


def serve_run(worker: Worker, first: dict, inbox: queue.Queue) -> bool:
    """Serve one run from its ``start`` request; False when the input ended."""
    worker.run_key = first.get("spool_id")
    worker.start(first)
    if worker.offline is None:
        worker.reply(op="started", run_id=worker.run_id)
    flush_every = float(first.get("flush_seconds", 2.0))
    last_flush = time.monotonic()
    while True:
        try:
            req = inbox.get(timeout=flush_every)
        except queue.Empty:
            req = {"op": "tick"}
        if req is None:
            try:  # a run that crashed (a fatal signal) left a note naming its kernels
                spool_dir = first.get("spool_dir")
                crashed = crash_reason(Path(spool_dir).parents[1]) if spool_dir else None
                worker.abandon(crashed or "the training process ended without finishing the run")
            except Exception:  # whatever fails, the input has ended: this process ends
                traceback.print_exc()
            return False
        try:
            if req["op"] == "metrics":
                worker.metrics(req)
            elif req["op"] == "finish":
                worker.finish(req)
                return True
            elif req["op"] == "unreadable":
                worker.reply(op="error", message=f"unreadable request: {req['line']!r}")
            if worker.pending and time.monotonic() - last_flush >= flush_every:
                worker.flush()
                last_flush = time.monotonic()
        except Exception as exc:  # a bug here must not leave the run unended
            traceback.print_exc()
            worker.reply(op="error", message=f"{type(exc).__name__}: {exc}")
            if req.get("op") == "finish":
                return True


def _import_mlflow() -> None:
    """Import MLflow now, not at the first run's start: this process is started early (the CLI
    starts it right after composing), so the import overlaps the trainer's set-up."""
    try:
        # start-up: the reason this process exists; with what logging the run's model needs
        # (mlflow.models, mlflow.pyfunc and the loader: about 0.4 s more), while the trainer
        # trains, not after it has finished and waits
        import mlflow.entities  # noqa: F401
        import mlflow.models  # noqa: F401
        import mlflow.pyfunc  # noqa: F401
        import mlflow.tracking  # noqa: F401

        import lossbench.tracking.pyfunc  # noqa: F401
    except Exception:  # a broken MLflow says so at the run's start, where it is reported
        traceback.print_exc()


def main() -> None:
    try:  # background work: on a busy machine the scheduler favours the training process
        os.nice(10)
    except OSError:
        pass
    # Replies own the real stdout; anything MLflow prints (e.g. "View run ... at ...") goes to
    # stderr instead of corrupting the protocol.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_read_requests, args=(sys.stdin, inbox), daemon=True).start()
    _import_mlflow()
    # one process serves the runs of its trainer one after another (a sweep worker's trials)
    try:
        while True:
            first = inbox.get()
            if first is None or first.get("op") != "start":
                if first is None:
                    return
                continue  # a stray request between runs: nothing to attach it to
            if not serve_run(Worker(replies), first, inbox):
                return
    finally:
        # the input has ended (or this loop failed): exit now, without waiting for threads
        # MLflow may have left running, once a sqlite store's log is in its file
        close_sqlite_stores()
        try:
            sys.stderr.flush()
            replies.flush()
        except (OSError, ValueError):
            pass
        os._exit(0)


if __name__ == "__main__":
    main()
