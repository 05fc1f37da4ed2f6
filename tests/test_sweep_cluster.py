"""Sweeps beyond one process tree: a real Ray cluster (``ray start --head``, once for this
module) running workers against the local PostgreSQL and a real ``mlflow server``, with a Ray
worker killed mid-trial; Optuna's gRPC storage proxy; what a cluster must offer before any
trial. Skipped with the reason without PostgreSQL or Ray (failed under CI)."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_sweep import BASE, PROBE, sweep
from test_sweep_faults import LR, start, wait_for

from conftest import PG, postgres_or_skip, wait_for_summaries
from lossbench.errors import ConfigError
from lossbench.sweep.launchers import check_reachable, check_versions
from lossbench.sweep.plan import Plan

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("LOSSBENCH_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def await_ray_head(proc) -> None:
    """Read ``ray start --head --block``'s output until the runtime is up (or fail with its
    last lines), then keep its pipe drained."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "Ray runtime started" in line:
            break
    else:
        pytest.fail("ray start --head failed:\n" + "".join(seen[-30:]))
    threading.Thread(target=proc.stdout.read, daemon=True).start()


@pytest.fixture(scope="module")
def databases():
    """Two fresh PostgreSQL databases for this module (a study, MLflow's store); dropped after."""
    conn = postgres_or_skip()
    tag = f"{os.getpid()}_{np.random.default_rng().integers(1 << 30)}"
    names = {"study": f"lossbench_study_{tag}", "mlflow": f"lossbench_mlflow_{tag}"}
    with conn.cursor() as cur:
        for name in names.values():
            cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {k: f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{v}"
               for k, v in names.items()}  # fmt: skip
    finally:
        with conn.cursor() as cur:
            for name in names.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the command a fixture started (it stops what it started), then SIGKILL to
    whatever of its process group is left."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster, as a team runs one: `ray start --head` on a free port (in the
    foreground, --block, so stopping that command stops its processes); yields its address."""
    try:
        import ray  # noqa: F401  (only whether it is installed)
    except ImportError as exc:
        require(False, f"Ray is not installed ({exc}); pip install 'lossbench[ray]'")
    port, temp = free_port(), tempfile.mkdtemp(prefix="lbray-", dir="/tmp")
    # token authentication, as Ray enables it: the cluster and every client get the token
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex()}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}", "--block"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        await_ray_head(proc)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def mlflow_url(databases, tmp_path_factory):
    """A real `mlflow server` on PostgreSQL, artifacts through the server."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    with open(folder / "server.log", "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", databases["mlflow"],
             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (
                    folder / "server.log"
                ).read_text()[-3000:]
                time.sleep(0.3)
        yield url
    finally:
        _stop(proc)


def study_of(url, name):
    import optuna

    return optuna.load_study(study_name=name, storage=url)


def runs_of(uri, experiment):
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(uri).get_experiment_by_name(experiment)
    return MlflowClient(uri).search_runs([exp.experiment_id], run_view_type=3) if exp else []


def ray_args(ray_cluster, databases, mlflow_url, name):
    return ["--plugins-dir", PROBE, LR, "data=probe", "trainer.epochs=3",
            f"tracking.uri={mlflow_url}", f"tracking.experiment={name}",
            "tracking.flush_seconds=0.2", "sweep.launcher=ray",
            f"sweep.ray.address={ray_cluster}", "sweep.n_jobs=2", "sweep.n_trials=2",
            "sweep.pruner=none", f"sweep.storage={databases['study']}",
            f"sweep.study_name={name}"]  # fmt: skip


def held_trial(marks, study_db, name, mlflow_url):
    """A trial held mid-training whose curves already reach MLflow, or None."""
    if not (marks / "epoch_1").exists():
        return None
    try:
        running = [t for t in study_of(study_db, name).trials if t.state.name == "RUNNING"]
    except KeyError:
        return None
    live = {r.data.tags.get("lossbench.trial") for r in runs_of(mlflow_url, name)
            if r.info.status == "RUNNING" and r.data.tags.get("lossbench.role") == "trial"
            and "val_loss" in r.data.metrics}  # fmt: skip
    held = [t for t in running if "pid" in t.user_attrs and str(t.number) in live]
    return held[0] if held else None


def no_running(study_db, name, mlflow_url, waiting_retries=False):
    """Nothing RUNNING in Optuna or MLflow (WAITING: retries queued for the next run)."""
    study = study_of(study_db, name)
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert all("retry_of" in t.user_attrs for t in waiting) if waiting_retries else not waiting
    runs = runs_of(mlflow_url, name)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    return study, runs


