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

Two records that are not a training run go to the same trackers from here: ``record_ended``
(runs that ended before any tracker saw them: a sweep's answered epoch counts,
``Tracker.record_ended``) and ``record_lr_find`` (the lr range test: ``Tracker.as_probe``,
``start``, ``log_steps``, ``log_artifacts``, ``end``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import open_dict

from lossbench.hookspecs import hookimpl
from lossbench.tracking.base import NO_MODEL, EndedRun, run_files
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


def record_ended(runs: list, registry, keep_files: bool = False) -> None:
    """Record ``runs``, which have ended, in every tracker each one's config selects
    (``Tracker.record_ended``, one call per tracker with all its runs); ``keep_files``: with
    the run's files (``run_files``) and a model folder per tracker. A tracker that raises is
    said in the run's ``record_errors``, and the other trackers still record the runs."""
    if not runs:
        return
    with tempfile.TemporaryDirectory(prefix="lossbench-tracking-") as tmp:
        by_tracker: dict[str, tuple[type, list[EndedRun]]] = {}
        for i, run in enumerate(runs):
            trackers = registry.trackers_of(run.config.get("tracking"))
            files = run_files(run, _folder(Path(tmp) / str(i))) if keep_files and trackers else []
            for name, cls, options in trackers:
                model = _folder(Path(tmp) / str(i) / "model" / name) if keep_files else None
                by_tracker.setdefault(name, (cls, []))[1].append(
                    EndedRun(run, options, files, model))
        for name, (cls, ended) in by_tracker.items():
            try:
                cls.record_ended(ended)
            except Exception as exc:  # a store gone: the answers stand, their record is partial
                for entry in ended:
                    entry.run.record_incomplete(
                        f"the {name} tracker could not record {entry.run.output_dir}: "
                        f"{type(exc).__name__}: {exc}")


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def record_lr_find(run, result, files: list, registry) -> None:
    """The lr range test (``lossbench.training.lr_find``) in every tracker its config selects:
    ``as_probe(..., "lr_find")``, ``start``, ``log_steps`` (``lr_find_lr``, ``lr_find_loss``,
    ``lr_find_smoothed_loss`` by step; ``suggested_lr``), ``log_artifacts`` (the plot, table
    and result) and ``end("finished")``; no model: the ramp's weights are not a trained model.
    Every tracker started is ended even when another raised; the first exception is raised
    after. An incomplete MLflow record is noted in ``run.record_errors``."""
    run.trackers = registry.trackers_of(run.config.get("tracking"))
    with open_dict(run.config):  # as a trial's config is open to as_child
        for _, cls, options in run.trackers:
            cls.as_probe(options, run.config, "lr_find")
    series = {"lr_find_lr": result.lrs.tolist(), "lr_find_loss": result.losses.tolist(),
              "lr_find_smoothed_loss": result.smoothed.tolist()}  # fmt: skip
    summary = {"suggested_lr": result.suggestion} if result.suggestion is not None else {}
    failure = None
    try:
        _start(run)
    except Exception as exc:  # those started are ended below
        failure = exc
    started = run.plugin_state.pop(_KEY, [])
    for tracker in started if failure is None else ():
        try:
            tracker.log_steps(series, summary)
            tracker.log_artifacts([Path(f) for f in files])
        except Exception as exc:
            failure = failure or exc
    try:
        _end(run, "finished", started)  # the run has no history: no run files, no model
    except Exception as exc:
        failure = failure or exc
    if failure is not None:
        raise failure
