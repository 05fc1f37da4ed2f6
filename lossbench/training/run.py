"""The ``Run``: what lifecycle hooks receive and what ``lossbench.train`` returns, and the
summary a person (and summary.json) reads at its end."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    ``train`` raises then). ``hparams`` holds each group's options (its spec's hyperparameter
    dataclass, filled from the config). ``params``
    maps tensor names (W0, b0, ...) to arrays; ``flat_params`` is the flat vector. ``timings``
    has setup_seconds, compile_seconds, train_seconds, total_seconds. ``path`` is "fused" or
    "numpy" (the slow path); ``compile`` what the compile stage compiled, loaded from numba's
    cache or found in memory. ``phase`` is where the run is, or where it ended (``PHASES``).
    """

    config: Any
    output_dir: Path | None
    specs: dict[str, Any]
    hparams: dict[str, Any]
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

    def output_failed(self, message: str) -> None:
        """A file of the run could not be written (a full disk, say): the run has failed,
        unless it was interrupted (it stays interrupted); ``error`` says which file and why."""
        if self.status != "interrupted":
            self.status = "failed"
        self.error = f"{self.error}; {message}" if self.error else message

    def record_incomplete(self, message: str) -> None:
        """A plugin could not complete its record of the run (see ``record_errors``)."""
        self.record_errors.append(message)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The model's outputs (logits or values) for the rows of ``X``, already scaled as the
        training data (e.g. ``run.dataset.X_val``), with the current parameters. For raw rows,
        probabilities and class names (what the run's MLflow model answers), see
        ``lossbench.training.predict.Predictor.from_run(run)``."""
        model = self.specs["model"]
        X = np.ascontiguousarray(X, dtype=self.flat_params.dtype)
        hp = np.asarray(self.layout.hp, dtype=np.float64)  # as the kernels take it
        if model.numpy_only:
            return model.reference_forward(self.flat_params, self.layout.layout, hp, X)
        out = np.empty((len(X), self.dataset.n_outputs), dtype=X.dtype)
        work = np.empty(self.layout.workspace(len(X)), dtype=X.dtype)
        model.forward(self.flat_params, self.layout.layout, hp, X, work, out)
        return out

    @property
    def params(self) -> dict[str, np.ndarray]:
        return self.layout.views(self.flat_params) if self.layout else {}

    @property
    def best_epoch(self) -> int | None:
        vals = [h["val_loss"] for h in self.history if math.isfinite(h["val_loss"])]
        if not vals:
            return None
        best = min(vals)
        return next(h["epoch"] for h in self.history if h["val_loss"] == best)

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
        "best_val_loss": run.history[best]["val_loss"] if best is not None else None,
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
    return out