def test_ray_sweep_with_a_killed_worker_completes_exactly_n_trials(
    tmp_path, ray_cluster, databases, mlflow_url
):
    marks, study_db = tmp_path / "marks", databases["study"]
    args = ray_args(ray_cluster, databases, mlflow_url, "raykill")
    proc = start(args, tmp_path, marks, hold="epoch_1")  # every trial holds until `release`
    wait_for(lambda: proc.poll() is not None or held_trial(marks, study_db, "raykill",
                                                           mlflow_url), "a held trial")  # fmt: skip
    victim = held_trial(marks, study_db, "raykill", mlflow_url)
    assert victim is not None, proc.communicate()
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)  # the Ray worker process, mid-trial
    (marks / "release").touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    wait_for_summaries(tmp_path)
    study, runs = no_running(study_db, "raykill", mlflow_url)
    counted = [t for t in study.trials if not t.user_attrs.get("lossbench_lost")]
    assert sorted(t.state.name for t in counted) == ["COMPLETE"] * 2
    (lost,) = [t for t in study.trials if t.user_attrs.get("lossbench_lost")]
    assert lost.number == victim.number
    (retried,) = [t for t in counted if t.user_attrs.get("retry_of") == lost.number]
    assert retried.params == lost.params  # retried with the same parameters
    (parent,) = [r for r in runs if r.data.tags.get("lossbench.role") == "parent"]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("lossbench.role") == "trial"]
    numbers = sorted(int(r.data.tags["lossbench.trial"]) for r in children)
    assert numbers == sorted([lost.number, *(t.number for t in counted)])  # one run per trial
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    (killed,) = [r for r in children if r.data.tags["lossbench.trial"] == str(lost.number)]
    assert killed.info.status == "KILLED"
    # the lost attempt is marked as such, its spool sent and removed; one finished run per trial
    assert killed.data.tags["lossbench.lost"] == "true"
    assert killed.data.tags["lossbench.retried_as"] == str(retried.number)
    assert not (Path(lost.user_attrs["output_dir"]) / "mlflow-spool").exists()
    finished = sorted(int(r.data.tags["lossbench.trial"]) for r in children
                      if r.info.status == "FINISHED")  # fmt: skip
    assert finished == sorted(t.number for t in counted)


@pytest.fixture
def doomed_ray_head():
    """A Ray head of its own for a test that SIGKILLs it (the module's cluster stays up)."""
    try:
        import ray  # noqa: F401  (only whether it is installed)
    except ImportError as exc:
        require(False, f"Ray is not installed ({exc}); pip install 'lossbench[ray]'")
    port, temp = free_port(), tempfile.mkdtemp(prefix="lbray-", dir="/tmp")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=1",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}", "--block"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        await_ray_head(proc)
        yield proc, f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_the_ray_head_going_away_ends_the_sweep_in_seconds_with_nothing_running(
    tmp_path, doomed_ray_head, databases, mlflow_url
):
    """The head's processes SIGKILLed mid-trial: the coordinator says so and exits 1 within
    seconds (it hung about 90 s, then died leaving the parent run RUNNING), the parent run
    ends, the trial is retried by the next run."""
    head, address = doomed_ray_head
    marks, study_db, name = tmp_path / "marks", databases["study"], "rayhead"
    args = [a.replace("sweep.n_jobs=2", "sweep.n_jobs=1")
            for a in ray_args(address, databases, mlflow_url, name)]  # fmt: skip
    proc = start(args, tmp_path, marks, hold="epoch_1")
    try:
        wait_for(lambda: proc.poll() is not None
                 or held_trial(marks, study_db, name, mlflow_url), "a held trial")  # fmt: skip
        assert proc.poll() is None, proc.communicate()
        os.killpg(head.pid, signal.SIGKILL)  # the head: GCS, raylet and its workers
        t0 = time.time()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    seconds = time.time() - t0
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    assert "the Ray head at" in err and "run the same command to resume" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert seconds < 30, seconds
    wait_for_summaries(tmp_path)
    runs = runs_of(mlflow_url, name)
    (parent,) = [r for r in runs if r.data.tags.get("lossbench.role") == "parent"]
    assert parent.info.status == "FAILED"
    (child,) = [r for r in runs if r.data.tags.get("lossbench.role") == "trial"]
    assert child.info.status == "KILLED", child.data.tags
    assert "the Ray head at" in child.data.tags["lossbench.failure_reason"]


