"""Sweeps under faults, run as users run them, continued from test_sweep_faults.py (split so
that the test workers share the slow fault tests): credentials in URLs, shown or stored
nowhere, and the background summary process (the MLflow parent run's) killed or hung."""

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_sweep import BASE, mlflow_runs, sweep
from test_sweep_faults import LR, pid_alive, start, wait_for

from lossbench.urls import mask_text, mask_url, with_password

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------
# credentials


def test_urls_with_credentials_are_masked():
    url = "postgresql+psycopg2://lb:s3cr%40t@db.example:5432/optuna"
    assert mask_url(url) == "postgresql+psycopg2://lb:***@db.example:5432/optuna"
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"
    assert mask_url("http://host:5000") == "http://host:5000"
    text = f"storage {url}, tracking.uri=http://u:p@h:5000 and 'mysql://a:b@c/d'"
    assert mask_text(text) == (
        "storage postgresql+psycopg2://lb:***@db.example:5432/optuna, "
        "tracking.uri=http://u:***@h:5000 and 'mysql://a:***@c/d'"
    )


def test_a_password_from_the_environment_goes_into_the_url(monkeypatch):
    monkeypatch.setenv("LB_TEST_PW", "p@ss/word")
    url = with_password("postgresql://lb@h:5432/db", "LB_TEST_PW", "sweep.storage_password_env")
    assert url == "postgresql://lb:p%40ss%2Fword@h:5432/db"
    assert with_password("postgresql://lb@h/db", None, "x") == "postgresql://lb@h/db"


def test_storage_credentials_are_masked_everywhere_shown_or_stored(tmp_path, postgres_database):
    secret = "Sup3rSecretPw"
    url = postgres_database.replace("postgres@", f"postgres:{secret}@")  # trust auth ignores it
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = sweep(LR, "data=iris", "trainer.epochs=2", f"tracking.uri={uri}", "sweep.n_trials=1",
              "sweep.study_name=masked", f"sweep.storage={url}", cwd=tmp_path)  # fmt: skip
    assert secret not in r.stdout + r.stderr and "postgres:***@" in r.stdout
    folder = tmp_path / "multirun/masked"
    results = folder / "optimization_results.yaml"
    assert secret not in results.read_text() and "postgres:***@" in results.read_text()
    plan = folder / "plan.json"
    assert stat.S_IMODE(plan.stat().st_mode) == 0o600  # it holds the usable URL
    for path in folder.rglob("*"):
        if path.is_file() and path != plan and secret.encode() in path.read_bytes():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    client, runs = mlflow_runs(uri)
    for run in runs:
        shown = [*run.data.tags.values(), *run.data.params.values()]
        assert not [v for v in shown if secret in v], run.info.run_name
    (parent,) = [r for r in runs if r.data.tags.get("lossbench.role") == "parent"]
    local = client.download_artifacts(parent.info.run_id, "optimization_results.yaml", tmp_path)
    assert secret not in Path(local).read_text()


def test_storage_password_env_keeps_the_password_off_the_command_line(tmp_path, postgres_database):
    secret = "FromTheEnvPw"
    env_args = [LR, *BASE, "sweep.n_trials=1", "sweep.study_name=envpw",
                f"sweep.storage={postgres_database}", "sweep.storage_password_env=LB_STORE_PW"]
    r = sweep(*env_args, cwd=tmp_path, check=False)  # fmt: skip
    assert r.returncode == 2 and "LB_STORE_PW" in r.stderr and "not set" in r.stderr
    assert not (tmp_path / "multirun/envpw").exists()
    os.environ["LB_STORE_PW"] = secret
    try:
        r = sweep(*env_args, cwd=tmp_path)
    finally:
        del os.environ["LB_STORE_PW"]
    assert "trials 1/1 done" in r.stdout
    folder = tmp_path / "multirun/envpw"
    assert not [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# ---------------------------------------------------------------------------------------------
# the background summary process killed or hung


def summary_processes(cwd) -> list[int]:
    """The summary processes a sweep started in ``cwd`` (a test's own: found by their working
    folder, so another suite's on this machine is never touched)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (proc / "cmdline").read_bytes()
                if b"lossbench.sweep.summary" in cmd and os.readlink(proc / "cwd") == str(cwd):
                    found.append(int(proc.name))
    return found


def parents(uri):
    client, runs = mlflow_runs(uri)
    return client, [r for r in runs if r.data.tags.get("lossbench.role") == "parent"]


def test_no_parent_run_stays_running_when_the_summary_process_is_killed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [LR, "data=iris", "trainer.epochs=3", f"tracking.uri={uri}", "sweep.n_trials=2",
            "sweep.pruner=none", "sweep.study_name=killed_summary"]  # fmt: skip
    proc = start(args, tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    (summary,) = summary_processes(tmp_path)  # drawing the figures, after the command returned
    os.kill(summary, signal.SIGKILL)  # a CI job or a container ending
    wait_for(lambda: not pid_alive(summary), "the summary process to die", timeout=30)
    client, (parent,) = parents(uri)
    assert parent.info.status == "FINISHED"  # its true state, not RUNNING
    assert parent.data.metrics["trials_complete"] == 2
    assert "optimization_results.yaml" in {a.path for a in client.list_artifacts(
        parent.info.run_id)}  # fmt: skip
    _, runs = mlflow_runs(uri)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    r = sweep(*args, cwd=tmp_path)  # whoever comes next draws the figures that were lost
    assert "trials 2/2 done" in r.stdout
    client, (again,) = parents(uri)
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    names = {a.path for a in client.list_artifacts(again.info.run_id)}
    assert {"curves.png", "final_vs_lr.png", "optimization_results.yaml"} <= names


HOLD_LOCK = """
import fcntl, os, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.truncate(0); f.write(str(os.getpid())); f.flush()
print("held", flush=True)
time.sleep(600)
"""


def test_a_hung_summary_process_never_holds_the_sweep_and_the_command_says_so(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [LR, "data=iris", "trainer.epochs=3", f"tracking.uri={uri}", "sweep.pruner=none",
            "sweep.study_name=hung_summary", "sweep.summary_wait_seconds=2"]  # fmt: skip
    sweep(*args, "sweep.n_trials=1", cwd=tmp_path)
    lock = tmp_path / "multirun/hung_summary/.summary.lock"
    hung = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE,
                            text=True)  # a summary process stuck on a store that never answers
    try:
        assert hung.stdout.readline().strip() == "held"
        began = time.monotonic()
        proc = start([*args, "sweep.n_trials=2"], tmp_path)
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - began
    finally:
        hung.kill()
        hung.wait()
    assert proc.returncode == 0, out + err
    assert "trials 2/2 done" in out and "Traceback" not in err
    assert f"held by process {hung.pid}" in err and f"kill {hung.pid}" in err  # what and the fix
    assert "figures are not drawn" in err
    print(f"the rerun beside a hung summary took {took:.1f} s")
    _, (parent,) = parents(uri)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == 2
    results = yaml.safe_load((lock.parent / "optimization_results.yaml").read_text())
    assert results["status"] == "finished" and results["trials"]["done"] == 2
