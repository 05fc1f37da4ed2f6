"""Writes a run's files into its output directory when the run ends, as a lifecycle plugin:
history.csv, model.npz, loss_curve.png (unless ``trainer.plots=false``) and summary.json
(``lossbench.training.outputs`` writes each atomically)."""

from __future__ import annotations

from pathlib import Path

from lossbench.hookspecs import hookimpl
from lossbench.training.outputs import write_files, write_summary


@hookimpl
def on_run_end(run, status):
    """The run's files; summary.json for every run that was not refused as bad input, so a run
    interrupted before its first epoch still says how and when it ended. A file that cannot be
    written (a full disk, a read-only folder) fails the run, and summary.json, written last,
    says so when there is room for it; a file is complete or absent, never half-written. The
    files before summary.json are flushed to disk together (``lossbench.files.save_together``)."""
    if run.output_dir is None or status == "rejected":
        return
    out = Path(run.output_dir)
    for name, exc in write_files(out, run, plots=bool(run.config.trainer.get("plots", True))):
        run.output_failed(f"{out / name} could not be written: {exc.strerror or exc}")
    try:
        write_summary(out / "summary.json", run)
    except OSError as exc:
        run.output_failed(f"{out / 'summary.json'} could not be written: {exc.strerror or exc}")
