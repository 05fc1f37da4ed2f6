"""A sweep's services going away, for real: an ``mlflow server`` SIGKILLed in the middle of a
sweep and started again on the same port and store (one server for this module), and every
process of a sweep (coordinator, workers, their MLflow side processes) SIGKILLed at once, as a
container stop or the OOM killer does, then the same command again. What must hold: the trials
keep the budget (trained, spooled, told complete), the sweep exits non-zero naming the replay,
``replay SWEEP_DIR`` records everything and leaves no spool, and nothing stays RUNNING."""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from test_sweep import PROBE, load
from test_sweep_faults import LR, start, wait_for

from conftest import wait_for_summaries

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` on a sqlite store, in its own process group, restartable on its port."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.proc = folder, free_port(), None
        folder.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.folder / "server.log", "a")
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{self.folder}/mlflow.db", "--artifacts-destination",
             str(self.folder / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.kill()
                    raise RuntimeError((self.folder / "server.log").read_text()[-3000:]) from None
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server and its workers."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    srv.kill()


def runs_of(uri, experiment):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL) if exp else []
    return client, runs


def replay(target, cwd):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "lossbench", "replay", str(target)], cwd=cwd,
                          env={**env, "LOSSBENCH_LOAD_PLUGINS": ""}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def sweep_args(uri, name, n_trials=4, n_jobs=1):
    return ["--plugins-dir", PROBE, LR, "data=probe", "trainer.epochs=4", f"tracking.uri={uri}",
            f"tracking.experiment={name}", "tracking.flush_seconds=0.2",
            "tracking.retry_seconds=2", f"sweep.n_trials={n_trials}", f"sweep.n_jobs={n_jobs}",
            "sweep.pruner=none", f"sweep.study_name={name}"]  # fmt: skip


def fault_while_held(proc, marks, ready, fault):
    """Wait until ``ready()`` (the sweep's first trial held after its epoch 1), inject
    ``fault()``, release the trials; the sweep's output and the seconds from the fault to its
    exit."""
    try:
        wait_for(lambda: proc.poll() is not None or ready(), "trial 0")
        assert proc.poll() is None, proc.communicate()
        fault()
        t0 = time.time()
        (marks / "release").touch()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out, err, time.time() - t0


def test_a_sweep_whose_mlflow_server_dies_keeps_its_budget_and_replays_whole(tmp_path, server):
    """The server is SIGKILLed while trial 0 trains (its run created, epochs 0-1 sent); the
    other three trials start with no server at all. Every trial trains and counts, the sweep
    exits 1 naming ``replay SWEEP_DIR``; with the server back, that replay records every
    trial and the parent run, leaves no spool, and the same command then exits 0."""
    marks, name = tmp_path / "marks", "mlflowdies"
    args = sweep_args(server.url, name)
    proc = start(args, tmp_path, marks, hold="epoch_1")

    def trial_logging():
        if not (marks / "epoch_1").exists():
            return False
        _, runs = runs_of(server.url, name)
        return any("val_loss" in r.data.metrics for r in runs
                   if r.data.tags.get("lossbench.role") == "trial")  # fmt: skip

    out, err, seconds = fault_while_held(proc, marks, trial_logging, server.kill)
    wait_for_summaries(tmp_path)
    sweep_dir = tmp_path / "multirun" / name
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    assert f"python -m lossbench replay {sweep_dir}" in err and "Traceback" not in err, err
    assert "trials 4/4 done (0 pruned, 0 failed)" in out, out
    assert seconds < 60, seconds  # one retry budget per store call, not MLflow's minutes
    counted = [t for t in load(tmp_path, name).trials if not t.user_attrs.get("lossbench_lost")]
    assert sorted(t.state.name for t in counted) == ["COMPLETE"] * 4
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["mlflow_records_incomplete"] == [0, 1, 2, 3]
    assert len(list(sweep_dir.glob("*/mlflow-spool/*/records.jsonl"))) == 4

    server.start()  # the same port and store
    r = replay(sweep_dir, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("spool removed") == 4, r.stdout
    assert not list(sweep_dir.rglob("mlflow-spool")), "a spool left after its record is in"
    client, runs = runs_of(server.url, name)
    assert not [x for x in runs if x.info.status == "RUNNING"], "a run left RUNNING"
    children = [x for x in runs if x.data.tags.get("lossbench.role") == "trial"]
    assert sorted(int(x.data.tags["lossbench.trial"]) for x in children) == [0, 1, 2, 3]
    assert {x.info.status for x in children} == {"FINISHED"}
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "val_loss")) == 4
    (parent,) = [x for x in runs if x.data.tags.get("lossbench.role") == "parent"]
    assert {x.data.tags["mlflow.parentRunId"] for x in children} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"
    again = subprocess.run([sys.executable, "-m", "lossbench", "--multirun", *args],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "LOSSBENCH_LOAD_PLUGINS": ""})  # fmt: skip
    wait_for_summaries(tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]


def side_processes(tag: str) -> list[int]:
    """The MLflow side processes of the processes started with ``LOSSBENCH_TEST_TAG=tag``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes() if proc.name.isdigit() else b""
            cmdline = (proc / "cmdline").read_bytes() if environ else b""
        except OSError:
            continue
        if f"LOSSBENCH_TEST_TAG={tag}".encode() in environ and b"tracking.worker" in cmdline:
            found.append(int(proc.name))
    return found


def test_no_mlflow_run_stays_running_after_a_sweep_is_sigkilled_then_rerun(tmp_path):
    """Coordinator, workers and their MLflow side processes SIGKILLed at once mid-trial: no
    process is left to end the runs. The same command again ends them (KILLED, with the
    reason) and completes the budget: nothing RUNNING, one finished child per counted trial."""
    marks, name, tag = tmp_path / "marks", "allkilled", uuid.uuid4().hex
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = sweep_args(uri, name, n_trials=3, n_jobs=2)
    os.environ["LOSSBENCH_TEST_TAG"] = tag
    try:
        proc = start(args, tmp_path, marks, hold="epoch_1", start_new_session=True)
    finally:
        del os.environ["LOSSBENCH_TEST_TAG"]

    def two_running():
        _, runs = runs_of(uri, name)
        return proc.poll() is not None or len([
            r for r in runs if r.info.status == "RUNNING" and "val_loss" in r.data.metrics
            and r.data.tags.get("lossbench.role") == "trial"]) == 2  # fmt: skip

    try:
        wait_for(two_running, "two trials logging")
        assert proc.poll() is None, proc.communicate()
        sides = side_processes(tag)
        os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its workers
        for pid in sides:
            os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _, runs = runs_of(uri, name)
    assert len([r for r in runs if r.info.status == "RUNNING"]) == 3  # two trials, the parent
    r = subprocess.run([sys.executable, "-m", "lossbench", "--multirun", *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "LOSSBENCH_LOAD_PLUGINS": ""})  # fmt: skip
    wait_for_summaries(tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = load(tmp_path, name)
    counted = [t for t in study.trials if not t.user_attrs.get("lossbench_lost")]
    assert sorted(t.state.name for t in counted) == ["COMPLETE"] * 3
    _, runs = runs_of(uri, name)
    assert not [x for x in runs if x.info.status == "RUNNING"], "a run left RUNNING"
    children = [x for x in runs if x.data.tags.get("lossbench.role") == "trial"]
    by_trial = {int(x.data.tags["lossbench.trial"]): x for x in children}
    for t in counted:
        assert by_trial[t.number].info.status == "FINISHED"
    lost = [t for t in study.trials if t.user_attrs.get("lossbench_lost")]
    assert len(lost) == 2
    for t in lost:
        run = by_trial[t.number]
        assert run.info.status == "KILLED" and run.data.tags["lossbench.lost"] == "true"
        retry = [c.number for c in counted if c.user_attrs.get("retry_of") == t.number]
        assert run.data.tags["lossbench.retried_as"] == str(retry[0])
    (parent,) = [x for x in runs if x.data.tags.get("lossbench.role") == "parent"]
    assert parent.info.status == "FINISHED"


# ---------------------------------------------------------------------------------------------
# the study storage goes away: a PostgreSQL of the test's own, and the gRPC storage proxy


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL's tools refuse to run as root: as the postgres user when this is root."""
    return [shutil.which("runuser"), "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class Postgres:
    """A throwaway PostgreSQL cluster (initdb, pg_ctl) on its own port, stopped and started
    again by the test (``pg_ctl stop -m immediate``: as a crash or a kill leaves it)."""

    def __init__(self):
        import glob
        import tempfile

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            pytest.skip("PostgreSQL's server programs are not installed (/usr/lib/postgresql)")
        self.bin = Path(found[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="lbpg-", dir="/tmp"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        subprocess.run(_as_postgres([str(self.bin / "initdb"), "-D", str(self.dir / "data"),
                                     "-A", "trust", "-U", "postgres"]),
                       check=True, capture_output=True)  # fmt: skip

    def ctl(self, *args) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"),
                                     "-o", opts, "-l", str(self.dir / "log"), "-w", *args]),
                       check=True, capture_output=True, timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def postgres():
    if os.geteuid() == 0 and not shutil.which("runuser"):
        pytest.skip("runuser is needed to run PostgreSQL as root")
    pg = Postgres()
    pg.ctl("start")
    yield pg
    subprocess.run(_as_postgres([str(pg.bin / "pg_ctl"), "-D", str(pg.dir / "data"), "stop",
                                 "-m", "immediate"]), capture_output=True)  # fmt: skip
    shutil.rmtree(pg.dir, ignore_errors=True)


def _storage_goes_away(tmp_path, name, storage, stop, restart):
    """A 3-trial sweep on ``storage``: its storage stopped while trial 0 trains; the sweep
    exits 1 saying what to run; started again, the same command completes exactly 3 trials
    with nothing RUNNING in Optuna or MLflow."""
    marks, uri = tmp_path / "marks", f"sqlite:///{tmp_path}/mlflow.db"
    args = [*sweep_args(uri, name, n_trials=3), f"sweep.storage={storage}"]
    proc = start(args, tmp_path, marks, hold="epoch_1")
    out, err, seconds = fault_while_held(proc, marks, lambda: (marks / "epoch_1").exists(), stop)
    wait_for_summaries(tmp_path)
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    assert "stopped answering" in err and "run the same command to resume" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert seconds < 60, seconds
    _, runs = runs_of(uri, name)
    assert not [x for x in runs if x.info.status == "RUNNING"], "a run left RUNNING"
    restart()
    r = subprocess.run([sys.executable, "-m", "lossbench", "--multirun", *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "LOSSBENCH_LOAD_PLUGINS": ""})  # fmt: skip
    wait_for_summaries(tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return runs_of(uri, name)


def _study_of(url, name):
    import optuna

    return optuna.load_study(study_name=name, storage=url)


def test_postgresql_storage_stopped_mid_sweep_loses_nothing_and_leaves_nothing_running(
    tmp_path, postgres
):
    _, runs = _storage_goes_away(tmp_path, "pgstops", postgres.url,
                                 lambda: postgres.ctl("stop", "-m", "immediate"),
                                 lambda: postgres.ctl("start"))  # fmt: skip
    assert not [x for x in runs if x.info.status == "RUNNING"], "a run left RUNNING"
    study = _study_of(postgres.url, "pgstops")
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    counted = [t for t in study.trials if not t.user_attrs.get("lossbench_lost")]
    assert sorted(t.state.name for t in counted) == ["COMPLETE"] * 3


def test_storage_proxy_killed_mid_sweep_loses_nothing_and_leaves_nothing_running(
    tmp_path, postgres
):
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=postgres.port, user="postgres",
                            dbname="postgres")  # fmt: skip
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE proxied")
    conn.close()
    database = postgres.url.rsplit("/", 1)[0] + "/proxied"
    port, proxies = free_port(), []

    def start_proxy():
        proxies.append(subprocess.Popen(
            [sys.executable, "-m", "lossbench", "storage-proxy", "--storage", database,
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        ))  # fmt: skip
        import socket

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, "the storage proxy to listen")

    def kill_proxy():
        os.killpg(proxies[-1].pid, signal.SIGKILL)
        proxies[-1].wait()

    start_proxy()
    try:
        _, runs = _storage_goes_away(tmp_path, "proxydies", f"grpc://127.0.0.1:{port}",
                                     kill_proxy, start_proxy)  # fmt: skip
    finally:
        for p in proxies:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    study = _study_of(database, "proxydies")
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    counted = [t for t in study.trials if not t.user_attrs.get("lossbench_lost")
               and t.user_attrs.get("status") != "surplus"]  # fmt: skip
    assert sorted(t.state.name for t in counted) == ["COMPLETE"] * 3
