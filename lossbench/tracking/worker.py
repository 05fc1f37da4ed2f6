"""The MLflow side process of ``tracking=mlflow``: ``python -m lossbench.tracking.worker``.

The training process never imports MLflow (about 1.4 s with opening a store, and pure Python
that would hold the GIL beside the epoch loop). It starts this process instead and talks to it
in JSON lines: requests on stdin, replies on stdout.

requests
    ``{"op": "start", "uri", "experiment", "run_name", "tags", "params", "flush_seconds"}``
    ``{"op": "metrics", "items": [[key, value, timestamp_ms, step], ...]}``
    ``{"op": "finish", "state", "tags", "metrics", "artifacts": [path, ...]}``
replies
    ``{"op": "started", "run_id"}``, ``{"op": "finished"}``, ``{"op": "error", "message"}``

Metrics are sent with ``log_batch`` every ``flush_seconds`` and at the end. One process serves
its trainer's runs one after another (a sweep worker pays for ``import mlflow`` once). If stdin
closes during a run (the training process died, even by SIGKILL), the run is ended as KILLED
with a reason tag, so no run stays RUNNING. Terminal signals do not reach this process (it runs
in its own session); the training process ends the run for it.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback

MAX_KEY, MAX_PARAM, MAX_TAG, MAX_NAME = 250, 6000, 8000, 250  # MLflow's limits
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000


def shorten(text, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def experiment_id(client, name: str) -> str:
    """The id of the experiment ``name``, created if it does not exist yet."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def _read_requests(stream, inbox: queue.Queue) -> None:
    """Drain stdin at once (even while MLflow imports) so the trainer never blocks writing."""
    for line in stream:
        line = line.strip()
        if line:
            inbox.put(json.loads(line))
    inbox.put(None)  # end of input


class Worker:
    def __init__(self, out) -> None:
        self.out = out
        self.client = None
        self.run_id = None
        self.pending: list = []

    def reply(self, **message) -> None:
        try:
            self.out.write(json.dumps(message) + "\n")
            self.out.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the trainer is gone; its input closing will end the run

    def start(self, req: dict) -> None:
        # start-up: MLflow imports (about a second) while the reader thread already drains
        # the trainer's requests, so the trainer never waits to write
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(req["uri"]) if req.get("uri") else MlflowClient()
        tags = {shorten(k, MAX_KEY): shorten(v, MAX_TAG) for k, v in req["tags"].items()}
        run = client.create_run(
            experiment_id(client, req["experiment"]),
            tags=tags,
            run_name=shorten(req["run_name"], MAX_NAME),
        )
        self.client, self.run_id = client, run.info.run_id
        params = [
            Param(shorten(k, MAX_KEY), shorten(v, MAX_PARAM)) for k, v in req["params"].items()
        ]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=params[i : i + PARAMS_PER_BATCH])

    def flush(self) -> None:
        from mlflow.entities import Metric  # loaded by start()

        batch, self.pending = self.pending, []
        metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in batch]
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + METRICS_PER_BATCH])

    def finish(self, req: dict) -> None:
        from mlflow.entities import RunTag  # loaded by start()

        self.pending.extend(req.get("metrics", []))
        self.flush()
        tags = [RunTag(shorten(k, MAX_KEY), shorten(v, MAX_TAG)) for k, v in req["tags"].items()]
        if tags:
            self.client.log_batch(self.run_id, tags=tags)
        for path in req.get("artifacts", []):
            self.client.log_artifact(self.run_id, path)
        self.client.set_terminated(self.run_id, req["state"])

    def abandon(self, reason: str) -> None:
        """End a run whose training process went away without finishing it."""
        from mlflow.entities import RunTag  # loaded by start()

        try:
            self.flush()
        finally:
            self.client.log_batch(
                self.run_id,
                tags=[
                    RunTag("lossbench.status", "interrupted"),
                    RunTag("lossbench.failure_reason", reason),
                ],
            )
            self.client.set_terminated(self.run_id, "KILLED")


def serve_run(worker: Worker, first: dict, inbox: queue.Queue) -> bool:
    """Serve one run from its ``start`` request; False when the input ended."""
    try:
        worker.start(first)
    except Exception as exc:
        worker.reply(op="error", message=f"{type(exc).__name__}: {exc}")
        return True
    worker.reply(op="started", run_id=worker.run_id)
    flush_every = float(first.get("flush_seconds", 2.0))
    last_flush = time.monotonic()
    while True:
        try:
            req = inbox.get(timeout=flush_every)
        except queue.Empty:
            req = {"op": "tick"}
        try:
            if req is None:
                worker.abandon("the training process ended without finishing the run")
                return False
            if req["op"] == "metrics":
                worker.pending.extend(req["items"])
            elif req["op"] == "finish":
                worker.finish(req)
                worker.reply(op="finished")
                return True
            if worker.pending and time.monotonic() - last_flush >= flush_every:
                worker.flush()
                last_flush = time.monotonic()
        except Exception as exc:
            traceback.print_exc()
            worker.reply(op="error", message=f"{type(exc).__name__}: {exc}")
            if req is not None and req.get("op") == "finish":
                return True


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
    # one process serves the runs of its trainer one after another (a sweep worker's trials)
    while True:
        first = inbox.get()
        if first is None or not serve_run(Worker(replies), first, inbox):
            return


if __name__ == "__main__":
    main()
