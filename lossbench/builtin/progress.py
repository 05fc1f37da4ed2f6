"""A live progress bar (rich) with train and validation loss, as a lifecycle plugin.

Shown when ``trainer.progress`` is true and standard error is a terminal; otherwise silent.
"""

from __future__ import annotations

import sys

from lossbench.hookspecs import hookimpl

_KEY = "progress"


@hookimpl
def on_run_start(run):
    if not run.config.trainer.progress or not sys.stderr.isatty():
        return
    # start-up: rich's progress bar loads only when it is shown (on a terminal)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    task = progress.add_task("train", total=int(run.config.trainer.epochs), stats="")
    progress.start()
    run.plugin_state[_KEY] = (progress, task)


@hookimpl
def on_epoch_end(run, epoch, metrics):
    entry = run.plugin_state.get(_KEY)
    if entry is None:
        return None
    progress, task = entry
    stats = f"train {metrics['train_loss']:.4f}  val {metrics['val_loss']:.4f}"
    if "val_accuracy" in metrics:
        stats += f"  acc {metrics['val_accuracy']:.3f}"
    progress.update(task, completed=epoch + 1, stats=stats)
    return None


@hookimpl
def on_run_end(run, status):
    entry = run.plugin_state.pop(_KEY, None)
    if entry is not None:
        entry[0].stop()
