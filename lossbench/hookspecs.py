"""The hooks a lossbench plugin can implement.

A plugin is a module (or any object) with functions marked ``@lossbench.hookimpl`` whose names
are the hooks below. Built-in losses, optimizers, models, datasets, the progress bar, early
stopping and the output writer are plugins too, registered through exactly these hooks.

Registration hooks receive a ``register`` callback; call it once per component. Lifecycle hooks
run in the Python epoch loop, between jitted epochs. docs/plugins.md documents each hook with an
example; tests/test_hooks.py holds a test for each and checks that every hook is documented.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("lossbench")
hookimpl = pluggy.HookimplMarker("lossbench")


@hookspec
def register_losses(register):
    """Register losses: ``register(LossSpec(name="focal", ...))``.

    Called once when the plugin manager is built. Each name must be unique across all plugins.
    """


@hookspec
def register_optimizers(register):
    """Register optimizers: ``register(OptimizerSpec(name="lion", ...))``."""


@hookspec
def register_models(register):
    """Register models: ``register(ModelSpec(name="mlp", ...))``."""


@hookspec
def register_datasets(register):
    """Register datasets: ``register(DatasetSpec(name="digits", ...))``."""


@hookspec
def register_schedules(register):
    """Register learning-rate schedules: ``register(ScheduleSpec(name="cosine", ...))``."""


@hookspec
def register_launchers(register):
    """Register sweep launchers: ``register(LauncherSpec(name="slurm", launcher=SlurmLauncher))``.

    ``sweep.launcher=NAME`` chooses one; its options (``LauncherSpec.options``) are the node
    ``sweep.NAME``. The launcher subclasses ``lossbench.Launcher`` (its methods say what each
    must guarantee). Built-ins: ``local`` (worker processes) and ``ray`` (Ray tasks).
    """


@hookspec
def register_trackers(register):
    """Register trackers: ``register(TensorBoardTracker)``, a subclass of
    ``lossbench.tracking.base.Tracker`` whose ``name`` becomes an option of the ``tracking``
    group (``tracking=[mlflow,tensorboard]`` runs both) and whose ``options`` dataclass becomes
    ``tracking.NAME``. Called once when the plugin manager is built; names are unique."""


@hookspec
def register_options(register):
    """Declare a lifecycle plugin's own options: ``register(NAME, DATACLASS)``. They become the
    config node ``plugins.NAME`` (the dataclass's fields with their defaults), typed by Hydra
    like any option (``plugins.NAME.KEY=VALUE`` on the command line, in sweeps too), shown by
    ``--cfg job`` and ``--help``; the plugin reads them as ``run.config.plugins.NAME``."""


@hookspec
def on_run_start(run):
    """Called once after data, model and optimizer state are ready, before the first epoch.

    ``run`` is the ``lossbench.Run``: its ``config``, ``output_dir`` (or None), ``dataset``,
    ``specs``, ``history`` (empty so far). Raising here aborts the run; ``on_run_end`` still runs.
    """


@hookspec
def on_epoch_end(run, epoch, metrics):
    """Called after every epoch with its 0-based ``epoch`` and ``metrics`` (a dict with
    ``train_loss``, ``val_loss``, ``lr``, ``epoch_seconds`` and, for classification,
    ``train_accuracy``, ``val_accuracy`` and ``val_macro_f1``, for regression ``val_mse``,
    ``val_mae`` and ``val_r2``); ``metrics`` is already in ``run.history``.

    Return a non-empty string to stop the run after this epoch; the string is the reason
    (e.g. ``"early stopping: val_loss has not improved for 10 epochs"``). Return None to go on.
    """


@hookspec
def on_run_end(run, status):
    """Called exactly once per run that ``lossbench.train`` accepted, whatever happened, also
    when it ends during set-up before ``on_run_start`` (``run.phase`` says where: setup, start,
    compile or train; ``run.dataset``/``run.layout`` may then be None). ``status`` is one of
    ``"finished"``, ``"stopped"`` (a hook asked to stop), ``"diverged"`` (non-finite loss),
    ``"failed"`` (an exception), ``"interrupted"`` (Ctrl-C / SIGTERM) or ``"rejected"`` (bad
    input found before the first epoch: the run leaves no record). ``run.error`` holds the
    message for all but finished and stopped. Exceptions raised here are reported, not
    propagated, so one plugin cannot stop another's clean-up.
    """
