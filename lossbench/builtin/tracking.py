"""MLflow tracking as a lifecycle plugin (``tracking=mlflow``, the default; off with
``tracking=none``).

Per run: the resolved config as params (dotted keys), provenance tags, per-epoch metrics with
``step=epoch`` (0-based), summary metrics, and artifacts (resolved config, history.csv,
model.npz, loss_curve.png, confusion_matrix.png for classification). Run states: FINISHED
(finished, or stopped by a hook), FAILED with ``lossbench.failure_reason`` (diverged, failed),
KILLED (Ctrl-C, SIGTERM).

Cost: ``import mlflow`` and opening a store take about 1.4 s, longer than a default training
run, and in a thread of the training process that import held the GIL and slowed a 200-epoch
digits run 5x. So the training process never imports MLflow: ``on_run_start`` checks the store
is reachable (fast, before training) and starts ``lossbench.mlflow_worker`` in a side process,
which imports MLflow and creates the run on the other core while training goes on. Each epoch
sends one JSON line; the worker sends metrics with ``log_batch`` every ``tracking.flush_seconds``.
``on_run_end`` sends the summary and artifact paths and waits for the worker to end the run.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from lossbench.errors import ConfigError
from lossbench.hookspecs import hookimpl
from lossbench.mlflow_worker import MAX_KEY, MAX_TAG, shorten

_KEY = "mlflow"
STEP_BASE = 0  # metrics use step = epoch, 0-based like history.csv
SUMMARY_KEYS = ("compile_seconds", "train_seconds")
MAX_NAME = 250  # MLflow's limit on run names; the worker shortens params and tags


@dataclass
class MlflowTrackingConfig:
    """Options of ``tracking=mlflow``."""

    name: str = "mlflow"
    uri: str | None = None  # else $MLFLOW_TRACKING_URI, else MLflow's default (./mlflow.db)
    experiment: str = "lossbench"
    run_name: str | None = None  # default: model-loss-optimizer-lr
    tags: dict[str, str] = field(default_factory=dict)
    required: bool = True  # False: a tracking failure warns and training goes on
    flush_seconds: float = 2.0


def flatten(node, prefix: str = "") -> dict[str, str]:
    """Nested dicts to dotted keys; lists and scalars as strings."""
    out = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = str(value)
    return out


def resolve_uri(tc) -> str | None:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else None (MLflow's own default)."""
    return tc.uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def default_run_name(cfg) -> str:
    lr = cfg.optimizer.get("lr")
    parts = [cfg.model.name, cfg.loss.name, cfg.optimizer.name]
    if lr is not None:
        parts.append(f"lr{lr:g}")
    return "-".join(parts)


def precheck(uri: str | None) -> None:
    """Fail fast, before training, when the store is obviously unusable."""
    fix = (
        "Fix: start the server or correct tracking.uri / MLFLOW_TRACKING_URI, or train without "
        "tracking (tracking=none), or keep training when tracking fails "
        "(tracking.required=false)."
    )
    if uri is None:
        folder = Path.cwd()
        if not os.access(folder, os.W_OK):
            raise ConfigError(
                f"MLflow's default store ./mlflow.db cannot be written: {folder} is not "
                f"writable. {fix}"
            )
        return
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]  # postgresql+psycopg2 -> postgresql
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                r.read()
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(
                f"the MLflow tracking server {uri} is not reachable ({reason}). {fix}"
            ) from None
    elif scheme == "sqlite":
        path = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
        if path is not None and str(path) not in ("", ":memory:"):
            folder = path.parent if str(path.parent) else Path.cwd()
            writable = os.access(path, os.W_OK) if path.exists() else os.access(folder, os.W_OK)
            if not folder.is_dir() or not writable:
                raise ConfigError(
                    f"the MLflow store {uri} cannot be written ({path} is not writable or its "
                    f"folder does not exist). {fix}"
                )
    elif scheme in ("postgresql", "postgres", "mysql", "mssql") and parsed.hostname:
        port = parsed.port or {"mysql": 3306, "mssql": 1433}.get(scheme, 5432)
        try:
            socket.create_connection((parsed.hostname, port), timeout=5).close()
        except OSError as exc:
            raise ConfigError(
                f"the MLflow database {parsed.hostname}:{port} is not reachable ({exc}). {fix}"
            ) from None


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


