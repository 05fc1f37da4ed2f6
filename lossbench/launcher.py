"""The launcher protocol: where a sweep's workers run. ``Launcher`` is the base class a launcher
implements, ``LauncherSpec`` what a plugin registers (``register_launchers``), ``EXIT_LOST`` the
code of a worker whose cluster went away.

A sweep's coordinator (``lossbench.sweep.coordinator.run_sweep``) never trains: it checks the
command, opens the study, and hands a ``Plan`` to the launcher ``sweep.launcher`` names, which
starts ``sweep.n_jobs`` workers. Each worker runs the same ask/tell loop on the shared study
(``python -m lossbench.sweep.worker PLAN.json INDEX``, or ``lossbench.sweep.worker.work(plan,
index)`` in a process the launcher made), so a launcher decides only where and how workers
run. The coordinator calls, in this order::

    launcher = Spec(plan, base, options)    # the class the spec names
    launcher.prepare()                      # before any trial: connect, check
    launcher.start()                        # the workers start
    launcher.watch(on_lost)                 # once, after start
    while launcher.running(): ...           # polled every 50 ms, progress shown
    launcher.interrupt()                    # on Ctrl-C, or when the sweep must stop
    launcher.codes()                        # once, after the workers ended
    launcher.close()                        # always (finally), even if prepare raised

Why launchers are not in ``lossbench.specs.KIND_TABLE``: every entry there is a component a
*run* is made of (a config group of its own, ``loss=NAME``, options stored in Hydra's
ConfigStore as that group's options, kernels or functions the engine calls, the kit's checks),
and the registry, the ConfigStore, the fused epoch's roles and the kit are derived from that
table. A launcher is none of these: it is a choice inside the ``sweep`` group
(``sweep.launcher=NAME``, the spelling users have), it runs in the coordinator, not in a run,
and it has nothing to pack into a kernel or to hold to a reference. Entered in the table it
would need an exception in each table derived from it; so it has a registry of its own
(``lossbench.plugins.Registry.launchers``), filled through pluggy like the kinds' registries.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any

from lossbench.errors import PluginError

EXIT_LOST = -9
"""A worker's code (``Launcher.codes``) when the cluster it ran on went away: its trial is
retried by the next run, and the coordinator says so."""


class Launcher(abc.ABC):
    """Where a sweep's workers run. Subclass it, implement the four abstract methods (and the
    others where the default is not right), register it with a ``LauncherSpec``.

    ``plan`` (``lossbench.sweep.plan.Plan``) is everything a worker needs: write it where the
    workers can read it (``plan.dump(path)``, private: it may hold the storage's password) or
    send ``plan.to_dict()``; local launchers find it written at ``SWEEP_DIR/plan.json`` when
    ``start`` is called. ``plan.n_jobs`` is ``sweep.n_jobs`` (None: the launcher decides).
    ``base`` is the sweep's composed config (``base.tracking``, ...). ``options`` is an
    instance of the spec's ``options`` dataclass filled from ``sweep.NAME.*`` (None when the
    spec declares none).

    What every launcher guarantees (docs/plugins.md, "Writing a launcher"):

    - Workers die with the coordinator: if this process dies, even by SIGKILL, no worker goes
      on asking trials (a local worker process stops when its stdin, a pipe the launcher
      holds, closes; Ray ends the tasks of a dead driver). Their running trials are then
      found by their heartbeat and retried with the same parameters by the next run.
    - A worker that died alone costs only its trial (retried); the others go on.
    """

    shares_sweep_dir: bool = False
    """True when the workers see the coordinator's sweep folder at its path (processes of this
    machine): they are started before the parent run is open and read its id from
    ``SWEEP_DIR/parent_run.json``, which takes the MLflow import off the critical path. False
    (the safe default): the parent run is opened first and its id travels in the plan."""

    worker_logs: str = ""
    """Where the workers' output goes, named when one crashed ("SWEEP_DIR/worker-N.log");
    empty when it reaches the coordinator's own output (Ray's tasks)."""

    def __init__(self, plan, base, options):
        self.plan, self.base, self.options = plan, base, options

    def prepare(self) -> None:  # noqa: B027 (optional: nothing by default)
        """Before any trial (and before the study is opened): connect to the cluster and check
        what the workers need (the storage and the MLflow store reachable from every node,
        the same lossbench and plugins everywhere: ``lossbench.sweep.launchers.check_reachable``
        and ``check_versions``). Bad input or an unusable cluster raises ``ConfigError`` with
        a "Fix: ..." (exit code 2, nothing started). Default: nothing to check."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the workers and return without waiting for them."""

    @abc.abstractmethod
    def running(self) -> bool:
        """True while any worker may still ask or run a trial. Polled every 50 ms from the
        main thread: it must not block."""

    def watch(self, on_lost) -> None:  # noqa: B027 (optional: nothing by default)
        """Called once after ``start``. A launcher whose workers can vanish all at once (a
        cluster's head node gone) watches for that (a thread) and then calls ``on_lost(why)``
        (it ends the trials' and the parent's MLflow runs, saying why) and ends this process
        with exit code 1. Default: nothing to watch (local processes die one at a time)."""

    @abc.abstractmethod
    def interrupt(self) -> None:
        """Make every worker stop, and return once they have stopped (bounded: kill what does
        not stop in time). Called on Ctrl-C (local workers got the SIGINT too), when the
        parent run cannot be opened, and when the study storage stopped answering. A
        worker stopped so marks its running trial for a retry (what ``work`` does on SIGINT
        or ``KeyboardInterrupt``); a second interrupt while it cleans up must not make it
        leave the trial RUNNING. ``codes`` is called after it."""

    @abc.abstractmethod
    def codes(self) -> list[int | None]:
        """One exit code per worker started, by index, once ``running`` is False or after
        ``interrupt``: ``work``'s return value where the worker returned (0: the budget is
        used up; 130: interrupted; ``plan.EXIT_WRITE_FAILED``, ``plan.EXIT_STORAGE_GONE``),
        130 or -2 for a worker stopped by a signal, ``EXIT_LOST`` for one whose cluster
        went away, any other value for one that crashed (the coordinator names it and
        recovers its trials at once). None: not known (taken as ended well)."""

    def close(self) -> None:  # noqa: B027 (optional: nothing by default)
        """Release what ``prepare`` and ``start`` took: pipes, connections, a cluster
        session. Always called, also when ``prepare`` raised or ``start`` never ran, and it
        must not wait for a cluster that is gone. Closing local workers' pipes here is also
        what stops any worker still running when the coordinator leaves. Default: nothing."""