def test_ctrl_c_on_a_ray_sweep_cancels_its_workers_and_a_rerun_resumes(
    tmp_path, ray_cluster, databases, mlflow_url
):
    marks, study_db = tmp_path / "marks", databases["study"]
    args = ray_args(ray_cluster, databases, mlflow_url, "rayctrlc")
    proc = start(args, tmp_path, marks, hold="epoch_1")
    wait_for(lambda: proc.poll() is not None or held_trial(marks, study_db, "rayctrlc",
                                                           mlflow_url), "a held trial")  # fmt: skip
    os.kill(proc.pid, signal.SIGINT)  # Ctrl-C on the coordinator (Ray's workers are elsewhere)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-3000:] + err[-3000:]
    assert "run the same command to resume" in err and "Traceback" not in err
    study, runs = no_running(study_db, "rayctrlc", mlflow_url, waiting_retries=True)
    assert [t for t in study.trials if t.user_attrs.get("lossbench_lost")], "no trial was lost"
    (parent,) = [r for r in runs if r.data.tags.get("lossbench.role") == "parent"]
    assert parent.info.status == "KILLED"
    r = sweep(*args, cwd=tmp_path)  # no hold this time
    assert "trials 2/2 done" in r.stdout
    study, runs = no_running(study_db, "rayctrlc", mlflow_url)
    counted = [t for t in study.trials if not t.user_attrs.get("lossbench_lost")]
    assert sorted(t.state.name for t in counted) == ["COMPLETE"] * 2
    (parent,) = [r for r in runs if r.data.tags.get("lossbench.role") == "parent"]
    assert parent.info.status == "FINISHED"


def test_storage_proxy_serves_a_two_worker_sweep_exactly_n_trials(tmp_path, databases):
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "lossbench", "storage-proxy", "--storage", databases["study"],
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        def listening():
            assert proxy.poll() is None, proxy.stdout.read()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, "the storage proxy to listen")
        sweep(LR, *BASE, "sweep.n_trials=5", "sweep.n_jobs=2", "sweep.pruner=none",
              f"sweep.storage=grpc://127.0.0.1:{port}", "sweep.study_name=proxied",
              cwd=tmp_path)  # fmt: skip
    finally:
        _stop(proxy)
    study = study_of(databases["study"], "proxied")  # read from the database itself
    counted = [t for t in study.trials if not t.user_attrs.get("lossbench_lost")]
    assert sorted(t.state.name for t in counted) == ["COMPLETE"] * 5
    assert len({t.user_attrs["pid"] for t in counted}) == 2
    assert all(t.user_attrs.get("status") == "surplus" for t in study.trials if t not in counted)


def plan(storage="postgresql+psycopg2://lb@db.internal/optuna", **ray):
    return Plan(study_name="s", storage=storage, sweep_dir="/tmp/s", fixed=[], params={},
                metrics=["val_loss"], directions=["minimize"], n_trials=1, seed=0,
                sampler="tpe", pruner="none", pruner_warmup_epochs=0, heartbeat_seconds=5,
                grace_seconds=60, tracking=True, launcher="ray", launcher_options=ray)  # fmt: skip


@pytest.mark.parametrize(
    "storage,tracking,message",
    [
        ("journal:/tmp/s/journal.log", "http://mlflow.internal:5000", "journal file"),
        ("sqlite:////tmp/s/optuna.db", "http://mlflow.internal:5000", "sweep.storage=sqlite"),
        ("postgresql://lb:pw@127.0.0.1/optuna", "http://mlflow.internal:5000", "lb:***@"),
        ("postgresql://lb@db.internal/optuna", None, "./mlflow.db on each node"),
        ("postgresql://lb@db.internal/optuna", "sqlite:///mlflow.db", "tracking.uri=sqlite"),
        ("postgresql://lb@db.internal/optuna", "http://localhost:5000", "tracking.uri=http"),
    ],
)
def test_a_store_only_this_machine_reaches_is_refused_for_a_remote_cluster(
    storage, tracking, message
):
    with pytest.raises(ConfigError, match="Fix:") as info:
        check_reachable(plan(storage), tracking, ["10.0.0.7"])
    assert message in str(info.value) and "10.0.0.7" in str(info.value)
    check_reachable(plan(storage), tracking, [])  # a local Ray instance reaches them all


def test_a_shared_filesystem_journal_and_reachable_stores_pass():
    check_reachable(plan("journal:/nfs/s/journal.log", shared_filesystem=True),
                    "http://mlflow.internal:5000", ["10.0.0.7"])  # fmt: skip
    check_reachable(plan(), "http://mlflow.internal:5000", ["10.0.0.7"])


