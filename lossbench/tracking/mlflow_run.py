"""MLflow, the built-in tracker (``tracking=mlflow``, the default; off with ``tracking=none``):
``MlflowTracker`` is its implementation of ``lossbench.tracking.base.Tracker``, ``MlflowRun``
one MLflow run fed from the epoch loop.

Per run: the resolved config as params (dotted keys), provenance tags, per-epoch metrics with
``step=epoch`` (0-based), summary metrics, and artifacts (resolved config, history.csv,
model.npz, loss_curve.png, confusion_matrix.png for classification). Run states: FINISHED
(finished, or stopped by a hook), FAILED with ``lossbench.failure_reason`` (diverged, failed),
KILLED (Ctrl-C, SIGTERM).

Cost: ``import mlflow`` and opening a store take about 1.4 s, longer than a default training
run, and in a thread of the training process that import held the GIL and slowed a 200-epoch
digits run 5x. So the training process never imports MLflow: ``start`` checks the store
is reachable (fast, before training) and starts ``lossbench.tracking.worker`` in a side process,
which imports MLflow and creates the run on the other core while training goes on. Each epoch
sends one JSON line; the worker sends metrics with ``log_batch`` every ``tracking.flush_seconds``.
``end`` sends the summary and artifact paths and waits for the worker to end the run.

Nothing is lost when the store fails mid-run: the trainer journals every request in the run
directory's spool (``lossbench.tracking.spool``; one small write per epoch), the worker stops
trying a store that failed (after retries bounded by ``tracking.retry_seconds``), and the
run's end says its record is incomplete (exit 1 when ``tracking.required``), naming ``python
-m lossbench replay RUN_DIR``; a record that reached the store complete removes the spool.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import subprocess
import threading
import time
import warnings
from pathlib import Path

from omegaconf import OmegaConf

from lossbench._version import __version__
from lossbench.config.schemas import MlflowTrackingConfig
from lossbench.errors import ConfigError, require
from lossbench.process import one_blas_thread
from lossbench.tracking.base import EndedRun, Replayed, SweepChild, Tracker
from lossbench.tracking.client import SideProcess, prestart_side_process
from lossbench.tracking.mlflow_parent import MlflowParentRun
from lossbench.tracking.models import check_model_name, describe_datasets, describe_model
from lossbench.tracking.spool import Spool, new_spool_id, spool_folder
from lossbench.tracking.store import precheck, resolve_uri
from lossbench.training import outputs
from lossbench.urls import mask_text

STEP_BASE = 0  # metrics use step = epoch, 0-based like history.csv
SUMMARY_KEYS = ("compile_seconds", "train_seconds")


def flatten(node, prefix: str = "") -> dict[str, str]:
    """Nested dicts to dotted keys; lists and scalars as strings. Unset values (``???``) are
    left out."""
    out = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if value == "???":
            continue
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = str(value)
    return out


def default_run_name(cfg) -> str:
    lr = cfg.optimizer.get("lr")
    parts = [cfg.model.name, cfg.loss.name, cfg.optimizer.name]
    if lr is not None:
        parts.append(f"lr{lr:g}")
    return "-".join(parts)


@functools.cache
def _git_commit(folder: Path) -> str | None:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_tags(run, tracking) -> dict[str, str]:
    import numba  # already loaded by the kernels; imported here to read its version

    tags = {
        "lossbench.version": __version__,
        "lossbench.dtype": str(run.config.trainer.dtype),
        "lossbench.numba_version": numba.__version__,
        "lossbench.cpu": f"{_cpu_name()} ({os.cpu_count()} cores)",
        "lossbench.seed": str(run.config.seed),
    }
    for group, source in run.sources.items():
        tags[f"lossbench.{group}"] = str(run.config[group].name)
        tags[f"lossbench.{group}.plugin"] = source["plugin"]
        tags[f"lossbench.{group}.distribution"] = source["distribution"]
    if run.output_dir is not None:
        tags["lossbench.output_dir"] = str(Path(run.output_dir).resolve())
    commit = _git_commit(Path.cwd())
    if commit:
        tags["mlflow.source.git.commit"] = commit
    tags.update({str(k): str(v) for k, v in (tracking.tags or {}).items()})
    return tags  # the side process shortens what exceeds MLflow's limits


class MlflowRun:
    """One MLflow run, fed from the epoch loop, written by the side process
    ``lossbench.tracking.worker`` (so the training process never imports MLflow).

    ``begin=False`` makes the tracker without sending the run's start (``begin`` sends it):
    ``record_ended_runs`` sends several runs before waiting for any; ``check=False`` skips the
    store's pre-run check (the caller checked it for an earlier run of this process).

    Threads. The training thread makes, feeds and ends the run; the side process's reader
    thread calls ``on_reply`` (while attached: ``SideProcess.attach``). What both touch
    (``run_id``, ``offline``, ``error``, ``result``) is written and read under ``_lock``; the
    reader writes only in ``on_reply``, the trainer only in ``_send`` and ``await_finish``.
    ``state``, and who moves it:

    - ``starting``: the start is sent (or not: the store was unreachable, spool only).
    - ``running``: the reader got ``started`` (``run_id`` set): BLAS gets its threads back.
    - ``offline``: the reader got ``offline`` (the store failed; the rest goes to the spool).
    - ``ended``: the reader got ``finished`` (``result``) or ``error``, or the trainer found
      the side process gone (a send failed) or stopped waiting for the end.

    It only moves forward. ``finished`` is set once the reader has written its last word, so
    ``result`` is whole when ``finished.wait`` returns; ``finish`` detaches the run from the
    side process (a barrier: no reply is handed over after it), so afterwards, e.g. in
    ``incomplete``, no reader thread writes any more, even when the trainer stopped waiting."""

    # A sweep's worker sets this: its store was checked before the first trial, so a store
    # unreachable at a trial's start is a fault mid-sweep, not bad input; the trial trains on
    # with its whole record spooled (``replay`` sends it later) instead of failing at once.
    spool_when_unreachable = False

    def __init__(self, run, tracking, begin: bool = True, check: bool = True):
        self.tracking = tracking
        self.uri = resolve_uri(tracking)
        self._lock = threading.Lock()  # the trainer's and the reader's shared state: below
        self.error: str | None = None  # the side process is gone (or never answered)
        self.offline: str | None = None  # the store failed: the rest goes to the spool only
        self.unreachable = check and self._unreachable()  # nothing is sent: spool only
        self.result: dict = {}
        self.run_id: str | None = None
        self.finished = threading.Event()
        self.spool = Spool(spool_folder(run.output_dir, new_spool_id()))
        # a cold side process imports MLflow beside the epochs: see process.one_blas_thread
        cold = not self.unreachable and not SideProcess.warm()
        self.restore_blas = one_blas_thread() if cold else None
        self.side = SideProcess.get()
        self.retry_seconds = float(tracking.get("retry_seconds", 30.0))
        self.start_request = dict(
            op="start",
            uri=self.uri,
            experiment=tracking.experiment,
            run_name=tracking.run_name or default_run_name(run.config),
            tags=run_tags(run, tracking),
            params={k: mask_text(v) for k, v in  # a tracking.uri's password stays out
                    flatten(OmegaConf.to_container(run.config, resolve=True)).items()},
            flush_seconds=float(tracking.flush_seconds),
            retry_seconds=self.retry_seconds,
            spool_dir=str(self.spool.folder) if self.spool.folder is not None else None,
            spool_id=self.spool.folder.name if self.spool.folder is not None else new_spool_id(),
            start_time=int(time.time() * 1000),
            datasets=describe_datasets(run),
        )
        self.run_key = self.start_request["spool_id"]  # the side process's replies name it
        if begin:
            self.begin()

    @property
    def state(self) -> str:
        """``starting``, ``running``, ``offline`` or ``ended`` (the class docstring)."""
        with self._lock:
            if self.finished.is_set() or self.error is not None:
                return "ended"
            if self.offline is not None:
                return "offline"
            return "running" if self.run_id is not None else "starting"

    def _unreachable(self) -> bool:
        """Check the store (``precheck``); True when it cannot be reached and the record goes
        to the spool only (``spool_when_unreachable``), else its error is raised."""
        try:
            precheck(self.uri)
        except ConfigError as exc:
            if not MlflowRun.spool_when_unreachable:
                raise
            self.offline = str(exc).split(". Fix:")[0] + " when the run started"
            return True
        return False

    def begin(self) -> None:
        """Send the run's start; the side process's replies come to this tracker."""
        self.side.attach(self.run_key, self)
        self._send(**self.start_request)

    def _send(self, **request) -> None:
        """Journal the request (the source for a replay), then hand it to the side process."""
        if request["op"] == "start":
            keys = ("spool_id", "start_time", "uri", "experiment", "run_name", "tags", "params",
                    "datasets")
            self.spool.append({"op": "start", **{k: request[k] for k in keys}})
        elif request["op"] == "metrics":
            self.spool.append(request)
        with self._lock:
            sending = self.error is None and not self.unreachable
        error = self.side.send(**request) if sending else None  # outside: send may wait
        if error is not None:
            with self._lock:
                self.error = self.error or error

    def on_reply(self, reply: dict) -> None:
        """Called from the side process's reader thread, while the run is attached."""
        op = reply.get("op")
        with self._lock:
            if self.finished.is_set():
                return  # ended: the last word is said
            if op == "started":
                self.run_id = reply["run_id"]
            elif op == "offline":
                self.offline = reply.get("message", "the store failed")
            elif op == "finished":
                self.result = reply
            elif op == "error":
                self.error = self.error or reply.get("message", "unknown error")
            if op in ("finished", "error"):
                self.finished.set()

    def incomplete(self) -> str | None:
        """Why the run's MLflow record is incomplete, or None."""
        with self._lock:
            if self.result.get("complete"):
                return None
            why = self.result.get("message") or self.offline or self.error
        return why or "the MLflow process did not confirm the run's end"

    def report(self, run) -> None:
        """Say, honestly, that the record is incomplete and where the rest is kept."""
        why = self.incomplete()
        if why is None:
            return
        spool = self.spool.folder
        if not self.spool.broken and self.spool.path.exists():
            kept = (
                f"what it did not receive is kept in {spool}; send it with: python -m "
                f"lossbench replay {run.output_dir} (add --uri URI for another store)"
            )
        else:
            lost = self.spool.broken or "no spool"
            kept = f"and it could not be kept for a replay ({lost})"
        message = f"the MLflow record of this run is incomplete ({why}); {kept}."
        if self.tracking.required:
            run.record_incomplete(message)
            if run.output_dir is not None and run.status != "rejected":
                try:  # summary.json was written before the record ended: say it there too
                    outputs.write_summary(Path(run.output_dir) / "summary.json", run)
                except OSError:
                    pass
        else:
            warnings.warn(message, stacklevel=3)

    def release_blas(self) -> None:
        """Give BLAS its threads back (training thread only: never while a GEMM runs)."""
        if self.restore_blas is not None:
            self.restore_blas()
            self.restore_blas = None

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        if self.restore_blas is not None and self.state != "starting":
            self.release_blas()
        ts = int(time.time() * 1000)
        items = [[k, float(v), ts, epoch + STEP_BASE] for k, v in metrics.items() if k != "epoch"]
        self._send(op="metrics", items=items)

    def log_history(self, history: list[dict]) -> None:
        """Every epoch of a finished history in one request (``step`` = epoch), as
        ``log_epoch`` would have sent them one by one."""
        ts = int(time.time() * 1000)
        items = [[k, float(v), ts, h["epoch"] + STEP_BASE] for h in history
                 for k, v in h.items() if k != "epoch"]  # fmt: skip
        self._send(op="metrics", items=items)

    def log_steps(self, key_values: dict[str, list[float]]) -> None:
        """Per-step series (``step`` = index) in one request: the lr range test's curves."""
        ts = int(time.time() * 1000)
        items = [[k, float(v), ts, i] for k, vs in key_values.items()
                 for i, v in enumerate(vs) if math.isfinite(v)]  # fmt: skip
        self._send(op="metrics", items=items)

    def finish(self, run, status: str, artifacts=(), metrics: dict | None = None,
               model_folder: Path | None = None) -> None:  # fmt: skip
        """End the MLflow run with ``artifacts`` (paths), the summary plus ``metrics``, and the
        model written into ``model_folder`` (None: no model)."""
        self.release_blas()
        try:
            request = self.send_finish(run, status, list(artifacts), metrics or {}, model_folder)
            self.await_finish(request)
        finally:
            self.side.detach(self.run_key)  # no reply reaches this run from here on
            self.spool.close()
        self.settle(run)

    def settle(self, run) -> None:
        """After the end: the spool goes when the store has the whole record, else the run
        says its record is incomplete (``report``)."""
        if self.incomplete() is None:
            self.spool.discard()  # the store has the whole record
        self.report(run)

    def send_finish(self, run, status: str, artifacts: list, metrics: dict,
                    model_folder: Path | None):  # fmt: skip
        """Send the run's end (tags, summary metrics, ``artifacts``, the model written into
        ``model_folder``, None: no model) without waiting; returns the request."""
        ts = int(time.time() * 1000)
        best = run.best_epoch
        summary = {k: run.timings[k] for k in SUMMARY_KEYS if k in run.timings}
        summary.update(metrics)
        if best is not None:
            summary["best_epoch"] = best
            summary["best_val_loss"] = run.history[best]["val_loss"]
        model = self._model(run, model_folder) if model_folder is not None else None
        state = {"finished": "FINISHED", "stopped": "FINISHED", "interrupted": "KILLED"}
        request = dict(
            op="finish", state=state.get(status, "FAILED"), tags=self._end_tags(run, status),
            metrics=[[k, float(v), ts, 0] for k, v in summary.items()],
            artifacts=[str(p) for p in artifacts], model=model, end_time=ts,
        )  # fmt: skip
        self._send(**{k: v for k, v in request.items() if k != "end_time"})
        return request

    def _end_tags(self, run, status: str) -> dict:
        tags = {"lossbench.status": status, "lossbench.path": run.path}
        if run.compile:  # how many functions the run compiled, and how many it loaded
            tags["lossbench.compiled"] = str(len(run.compile["compiled"]))
            tags["lossbench.loaded_from_cache"] = str(len(run.compile["loaded_from_cache"]))
        if status not in ("finished", "stopped"):
            tags["lossbench.phase"] = run.phase
        if run.error:
            tags["lossbench.failure_reason"] = run.error
        if run.stop_reason:
            tags["lossbench.stop_reason"] = run.stop_reason
        if run.read_from:
            tags["lossbench.read_from"] = run.read_from
        return tags

    def await_finish(self, request: dict) -> None:
        """Wait for the side process to end the run (a store that does not answer costs at
        most its retry budget, twice: the send that failed and this end); if the record is
        incomplete, keep its end, and its files, in the spool for a replay."""
        # the worker may still be importing MLflow: this wait is tracking's one-time cost
        limit = 60 + 3 * self.retry_seconds
        with self._lock:
            waits = self.error is None and not self.unreachable
        if waits and not self.finished.wait(timeout=limit):
            with self._lock:
                if not self.finished.is_set():  # its end may have come just now
                    self.error = f"the MLflow process did not end the run within {limit:.0f} s"
        if self.incomplete() is None:
            return
        model = request["model"]
        if model is not None:  # its data folder, relative to the spool folder
            model = {**model, "data": self.spool.keep_folder(model["data"])}
        self.spool.append({
            "op": "finish", "state": request["state"], "tags": request["tags"],
            "metrics": request["metrics"], "end_time": request["end_time"],
            "artifacts": self.spool.keep(request["artifacts"]), "model": model,
        })  # fmt: skip

    def _model(self, run, folder: Path) -> dict:
        """The run's model request: its predictor's folder, registered if asked to."""
        tags = {"lossbench.source": "run", "lossbench.data": str(run.config.data.name),
                "lossbench.model": str(run.config.model.name)}  # fmt: skip
        tags.update({k: v for k, v in (self.tracking.tags or {}).items()
                     if str(k) in ("lossbench.study", "lossbench.trial")})  # fmt: skip
        register = self.tracking.get("register_model")
        return describe_model(run, folder, register, tags)


