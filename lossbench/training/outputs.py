"""A run's files: history.csv, model.npz, the loss curve and the confusion matrix. Each file is
written through ``lossbench.files`` (``atomic_save``, or ``save_together`` for several at once),
so a file is either complete or absent. ``*_file`` functions return what ``save_together``
writes; ``write_files`` writes a run's set. The outputs plugin (``lossbench.builtin.outputs``),
the sweep's answered epoch counts and the trackers all write through these."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from lossbench.files import Item, atomic_save, pyplot, save_figure, save_together
from lossbench.training.metrics import predicted_classes
from lossbench.training.run import summary


def history_file(path: Path, history: list[dict]) -> Item:
    """history.csv: one row per epoch, floats written exactly (``repr``)."""
    columns = list(history[0]) if history else []

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            for row in history:
                w.writerow(
                    {k: repr(float(v)) if isinstance(v, float) else v for k, v in row.items()}
                )

    return path, write, False


def model_file(path: Path, params: dict[str, np.ndarray]) -> Item:
    """model.npz: the named parameter tensors."""

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **params)

    return path, write, False


def summary_file(path: Path, run) -> Item:
    """summary.json (``lossbench.training.run.summary``)."""
    text = json.dumps(summary(run), indent=2, default=float)
    return path, lambda tmp: Path(tmp).write_text(text + "\n"), False


def loss_curve_file(path: Path, run) -> Item:
    """loss_curve.png (``plot_loss_curve``), drawn when it is written."""

    def write(tmp):
        fig = _loss_curve(run)
        try:
            fig.savefig(tmp, format="png")
        finally:
            pyplot().close(fig)

    return path, write, False


def write_files(out: Path, run, plots: bool) -> list[tuple[str, OSError]]:
    """The run's history.csv, model.npz and (``plots``) loss_curve.png in ``out``, flushed to
    disk together; returns the files that could not be written, with why (the others are
    still written). summary.json is the caller's, written after (it says what these met)."""
    if not run.history:
        return []
    items = [history_file(out / "history.csv", run.history), model_file(out / "model.npz",
                                                                        run.params)]  # fmt: skip
    if plots:
        items.append(loss_curve_file(out / "loss_curve.png", run))
    return [(Path(i[0]).name, e) for i, e in zip(items, save_together(items), strict=True) if e]


def _loss_curve(run):
    """The figure of the run's train and validation loss per epoch, its best epoch marked (by
    the monitored metric, with whether its weights are the ones kept) and, when early stopping
    ended the run, where it stopped."""
    plt = pyplot()
    history = run.history
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    best = run.best_epoch
    if best is not None:
        kept = ", weights kept" if run.keep_weights == "best" else ""
        value = history[best][run.monitor]
        ax.scatter([best], [history[best]["val_loss"]], color="black", zorder=3,
                   label=f"best {run.monitor} {value:.4g} (epoch {best}{kept})")  # fmt: skip
    if run.stop_reason and run.stop_reason.startswith("early stopping") and history:
        ax.axvline(history[-1]["epoch"], color="grey", ls="--", lw=1,
                   label=f"early stopping (after epoch {history[-1]['epoch']})")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss ({run.config.loss.name})")
    ax.set_title(run_title(run))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def write_summary(path: Path, run) -> None:
    atomic_save(*summary_file(path, run))


def run_title(run) -> str:
    cfg = run.config
    return f"{cfg.model.name} / {cfg.loss.name} / {cfg.optimizer.name} on {cfg.data.name}"


def plot_confusion_matrix(path: Path, run) -> None:
    """Validation confusion matrix of a classification run (rows: true class)."""
    plt = pyplot()

    prep = run.dataset
    pred = predicted_classes(run.predict(prep.X_val))
    k = max(prep.n_classes, 2)
    counts = np.zeros((k, k), dtype=int)
    np.add.at(counts, (prep.labels_val, pred), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * k, 1.0 + 0.5 * k), dpi=110)
    ax.imshow(counts, cmap="Blues")
    for i in range(k):
        for j in range(k):
            color = "white" if counts[i, j] > counts.max() / 2 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"validation, accuracy {accuracy:.3f}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
