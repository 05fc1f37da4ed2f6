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

A run that ends during set-up (before ``on_run_start``) with status interrupted or failed is
still recorded: ``start`` then ``end``. ``log_artifacts``' paths and ``log_model``'s folder
exist until ``end`` returns. An exception a tracker raises in ``start`` stops the run (bad
input is a ``ConfigError``); one raised later is the run's failure, like any plugin's.

Selection (``tracking=[mlflow,tensorboard]``, ``tracking=mlflow``, ``tracking=none``): each
tracker's options are the node ``tracking.NAME`` (``tracking.tensorboard.logdir=...``);
MLflow's alone sit at ``tracking`` itself (``tracking.uri=...``), as they did when it was the
only tracker (``lossbench.config.store.TOP_LEVEL_TRACKERS``).

Sweeps. Every trial is a run, so every tracker records each trial as a run of its own, told
beforehand which trial it is (``as_child``, on the trial's config); a tracker whose ``parent``
names a ``ParentRun`` class also ties them to one parent run per study, which the sweep's
coordinator opens and ends, and whose id ``as_child`` gets (MLflow: nested runs,
``tracking.mlflow_parent``); one without (the default) simply gets the child runs.
"""

from __future__ import annotations

from dataclasses import dataclass
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


class Tracker:
    """One run's record in one tracking system. Subclass it, set ``name`` (the option of the
    ``tracking`` group) and ``options`` (a dataclass: its fields with defaults become
    ``tracking.NAME.KEY``), override what your system records, and register the class in a
    ``register_trackers`` hook. docs/plugins.md, "Writing a tracker", has an example."""

    name: ClassVar[str] = ""
    options: ClassVar[type | None] = None
    parent: ClassVar[type[ParentRun] | None] = None  # the sweep's parent run, if it has one
    plugin: ClassVar[str] = ""  # the plugin that registered it (set by the registry)

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

    def start(self) -> None:
        """The run begins: its config (``self.run.config``) and tags can be recorded."""

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        """One epoch's metrics (``train_loss``, ``val_loss``, ``lr``, ...) at step ``epoch``."""

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

