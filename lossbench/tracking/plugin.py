"""Tracking as a lifecycle plugin: every tracker the config selects records the run
(``tracking=mlflow``, the default; ``tracking=[mlflow,tensorboard]`` runs both; off with
``tracking=none``). It registers MLflow (``register_trackers``) and drives each selected
tracker through the protocol of ``lossbench.tracking.base``: ``start`` in ``on_run_start``,
``log_epoch`` in ``on_epoch_end``, then ``log_artifacts``, ``log_model`` and ``end`` in
``on_run_end`` (after the outputs plugin has written the run's files), each tracker ended even
when another one raised. The run's files are written once for all trackers.

``run.trackers`` (filled by ``lossbench.train`` from the registry: ``Registry.trackers_of``)
says which trackers a run has; disabling this plugin (``LOSSBENCH_DISABLE_PLUGINS=tracking``)
turns every tracker off.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lossbench.hookspecs import hookimpl
from lossbench.tracking.base import NO_MODEL, run_files
from lossbench.tracking.mlflow_run import MlflowTracker

_KEY = "tracking"  # run.plugin_state[_KEY]: the run's started trackers


@hookimpl
def register_trackers(register):
    register(MlflowTracker)


def prestart(trackers) -> None:
    """Before a run (the command, right after composing): let each tracker start what is
    slow (MLflow starts its side process, whose ``import mlflow`` overlaps loading the data)."""
    for _, cls, options in trackers:
        cls.prestart(options)


def _start(run) -> None:
    run.plugin_state[_KEY + ".tried"] = True
    started = run.plugin_state.setdefault(_KEY, [])
    for _, cls, options in run.trackers:
        tracker = cls(run, options)
        tracker.start()  # raising stops the run; those started are ended by on_run_end
        started.append(tracker)


@hookimpl
def on_run_start(run):
    _start(run)


@hookimpl
def on_epoch_end(run, epoch, metrics):
    for tracker in run.plugin_state.get(_KEY, ()):
        tracker.log_epoch(epoch, metrics)
    return None


@hookimpl(trylast=True)  # after the outputs plugin has written the run's files
def on_run_end(run, status):
    never_started = _KEY + ".tried" not in run.plugin_state
    if run.trackers and never_started and status in ("interrupted", "failed"):
        # ended during set-up, before on_run_start: record it all the same, so each tracker
        # says what the run directory says
        _start(run)
    trackers = run.plugin_state.pop(_KEY, [])
    if trackers:
        _end(run, status, trackers)


def _end(run, status: str, trackers: list) -> None:
    """Files and model for every tracker, then its end; the first exception is raised after
    every tracker has ended."""
    failure = None
    with tempfile.TemporaryDirectory(prefix="lossbench-tracking-") as tmp:
        files = []
        if run.history and status != "interrupted":
            try:
                files = run_files(run, Path(tmp))
            except Exception as exc:  # a full disk: the trackers still end the run
                failure = exc
        model = bool(run.history) and status in ("finished", "stopped") and (
            not run.plugin_state.get(NO_MODEL)
        )  # fmt: skip
        for tracker in trackers:
            try:
                if files:
                    tracker.log_artifacts(files)
                if model:
                    folder = Path(tmp) / "model" / tracker.name
                    folder.mkdir(parents=True)
                    tracker.log_model(folder)
            except Exception as exc:
                failure = failure or exc
            try:
                tracker.end(status)
            except Exception as exc:
                failure = failure or exc
    if failure is not None:
        raise failure
