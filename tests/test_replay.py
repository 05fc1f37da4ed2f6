"""``python -m lossbench replay`` on spools made for the purpose (the format documented in
lossbench/tracking/spool.py), with real processes: two replays at once make one MLflow run,
NaN points are sent once, and an edited spool cannot make it upload files from outside the run
directory."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

def make_spool(run_dir: Path, spool_id="0123456789abcdef", metrics=None, artifacts=(),
               model=None) -> Path:  # fmt: skip
    """A run's spool as the trainer writes it: start, metrics, finish (FINISHED)."""
    folder = run_dir / "mlflow-spool" / spool_id
    (folder / "artifacts").mkdir(parents=True)
    (folder / "artifacts" / "history.csv").write_text("epoch,train_loss\n0,1.0\n")
    now = int(time.time() * 1000)
    metrics = metrics or [["val_loss", v, now, i] for i, v in enumerate([1.0, 0.5, 0.25])]
    records = [
        {"op": "start", "spool_id": spool_id, "start_time": now, "uri": None,
         "experiment": "lossbench", "run_name": "spooled", "tags": {"t": "1"},
         "params": {"optimizer.lr": "0.01"}, "datasets": []},
        {"op": "metrics", "items": metrics},
        {"op": "finish", "state": "FINISHED", "tags": {"lossbench.status": "finished"},
         "metrics": [["best_val_loss", 0.25, now, 0]], "end_time": now + 10,
         "artifacts": ["artifacts/history.csv", *artifacts], "model": model},
    ]  # fmt: skip
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _env():
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["LOSSBENCH_LOAD_PLUGINS"] = ""
    return env


def replay(run_dir, uri, cwd):
    return subprocess.run(
        [sys.executable, "-m", "lossbench", "replay", str(run_dir), "--uri", uri],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def runs_in(uri):
    from lossbench.tracking.store import open_client

    client = open_client(uri)
    experiment = client.get_experiment_by_name("lossbench")
    return client, client.search_runs([experiment.experiment_id]) if experiment else []


def _waiting_on_a_lock(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()")  # fmt: skip
        return cur.fetchone()[0]


def test_two_replays_of_one_spool_at_once_create_one_mlflow_run(tmp_path, postgres_database):
    """On PostgreSQL, with the store's ``runs`` table locked by the test until both replays
    have reached it, so that both look for the run at the same moment (on a sqlite store the
    lock of its first open serialised them, which hid the race)."""
    import psycopg2

    make_spool(tmp_path / "run")
    uri = postgres_database
    runs_in(uri)  # the store's tables made first: two processes creating them at once clash
    conn = psycopg2.connect(dbname=uri.rsplit("/", 1)[1], host="127.0.0.1", user="postgres")
    locker = psycopg2.connect(dbname=uri.rsplit("/", 1)[1], host="127.0.0.1", user="postgres")
    conn.autocommit = True
    with locker.cursor() as cur:
        cur.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")  # held until the commit
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lossbench", "replay", str(tmp_path / "run"), "--uri", uri],
            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    deadline = time.time() + 120
    while _waiting_on_a_lock(conn) < 1 and time.time() < deadline:  # the first one is there
        time.sleep(0.05)
    time.sleep(3)  # and the other: waiting on the table too, or on whatever serialises them
    locker.commit()
    outs = [p.communicate(timeout=300) for p in procs]
    conn.close()
    locker.close()
    assert [p.returncode for p in procs] == [0, 0], outs
    client, runs = runs_in(uri)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")] == [
        1.0, 0.5, 0.25]  # fmt: skip
    said = sorted(out.split(": run ")[1].split(" (")[1].split(")")[0] for out, _ in outs)
    assert said == ["created", "found"], outs


def test_replaying_twice_never_resends_nan_points(tmp_path):
    now = int(time.time() * 1000)
    points = [["val_loss", 1.0, now, 0], ["val_loss", math.nan, now, 1],
              ["train_loss", math.inf, now, 1], ["val_loss", math.nan, now + 1, 2]]  # fmt: skip
    make_spool(tmp_path / "run", metrics=points)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = replay(tmp_path / "run", uri, tmp_path)
    assert first.returncode == 0, first.stderr
    again = replay(tmp_path / "run", uri, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 metric points sent (5 already there)" in again.stdout, again.stdout
    client, (run,) = runs_in(uri)
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert len(history) == 3, [(m.step, m.value) for m in history]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 1


@pytest.mark.parametrize(
    "edit",
    ["climbs", "absolute", "symlink_out", "model_absolute", "model_climbs"],
)
def test_replay_uploads_only_files_inside_the_run_directory(tmp_path, edit):
    secret = tmp_path / "secret.txt"
    secret.write_text("not the run's\n")
    run_dir = tmp_path / "runs" / "run"
    artifacts, model = [], None
    if edit == "climbs":
        artifacts = ["../../../../secret.txt"]
    elif edit == "absolute":
        artifacts = [str(secret)]
    elif edit == "model_absolute":
        model = {"data": str(tmp_path), "register": None, "tags": {}}
    elif edit == "model_climbs":
        model = {"data": "../../..", "register": None, "tags": {}}
    else:
        artifacts = ["artifacts/link.txt"]
    folder = make_spool(run_dir, artifacts=artifacts, model=model)
    if edit == "symlink_out":
        (folder / "artifacts" / "link.txt").symlink_to(secret)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = replay(run_dir, uri, tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("lossbench: error: ") and "\n" not in err, err
    assert "outside the run directory" in err and "Fix:" in err, err
    assert "Traceback" not in err
    client, runs = runs_in(uri)
    for run in runs:  # nothing of it was sent: no run, or one without the file
        names = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert "secret.txt" not in names and "link.txt" not in names
    assert not runs, "the spool was refused before anything was sent"
