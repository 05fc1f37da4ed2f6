"""Built-in sweep launchers (``sweep.launcher``): ``local``, worker processes on this machine
(``lossbench.sweep.launchers.LocalLauncher``, the default), and ``ray``, Ray tasks on a cluster
(``lossbench.sweep.ray_launcher.RayLauncher``, options ``sweep.ray.*``).

Registered through ``register_launchers`` as a third-party launcher is. The classes are named
by import path: they live in ``lossbench.sweep`` (a layer above this one), and Ray, about 2 s
to import, loads only when a sweep chooses ``sweep.launcher=ray``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lossbench.hookspecs import hookimpl
from lossbench.launcher import LauncherSpec


@dataclass
class RayOptions:
    """``sweep.ray.*``: the cluster a ``sweep.launcher=ray`` sweep runs on."""

    address: str | None = None  # auto, ray://HOST:10001, HOST:PORT; unset: a local Ray instance
    cpus_per_trial: float = 1.0  # CPUs Ray reserves for each worker
    shared_filesystem: bool = False  # the sweep folder is mounted at the same path on every node


@hookimpl
def register_launchers(register):
    register(LauncherSpec(
        name="local", launcher="lossbench.sweep.launchers:LocalLauncher",
        description="sweep.n_jobs worker processes on this machine (default 1)",
    ))  # fmt: skip
    register(LauncherSpec(
        name="ray", launcher="lossbench.sweep.ray_launcher:RayLauncher", options=RayOptions,
        description="Ray tasks on a Ray cluster (pip install 'lossbench[ray]')",
    ))  # fmt: skip
