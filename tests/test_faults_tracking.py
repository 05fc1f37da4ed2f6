"""Faults of MLflow tracking, injected for real: concurrent first runs on a fresh sqlite store,
stores that cannot be written, and a real ``mlflow server`` killed (SIGKILL, with its workers)
in the middle of two runs, one of which is then SIGKILLed too. What must hold: every run is
recorded or spooled, the time lost is bounded, the side process exits, and after ``python -m
lossbench replay`` no run is RUNNING and every metric is in the store.

One server serves the whole killed-server scenario (starting one takes 5-15 s here); the
tests below read what that scenario left.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROBE = Path(__file__).resolve().parent / "plugins"
RETRY_SECONDS = 4


def env_for(**extra):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "LOSSBENCH_LOAD_PLUGINS": "", **extra}


def start_cli(*args, cwd, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "lossbench", "--plugins-dir", str(PROBE),
         "trainer.progress=false", *args],
        cwd=cwd, env=env or env_for(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def replay_cli(run_dir, uri):
    return subprocess.run(
        [sys.executable, "-m", "lossbench", "replay", str(run_dir), "--uri", uri],
        env=env_for(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def runs_in(uri, experiment="lossbench"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def assert_every_metric_recorded(client, run_id, rows):
    for key in rows[0]:
        if key == "epoch":
            continue
        points = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in points) == [int(r["epoch"]) for r in rows], key
        by_step = {m.step: m.value for m in points}
        assert [by_step[int(r["epoch"])] for r in rows] == [r[key] for r in rows], key


# ---------------------------------------------------------------------------------------------
# a fresh store, created by several runs at once


def test_concurrent_runs_on_a_fresh_store_are_all_recorded(tmp_path):
    """Four runs started at once where no mlflow.db exists yet: MLflow creates and migrates
    the store in the first one only (under lossbench's lock), and every run is recorded."""
    procs = [
        start_cli("data=iris", "trainer.epochs=3", f"hydra.run.dir=run{i}", cwd=tmp_path)
        for i in range(4)
    ]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    for p, _out, err in results:
        assert p.returncode == 0, err[-3000:]
        assert "incomplete" not in err, err[-3000:]
    _, runs = runs_in(f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4
    # the store is complete (migrated once, to one version), so later runs record too
    import sqlite3

    conn = sqlite3.connect(tmp_path / "mlflow.db")
    versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    leftovers = conn.execute(
        "SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp%'"
    ).fetchall()
    conn.close()
    assert len(versions) == 1 and not leftovers, (versions, leftovers)
    assert not list(tmp_path.glob("*/mlflow-spool")), "a complete record leaves no spool"


# ---------------------------------------------------------------------------------------------
# a store that cannot be written stops the run before training


def _refused_before_training(tmp_path, uri, message):
    marks = tmp_path / "marks"
    marks.mkdir()
    p = start_cli(
        "data=probe", f"tracking.uri={uri}", cwd=tmp_path,
        env=env_for(LOSSBENCH_PROBE_DIR=str(marks)),
    )  # fmt: skip
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2, (out, err)
    assert "Traceback" not in out + err
    assert message in err and "tracking.required=false" in err, err
    assert not (marks / "epoch_0").exists(), "it trained before refusing"
    assert not (tmp_path / "outputs").exists(), "the refused run left a run directory"


def test_unwritable_store_that_is_not_a_database_stops_the_run_before_training(tmp_path):
    (tmp_path / "notes.db").write_text("my notes, not a database\n" * 100)
    uri = f"sqlite:///{tmp_path}/notes.db"
    _refused_before_training(tmp_path, uri, "cannot be written")
    assert (tmp_path / "notes.db").read_text().startswith("my notes")


def test_unwritable_store_on_a_read_only_filesystem_stops_the_run_before_training(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(ro)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        import sqlite3

        conn = sqlite3.connect(ro / "mlflow.db")  # an existing database, closed again
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        _refused_before_training(tmp_path, f"sqlite:///{ro}/mlflow.db", "readonly database")
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


# ---------------------------------------------------------------------------------------------
# a real tracking server killed mid-run


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path):
    """``mlflow server`` on a sqlite store, in its own process group (it starts workers)."""
    folder.mkdir(exist_ok=True)
    port = free_port()
    log = open(folder / "server.log", "a")
    env = {**env_for(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
         f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", str(folder / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError((folder / "server.log").read_text()[-3000:]) from None
            time.sleep(0.2)


def side_processes(tag: str) -> list[int]:
    """Pids of the MLflow side processes started by the trainer tagged ``tag``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"lossbench.tracking.worker" in cmdline and f"LOSSBENCH_TEST_TAG={tag}".encode() in (
            environ
        ):
            found.append(int(proc.name))
    return found


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def killed_server(tmp_path_factory):
    """Two runs on a real server; the server is SIGKILLed after both logged epochs 0-1 (the
    probe holds each after epoch 2, before the tracker sees that epoch); then
    one run goes on to its end and the other's trainer is SIGKILLed. Returns what happened."""
    root = tmp_path_factory.mktemp("killed_server")
    server, url = start_server(root / "server")
    try:
        runs = {}
        for name in ("goes_on", "sigkilled"):
            folder = root / name
            (folder / "marks").mkdir(parents=True)
            tag = uuid.uuid4().hex
            env = env_for(LOSSBENCH_PROBE_DIR=str(folder / "marks"), LOSSBENCH_TEST_TAG=tag,
                          LOSSBENCH_PROBE_HOLD="epoch_2")  # fmt: skip
            proc = start_cli(
                "data=probe", "trainer.epochs=8", f"tracking.uri={url}",
                "tracking.flush_seconds=0.2", f"tracking.retry_seconds={RETRY_SECONDS}",
                f"tracking.run_name={name}", "hydra.run.dir=run", cwd=folder, env=env,
            )  # fmt: skip
            runs[name] = {"proc": proc, "dir": folder / "run", "tag": tag, "marks": folder}

        def logged_two_epochs():
            _, found = runs_in(url)
            steps = {}
            for r in found:
                client = runs_in(url)[0]
                steps[r.info.run_name] = len(client.get_metric_history(r.info.run_id, "val_loss"))
            return steps.get("goes_on", 0) >= 2 and steps.get("sigkilled", 0) >= 2

        for run in runs.values():
            wait_for(lambda run=run: (run["marks"] / "marks" / "epoch_2").exists()
                     or run["proc"].poll() is not None, 300, "epoch 2")  # fmt: skip
            assert run["proc"].poll() is None, run["proc"].communicate()[1][-3000:]
        wait_for(logged_two_epochs, 60, "the server receiving epochs 0-1")
        sides = side_processes(runs["sigkilled"]["tag"])
        assert sides, "the side process of the run to kill was not found"
    except BaseException:
        os.killpg(server.pid, signal.SIGKILL)
        for run in locals().get("runs", {}).values():
            run["proc"].kill()
        raise

    os.killpg(server.pid, signal.SIGKILL)  # the server and its workers, gone for good
    server.wait()
    t0 = time.time()
    runs["sigkilled"]["proc"].send_signal(signal.SIGKILL)
    (runs["goes_on"]["marks"] / "marks" / "release").write_text("")
    out, err = runs["goes_on"]["proc"].communicate(timeout=300)
    goes_on = {"rc": runs["goes_on"]["proc"].returncode, "out": out, "err": err,
               "seconds": time.time() - t0, "dir": runs["goes_on"]["dir"]}  # fmt: skip
    runs["sigkilled"]["proc"].wait(timeout=60)
    deadline, gone_after = time.time() + 120, None
    while time.time() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in sides):
            gone_after = time.time() - t0
            break
        time.sleep(0.1)
    for pid in sides:  # never leave one behind, whatever the test finds
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    return {
        "goes_on": goes_on,
        "sigkilled": {"dir": runs["sigkilled"]["dir"], "side_gone_after": gone_after},
        "root": root,
    }


@pytest.fixture(scope="module")
def restarted_server(killed_server):
    """The documented recovery: the server started again on the same store."""
    server, url = start_server(killed_server["root"] / "server")
    yield url
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def test_dead_tracking_server_costs_bounded_time_and_exit_1_naming_the_replay(killed_server):
    run = killed_server["goes_on"]
    assert run["rc"] == 1, run["err"][-3000:]
    assert "Traceback" not in run["out"] + run["err"]
    assert run["out"].startswith("finished after 8 epochs")  # training itself finished
    assert "the MLflow record of this run is incomplete" in run["err"]
    assert f"python -m lossbench replay {run['dir']}" in run["err"]
    # one failed send (MLflow's retries, bounded by tracking.retry_seconds), then the spool
    assert run["seconds"] < 3 * RETRY_SECONDS + 15, run["seconds"]
    summary = json.loads((run["dir"] / "summary.json").read_text())
    assert summary["status"] == "finished" and "incomplete" in summary["record_incomplete"][0]


def test_dead_tracking_server_run_is_spooled_in_a_documented_line_format(killed_server):
    (spool,) = list((killed_server["goes_on"]["dir"] / "mlflow-spool").iterdir())

    def ops(name):
        return [json.loads(line)["op"] for line in (spool / name).read_text().splitlines()]

    # the trainer's journal of the run: every epoch, also those the server got, and the end
    assert ops("records.jsonl") == ["start"] + ["metrics"] * 8 + ["finish"]
    # the side process's of the store: the run created, then the store gone
    assert ops("store.jsonl") == ["created", "offline"]
    kept = {p.name for p in (spool / "artifacts").iterdir()}
    assert {"history.csv", "model.npz", "config.yaml", "loss_curve.png"} <= kept


def test_dead_tracking_server_run_replayed_into_a_fresh_store_has_every_metric(
    killed_server, tmp_path
):
    run_dir = killed_server["goes_on"]["dir"]
    fresh = f"sqlite:///{tmp_path}/fresh.db"
    r = replay_cli(run_dir, fresh)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(created)" in r.stdout and "ended FINISHED" in r.stdout
    client, (found,) = runs_in(fresh)
    assert found.info.status == "FINISHED" and found.info.run_name == "goes_on"
    assert found.data.params["trainer.epochs"] == "8"
    assert found.data.tags["lossbench.status"] == "finished"
    assert_every_metric_recorded(client, found.info.run_id, history(run_dir))
    assert {"best_epoch", "best_val_loss", "compile_seconds"} <= set(found.data.metrics)
    names = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"history.csv", "model.npz", "config.yaml", "loss_curve.png"} <= names


def test_dead_tracking_server_run_replay_sends_its_model_and_datasets_once(
    killed_server, tmp_path
):
    """The model and the dataset inputs go through the spool like the rest of the record."""
    import mlflow
    import numpy as np

    from lossbench.tracking.pyfunc import load

    run_dir = killed_server["goes_on"]["dir"]
    (spool,) = list((run_dir / "mlflow-spool").iterdir())
    fresh = f"sqlite:///{tmp_path}/fresh.db"
    for _ in range(2):
        r = replay_cli(run_dir, fresh)
        assert r.returncode == 0, r.stderr[-3000:]
    client, (found,) = runs_in(fresh)
    run_id = found.info.run_id
    models = client.search_logged_models([found.info.experiment_id])
    assert [(m.name, m.source_run_id) for m in models] == [("model", run_id)]
    contexts = sorted(i.tags[0].value for i in client.get_run(run_id).inputs.dataset_inputs)
    assert contexts == ["training", "validation"]
    mlflow.set_tracking_uri(fresh)
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)
    kept = load(next((spool / "model").iterdir()))
    X = np.random.default_rng(0).normal(size=(5, len(kept.predictor.mean)))
    assert model.predict(X).equals(kept.predict(X))


def test_dead_tracking_server_run_replayed_into_its_store_ends_finished_not_running(
    killed_server, restarted_server
):
    run_dir, store = killed_server["goes_on"]["dir"], restarted_server
    client, found = runs_in(store)
    (before,) = [r for r in found if r.info.run_name == "goes_on"]
    assert before.info.status == "RUNNING"  # what the dead server was left with
    assert len(client.get_metric_history(before.info.run_id, "val_loss")) < 8
    r = replay_cli(run_dir, store)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(found)" in r.stdout
    after = client.get_run(before.info.run_id)
    assert after.info.status == "FINISHED"
    assert_every_metric_recorded(client, after.info.run_id, history(run_dir))  # no duplicates
    again = replay_cli(run_dir, store)  # replaying twice sends nothing twice
    assert again.returncode == 0 and " 0 metric points sent" in again.stdout, again.stdout


def test_side_process_exits_when_its_trainer_is_sigkilled_while_the_store_is_unreachable(
    killed_server,
):
    gone = killed_server["sigkilled"]["side_gone_after"]
    assert gone is not None, "the side process was still there 120 s after its trainer died"
    assert gone < 3 * RETRY_SECONDS + 15, gone


def test_sigkilled_run_on_a_dead_server_replays_as_killed(killed_server, restarted_server):
    run_dir, store = killed_server["sigkilled"]["dir"], restarted_server
    (journal,) = list((run_dir / "mlflow-spool").glob("*/store.jsonl"))
    last = json.loads(journal.read_text().splitlines()[-1])
    assert last["op"] == "abandoned" and last["sent"] is False
    r = replay_cli(run_dir, store)
    assert r.returncode == 0 and "ended KILLED" in r.stdout, (r.stdout, r.stderr[-3000:])
    client, found = runs_in(store)
    (run,) = [x for x in found if x.info.run_name == "sigkilled"]
    assert run.info.status == "KILLED"
    assert "ended without finishing" in run.data.tags["lossbench.failure_reason"]
    assert not [x for x in found if x.info.status == "RUNNING"], "a run left RUNNING"


def test_side_process_sigkilled_mid_run_loses_nothing(tmp_path):
    """The MLflow side process dies (SIGKILL) in the middle of a run: the trainer's own
    journal holds every epoch, and the replay records them all."""
    marks, tag, uri = tmp_path / "marks", uuid.uuid4().hex, f"sqlite:///{tmp_path}/mlflow.db"
    marks.mkdir()
    env = env_for(LOSSBENCH_PROBE_DIR=str(marks), LOSSBENCH_PROBE_HOLD="epoch_2",
                  LOSSBENCH_TEST_TAG=tag)  # fmt: skip
    proc = start_cli("data=probe", "trainer.epochs=6", f"tracking.uri={uri}",
                     "hydra.run.dir=run", cwd=tmp_path, env=env)  # fmt: skip
    try:
        wait_for(lambda: (marks / "epoch_2").exists() or proc.poll() is not None, 300, "epoch 2")
        wait_for(lambda: side_processes(tag), 60, "the side process starting")
        for pid in side_processes(tag):
            os.kill(pid, signal.SIGKILL)
        (marks / "release").write_text("")
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "the MLflow process ended unexpectedly" in err, err[-3000:]
    r = replay_cli(tmp_path / "run", uri)
    assert r.returncode == 0 and "ended FINISHED" in r.stdout, (r.stdout, r.stderr[-3000:])
    client, (found,) = runs_in(uri)
    assert found.info.status == "FINISHED"
    assert_every_metric_recorded(client, found.info.run_id, history(tmp_path / "run"))


# ---------------------------------------------------------------------------------------------
# a sqlite store locked by another process

HOLD_SQLITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")  # as a long write or a DB browser left open does
print("locked", flush=True)
sys.stdin.read()  # until the test lets go
conn.execute("COMMIT")
"""


def test_a_sqlite_store_locked_by_another_process_costs_bounded_time_and_loses_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs_in(uri)  # an existing store
    locker = subprocess.Popen([sys.executable, "-c", HOLD_SQLITE_LOCK, str(tmp_path / "mlflow.db")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert locker.stdout.readline().strip() == "locked"
        t0 = time.time()
        proc = start_cli("data=probe", "trainer.epochs=5", f"tracking.uri={uri}",
                         f"tracking.retry_seconds={RETRY_SECONDS}", "hydra.run.dir=run",
                         cwd=tmp_path)  # fmt: skip
        out, err = proc.communicate(timeout=300)  # locked for as long as the run lasts
        seconds = time.time() - t0
    finally:
        locker.communicate("", timeout=60)  # let go
    run_dir = tmp_path / "run"
    assert proc.returncode == 1, out + err  # trained and spooled (was: exit 2 after 60 s)
    assert "Traceback" not in out + err and out.startswith("finished after 5 epochs")
    assert "is locked by another process" in err and "database is locked" in err
    assert "[SQL:" not in err  # what happened, not the statement that met the lock
    assert f"python -m lossbench replay {run_dir}" in err
    print(f"a run on a locked sqlite store took {seconds:.1f} s")
    assert seconds < 3 * RETRY_SECONDS + 20, seconds
    r = replay_cli(run_dir, uri)  # the lock gone, the same store
    assert r.returncode == 0, r.stdout + r.stderr
    client, (run,) = runs_in(uri)
    assert run.info.status == "FINISHED"
    assert_every_metric_recorded(client, run.info.run_id, history(run_dir))


# ---------------------------------------------------------------------------------------------
# a tracking server that accepts connections and never answers

SILENT_SERVER = """
import socket, sys, threading
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(64)
print(srv.getsockname()[1], flush=True)
held = []
def serve(conn):
    data = b""
    while b"\\r\\n\\r\\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
    if data.startswith(b"GET /health"):  # alive enough for the pre-run check
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nOK")
        conn.close()
    else:
        held.append(conn)  # read, never answered (a server whose backend hangs)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def test_a_tracking_server_that_never_answers_costs_bounded_time_and_loses_nothing(tmp_path):
    server = subprocess.Popen([sys.executable, "-c", SILENT_SERVER], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        port = int(server.stdout.readline())
        t0 = time.time()
        proc = start_cli("data=probe", "trainer.epochs=5", f"tracking.uri=http://127.0.0.1:{port}",
                         f"tracking.retry_seconds={RETRY_SECONDS}", "hydra.run.dir=run",
                         cwd=tmp_path)  # fmt: skip
        out, err = proc.communicate(timeout=300)
        seconds = time.time() - t0
    finally:
        server.kill()
        server.wait()
    run_dir = tmp_path / "run"
    assert proc.returncode == 1, out + err
    assert "Traceback" not in out + err and out.startswith("finished after 5 epochs")
    assert "the MLflow record of this run is incomplete" in err and "timed out" in err
    assert f"python -m lossbench replay {run_dir}" in err
    print(f"a run on a silent server took {seconds:.1f} s with retry_seconds={RETRY_SECONDS}")
    assert seconds < 3 * RETRY_SECONDS + 20, seconds  # start-up and compile cache included
    uri = f"sqlite:///{tmp_path}/replayed.db"
    r = replay_cli(run_dir, uri)
    assert r.returncode == 0, r.stdout + r.stderr
    client, (run,) = runs_in(uri)
    assert run.info.status == "FINISHED"
    assert_every_metric_recorded(client, run.info.run_id, history(run_dir))


# ---------------------------------------------------------------------------------------------
# a long run


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_2000_epoch_run_keeps_its_memory_flat_and_records_every_metric(tmp_path):
    marks, tag = tmp_path / "marks", uuid.uuid4().hex
    marks.mkdir()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = env_for(LOSSBENCH_PROBE_DIR=str(marks), LOSSBENCH_TEST_TAG=tag,
                  LOSSBENCH_PROBE_HOLD="epoch_250")  # fmt: skip
    runs_in(uri)  # the store made here, so this test's polling never races its migration
    proc = start_cli("data=probe", "data.n_samples=200", "trainer.epochs=2000",
                     f"tracking.uri={uri}", "tracking.flush_seconds=0.2", "hydra.run.dir=run",
                     cwd=tmp_path, env=env)  # fmt: skip

    def logging():  # the side process has imported MLflow and sent epochs: it is fully up
        _, found = runs_in(uri)
        return bool(found) and len(runs_in(uri)[0].get_metric_history(
            found[0].info.run_id, "val_loss")) > 200  # fmt: skip

    wait_for(lambda: (marks / "epoch_250").exists() or proc.poll() is not None, 300, "epoch 250")
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    wait_for(logging, 60, "the side process logging the first epochs")
    (side,) = side_processes(tag)
    before = rss_mib(proc.pid), rss_mib(side)
    (marks / "release").touch()
    wait_for(lambda: (marks / "epoch_1750").exists() or proc.poll() is not None, 300, "epoch 1750")
    after = rss_mib(proc.pid), rss_mib(side)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert out.startswith("finished after 2000 epochs")
    growth = after[0] - before[0], after[1] - before[1]
    print(f"RSS MiB at epochs 250 / 1750: trainer {before[0]:.1f} / {after[0]:.1f} "
          f"(+{growth[0]:.1f}), MLflow side process {before[1]:.1f} / {after[1]:.1f} "
          f"(+{growth[1]:.1f})")  # fmt: skip
    assert growth[0] < 8 and growth[1] < 8  # flat: 1,500 epochs add no more than their rows
    rows = history(tmp_path / "run")
    assert len(rows) == 2000
    client, (run,) = runs_in(uri)
    assert run.info.status == "FINISHED"
    assert_every_metric_recorded(client, run.info.run_id, rows)