def run_tags(run, tc) -> dict[str, str]:
    import numba

    from lossbench import __version__

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
    tags.update({str(k): str(v) for k, v in (tc.tags or {}).items()})
    return {shorten(k, MAX_KEY): shorten(v, MAX_TAG) for k, v in tags.items()}


class SideProcess:
    """The ``lossbench.mlflow_worker`` process of this training process, shared by its runs
    one after another (started on first use, ended when this process exits)."""

    _current: SideProcess | None = None

    def __init__(self) -> None:
        self.log = tempfile.TemporaryFile(mode="w+")  # its stderr, for error reports
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lossbench.mlflow_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the trainer only; it ends the run
        )
        self.tracker: Tracker | None = None  # the run being served
        threading.Thread(target=self._read_replies, name="lossbench-mlflow", daemon=True).start()

    @classmethod
    def get(cls) -> SideProcess:
        if cls._current is None or cls._current.proc.poll() is not None:
            cls._current = SideProcess()
            atexit.register(cls._current.close)
        return cls._current

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


class Tracker:
    """One MLflow run, fed from the epoch loop, written by the side process
    ``lossbench.mlflow_worker`` (so the training process never imports MLflow)."""

    def __init__(self, run, tc):
        from omegaconf import OmegaConf

        self.tc = tc
        self.uri = resolve_uri(tc)
        precheck(self.uri)
        self.error: str | None = None
        self.warned = False
        self.run_id: str | None = None
        self.finished = threading.Event()
        self.blas_limit = None
        starting = SideProcess._current is None or SideProcess._current.proc.poll() is not None
        if starting and (os.cpu_count() or 1) <= 2:
            # While the side process imports MLflow (about 1.4 s of CPU), a 2-thread BLAS in the
            # trainer fights it for 2 cores: measured, a 200-epoch digits run's epochs took 4x
            # longer. One BLAS thread until the run exists costs nothing on small models.
            from threadpoolctl import threadpool_limits

            self.blas_limit = threadpool_limits(limits=1, user_api="blas")
        self.side = SideProcess.get()
        self.side.tracker = self
        self._send(
            op="start",
            uri=self.uri,
            experiment=tc.experiment,
            run_name=shorten(tc.run_name or default_run_name(run.config), MAX_NAME),
            tags=run_tags(run, tc),
            params=flatten(OmegaConf.to_container(run.config, resolve=True)),
            flush_seconds=float(tc.flush_seconds),
        )

    def _send(self, **request) -> None:
        if self.error is None:
            self.error = self.side.send(**request)

    def on_reply(self, reply: dict) -> None:
        """Called from the side process's reader thread."""
        if reply.get("op") == "started":
            self.run_id = reply["run_id"]
        elif reply.get("op") == "error":
            self.error = self.error or reply.get("message", "unknown error")
            self.finished.set()
        elif reply.get("op") == "finished":
            self.finished.set()

    def check(self) -> bool:
        """True while tracking works; raises (required) or warns once (not required)."""
        if self.error is None:
            return True
        if self.tc.required:
            raise ConfigError(
                f"MLflow tracking failed ({self.error}). Fix the store (tracking.uri / "
                "MLFLOW_TRACKING_URI), or train without tracking (tracking=none), or let "
                "training go on without it (tracking.required=false)."
            )
        if not self.warned:
            warnings.warn(f"MLflow tracking is off for this run: {self.error}", stacklevel=3)
            self.warned = True
        return False

    def release_blas(self) -> None:
        """Give BLAS its threads back (main thread only: never while a GEMM runs)."""
        if self.blas_limit is not None:
            self.blas_limit.restore_original_limits()
            self.blas_limit = None

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        if self.run_id is not None or self.error is not None:
            self.release_blas()
        ts = int(time.time() * 1000)
        items = [[k, float(v), ts, epoch + STEP_BASE] for k, v in metrics.items() if k != "epoch"]
        self._send(op="metrics", items=items)

    def finish(self, run, status: str) -> None:
        self.release_blas()
        try:
            if self.error is None:
                self._finish(run, status)
        finally:
            self.side.tracker = None
        self.check()

    def _finish(self, run, status: str) -> None:
        ts = int(time.time() * 1000)
        best = run.best_epoch
        summary = {k: run.timings[k] for k in SUMMARY_KEYS if k in run.timings}
        if best is not None:
            summary["best_epoch"] = best
            summary["best_val_loss"] = run.history[best]["val_loss"]
        tags = {"lossbench.status": status}
        if status not in ("finished", "stopped"):
            tags["lossbench.phase"] = run.phase
        if run.error:
            tags["lossbench.failure_reason"] = run.error
        if run.stop_reason:
            tags["lossbench.stop_reason"] = run.stop_reason
        state = {"finished": "FINISHED", "stopped": "FINISHED", "interrupted": "KILLED"}
        with tempfile.TemporaryDirectory(prefix="lossbench-mlflow-") as tmp:
            artifacts = []
            if run.history and status != "interrupted":
                artifacts = self._artifacts(run, Path(tmp))
            self._send(
                op="finish",
                state=state.get(status, "FAILED"),
                tags=tags,
                metrics=[[k, float(v), ts, 0] for k, v in summary.items()],
                artifacts=[str(p) for p in artifacts],
            )
            # the worker may still be importing MLflow: this wait is tracking's one-time cost
            if not self.finished.wait(timeout=300):
                self.error = self.error or "the MLflow process did not finish within 300 s"

    def _artifacts(self, run, folder: Path) -> list[Path]:
        from omegaconf import OmegaConf

        from lossbench.builtin import outputs

        plots = run.config.trainer.get("plots", True)
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(run.config, resolve=True))
        source = Path(run.output_dir) if run.output_dir is not None else None
        files = ["history.csv", "model.npz"] + (["loss_curve.png"] if plots else [])
        if source is None or not all((source / f).is_file() for f in files):
            source = folder
            outputs.write_history(folder / "history.csv", run.history)
            outputs.write_model(folder / "model.npz", run.params)
            if plots:
                outputs.plot_loss_curve(
                    folder / "loss_curve.png", run.history, outputs.run_title(run)
                )
        paths = [folder / "config.yaml", *(source / f for f in files)]
        if plots and run.dataset is not None and run.dataset.task == "classification":
            outputs.plot_confusion_matrix(folder / "confusion_matrix.png", run)
            paths.append(folder / "confusion_matrix.png")
        return paths


