"""Credentials in tracking URIs, with real processes: ``http://user:pw@host`` is accepted as
MLflow accepts it (the pre-run check sends it as basic auth), and a password is stored or shown
nowhere in clear: not in the run's files (.hydra included), its MLflow params, tags and config
artifact, a sweep's multirun.yaml and trials' files, ``--cfg job`` or an error message."""

import base64
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_faults_tracking import start_server

from conftest import postgres_or_skip, wait_for_summaries

pytestmark = pytest.mark.slow

SECRET = "Pa55wordInTheUri"


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "LOSSBENCH_LOAD_PLUGINS": "", **extra}


def _cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "lossbench", *args], cwd=cwd, env=env or _env(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _holding_the_secret(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and SECRET.encode() in p.read_bytes()]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``mlflow server`` (it ignores the credentials; MLflow's client sends them)."""
    proc, url = start_server(tmp_path_factory.mktemp("server"))
    try:
        yield url
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGKILL)


def _mlflow_run(uri, name):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("lossbench").experiment_id],
                                filter_string=f"attributes.run_name = '{name}'")  # fmt: skip
    return client, run


@pytest.mark.parametrize("where", ["tracking.uri", "MLFLOW_TRACKING_URI"])
def test_credentials_in_an_http_tracking_uri_are_accepted(tmp_path, server, where):
    uri = server.replace("http://", f"http://alice:{SECRET}@")
    args = ["data=iris", "trainer.epochs=2", "trainer.progress=false", "hydra.run.dir=run",
            f"tracking.run_name=creds-{where}"]  # fmt: skip
    if where == "tracking.uri":
        r = _cli(*args, f"tracking.uri={uri}", cwd=tmp_path)
    else:
        r = _cli(*args, cwd=tmp_path, env=_env(MLFLOW_TRACKING_URI=uri))
    assert r.returncode == 0, r.stderr[-2000:]
    assert SECRET not in r.stdout + r.stderr
    client, run = _mlflow_run(server, f"creds-{where}")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1]
    shown = [*run.data.params.values(), *run.data.tags.values()]
    assert not [v for v in shown if SECRET in v]
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert SECRET not in Path(config).read_text()
    assert _holding_the_secret(tmp_path / "run") == []


class _Health(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        _Health.seen.append((self.path, self.headers.get("Authorization")))
        good = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
        self.send_response(200 if self.headers.get("Authorization") == good else 401)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


def test_the_precheck_sends_an_http_uris_credentials_as_basic_auth():
    from lossbench.errors import ConfigError
    from lossbench.tracking.store import precheck

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    try:
        precheck(f"http://alice:{SECRET}@127.0.0.1:{port}/")
        assert _Health.seen[-1][0] == "/health"
        with pytest.raises(ConfigError) as info:
            precheck(f"http://alice:wrong@127.0.0.1:{port}")
        assert "401" in str(info.value) and "wrong" not in str(info.value)
    finally:
        httpd.shutdown()


def test_a_tracking_password_is_stored_or_shown_nowhere_in_clear(tmp_path, postgres_database):
    uri = postgres_database.replace("postgres@", f"postgres:{SECRET}@")  # trust auth ignores it
    r = _cli("data=iris", "trainer.epochs=2", "trainer.progress=false", "hydra.run.dir=run",
             f"tracking.uri={uri}", "tracking.run_name=pg", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert SECRET not in r.stdout + r.stderr
    assert _holding_the_secret(tmp_path / "run") == []
    hydra_config = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "postgres:***@" in hydra_config  # masked, with the note saying so
    assert "***" in (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
    client, run = _mlflow_run(uri, "pg")
    shown = [*run.data.params.values(), *run.data.tags.values()]
    assert not [v for v in shown if SECRET in v]
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert SECRET not in Path(config).read_text() and "postgres:***@" in Path(config).read_text()
    cfg = _cli("--cfg", "job", f"tracking.uri={uri}", cwd=tmp_path)
    assert cfg.returncode == 0 and "postgres:***@" in cfg.stdout, cfg.stderr
    assert SECRET not in cfg.stdout + cfg.stderr
    bad = _cli("replay", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert bad.returncode == 2
    (tmp_path / "spooled").mkdir()  # a spool to replay into a server that is not there
    from test_replay import make_spool

    make_spool(tmp_path / "spooled")
    r = _cli("replay", str(tmp_path / "spooled"), "--uri",
             f"http://alice:{SECRET}@127.0.0.1:9/", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1 and "alice:***@" in r.stderr, r.stderr
    assert SECRET not in r.stdout + r.stderr


def test_a_sweeps_tracking_and_storage_passwords_are_in_no_sweep_file(
    tmp_path, postgres_database
):
    uri = postgres_database.replace("postgres@", f"postgres:{SECRET}@")
    storage = f"{uri}_optuna"  # a database of its own: Optuna and MLflow both use alembic
    conn = postgres_or_skip()
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{storage.rsplit("/", 1)[1]}"')
    try:
        _sweep_with_passwords(tmp_path, uri, storage)
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{storage.rsplit("/", 1)[1]}" WITH (FORCE)')
        conn.close()


def _sweep_with_passwords(tmp_path, uri, storage):
    r = _cli("--multirun", "data=iris", "trainer.epochs=2", "trainer.progress=false",
             "optimizer.lr=tag(log, interval(1e-3, 1e-2))", "sweep.n_trials=1",
             "sweep.study_name=creds", f"tracking.uri={uri}", f"sweep.storage={storage}",
             cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    wait_for_summaries(tmp_path)
    assert SECRET not in r.stdout + r.stderr
    folder = tmp_path / "multirun" / "creds"
    held = _holding_the_secret(folder)
    assert held == ["plan.json"], held  # private (0600): what workers read to connect
    assert "postgres:***@" in (folder / "multirun.yaml").read_text()
    assert "postgres:***@" in (folder / "0" / ".hydra" / "config.yaml").read_text()
