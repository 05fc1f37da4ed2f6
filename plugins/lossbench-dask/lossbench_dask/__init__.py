"""``sweep.launcher=dask``: a sweep's workers as tasks on a Dask cluster (``dask.distributed``).

Its options are ``sweep.dask.*`` (``DaskOptions``): ``address`` joins a running scheduler
(``tcp://HOST:8786``); unset, the sweep starts a ``LocalCluster`` of ``sweep.n_jobs`` worker
processes on this machine and closes it at the end. The launcher is in ``launcher`` and named
by its import path, so that loading this plugin (every ``python -m lossbench``) imports neither
Dask nor the sweep machinery."""

from dataclasses import dataclass

import lossbench

__version__ = "0.1.0"


@dataclass
class DaskOptions:
    """``sweep.dask.*``: the cluster a ``sweep.launcher=dask`` sweep runs on."""

    address: str | None = None  # a scheduler, tcp://HOST:8786; unset: a LocalCluster here
    shared_filesystem: bool = False  # the sweep folder is mounted at the same path everywhere
    connect_seconds: float = 30.0  # how long to wait for the scheduler to answer


@lossbench.hookimpl
def register_launchers(register):
    register(lossbench.LauncherSpec(
        name="dask", launcher="lossbench_dask.launcher:DaskLauncher", options=DaskOptions,
        description="tasks on a Dask cluster (sweep.dask.address; unset: a LocalCluster)",
    ))  # fmt: skip