def _tracker(run) -> Tracker | None:
    return run.plugin_state.get(_KEY)


def _enabled(run):
    """The tracking config when ``tracking=mlflow``, else None."""
    tc = run.config.get("tracking")
    return tc if tc is not None and tc.get("name") == "mlflow" else None


def _start(run, tc) -> None:
    run.plugin_state[_KEY + ".tried"] = True
    try:
        run.plugin_state[_KEY] = Tracker(run, tc)
    except ConfigError as exc:
        if tc.required:
            raise
        warnings.warn(f"MLflow tracking is off for this run: {exc}", stacklevel=3)


@hookimpl
def on_run_start(run):
    tc = _enabled(run)
    if tc is not None:
        _start(run, tc)


@hookimpl
def on_epoch_end(run, epoch, metrics):
    tracker = _tracker(run)
    if tracker is not None and tracker.check():
        tracker.log_epoch(epoch, metrics)
    return None


@hookimpl(trylast=True)  # after the outputs plugin has written the run's files
def on_run_end(run, status):
    tc = _enabled(run)
    never_started = _KEY + ".tried" not in run.plugin_state
    if tc is not None and never_started and status in ("interrupted", "failed"):
        # ended during set-up, before on_run_start: record it all the same, so MLflow says
        # what the run directory says
        _start(run, tc)
    tracker = run.plugin_state.pop(_KEY, None)
    if tracker is None:
        return
    if run.history and status in ("diverged",):
        # the epoch that diverged is in the history but on_epoch_end did not see it
        last = run.history[-1]
        tracker.log_epoch(last["epoch"], last)
    tracker.finish(run, status)
