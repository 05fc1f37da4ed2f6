"""Writes a run's files into its output directory at the end of the run, as a lifecycle plugin:
history.csv, model.npz, loss_curve.png (unless ``trainer.plots=false``) and summary.json. Each
file is written to a temporary name and renamed, so a file is either complete or absent."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from lossbench.hookspecs import hookimpl


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` and rename into place: complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_history(path: Path, history: list[dict]) -> None:
    if not history:
        return
    columns = list(history[0])

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            for row in history:
                w.writerow(
                    {k: repr(float(v)) if isinstance(v, float) else v for k, v in row.items()}
                )

    _atomic(path, write)


def write_model(path: Path, params: dict[str, np.ndarray]) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **params)

    _atomic(path, write)


def plot_loss_curve(path: Path, history: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    finite = [h for h in history if np.isfinite(h["val_loss"])]
    if finite:
        best = min(finite, key=lambda h: h["val_loss"])
        ax.scatter(
            [best["epoch"]],
            [best["val_loss"]],
            color="black",
            zorder=3,
            label=f"best val (epoch {best['epoch']})",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def run_title(run) -> str:
    cfg = run.config
    return f"{cfg.model.name} / {cfg.loss.name} / {cfg.optimizer.name} on {cfg.data.name}"


@hookimpl
def on_run_end(run, status):
    """The run's files; summary.json for every run that was not refused as bad input, so a run
    interrupted before its first epoch still says how and when it ended."""
    if run.output_dir is None or status == "rejected":
        return
    from lossbench.engine import summary

    out = Path(run.output_dir)
    if run.history:
        write_history(out / "history.csv", run.history)
        write_model(out / "model.npz", run.params)
        if run.config.trainer.get("plots", True):
            plot_loss_curve(out / "loss_curve.png", run.history, run_title(run))
    text = json.dumps(summary(run), indent=2, default=float)
    _atomic(out / "summary.json", lambda tmp: Path(tmp).write_text(text + "\n"))


def plot_confusion_matrix(path: Path, run) -> None:
    """Validation confusion matrix of a classification run (rows: true class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prep = run.dataset
    out = run.predict(prep.X_val)
    pred = (out[:, 0] > 0).astype(int) if out.shape[1] == 1 else out.argmax(axis=1)
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
    _atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
