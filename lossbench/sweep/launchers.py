"""Where a sweep's workers run (``sweep.launcher``): ``LocalLauncher``, the built-in ``local``,
worker processes on this machine; ``ray`` is ``lossbench.sweep.ray_launcher``. Both implement
``lossbench.launcher.Launcher`` and run the same ask/tell loop (``lossbench.sweep.worker.work``);
a plugin's launcher does the same (docs/plugins.md, "Writing a launcher"). Also what launchers
share: the checks a cluster must pass before any trial, a study storage and an MLflow store
every node can reach (``check_reachable``) and the same lossbench and plugins on every node
(``check_versions``; what a node runs: ``node_info``); ``runs_left``, what the budget still
needs, for a launcher that starts a worker per trial. And the background summary process
(``lossbench.sweep.summary``) with its lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from optuna.trial import TrialState

from lossbench._version import __version__
from lossbench.errors import ConfigError
from lossbench.launcher import Launcher
from lossbench.plugins import build_plugin_manager, describe
from lossbench.sweep.plan import Plan
from lossbench.sweep.study import counted_runs, open_study
from lossbench.urls import mask_url

LOOPBACK = ("localhost", "127.0.0.1", "::1", "0.0.0.0")


class LocalLauncher(Launcher):
    """``sweep.n_jobs`` worker processes (``python -m lossbench.sweep.worker``). Each reads a
    pipe this process holds on its stdin, so when the coordinator dies they stop."""

    shares_sweep_dir = True  # this machine's processes: the parent run's id can follow

    def __init__(self, plan: Plan, base, options):
        super().__init__(plan, base, options)
        self.procs = []
        self.worker_logs = f"{plan.sweep_dir}/worker-N.log"

    def start(self) -> None:
        folder = Path(self.plan.sweep_dir)
        for i in range(self.plan.n_jobs or 1):
            with open(folder / f"worker-{i}.log", "a") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "lossbench.sweep.worker", str(folder / "plan.json"),
                     str(i)],
                    stdin=subprocess.PIPE,  # they stop when it closes: when this process dies
                    stdout=log,
                    stderr=None,  # their errors reach the user as the coordinator's would
                ))  # fmt: skip

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def interrupt(self) -> None:
        stop_processes(self.procs)  # they got the SIGINT too; make sure they stop

    def codes(self) -> list[int | None]:
        return [p.returncode for p in self.procs]

    def close(self) -> None:
        close_pipes(self.procs)


def stop_processes(procs: Iterable[subprocess.Popen], timeout: float = 60) -> None:
    """``Launcher.interrupt`` for worker processes of this machine: SIGINT to each (a worker
    marks its running trial for a retry), then wait up to ``timeout`` seconds for each and
    SIGKILL what has not stopped."""
    procs = list(procs)
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def close_pipes(procs: Iterable[subprocess.Popen]) -> None:
    """``Launcher.close`` for worker processes started with ``stdin=subprocess.PIPE``: closing
    the pipe stops any worker still running (it reads its stdin to the end, then stops as on
    SIGTERM)."""
    for p in procs:
        if p.stdin is not None:
            with contextlib.suppress(OSError):
                p.stdin.close()


def runs_left(plan: Plan, started: Iterable[int] = ()) -> int:
    """How many more workers the budget needs now, for a launcher that starts one worker per
    trial (``python -m lossbench.sweep.worker PLAN INDEX --trials 1``): ``plan.n_runs`` less
    the runs that ended and count, less the trials RUNNING, less the processes in
    ``started`` (pids of workers this machine started that are still alive) that have no
    RUNNING trial yet (they are about to ask one). Never more than the budget needs: a
    worker started in excess finds the budget used up and exits 0 at once."""
    trials = open_study(plan).get_trials(deepcopy=False)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    asked = {t.user_attrs.get("pid") for t in running}
    about_to_ask = sum(pid not in asked for pid in started)
    return max(0, plan.n_runs - len(counted_runs(trials)) - len(running) - about_to_ask)


# ---------------------------------------------------------------------------------------------
# what a cluster must offer


def check_reachable(plan: Plan, tracking_uri: str | None, remote_nodes: list[str]) -> None:
    """With nodes other than this machine (``remote_nodes``: their addresses), the study storage
    and the MLflow store must be reachable from them: a database or server by a name that is
    not this machine's loopback; a journal file only on a filesystem the user says is shared;
    never a local sqlite file."""
    if not remote_nodes:
        return
    nodes = ", ".join(remote_nodes)
    storage = plan.storage
    if storage.startswith("journal:") and not plan.launcher_options.get("shared_filesystem"):
        raise ConfigError(
            f"the study storage is a journal file on this machine ({storage[8:]}), but the Ray "
            f"cluster has other nodes ({nodes}) that cannot reach it. Fix: a database every "
            "node can reach, sweep.storage=postgresql+psycopg2://USER@HOST/DB (or mysql://...), "
            "or sweep.ray.shared_filesystem=true if that folder is mounted at the same path on "
            "every node."
        )
    if not storage.startswith("journal:"):
        _check_url("sweep.storage", storage, nodes, "postgresql+psycopg2://USER@HOST/DB")
    if plan.tracking:
        if tracking_uri is None:
            raise ConfigError(
                f"MLflow would write to ./mlflow.db on each node ({nodes} and this one): the "
                "runs would be scattered. Fix: an MLflow server every node can reach, "
                "tracking.uri=http://HOST:5000 (started with --artifacts-destination so "
                "artifacts go through it), or tracking=none."
            )
        _check_url("tracking.uri", tracking_uri, nodes, "http://HOST:5000")


def _check_url(setting: str, url: str, nodes: str, example: str) -> None:
    parsed = urlparse(url)
    scheme = parsed.scheme.split("+")[0]
    local = scheme in ("sqlite", "file", "")
    if not local and (parsed.hostname or "localhost") not in LOOPBACK:
        return
    raise ConfigError(
        f"{setting}={mask_url(url)} is on this machine only, but the Ray cluster has other "
        f"nodes ({nodes}) that cannot reach it. Fix: {setting}={example}, with a host name "
        "every node can reach."
    )


# the environment variables a worker on another node is given from the coordinator's
ENV_PREFIXES = ("LOSSBENCH_", "MLFLOW_", "NUMBA_")


def plan_on_node(plan_dict: dict, folder: str) -> Plan:
    """The sweep's plan as a worker on another node (a Ray or Dask task) runs it: single-file
    plugins, which travel in the plan as source rather than as a path, written into
    ``folder`` and loaded from there."""
    plan = Plan(**plan_dict)
    if plan.plugin_sources:
        for name, source in plan.plugin_sources.items():
            Path(folder, name).write_text(source)
        plan.plugins_dir = folder
    return plan


def node_info() -> dict:
    """What a node runs, compared across the cluster: lossbench, Python, installed plugins."""
    plugins = {  # installed distributions (built-ins come with lossbench, files travel)
        r["name"]: f"{r['source']} {r['version']}"
        for r in describe(build_plugin_manager(None))
        if r["version"] and r["source"] != "lossbench (built-in)"
    }
    return {
        "lossbench": __version__,
        "python": platform.python_version(),
        "plugins": dict(sorted(plugins.items())),
    }


def check_versions(here: dict, nodes: dict[str, dict]) -> None:
    """Every node runs the lossbench, Python and plugins this machine runs (``nodes``: node
    address -> what it runs, as ``here``)."""
    for node, there in sorted(nodes.items()):
        diff = [
            f"{key} {there.get(key)!r} there, {value!r} here"
            for key, value in here.items()
            if there.get(key) != value
        ]
        if diff:
            raise ConfigError(
                f"the Ray node {node} does not run what this machine runs: {'; '.join(diff)}. "
                "Fix: install the same lossbench and plugin versions on every node (the same "
                "`pip install` as here), then run the sweep again."
            )


SUMMARY_LOCK = ".summary.lock"  # held by the summary process until it has ended


class SummaryBusy(Exception):
    """The summary lock stayed held longer than the caller would wait: ``pid`` (None:
    unknown) holds it, ``path`` is the lock file, ``seconds`` how long we waited."""

    def __init__(self, path: Path, pid: int | None, seconds: float):
        self.path, self.pid, self.seconds = path, pid, seconds
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{path} has been held by {who} for {seconds:g} s")


@contextlib.contextmanager
def summary_lock(sweep_dir: Path, wait: float | None = None):
    """Hold the sweep's summary lock: waits while the summary process of an earlier invocation
    is still drawing its figures; ``wait``: at most that many seconds, then ``SummaryBusy``
    (a hung process never holds a sweep forever). Yields the open lock file, which names the
    process holding it (its pid, written by ``start_summary``)."""
    path = Path(sweep_dir) / SUMMARY_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        _take(f, path, wait)
        yield f


def _take(f, path: Path, wait: float | None) -> None:
    if wait is None:
        fcntl.flock(f, fcntl.LOCK_EX)
        return
    started = time.monotonic()
    said = False
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        waited = time.monotonic() - started
        if waited >= wait:
            raise SummaryBusy(path, lock_holder(path), wait)
        if not said and waited >= 1:
            holder = lock_holder(path)
            print(f"lossbench: waiting (at most {wait:g} s, sweep.summary_wait_seconds) for "
                  f"the summary process{f' {holder}' if holder else ''} of an earlier "
                  f"invocation, which holds {path}", file=sys.stderr, flush=True)  # fmt: skip
            said = True
        time.sleep(0.1)


def lock_holder(path: Path) -> int | None:
    """The pid ``start_summary`` wrote into the lock file, or None."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def start_summary(plan_path: Path, sweep_dir: Path, request: dict, wait: float | None) -> None:
    """Start ``python -m lossbench.sweep.summary`` (the figures, and the parent run's end when
    the command could not end it) in its own session and return without waiting; it inherits
    the held lock, so the lock is free once it has ended. Its output goes to
    SWEEP_DIR/summary.log. ``SummaryBusy`` when an earlier one still holds the lock after
    ``wait`` seconds."""
    request = json.dumps({"plan": str(plan_path), **request})
    with summary_lock(sweep_dir, wait) as lock, open(Path(sweep_dir) / "summary.log", "a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lossbench.sweep.summary"], stdin=subprocess.PIPE,
            stdout=log, stderr=log, text=True, start_new_session=True,  # Ctrl-C: not it
            pass_fds=(lock.fileno(),),
        )  # fmt: skip
        lock.truncate(0)
        lock.write(str(proc.pid))
        lock.flush()
        proc.stdin.write(request)
        proc.stdin.close()
