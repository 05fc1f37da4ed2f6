"""MLflow tracking against real stores: sqlite files and an `mlflow server` on PostgreSQL."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import lossbench
from lossbench.errors import ConfigError

pytestmark = pytest.mark.slow

EPOCH_KEYS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr", "epoch_seconds")


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def tracked(store, *overrides, **kw):
    base = ["trainer.progress=false", "tracking=mlflow", f"tracking.uri={store}"]
    return lossbench.train(overrides=[*base, *overrides], **kw)


def only_run(uri, experiment="lossbench"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_finished_run_has_params_tags_curves_and_artifacts(pm, store, tmp_path):
    run = tracked(
        store, "data=iris", "trainer.epochs=4", "+tracking.tags.team=ml", output_dir=tmp_path / "o"
    )
    client, r = only_run(store)
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "mlp-cross_entropy-adam-lr0.001"
    p = r.data.params
    assert p["optimizer.lr"] == "0.001" and p["model.hidden"] == "[64]"
    assert p["data.name"] == "iris" and p["seed"] == "0" and p["trainer.epochs"] == "4"
    t = r.data.tags
    assert t["lossbench.version"] == lossbench.__version__
    assert t["lossbench.loss"] == "cross_entropy"
    assert t["lossbench.loss.plugin"] == "lossbench.builtin.losses"
    assert t["lossbench.optimizer.distribution"] == f"lossbench {lossbench.__version__}"
    assert t["lossbench.dtype"] == "float32" and t["lossbench.numba_version"]
    assert t["lossbench.cpu"] and t["team"] == "ml" and t["lossbench.status"] == "finished"
    assert t["lossbench.output_dir"] == str((tmp_path / "o").resolve())
    assert t["lossbench.path"] == "fused"
    assert t["lossbench.compiled"] == str(len(run.compile["compiled"]))
    assert t["lossbench.loaded_from_cache"] == str(len(run.compile["loaded_from_cache"]))
    for key in EPOCH_KEYS:
        history = client.get_metric_history(r.info.run_id, key)
        assert [m.step for m in history] == [0, 1, 2, 3], key
        assert [m.value for m in history] == [h[key] for h in run.history], key
    m = r.data.metrics
    assert m["best_epoch"] == run.best_epoch
    assert m["best_val_loss"] == run.history[run.best_epoch]["val_loss"]
    assert m["compile_seconds"] >= 0 and m["train_seconds"] > 0
    names = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert names == {
        "config.yaml",
        "history.csv",
        "model.npz",
        "loss_curve.png",
        "confusion_matrix.png",
    }


def test_artifacts_without_an_output_dir_and_no_confusion_matrix_for_regression(pm, store):
    tracked(store, "data=diabetes", "loss=mse", "trainer.epochs=2", "optimizer.lr=0.1")
    client, r = only_run(store)
    names = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert names == {"config.yaml", "history.csv", "model.npz", "loss_curve.png"}


def test_diverged_run_is_failed_with_its_reason(pm, store):
    run = tracked(
        store,
        "data=regression",
        "loss=mse",
        "optimizer=sgd",
        "optimizer.lr=1e6",
        "trainer.epochs=30",
    )
    assert run.status == "diverged"
    client, r = only_run(store)
    assert r.info.status == "FAILED"
    assert "non-finite" in r.data.tags["lossbench.failure_reason"]
    assert r.data.tags["lossbench.status"] == "diverged"
    steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
    assert steps == list(range(len(run.history)))  # the diverged epoch is recorded too


def test_early_stopped_run_is_finished_with_the_reason(pm, store):
    tracked(
        store,
        "data=iris",
        "trainer.epochs=300",
        "optimizer.lr=0.05",
        "trainer.early_stopping.enabled=true",
        "trainer.early_stopping.patience=2",
    )
    _, r = only_run(store)
    assert r.info.status == "FINISHED"
    assert r.data.tags["lossbench.stop_reason"].startswith("early stopping")


def test_long_run_name_and_tag_are_shortened(pm, store):
    tracked(
        store, "data=iris", "trainer.epochs=1", f"tracking.run_name={'n' * 400}",
        f"+tracking.tags.note={'t' * 9000}",
    )  # fmt: skip
    _, r = only_run(store)
    assert r.info.status == "FINISHED"
    assert len(r.info.run_name) <= 250 and r.info.run_name.endswith("...")
    assert 7990 < len(r.data.tags["note"]) <= 8000


def test_unreachable_server_is_an_error_before_training(pm):
    seen = []

    class Spy:
        @lossbench.hookimpl
        def on_epoch_end(self, run, epoch, metrics):
            seen.append(epoch)

    from lossbench.plugins import build_plugin_manager

    spy_pm = build_plugin_manager(entry_points=False, extra=[Spy()])
    with pytest.raises(ConfigError, match=r"http://127.0.0.1:9 is not reachable.*tracking=none"):
        tracked("http://127.0.0.1:9", "data=iris", plugin_manager=spy_pm)
    assert seen == []


def test_unwritable_store_is_an_error(pm, tmp_path):
    with pytest.raises(ConfigError, match="cannot be written"):
        tracked(f"sqlite:///{tmp_path}/no/such/dir/mlflow.db", "data=iris")


def test_not_required_warns_and_trains(pm):
    with pytest.warns(UserWarning, match="MLflow tracking is off for this run"):
        run = tracked("http://127.0.0.1:9", "data=iris", "tracking.required=false")
    assert run.status == "finished"


def cli(args, cwd, env):
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full = {**base, "LOSSBENCH_LOAD_PLUGINS": "", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "lossbench", *args],
        cwd=cwd,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_default_store_is_mlflow_db_in_the_working_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["LOSSBENCH_LOAD_PLUGINS"] = ""
    r = subprocess.run(
        [sys.executable, "-m", "lossbench", "trainer.epochs=2", "data=iris"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    _, run = only_run(f"sqlite:///{tmp_path}/mlflow.db")
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "sigkill"]
)
def test_interrupted_run_is_killed_not_left_running(tmp_path, sig):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # create the store first: two processes creating one sqlite store at once race in
    # MLflow's migrations, and this test polls the store while the run trains
    MlflowClient(uri).search_experiments()
    proc = cli(
        [
            "trainer.epochs=1000000",
            "data=moons",
            "data.n_samples=5000",
            "tracking.flush_seconds=0.2",
        ],
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    client, deadline, runs = None, time.time() + 120, []
    try:
        while time.time() < deadline:
            time.sleep(0.3)
            if proc.poll() is not None:
                break
            client = client or MlflowClient(uri)
            exp = client.get_experiment_by_name("lossbench")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs and "val_loss" in runs[0].data.metrics:  # live curves reach the store
                break
    except BaseException:
        proc.kill()
        raise
    assert runs, "the run never appeared in the store"
    assert runs[0].info.status == "RUNNING"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        # nothing in the trainer can react: its MLflow side process sees its input close
        # and ends the run itself
        assert proc.returncode == -signal.SIGKILL
        deadline = time.time() + 60
        while time.time() < deadline:
            (run,) = client.search_runs([runs[0].info.experiment_id])
            if run.info.status != "RUNNING":
                break
            time.sleep(0.3)
        assert "ended without finishing" in run.data.tags["lossbench.failure_reason"]
    else:
        assert proc.returncode == 130, err
        (run,) = client.search_runs([runs[0].info.experiment_id])
    assert run.info.status == "KILLED"
    assert run.data.tags["lossbench.status"] == "interrupted"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(postgres_database, tmp_path):
    """A real `mlflow server` on 127.0.0.1, backed by PostgreSQL, as a team would share it."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", postgres_database,
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError((tmp_path / "server.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def rest(url, path, **query):
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return json.loads(r.read())


def test_shared_mlflow_server_on_postgres(pm, mlflow_server):
    run = lossbench.train(
        overrides=[
            "trainer.progress=false",
            "tracking=mlflow",
            f"tracking.uri={mlflow_server}",
            "tracking.experiment=team",
            "data=iris",
            "trainer.epochs=5",
        ]
    )
    exp = rest(mlflow_server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="team")
    exp_id = exp["experiment"]["experiment_id"]
    req = urllib.request.Request(
        f"{mlflow_server}/api/2.0/mlflow/runs/search",
        data=json.dumps({"experiment_ids": [exp_id]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        (found,) = json.loads(r.read())["runs"]
    assert found["info"]["status"] == "FINISHED"
    run_id = found["info"]["run_id"]
    for key in ("train_loss", "val_loss"):
        hist = rest(mlflow_server, "/api/2.0/mlflow/metrics/get-history", run_id=run_id,
                    metric_key=key)["metrics"]  # fmt: skip
        assert [m["step"] for m in hist] == [0, 1, 2, 3, 4]
        assert [m["value"] for m in hist] == pytest.approx([h[key] for h in run.history])
    arts = rest(mlflow_server, "/api/2.0/mlflow/artifacts/list", run_id=run_id)
    assert {"history.csv", "loss_curve.png"} <= {f["path"] for f in arts["files"]}
