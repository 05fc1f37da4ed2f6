"""The tracker protocol: what every tracker implements (MLflow, the built-in one, and any a
plugin registers with ``register_trackers``), and the run's files every tracker is offered.

A tracker is a class whose instances record one run in one system. The built-in lifecycle
plugin ``lossbench.tracking.plugin`` calls, for each tracker the config selects::

    Cls.prestart(options)             # the command, right after composing (optional)
    tracker = Cls(run, options)       # options: the tracker's config node
    tracker.start()                   # on_run_start: before compiling, before the first epoch
    tracker.log_epoch(epoch, metrics)  # after every epoch (step = epoch, 0-based)
    tracker.log_artifacts(paths)      # at the end: the run's files (not after Ctrl-C)
    tracker.log_model(folder)         # at the end of a finished (or stopped) run, unless a
                                      # plugin set run.plugin_state[NO_MODEL]
    tracker.end(status)               # exactly once, whatever ended the run
    tracker.incomplete()              # after end: why the record is incomplete, or None

Three more records go through the same trackers, each with a default that works for any
tracker (so a tracker overrides only what its system keeps):

- Runs recorded after they ended (a sweep's epoch counts answered from a longer run's first
  epochs): ``Cls.record_ended(ended)``, a list of ``EndedRun``; by default each run goes
  through the lifecycle above (``start``, ``log_epoch`` per epoch of its history,
  ``log_artifacts`` and ``log_model`` when it keeps files, ``end``); MLflow sends them all
  before waiting for any.
- A run measured by step, not by epoch (``python -m lossbench lr_find``):
  ``Cls.as_probe(options, cfg, "lr_find")``, then ``start``, ``log_steps(series, summary)``,
  ``log_artifacts`` (lr_find.csv, .json, .png) and ``end("finished")``; no ``log_epoch``, no
  model. ``log_steps`` records nothing by default (the files still arrive).
- ``python -m lossbench replay``: a tracker that journals what its store did not receive sets
  ``replays = True`` and implements ``Cls.replay(target, uri)`` (MLflow: its spool,
  ``lossbench.tracking.spool``); the others have nothing to replay.

A run that ends during set-up (before ``on_run_start``) with status interrupted or failed is
still recorded: ``start`` then ``end``. ``log_artifacts``' paths and ``log_model``'s folder
exist until ``end`` returns. An exception a tracker raises in ``start`` stops the run (bad
input is a ``ConfigError``); one raised later is the run's failure, like any plugin's.

Selection (``tracking=[mlflow,tensorboard]``, ``tracking=mlflow``, ``tracking=none``): each
tracker's options are the node ``tracking.NAME`` (``tracking.tensorboard.logdir=...``);
MLflow's alone sit at ``tracking`` itself (``tracking.uri=...``), as they did when it was the
only tracker (``lossbench.config.store.TOP_LEVEL_TRACKERS``); a tracker not selected leaves no
key in the config.

Sweeps. Every trial is a run, so every tracker records each trial as a run of its own, told
beforehand which trial it is (``as_child``, on the trial's config); a tracker whose ``parent``
names a ``ParentRun`` class also ties them to one parent run per study, which the sweep's
coordinator opens and ends, and whose id ``as_child`` gets (MLflow: nested runs,
``tracking.mlflow_parent``); one without (the default) simply gets the child runs. After a
fault (a worker or the coordinator killed, a store gone) the coordinator asks the parent run
to settle its child runs (``ParentRun.settle``, with each trial's state as a ``ChildTrial``),
and, when the workers' cluster is gone, to end the ones still running (``end_children``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from lossbench.config.text import to_yaml
from lossbench.training import outputs
from lossbench.urls import mask_text

# a plugin that sets ``run.plugin_state[NO_MODEL]`` (to its reason) keeps that run's model out
# of every tracker: the sweep's pruner does, for pruned trials
NO_MODEL = "tracking.no_model"


@dataclass
class SweepChild:
    """A sweep's trial, as its trackers are told (``Tracker.as_child``): the study's name, the
    trial's number, its seed's repeat (with ``sweep.repeats``), the trial it was answered from
    (a sweep's epoch counts) and the parent run's id (None: no tracker with parents, or no
    parent run open)."""

    study: str
    trial: int
    repeat: int | None = None
    read_from: int | None = None
    parent_id: str | None = None


@dataclass
class SweepParent:
    """What a study's parent run is opened with: the study's name, tags (its role, storage,
    folder) and params (the search space and the sweep's settings), all strings."""

    study: str
    tags: dict[str, str]
    params: dict[str, str]


@dataclass
class ParentRecord:
    """What a study's parent run is ended with: the tally and the best trial's value as
    ``metrics``, the best trial's values as ``params`` and ``tags``, the status among the tags."""

    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]


@dataclass
class ChildTrial:
    """One trial of a study, as its parent run settles the trial's child runs after a fault
    (``ParentRun.settle``): still in progress (training, or answered from a run still
    training: leave its runs alone), a lost attempt (its worker died; ``retried_as`` names the
    trial that retries it), and the folders holding spools of a record that is incomplete."""

    number: int
    in_progress: bool = False
    lost: bool = False
    retried_as: int | None = None
    spooled_in: list[str] = field(default_factory=list)


@dataclass
class EndedRun:
    """A run recorded after it ended (``Tracker.record_ended``): the run (config, history,
    status; ``run.read_from`` says what it was read from), the tracker's options, and, when it
    keeps them, its files (``run_files``) and a folder the tracker may write its model into
    (else ``[]`` and None)."""

    run: object
    options: object
    files: list[Path] = field(default_factory=list)
    model: Path | None = None


@dataclass
class Replayed:
    """What ``Tracker.replay`` did under a folder: the spools it found, those it could not
    send (the store failed: they stay for the next replay), and the store it sent to."""

    found: int = 0
    failed: int = 0
    store: str | None = None


SETTLED_NONE = {"ended": 0, "lost": 0, "replayed": 0}  # what a parent run without a fault did


class ParentRun:
    """A sweep's parent run in one tracker (the tracker's ``parent``): one per study, opened by
    the coordinator before the trials, ended by it when they have ended, its figures added by
    the summary process afterwards. Opened again by a resumed study (the tracker keeps its id
    in the study: ``study.user_attrs``/``set_user_attr``). MLflow's: ``tracking.mlflow_parent``.
    """

    run_id: str = ""
    retry_seconds: float = 30.0  # the longest one request may take (the coordinator bounds it)

    @classmethod
    def prepare(cls, options) -> None:
        """The coordinator is about to use the tracker's store (bound its retries)."""

    @classmethod
    def check(cls, options) -> None:
        """The store can take the parent run (bad input raises ``ConfigError``): called when
        the run itself is opened later, while the workers start."""

    @classmethod
    def open(cls, options, sweep: SweepParent, study, lock) -> ParentRun:
        """The study's parent run, found (a resumed study, running again) or created, under
        ``lock`` (a context manager: two invocations at once share one parent run)."""
        raise NotImplementedError

    @classmethod
    def connect(cls, address: dict) -> ParentRun:
        """The parent run ``address`` (``address()`` of the coordinator's) names."""
        raise NotImplementedError

    def address(self) -> dict:
        """JSON that ``connect`` takes, for the summary process."""
        return {"run_id": self.run_id}

    def end(self, status: str, record: ParentRecord, files: list[Path]) -> None:
        """The study ended (finished, failed or interrupted): its record and files."""

    def add_files(self, paths: list[Path]) -> None:
        """Files (the figures) added, also to an ended run."""

    def fail(self, reason: str) -> None:
        """End the run failed with ``reason``, without reading the study (it is gone)."""

    def register_best(self, name: str, study_name: str, metric: str, best) -> None:
        """``sweep.register_best``: the best trial's model registered as ``name``."""
        raise NotImplementedError

    def settle(self, study: str, trials: Callable[[], dict[int, ChildTrial]]) -> dict:
        """After a fault (a resumed study, a lost trial, a record spooled): end the child runs
        nothing will end with their true state, mark lost attempts, send what the store lacks.
        ``trials()`` reads the study's trials now (``ChildTrial`` by number): list the child
        runs first, so that a run a new trial makes meanwhile is never taken for a stale one.
        Returns counts ``{"ended", "lost", "replayed"}``; raising says the store is gone (the
        sweep goes on, ``python -m lossbench replay SWEEP_DIR`` settles them later). The
        default has nothing to settle: a tracker whose runs end with their process."""
        return dict(SETTLED_NONE)

    def end_children(self, study: str, reason: str) -> int:
        """The workers' cluster is gone: end every child run of ``study`` still running, with
        ``reason``; returns how many. The default ends none."""
        return 0

    def is_running(self) -> bool:
        """The run is still open (``replay SWEEP_DIR`` ends one its sweep left running)."""
        return False


class Tracker:
    """One run's record in one tracking system. Subclass it, set ``name`` (the option of the
    ``tracking`` group) and ``options`` (a dataclass: its fields with defaults become
    ``tracking.NAME.KEY``), override what your system records, and register the class in a
    ``register_trackers`` hook. docs/plugins.md, "Writing a tracker", has an example."""

    name: ClassVar[str] = ""
    options: ClassVar[type | None] = None
    parent: ClassVar[type[ParentRun] | None] = None  # the sweep's parent run, if it has one
    plugin: ClassVar[str] = ""  # the plugin that registered it (set by the registry)
    replays: ClassVar[bool] = False  # it journals what its store missed: ``replay`` sends it

    def __init__(self, run, options):
        self.run, self.config = run, options

    @classmethod
    def prestart(cls, options) -> None:
        """Called by the command right after composing, before the run is set up: start what
        is slow in the background (MLflow starts its side process here)."""


    @classmethod
    def as_child(cls, options, cfg, child: SweepChild) -> None:
        """Before a sweep's trial is trained: ``options`` (its node in ``cfg``, the trial's
        config, open for writing) may record that the run is ``child`` (MLflow sets its tags,
        the parent run's id and the run's name). The default records nothing: the trial is
        a run of its own."""

    @classmethod
    def as_probe(cls, options, cfg, probe: str) -> None:
        """Before a run that looks at a config without training it (``probe``: ``lr_find``,
        the learning-rate range test): ``options`` (open for writing) may say so (MLflow
        names the run ``lr_find-MODEL-LOSS-OPTIMIZER-LR``). The default records nothing."""

    @classmethod
    def record_ended(cls, ended: list[EndedRun]) -> None:
        """Record runs that ended before any tracker saw them (a sweep's epoch counts answered
        from a longer run's first epochs). The default takes each run through the lifecycle:
        ``start``, ``log_epoch`` for every epoch of its history, ``log_artifacts`` and
        ``log_model`` when it keeps files, ``end`` with its status."""
        for entry in ended:
            tracker = cls(entry.run, entry.options)
            tracker.start()
            try:
                for metrics in entry.run.history:
                    tracker.log_epoch(int(metrics["epoch"]), metrics)
                if entry.files:
                    tracker.log_artifacts(entry.files)
                if entry.model is not None:
                    tracker.log_model(entry.model)
            finally:
                tracker.end(entry.run.status)

    @classmethod
    def replay(cls, target: Path, uri: str | None) -> Replayed:
        """``python -m lossbench replay TARGET`` (trackers with ``replays = True``): send what
        the store did not receive of the runs under ``target`` (a run directory or a sweep's
        folder) to their store, or to ``uri``, printing a line per spool. A damaged spool
        raises ``LossbenchError`` before anything is sent."""
        return Replayed()

    def start(self) -> None:
        """The run begins: its config (``self.run.config``) and tags can be recorded."""

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        """One epoch's metrics (``train_loss``, ``val_loss``, ``lr``, ...) at step ``epoch``."""

    def log_steps(self, series: dict[str, list[float]], summary: dict[str, float]) -> None:
        """A run measured by step (the lr range test): ``series`` holds each metric's value at
        step 0, 1, ... (``lr_find_lr``, ``lr_find_loss``, ``lr_find_smoothed_loss``; the last
        may be non-finite: the step that diverged), ``summary`` the run's own metrics
        (``suggested_lr``, when there is one). Called once, between ``start`` and ``end``."""

    def log_artifacts(self, paths: list[Path]) -> None:
        """The run's files (config.yaml, history.csv, model.npz, plots: ``run_files``)."""

    def log_model(self, folder: Path) -> None:
        """The run's model: a folder the tracker may write into (gone after ``end``)."""

    def end(self, status: str) -> None:
        """The run ended: finished, stopped, diverged, failed, interrupted or rejected."""

    def incomplete(self) -> str | None:
        """After ``end``: why the record is incomplete (said by the run's end), else None."""
        return None


def run_files(run, folder: Path) -> list[Path]:
    """The files a run's record holds: the resolved config (a URL's password masked), and
    history.csv, model.npz, loss_curve.png from the run directory (written into ``folder``
    when the run has none), plus confusion_matrix.png for classification."""
    plots = run.config.trainer.get("plots", True)
    # a URL's password (tracking.uri) stays out of the artifact, as out of MLflow's params
    (folder / "config.yaml").write_text(mask_text(to_yaml(run.config, resolve=True)))
    source = Path(run.output_dir) if run.output_dir is not None else None
    files = ["history.csv", "model.npz"] + (["loss_curve.png"] if plots else [])
    if source is None or not all((source / f).is_file() for f in files):
        source = folder
        failed = outputs.write_files(folder, run, plots)
        if failed:
            raise failed[0][1]
    paths = [folder / "config.yaml", *(source / f for f in files)]
    if plots and run.dataset is not None and run.dataset.task == "classification":
        outputs.plot_confusion_matrix(folder / "confusion_matrix.png", run)
        paths.append(folder / "confusion_matrix.png")
    return paths

