"""MLflow tracking as a lifecycle plugin (``tracking=mlflow``, the default; off with
``tracking=none``).

Per run: the resolved config as params (dotted keys), provenance tags, per-epoch metrics with
``step=epoch`` (0-based), summary metrics, and artifacts (resolved config, history.csv,
model.npz, loss_curve.png, confusion_matrix.png for classification). Run states: FINISHED
(finished, or stopped by a hook), FAILED with ``lossbench.failure_reason`` (diverged, failed),
KILLED (Ctrl-C, SIGTERM).

Cost: ``import mlflow`` and opening a store take about a second, longer than a default training
run. So ``on_run_start`` only checks the store is reachable (fast, before training) and starts a
worker thread that imports MLflow, creates the run and then sends queued metrics with
``log_batch`` every ``tracking.flush_seconds``; the epoch loop only appends to a list, and the
kernels release the GIL, so set-up overlaps compilation and training.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
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

_KEY = "mlflow"
STEP_BASE = 0  # metrics use step = epoch, 0-based like history.csv
SUMMARY_KEYS = ("compile_seconds", "train_seconds")
# MLflow's limits (mlflow.utils.validation): keys 250 chars, param values 6000, tags 8000,
# 100 params or tags and 1000 metrics per log_batch request.
MAX_KEY, MAX_PARAM, MAX_TAG, MAX_NAME = 250, 6000, 8000, 250
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000


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


def shorten(text: str, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


class Tracker:
    """One MLflow run, fed from the epoch loop, written by a worker thread."""

    def __init__(self, run, tc):
        from omegaconf import OmegaConf

        self.tc = tc
        self.uri = resolve_uri(tc)
        precheck(self.uri)
        self.run_name = shorten(tc.run_name or default_run_name(run.config), MAX_NAME)
        self.params = flatten(OmegaConf.to_container(run.config, resolve=True))
        self.tags = run_tags(run, tc)
        self.pending: list[tuple[str, float, int, int]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.client = None
        self.run_id: str | None = None
        self.warned = False
        self.thread = threading.Thread(target=self._work, name="lossbench-mlflow", daemon=True)
        self.thread.start()

    # -- worker thread ----------------------------------------------------------------------
    def _work(self) -> None:
        try:
            self._start_run()
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        while not self.stop.wait(float(self.tc.flush_seconds)):
            try:
                self.flush()
            except BaseException as exc:
                self.error = exc
                return

    def _start_run(self) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri) if self.uri else MlflowClient()
        experiment = client.get_experiment_by_name(self.tc.experiment)
        if experiment is None:
            experiment_id = client.create_experiment(self.tc.experiment)
        else:
            experiment_id = experiment.experiment_id
        created = client.create_run(experiment_id, tags=self.tags, run_name=self.run_name)
        self.client, self.run_id = client, created.info.run_id
        params = [Param(shorten(k, MAX_KEY), shorten(v, MAX_PARAM)) for k, v in self.params.items()]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            client.log_batch(self.run_id, params=params[i : i + PARAMS_PER_BATCH])

    def flush(self) -> None:
        """Send queued metrics in log_batch requests (worker thread, or the end of the run)."""
        from mlflow.entities import Metric

        with self.lock:
            batch, self.pending = self.pending, []
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in batch]
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + METRICS_PER_BATCH])

    # -- main thread ------------------------------------------------------------------------
    def check(self) -> bool:
        """True while tracking works; raises (required) or warns once (not required)."""
        if self.error is None:
            return True
        if self.tc.required:
            raise ConfigError(
                f"MLflow tracking failed ({type(self.error).__name__}: {self.error}). Fix the "
                "store (tracking.uri / MLFLOW_TRACKING_URI), or train without tracking "
                "(tracking=none), or let training go on (tracking.required=false)."
            ) from self.error
        if not self.warned:
            warnings.warn(f"MLflow tracking is off for this run: {self.error}", stacklevel=3)
            self.warned = True
        return False

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        ts = int(time.time() * 1000)
        with self.lock:
            for key, value in metrics.items():
                if key != "epoch":
                    self.pending.append((key, float(value), ts, epoch + STEP_BASE))

    def finish(self, run, status: str) -> None:
        self.stop.set()
        self.thread.join(timeout=120)
        if self.thread.is_alive():
            self.error = self.error or TimeoutError("the MLflow worker did not finish in 120 s")
        if self.error is not None and self.run_id is None:
            self.check()  # nothing was created: raise or warn
            return
        try:
            self._finish(run, status)
        except Exception as exc:
            self.error = exc
            try:
                self.client.set_terminated(self.run_id, "FAILED")
            finally:
                self.check()

    def _finish(self, run, status: str) -> None:
        from mlflow.entities import RunTag

        ts = int(time.time() * 1000)
        best = run.best_epoch
        summary = {k: run.timings[k] for k in SUMMARY_KEYS if k in run.timings}
        if best is not None:
            summary["best_epoch"] = best
            summary["best_val_loss"] = run.history[best]["val_loss"]
        with self.lock:
            self.pending.extend((k, float(v), ts, 0) for k, v in summary.items())
        self.flush()
        tags = [RunTag("lossbench.status", status)]
        if run.error:
            tags.append(RunTag("lossbench.failure_reason", shorten(run.error, MAX_TAG)))
        if run.stop_reason:
            tags.append(RunTag("lossbench.stop_reason", shorten(run.stop_reason, MAX_TAG)))
        self.client.log_batch(self.run_id, tags=tags)
        if run.history and status != "interrupted":
            self._log_artifacts(run)
        state = {"finished": "FINISHED", "stopped": "FINISHED", "interrupted": "KILLED"}
        self.client.set_terminated(self.run_id, state.get(status, "FAILED"))

    def _log_artifacts(self, run) -> None:
        from omegaconf import OmegaConf

        from lossbench.builtin import outputs

        with tempfile.TemporaryDirectory(prefix="lossbench-mlflow-") as tmp:
            folder = Path(tmp)
            (folder / "config.yaml").write_text(OmegaConf.to_yaml(run.config, resolve=True))
            source = Path(run.output_dir) if run.output_dir is not None else None
            files = ("history.csv", "model.npz", "loss_curve.png")
            if source is None or not all((source / f).is_file() for f in files):
                source = folder
                outputs.write_history(folder / "history.csv", run.history)
                outputs.write_model(folder / "model.npz", run.params)
                outputs.plot_loss_curve(folder / "loss_curve.png", run.history,
                                        outputs.run_title(run))  # fmt: skip
            paths = [folder / "config.yaml", *(source / f for f in files)]
            if run.dataset is not None and run.dataset.task == "classification":
                cm = folder / "confusion_matrix.png"
                outputs.plot_confusion_matrix(cm, run)
                paths.append(cm)
            for path in paths:
                self.client.log_artifact(self.run_id, str(path))


def _tracker(run) -> Tracker | None:
    return run.plugin_state.get(_KEY)


@hookimpl
def on_run_start(run):
    tc = run.config.get("tracking")
    if tc is None or tc.get("name") != "mlflow":
        return
    try:
        run.plugin_state[_KEY] = Tracker(run, tc)
    except ConfigError as exc:
        if tc.required:
            raise
        warnings.warn(f"MLflow tracking is off for this run: {exc}", stacklevel=2)


@hookimpl
def on_epoch_end(run, epoch, metrics):
    tracker = _tracker(run)
    if tracker is not None and tracker.check():
        tracker.log_epoch(epoch, metrics)
    return None


@hookimpl(trylast=True)  # after the outputs plugin has written the run's files
def on_run_end(run, status):
    tracker = run.plugin_state.pop(_KEY, None)
    if tracker is None:
        return
    if run.history and status in ("diverged",):
        # the epoch that diverged is in the history but on_epoch_end did not see it
        last = run.history[-1]
        tracker.log_epoch(last["epoch"], last)
    tracker.finish(run, status)