def record_ended_runs(runs: list) -> None:
    """Record runs that have already ended (a sweep's epoch counts answered from a longer run)
    as MLflow runs: params, tags, dataset inputs, per-epoch metrics and summary, without their
    files or a model. All are sent before any reply is awaited, so the store's round trips
    overlap (one run at a time took ~0.3 s each); each keeps its own spool, as any run's, for
    a replay when the store fails. ``runs``: (run, its MLflow options). The store was checked
    for an earlier run of this process."""
    if not runs:
        return
    trackers = [MlflowRun(run, options, begin=False, check=False) for run, options in runs]
    runs = [run for run, _ in runs]
    requests = []
    try:
        for tracker, run in zip(trackers, runs, strict=True):
            tracker.begin()
            tracker.log_history(run.history)
            requests.append(tracker.send_finish(run, run.status, [], {}, model_folder=None))
        for tracker, request in zip(trackers, requests, strict=True):
            tracker.await_finish(request)
    finally:
        for tracker in trackers:
            tracker.side.detach(tracker.run_key)
            tracker.spool.close()
    for tracker, run in zip(trackers, runs, strict=True):
        tracker.settle(run)


def check_options(tracking) -> None:
    """Refuse tracking options MLflow or the side process cannot use, before anything runs
    (an empty experiment trained fully, then failed with a spool)."""
    check_model_name("tracking.register_model", tracking.get("register_model"))
    experiment = tracking.get("experiment")
    require(isinstance(experiment, str) and experiment.strip() != "", "tracking.experiment",
            repr(experiment), "it names the MLflow experiment the run goes to, so it must not "
            "be empty", "lossbench")  # fmt: skip
    for key, example in (("retry_seconds", 30), ("flush_seconds", 2)):
        value = float(tracking.get(key, example))
        least = 0 if key == "retry_seconds" else 0.01
        require(math.isfinite(value) and value >= least, f"tracking.{key}", f"{value:g}",
                f"it must be a number of seconds >= {least:g}", example)  # fmt: skip



