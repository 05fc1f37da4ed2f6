"""Early stopping on a monitored metric (``trainer.early_stopping``), as a lifecycle plugin.

Stops when the metric (default val_loss; lower is better for losses and errors, higher for
accuracy, macro F1 and R^2) has not improved by more than ``min_delta`` for ``patience``
epochs: an epoch improves when its value v is better than the best so far b by more than
min_delta (v < b - min_delta, or v > b + min_delta for a metric to maximise). The schema types
``monitor`` (one of the per-epoch metrics); whether this run records it is checked before the
first epoch (``lossbench.training.fit.check_monitor``).
"""

from __future__ import annotations

from lossbench.config.schemas import MAXIMIZED
from lossbench.hookspecs import hookimpl


def _settings(run):
    """``trainer.early_stopping`` as plain values, read once per run: reading it through
    OmegaConf every epoch cost ~15 us, a tenth of a small model's epoch."""
    settings = run.plugin_state.get("early_stopping.settings")
    if settings is None:
        es = run.config.trainer.early_stopping
        settings = (bool(es.enabled), str(es.monitor), float(es.min_delta), int(es.patience))
        run.plugin_state["early_stopping.settings"] = settings
    return settings


@hookimpl
def on_epoch_end(run, epoch, metrics):
    enabled, key, min_delta, patience = _settings(run)
    if not enabled:
        return None
    sign = -1.0 if key in MAXIMIZED else 1.0
    value = sign * metrics[key]
    state = run.plugin_state.setdefault("early_stopping", {"best": float("inf"), "wait": 0})
    if value < state["best"] - min_delta:
        state["best"] = value
        state["wait"] = 0
        return None
    state["wait"] += 1
    if state["wait"] >= patience:
        return f"early stopping: {key} has not improved for {patience} epochs"
    return None