def test_a_node_with_other_versions_is_named():
    here = {"lossbench": "0.1.0", "python": "3.11.7", "plugins": {"focal": "lossbench-focal 1"}}
    check_versions(here, {"10.0.0.7": dict(here)})
    other = {**here, "plugins": {"focal": "lossbench-focal 2"}}
    with pytest.raises(ConfigError, match="the Ray node 10.0.0.8 does not run") as info:
        check_versions(here, {"10.0.0.7": dict(here), "10.0.0.8": other})
    assert "lossbench-focal 2" in str(info.value) and "Fix:" in str(info.value)


def test_launcher_ray_without_ray_installed_says_how_to_install_it(tmp_path):
    hidden = tmp_path / "hide"
    (hidden / "ray").mkdir(parents=True)
    (hidden / "ray" / "__init__.py").write_text("raise ImportError('ray is hidden here')\n")
    env = {**os.environ, "PYTHONPATH": str(hidden), "LOSSBENCH_LOAD_PLUGINS": ""}
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "lossbench", "--multirun", LR, *BASE, "sweep.launcher=ray"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert "pip install 'lossbench[ray]'" in r.stderr and "Traceback" not in r.stderr
    assert not list(work.rglob("*"))


def test_postgresql_storage_without_its_driver_names_the_extra_that_installs_it(tmp_path):
    hidden = tmp_path / "hide"
    (hidden / "psycopg2").mkdir(parents=True)
    (hidden / "psycopg2" / "__init__.py").write_text("raise ImportError('No module named "
                                                     "psycopg2 (hidden here)')\n")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{hidden}:{os.environ.get('PYTHONPATH', '')}",
           "LOSSBENCH_LOAD_PLUGINS": ""}  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "lossbench", "--multirun", LR, *BASE,
         "sweep.storage=postgresql+psycopg2://lb@127.0.0.1:1/optuna"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert "pip install 'lossbench[postgres]'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args,message",
    [([], "the following arguments are required: --storage"),
     (["--storage", "journal:x.log"], "is not a database URL"),
     (["--storage", "postgresql://lb@h/db", "--password-env", "LB_UNSET_PW"], "is not set")],
)  # fmt: skip
def test_storage_proxy_bad_input_is_one_paragraph(tmp_path, args, message):
    env = {k: v for k, v in os.environ.items() if k != "LB_UNSET_PW"}
    r = subprocess.run([sys.executable, "-m", "lossbench", "storage-proxy", *args], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Fix:" in r.stderr or "Usage:" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def proxy_command(storage, port, host="localhost"):
    return [sys.executable, "-m", "lossbench", "storage-proxy", "--storage", storage,
            "--host", host, "--port", str(port)]  # fmt: skip


@pytest.mark.parametrize("holder", ["program", "proxy"])
def test_a_storage_proxy_on_a_taken_port_is_one_paragraph_naming_the_port(tmp_path, holder):
    storage = f"sqlite:///{tmp_path}/study.db"  # the proxy serves sqlite too: no server needed
    port = free_port()
    first = None
    with socket.socket() as taken:
        if holder == "program":  # any program listening on 127.0.0.1 only (localhost has ::1)
            taken.bind(("127.0.0.1", port))
            taken.listen()
        else:  # a storage proxy already serving there (gRPC shares ports: SO_REUSEPORT)
            first = subprocess.Popen(proxy_command(storage, port, "127.0.0.1"),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)  # fmt: skip

            def listening():
                assert first.poll() is None, first.stdout.read()
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", port)) == 0

            wait_for(listening, "the first storage proxy to listen")
        try:
            r = subprocess.run(proxy_command(storage, port), cwd=tmp_path, capture_output=True,
                               text=True, timeout=30)  # fmt: skip  (old code: listens)
        finally:
            if first is not None:
                _stop(first)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "listening" not in r.stdout and "grpc://" not in r.stdout
    assert f"port {port}" in r.stderr and "Address already in use" in r.stderr, r.stderr
    assert "Fix:" in r.stderr and "--port" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_without_a_lock_a_trial_asked_past_the_budget_is_given_back():
    from types import SimpleNamespace as T

    from lossbench.sweep.study import in_budget

    trials = [T(number=0, user_attrs={}), T(number=1, user_attrs={"lossbench_lost": True}),
              T(number=2, user_attrs={}), T(number=3, user_attrs={})]  # fmt: skip
    assert in_budget(trials, 2, n_runs=2)  # trial 1 was lost: 2 is the budget's second
    assert not in_budget(trials, 3, n_runs=2)  # two workers asked at once: 3 goes back
    answers = [*trials[:3], T(number=3, user_attrs={"read_from": 2}), T(number=4, user_attrs={})]
    assert not in_budget(answers, 4, n_runs=2)  # an answer read from a run is not a run: 4 is
    assert in_budget(answers, 4, n_runs=3)  # the third run
