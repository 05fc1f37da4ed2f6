"""The ``Run``: what lifecycle hooks receive and what ``lossbench.train`` returns, and the
summary a person (and summary.json) reads at its end."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lossbench.config.schemas import MAXIMIZED

# what a run is doing, for messages: "interrupted during compiling the kernels"
PHASES = {
    "setup": "set-up (loading the data, building the model)",
    "start": "the on_run_start hooks",
    "compile": "compiling (or loading from the cache) the kernels",
    "train": "training",
}


@dataclass
class Run:
    """A training run: what hooks receive and what ``train`` returns.

    ``history`` has one dict per epoch (epoch, train_loss, val_loss, accuracies for
    classification, lr, epoch_seconds). ``status`` is finished | stopped | diverged | failed |
    interrupted (hooks may also see rejected: bad input found before the first epoch, and
    ``train`` raises then). ``options`` holds each group's options (an instance of its spec's
    options dataclass, filled from the config; ``hparams``, the name before, still reads it).
    ``params``
    maps tensor names (W0, b0, ...) to arrays; ``flat_params`` is the flat vector. ``timings``
    has setup_seconds, compile_seconds, train_seconds, total_seconds. ``path`` is "fused" or
    "numpy" (the slow path); ``compile`` what the compile stage compiled, loaded from numba's
    cache or found in memory. ``phase`` is where the run is, or where it ended (``PHASES``).
    ``best_epoch`` is by ``monitor`` (``trainer.early_stopping.monitor``); with
    ``keep_weights="best"`` the run ends with that epoch's weights in ``flat_params``
    (``weights_epoch`` says whose they are). ``train_order`` is the training rows' order of the
    epoch just run; ``read_from`` is set on a run answered from a longer run's first epochs.
    """

    config: Any
    output_dir: Path | None
    specs: dict[str, Any]
    options: dict[str, Any]
    dataset: Any = None
    layout: Any = None
    flat_params: np.ndarray | None = None
    history: list[dict] = field(default_factory=list)
    status: str = "running"
    error: str | None = None
    stop_reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    plugin_state: dict[str, Any] = field(default_factory=dict)
    # group -> {"plugin": name, "distribution": "name version" or a file path}
    sources: dict[str, dict[str, str]] = field(default_factory=dict)
    # "fused" (the jitted epoch) or "numpy" (the slow path: a component has no numba kernel)
    path: str = "fused"
    # what the compile stage did: "compiled" (every function numba compiled), and of the
    # epoch functions and kernels, "loaded_from_cache" and "in_memory" (kernels.compile_report)
    compile: dict[str, list[str]] = field(default_factory=dict)
    phase: str = "setup"
    # why a record of the run kept elsewhere (the MLflow run) is incomplete; the run's own
    # outcome is unchanged, but the command line exits 1 and summary.json says so
    record_errors: list[str] = field(default_factory=list)
    # the metric that makes an epoch "the best" (trainer.early_stopping.monitor), and whether
    # the run keeps that epoch's weights ("best") or the last epoch's ("last")
    monitor: str = "val_loss"
    keep_weights: str = "best"
    # a copy of the weights of the best epoch so far (keep_weights=best), its epoch and value
    best_params: np.ndarray | None = None
    best_so_far: tuple[int, float] | None = None
    # the epoch whose weights flat_params holds once the run has ended (set by restore_kept)
    weights_epoch: int | None = None
    # the training rows (indices into dataset.X_train) in the order of the epoch just run;
    # shuffled in place before each epoch when trainer.shuffle (read it, never write it)
    train_order: np.ndarray | None = None
    # a run answered from a longer run's first epochs (a sweep's epoch counts): which, where
    read_from: str | None = None
    # the trackers that record the run: (name, tracker class, its options node), from the
    # config's tracking node (plugins.Registry.trackers_of; lossbench.tracking.plugin runs them)
    trackers: list = field(default_factory=list)

    @property
    def hparams(self) -> dict[str, Any]:
        """``options``, by its name before (deprecated: a DeprecationWarning says so)."""
        warnings.warn("Run.hparams is now spelled Run.options; Run.hparams still reads it "
                      "but will go in a later interface version", DeprecationWarning,
                      stacklevel=2)  # fmt: skip
        return self.options

    def output_failed(self, message: str) -> None:
        """A file of the run could not be written (a full disk, say): the run has failed,
        unless it was interrupted (it stays interrupted); ``error`` says which file and why."""
        if self.status != "interrupted":
            self.status = "failed"
        self.error = f"{self.error}; {message}" if self.error else message

    def record_incomplete(self, message: str) -> None:
        """A plugin could not complete its record of the run (see ``record_errors``)."""
        self.record_errors.append(message)

    def predict(self, X: np.ndarray, hp: np.ndarray | None = None) -> np.ndarray:
        """The model's outputs (logits or values) for the rows of ``X``, already scaled as the
        training data (e.g. ``run.dataset.X_val``), with the current parameters (a regression
        target standardised by ``data.standardize_target`` comes out standardised). For raw
        rows, probabilities, values in the target's units and class names (what the run's
        MLflow model answers), see
        ``lossbench.training.predict.Predictor.from_run(run)``. The model runs in evaluation
        mode unless ``hp`` (the model's kernel ``hp``, ``ModelLayout.kernel_hp``) says
        otherwise; in training mode the buffers (running statistics) that forward writes
        are a copy's, so predicting never changes the run."""
        model = self.specs["model"]
        X = np.ascontiguousarray(X, dtype=self.flat_params.dtype)
        if hp is None:  # as the kernels take it: evaluation mode
            hp = self.layout.kernel_hp(training=False)
        params = self.flat_params
        if hp[-3] > 0.5 and getattr(self.layout, "buffers", ()):
            params = params.copy()  # training mode writes the buffers: not the run's
        if model.numpy_only:
            return model.reference_forward(params, self.layout.layout, hp, X)
        out = np.empty((len(X), self.dataset.n_outputs), dtype=X.dtype)
        work = np.empty(self.layout.workspace(len(X)), dtype=X.dtype)
        model.forward(params, self.layout.layout, hp, X, work, out)
        return out

    @property
    def params(self) -> dict[str, np.ndarray]:
        return self.layout.views(self.flat_params) if self.layout else {}

    def _better(self, value: float, than: float) -> bool:
        return value > than if self.monitor in MAXIMIZED else value < than

    @property
    def best_epoch(self) -> int | None:
        """The epoch with the best ``monitor`` value (lowest loss or error, highest accuracy,
        F1 or R^2; the first of equals), among the epochs whose value is finite."""
        best = None
        for h in self.history:
            value = h.get(self.monitor)
            if value is not None and math.isfinite(value) and math.isfinite(h["val_loss"]):
                if best is None or self._better(value, best[1]):
                    best = (h["epoch"], value)
        return best[0] if best is not None else None

    def note_epoch(self, metrics: dict) -> None:
        """After an epoch's metrics are in the history: with ``keep_weights=best``, copy the
        weights when this epoch is the best so far (the rule of ``best_epoch``)."""
        value = metrics.get(self.monitor)
        if value is None or not (math.isfinite(value) and math.isfinite(metrics["val_loss"])):
            return
        if self.best_so_far is None or self._better(value, self.best_so_far[1]):
            self.best_so_far = (metrics["epoch"], value)
            if self.keep_weights == "best":
                if self.best_params is None:
                    self.best_params = self.flat_params.copy()
                else:
                    np.copyto(self.best_params, self.flat_params)

    def kept_params(self) -> np.ndarray:
        """The weights the run would keep if it ended now: the best epoch's so far
        (``keep_weights=best``), else the current ones. Read, do not write."""
        if self.keep_weights == "best" and self.best_params is not None:
            return self.best_params
        return self.flat_params

    def restore_kept(self) -> None:
        """At the end: put the kept weights into ``flat_params`` (``weights_epoch`` says whose
        they are). With ``keep_weights=last``, or before any finite epoch, the last weights
        stay."""
        if not self.history:
            return
        if self.keep_weights == "best" and self.best_params is not None:
            np.copyto(self.flat_params, self.best_params)
            self.weights_epoch = self.best_so_far[0]
        else:
            self.weights_epoch = self.history[-1]["epoch"]

    def history_frame(self):
        import pandas as pd  # start-up: pandas only for those who ask for a frame

        return pd.DataFrame(self.history)


def summary(run: Run) -> dict:
    """The numbers a person wants at the end of a run (and what summary.json holds)."""
    last = run.history[-1] if run.history else {}
    best = run.best_epoch
    out = {
        "status": run.status,
        "epochs": len(run.history),
        "best_epoch": best,
        "monitor": run.monitor,
        "best_val_loss": run.history[best]["val_loss"] if best is not None else None,
        # whose weights model.npz (and the MLflow model) holds: trainer.keep_weights
        "weights": {"kept": run.keep_weights, "epoch": run.weights_epoch},
        "final": {k: v for k, v in last.items() if k != "epoch"},
        "timings": dict(run.timings),
        "path": run.path,
        "compile": {k: list(v) for k, v in run.compile.items()},
        "output_dir": str(run.output_dir) if run.output_dir else None,
    }
    if run.status not in ("finished", "stopped"):
        out["phase"] = run.phase  # where it ended: setup, start, compile or train
    if run.error:
        out["error"] = run.error
    if run.stop_reason:
        out["stop_reason"] = run.stop_reason
    if run.record_errors:
        out["record_incomplete"] = list(run.record_errors)
    if run.read_from:
        out["read_from"] = run.read_from
    return out
