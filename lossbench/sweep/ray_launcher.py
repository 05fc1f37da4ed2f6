"""``sweep.launcher=ray``: the sweep's workers as Ray tasks, each running the ask/tell loop of
``lossbench.sweep.worker`` on the shared study, so no worker waits for another.

``prepare`` connects (``sweep.ray.address``: ``auto``, ``ray://HOST:10001``, ``HOST:PORT``, or
unset to start a local Ray instance, as ``ray.init`` does) and checks, before any trial, that
every node can reach the study storage and the MLflow store and runs the same lossbench,
Python and plugins. ``start`` submits ``sweep.n_jobs`` tasks (default: the cluster's CPUs at
``sweep.ray.cpus_per_trial``); the plan, single-file plugins included, and the environment
lossbench and MLflow read (``LOSSBENCH_*``, ``MLFLOW_*``, the storage password's variable)
travel with them. Ray retries a task whose worker died (a killed process, a lost node); the new
task finds the dead worker's trial by its pid or its silent heartbeat and retries it with the
same parameters. Ctrl-C cancels the tasks (each marks its trial for a retry); a coordinator that
dies takes its tasks with it (Ray ends the tasks of a dead driver).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from lossbench.errors import ConfigError
from lossbench.launcher import EXIT_LOST, Launcher
from lossbench.sweep.launchers import (
    ENV_PREFIXES,
    check_reachable,
    check_versions,
    node_info,
    plan_on_node,
)
from lossbench.sweep.plan import Plan
from lossbench.sweep.worker import work
from lossbench.tracking.store import resolve_uri

try:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError:  # an optional extra; the error says how to install it
    ray = None

TASK_RETRIES = 3  # a task whose worker died is run again (its trial is retried) this often
# The head (its GCS) not accepting connections this long is the cluster gone: Ray's driver
# itself waited about 60 s for the GCS and then ended this process without its clean-up,
# leaving the parent run RUNNING.
HEAD_GRACE_SECONDS = 3.0


def ray_worker(plan_dict: dict, index: int) -> int:
    """One worker: the same loop as a local worker process, on whichever node Ray chose."""
    with tempfile.TemporaryDirectory(prefix="lossbench-plugins-") as tmp:
        plan = plan_on_node(plan_dict, tmp)
        if os.path.isdir(plan.workdir):  # the coordinator's folder, where it exists
            os.chdir(plan.workdir)
        return work(plan, index, quiet=True)


class RayLauncher(Launcher):
    """``sweep.launcher=ray``; ``options`` are ``sweep.ray.*``
    (``lossbench.builtin.launchers.RayOptions``)."""

    def __init__(self, plan: Plan, base, options):
        if ray is None:
            raise ConfigError(
                "sweep.launcher=ray needs Ray, which is not installed. Fix: pip install "
                "'lossbench[ray]' (or pass sweep.launcher=local)."
            )
        super().__init__(plan, base, options)
        self.refs = []
        self.start_seconds = 0.0
        self.gcs: tuple[str, int] | None = None  # the head's GCS, watched while tasks run
        self.head_lost: str | None = None  # why the cluster is taken for gone

    def prepare(self) -> None:
        t0 = time.perf_counter()
        address = self.options.address or None
        try:
            ray.init(
                address=address,
                runtime_env={"env_vars": self._env()},
                log_to_driver=True,
                logging_level="warning",
                **({"include_dashboard": False} if address is None else {}),
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"cannot connect to the Ray cluster at sweep.ray.address={address}: "
                f"{str(exc).splitlines()[0][:300]}. Fix: check the address (`ray status` on "
                "the head node shows it; ray://HOST:10001 for Ray Client, auto on a node); a "
                "cluster with token authentication needs RAY_AUTH_MODE=token and its token "
                "(RAY_AUTH_TOKEN, or ~/.ray/auth_token) here too."
            ) from None
        self.start_seconds = time.perf_counter() - t0
        host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
        self.gcs = (host.strip("[]"), int(port))
        nodes = [n for n in ray.nodes() if n["Alive"]]
        here = _addresses()
        remote = sorted({n["NodeManagerAddress"] for n in nodes} - here)
        tracking = resolve_uri(self.base.tracking) if self.plan.tracking else None
        check_reachable(self.plan, tracking, remote)
        self._check_versions(nodes)
        cpus = float(self.options.cpus_per_trial or 1.0)
        total = ray.cluster_resources().get("CPU", 1.0)
        self.n_jobs = self.plan.n_jobs or max(1, int(total // cpus))
        if self.plan.plugins_dir:
            folder = Path(self.plan.plugins_dir)
            self.plan.plugin_sources = {p.name: p.read_text() for p in folder.glob("*.py")}
        print(
            f"ray: {len(nodes)} node(s), {total:g} CPUs, {self.n_jobs} worker(s) at "
            f"{cpus:g} CPU each; connected in {self.start_seconds:.1f} s",
            file=sys.stderr,
        )

    def _env(self) -> dict[str, str]:
        names = [k for k in os.environ if k.startswith(ENV_PREFIXES)]
        if self.plan.storage_password_env:
            names.append(self.plan.storage_password_env)
        return {k: os.environ[k] for k in names if k in os.environ}

    def _check_versions(self, nodes) -> None:
        probe = ray.remote(node_info)
        refs = {
            n["NodeManagerAddress"]: probe.options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
            ).remote()
            for n in nodes
        }
        seen = dict(zip(refs, ray.get(list(refs.values()), timeout=300), strict=True))
        check_versions(node_info(), seen)

    def start(self) -> None:
        cpus = float(self.options.cpus_per_trial or 1.0)
        task = ray.remote(ray_worker).options(
            num_cpus=cpus, max_retries=TASK_RETRIES, retry_exceptions=False
        )
        plan = self.plan.to_dict()
        self.refs = [task.remote(plan, i) for i in range(self.n_jobs)]

    def running(self) -> bool:
        if not self.refs:
            return False
        _, pending = ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
        return bool(pending)

    def watch(self, on_lost) -> None:
        """Watch the head from a thread: once a second a TCP connect to its GCS; refused or
        silent for ``HEAD_GRACE_SECONDS``, the cluster is gone, ``on_lost(why)`` runs and this
        process exits 1. A thread, because Ray's own calls (``ray.wait``) in the main thread
        then block until Ray's driver ends the process after about 60 s, without clean-up."""

        def loop():
            silent_since = None
            while self.gcs is not None:
                time.sleep(1.0)
                try:
                    socket.create_connection(self.gcs, timeout=2).close()
                    silent_since = None
                    continue
                except OSError as exc:
                    silent_since = silent_since or time.monotonic()
                    why = exc.strerror or type(exc).__name__
                if time.monotonic() - silent_since >= HEAD_GRACE_SECONDS:
                    break
            else:
                return
            host, port = self.gcs
            self.head_lost = f"the Ray head at {host}:{port} stopped answering ({why})"
            try:
                on_lost(self.head_lost)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)  # the main thread is blocked in Ray; nothing is left to wait for

        threading.Thread(target=loop, daemon=True, name="lossbench-ray-head").start()

    def interrupt(self) -> None:
        if self.head_lost:
            return  # nothing left to cancel, and Ray's calls would wait for the head
        for ref in self.refs:  # KeyboardInterrupt in each task: it marks its trial for a retry
            ray.cancel(ref)
        _, pending = ray.wait(self.refs, num_returns=len(self.refs), timeout=60)
        for ref in pending:
            ray.cancel(ref, force=True)

    def codes(self) -> list[int | None]:
        if self.head_lost:
            return [EXIT_LOST] * len(self.refs)
        out = []
        for ref in self.refs:
            try:
                out.append(int(ray.get(ref, timeout=60)))
            except ray.exceptions.TaskCancelledError:
                out.append(130)
            except ray.exceptions.RayError as exc:
                print(f"lossbench: a Ray worker failed: {exc}", file=sys.stderr)
                out.append(-1)
        return out

    def close(self) -> None:
        if self.head_lost:
            return  # ray.shutdown() would wait for the head that is gone
        if ray.is_initialized():
            ray.shutdown()


def _addresses() -> set[str]:
    """This machine's addresses, as Ray names nodes."""
    out = {"127.0.0.1", ray.util.get_node_ip_address()}
    try:
        out |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return out