class MlflowTracker(Tracker):
    """MLflow behind the tracker protocol: ``start`` checks the options and the store and
    hands the run to the side process (``MlflowRun``); a store that cannot be written stops
    the run before training unless ``tracking.required=false`` (then a warning, no record)."""

    name = "mlflow"
    options = MlflowTrackingConfig
    parent = MlflowParentRun  # the study's parent run, opened by the sweep's coordinator
    replays = True  # the spool (lossbench.tracking.spool): python -m lossbench replay

    def __init__(self, run, options):
        super().__init__(run, options)
        self.mlrun: MlflowRun | None = None
        self.artifacts: list[Path] = []
        self.model_folder: Path | None = None
        self.summary: dict[str, float] = {}  # log_steps' summary metrics, sent at the end

    @classmethod
    def prestart(cls, options) -> None:
        prestart_side_process()  # MLflow's import overlaps loading the data and kernels


    @classmethod
    def as_child(cls, options, cfg, child: SweepChild) -> None:
        """Tags tying the trial's MLflow run to its study, its number and the parent run
        (``mlflow.parentRunId``: a nested run), and a run name saying which trial it is."""
        tags = options.get("tags")
        if tags is None:
            return
        tags["lossbench.study"] = child.study
        tags["lossbench.trial"] = str(child.trial)
        tags["lossbench.role"] = "trial"
        name = f"{child.trial}: {default_run_name(cfg)}"
        if child.repeat is not None:
            tags["lossbench.repeat"] = str(child.repeat)
            name += f" (seed {cfg.seed})"
        if child.read_from is not None:
            tags["lossbench.read_from_trial"] = str(child.read_from)
            name += f", {cfg.trainer.epochs} epochs of trial {child.read_from}'s run"
        if child.parent_id:
            tags["mlflow.parentRunId"] = child.parent_id
        options.run_name = name

    @classmethod
    def as_probe(cls, options, cfg, probe: str) -> None:
        """``lr_find-MODEL-LOSS-OPTIMIZER-LR`` as the run's name, unless one is given."""
        if not options.get("run_name"):
            options.run_name = f"{probe}-{default_run_name(cfg)}"

    @classmethod
    def record_ended(cls, ended: list[EndedRun]) -> None:
        """Runs with files (the answer that logs a model) one by one, with their files and
        model; the others all sent before any reply is awaited (``record_ended_runs``)."""
        for entry in ended:
            if entry.files or entry.model is not None:
                tracker = MlflowRun(entry.run, entry.options, check=False)
                tracker.log_history(entry.run.history)
                model = entry.model / "model-data" if entry.model is not None else None
                tracker.finish(entry.run, entry.run.status, artifacts=entry.files,
                               model_folder=model)  # fmt: skip
        record_ended_runs([(e.run, e.options) for e in ended
                           if not e.files and e.model is None])  # fmt: skip

    @classmethod
    def replay(cls, target: Path, uri: str | None) -> Replayed:
        # start-up: the spool's replay imports MLflow, for python -m lossbench replay only
        from lossbench.tracking.spool import replay_folder

        return replay_folder(Path(target), uri)

    def start(self) -> None:
        check_options(self.config)  # bad input, whatever tracking.required says
        try:
            self.mlrun = MlflowRun(self.run, self.config)
        except ConfigError as exc:
            if self.config.required:
                raise
            warnings.warn(f"MLflow tracking is off for this run: {exc}", stacklevel=3)

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        if self.mlrun is not None:
            self.mlrun.log_epoch(epoch, metrics)

    def log_steps(self, series: dict[str, list[float]], summary: dict[str, float]) -> None:
        if self.mlrun is not None:
            self.mlrun.log_steps(series)  # step = index; non-finite values left out
        self.summary.update(summary)

    def log_artifacts(self, paths: list[Path]) -> None:
        self.artifacts += list(paths)

    def log_model(self, folder: Path) -> None:
        self.model_folder = folder / "model-data"  # the Predictor folder MLflow logs

    def end(self, status: str) -> None:
        if self.mlrun is None:
            return
        run = self.run
        if run.history and status in ("diverged",):
            # the epoch that diverged is in the history but on_epoch_end did not see it
            last = run.history[-1]
            self.mlrun.log_epoch(last["epoch"], last)
        self.mlrun.finish(run, status, artifacts=self.artifacts, metrics=self.summary,
                          model_folder=self.model_folder)  # fmt: skip

    def incomplete(self) -> str | None:
        # said by MlflowRun.report at the end (run.record_incomplete, or a warning)
        return None if self.mlrun is None else self.mlrun.incomplete()
