"""The Dask launcher: ``n_jobs`` tasks, each supervising one sweep worker process
(``python -m lossbench.sweep.worker PLAN INDEX``) on the Dask worker that runs it.

Why a process per task and not ``work()`` in the task's thread: a Dask task runs in a thread
of the worker, where no signal handler can be set and nothing can interrupt it; the worker
process has its own main thread, so Ctrl-C means what it means in a local sweep (the running
trial is marked for a retry), and a worker that crashes costs only its trial.

Stopping. ``interrupt`` sets a Dask ``Event``; each task, polling it twice a second, sends its
process SIGINT (the process marks its trial for a retry and exits 130), and kills it after
``STOP_SECONDS``. The coordinator also beats a Dask ``Variable`` once a second: a task that
sees it unchanged for ``COORDINATOR_GRACE_SECONDS`` (the coordinator died, even by SIGKILL)
closes its process's stdin, and the process stops as on Ctrl-C. A Dask worker that dies takes
its process with it (the stdin pipe closes); Dask runs the task again elsewhere, and the new
process finds the dead one's trial by its heartbeat and retries it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import distributed
from lossbench.errors import ConfigError
from lossbench.launcher import Launcher
from lossbench.signals import children_ignore_ctrl_c
from lossbench.sweep.launchers import (
    ENV_PREFIXES,
    check_reachable,
    check_versions,
    node_info,
    plan_on_node,
)
from lossbench.sweep.plan import Plan
from lossbench.tracking.store import resolve_uri

POLL_SECONDS = 0.5  # how often a task looks at its process, the stop event and the heartbeat
STOP_SECONDS = 60.0  # a process asked to stop is killed after this long
COORDINATOR_GRACE_SECONDS = 10.0  # the heartbeat unchanged this long: the coordinator is gone


# ---------------------------------------------------------------------------------------------
# on the Dask worker


def dask_task(plan_dict: dict, index: int, env: dict, names: dict) -> int:
    """One sweep worker: its process started and watched until it ends; its exit code."""
    with tempfile.TemporaryDirectory(prefix="lossbench-dask-") as tmp:
        plan = plan_on_node(plan_dict, tmp)
        here = os.path.isdir(plan.sweep_dir)  # the coordinator's machine, or a shared folder
        if not os.path.isdir(plan.workdir):
            plan.workdir = tmp
        plan.dump(Path(tmp, "plan.json"))
        log = Path(plan.sweep_dir if here else tmp, f"dask-worker-{index}.log")
        with open(log, "a") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lossbench.sweep.worker", str(Path(tmp, "plan.json")),
                 str(index)],
                stdin=subprocess.PIPE,  # it stops when this closes: when this process dies
                stdout=out, env={**os.environ, **env},
                start_new_session=True,  # Ctrl-C reaches it through the stop event only
            )  # fmt: skip
            return _supervise(proc, names)


def _supervise(proc: subprocess.Popen, names: dict) -> int:
    stop = distributed.Event(names["stop"])
    alive = distributed.Variable(names["alive"])
    last, seen_at = None, time.monotonic()
    while proc.poll() is None:
        time.sleep(POLL_SECONDS)
        try:
            if stop.is_set():
                return _stop(proc)
            beat = alive.get(timeout=2)
        except Exception:  # the scheduler does not answer: the heartbeat counts as unchanged
            beat = last
        if beat != last:
            last, seen_at = beat, time.monotonic()
        elif time.monotonic() - seen_at > COORDINATOR_GRACE_SECONDS:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the worker stops as on Ctrl-C
            return _wait_or_kill(proc)
    return proc.returncode


def _stop(proc: subprocess.Popen) -> int:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)  # it marks its running trial for a retry
    return _wait_or_kill(proc)


def _wait_or_kill(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


# ---------------------------------------------------------------------------------------------
# in the coordinator


class DaskLauncher(Launcher):
    """``sweep.launcher=dask``; ``options`` are ``sweep.dask.*`` (``DaskOptions``)."""

    def __init__(self, plan: Plan, base, options):
        super().__init__(plan, base, options)
        self.client = self.cluster = None
        self.futures: list = []
        self.stopping = False
        token = uuid.uuid4().hex[:12]
        self.names = {"stop": f"lossbench-stop-{token}", "alive": f"lossbench-alive-{token}"}
        self.beating = threading.Event()
        self.worker_logs = f"{plan.sweep_dir}/dask-worker-N.log"

    def prepare(self) -> None:
        t0 = time.perf_counter()
        self.client = self._connect()
        workers = self.client.scheduler_info()["workers"]
        slots = sum(w["nthreads"] for w in workers.values())
        self.n_jobs = self.plan.n_jobs or slots
        remote = sorted({urlparse(a).hostname for a in workers} - _addresses())
        tracking = resolve_uri(self.base.tracking) if self.plan.tracking else None
        check_reachable(self.plan, tracking, remote)
        check_versions(node_info(), self.client.run(node_info))
        if self.plan.plugins_dir:
            folder = Path(self.plan.plugins_dir)
            self.plan.plugin_sources = {p.name: p.read_text() for p in folder.glob("*.py")}
        where = self.options.address or "a LocalCluster on this machine"
        print(f"dask: {where}, {len(workers)} worker(s), {slots} thread(s), {self.n_jobs} sweep "
              f"worker(s); ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)  # fmt: skip

    def _connect(self):
        timeout = float(self.options.connect_seconds)
        if not self.options.address:
            with children_ignore_ctrl_c():  # Ctrl-C stops the tasks through the stop event
                self.cluster = distributed.LocalCluster(
                    n_workers=self.plan.n_jobs or 1, threads_per_worker=1, processes=True,
                    dashboard_address=None, silence_logs=logging.ERROR,
                )  # fmt: skip
            return distributed.Client(self.cluster, timeout=timeout)
        try:
            return distributed.Client(self.options.address, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(
                f"cannot connect to the Dask scheduler at sweep.dask.address="
                f"{self.options.address}: {str(exc).splitlines()[0][:300]}. Fix: check the "
                "address (dask scheduler prints it: tcp://HOST:8786), or leave "
                "sweep.dask.address unset for a LocalCluster on this machine."
            ) from None

    def start(self) -> None:
        alive = distributed.Variable(self.names["alive"], client=self.client)
        alive.set(0)
        threading.Thread(target=self._beat, args=(alive,), daemon=True,
                         name="lossbench-dask-heartbeat").start()  # fmt: skip
        plan, env = self.plan.to_dict(), self._env()
        self.futures = [
            self.client.submit(dask_task, plan, i, env, self.names, pure=False,
                               key=f"lossbench-worker-{i}-{self.names['stop'][-12:]}")
            for i in range(self.n_jobs)
        ]  # fmt: skip

    def _beat(self, alive) -> None:
        beat = 0
        while not self.beating.wait(1.0):
            beat += 1
            with contextlib.suppress(Exception):  # the scheduler gone: the tasks stop alone
                alive.set(beat)

    def _env(self) -> dict[str, str]:
        names = [k for k in os.environ if k.startswith(ENV_PREFIXES)]
        if self.plan.storage_password_env:
            names.append(self.plan.storage_password_env)
        return {k: os.environ[k] for k in names if k in os.environ}

    def running(self) -> bool:
        return any(not f.done() for f in self.futures)

    def interrupt(self) -> None:
        self.stopping = True
        if not self.futures:
            return
        distributed.Event(self.names["stop"], client=self.client).set()
        with contextlib.suppress(TimeoutError, distributed.TimeoutError):
            distributed.wait(self.futures, timeout=STOP_SECONDS + 15)

    def codes(self) -> list[int | None]:
        out = []
        for f in self.futures:
            if f.status == "finished":
                out.append(int(f.result()))
            elif self.stopping or f.status == "cancelled":
                out.append(130)
            elif f.status == "error":
                print(f"lossbench: a Dask task failed: {f.exception()!r}", file=sys.stderr)
                out.append(-1)
            else:
                out.append(None)
        return out

    def close(self) -> None:
        self.beating.set()
        for thing in (self.client, self.cluster):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close(timeout=10)


def _addresses() -> set[str]:
    """This machine's addresses, as Dask names its workers' hosts."""
    out = {"127.0.0.1", "localhost", "::1"}
    with contextlib.suppress(OSError):
        out |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    return out