@dataclasses.dataclass(frozen=True)
class LauncherSpec:
    """What ``register_launchers`` registers. ``name`` is the value of ``sweep.launcher``
    (an identifier, not one of the sweep group's own keys); ``launcher`` the ``Launcher``
    subclass, or its import path ``"package.module:Class"``, imported only when a sweep
    chooses it (Ray costs about 2 s to import: the built-in is registered so); ``options`` a
    dataclass of the launcher's own options, the config node ``sweep.NAME``
    (``sweep.ray.address=...``), typed by Hydra, or None; ``description`` one line for the
    listing."""

    name: str
    launcher: Any
    options: type | None = None
    description: str = ""
    # set by the registry: which plugin registered this spec
    plugin: str = dataclasses.field(default="", compare=False)

    def load(self) -> type[Launcher]:
        """The launcher class (its module imported if the spec names it by path)."""
        target = self.launcher
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            try:
                target = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise PluginError(
                    f"plugin {self.plugin!r} registers the launcher {self.name!r} as "
                    f"{self.launcher!r}, which does not import: {type(exc).__name__}: {exc}. "
                    "Fix: name the class as 'package.module:Class', or install what the "
                    "module needs."
                ) from None
        check_launcher_class(self, target)
        return target


def check_launcher_class(spec: LauncherSpec, target) -> None:
    """A ``PluginError`` unless ``target`` is a concrete ``Launcher`` subclass."""
    what = f"plugin {spec.plugin!r} registers the launcher {spec.name!r}"
    if not (isinstance(target, type) and issubclass(target, Launcher)):
        raise PluginError(
            f"{what} as {target!r}, which is not a lossbench.Launcher subclass. Fix: derive "
            "the class from lossbench.Launcher (docs/plugins.md, \"Writing a launcher\")."
        )
    missing = sorted(getattr(target, "__abstractmethods__", ()))
    if missing:
        raise PluginError(
            f"{what} as {target.__name__}, which does not implement {', '.join(missing)}. "
            "Fix: implement them (docs/plugins.md, \"Writing a launcher\")."
        )
