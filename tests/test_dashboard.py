"""Optuna's dashboard (``optuna-dashboard``, in the ``test`` extra) opens a lossbench study as
it is: the journal file a sweep writes, through the dashboard's own storage loader and through
its REST API, with every trial's per-epoch validation loss as intermediate values."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

optuna_dashboard = pytest.importorskip(
    "optuna_dashboard", reason="optuna-dashboard is in the test extra: pip install -e '.[test]'"
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A three-trial sweep with the default pruner (which is what reports each epoch), tracked
    nowhere; its folder and its trials' val_loss curves."""
    root = tmp_path_factory.mktemp("dashboard")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    r = subprocess.run(
        [sys.executable, "-m", "lossbench", "--multirun", "data=iris", "trainer.epochs=4",
         "optimizer.lr=tag(log, interval(1e-3, 1e-1))", "sweep.n_trials=3", "sweep.pruner=median",
         "sweep.study_name=dash", "tracking=none", "hydra.sweep.dir=sweep"],
        cwd=root, env={**env, "LOSSBENCH_LOAD_PLUGINS": ""}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    curves = {}
    for n in range(3):
        with open(root / "sweep" / str(n) / "history.csv") as f:
            curves[n] = [float(row["val_loss"]) for row in csv.DictReader(f)]
    return root / "sweep", curves


def test_the_dashboards_storage_loader_opens_a_lossbench_journal(sweep):
    import optuna
    from optuna_dashboard._storage_url import guess_storage_from_url

    folder, curves = sweep
    storage = guess_storage_from_url(str(folder / "journal.log"))
    study = optuna.load_study(study_name="dash", storage=storage)
    trials = {t.number: t for t in study.get_trials()}
    assert set(trials) == {0, 1, 2}
    for n, curve in curves.items():
        got = [trials[n].intermediate_values[e] for e in range(len(curve))]
        assert got == pytest.approx(curve, rel=1e-12)


def test_the_dashboard_serves_the_study_and_its_intermediate_values(sweep):
    folder, curves = sweep
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("optuna-dashboard")), str(folder / "journal.log"),
         "--port", str(port), "--host", "127.0.0.1", "--server", "wsgiref", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                studies = json.loads(urllib.request.urlopen(url + "/api/studies").read())
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
                time.sleep(0.2)
        (study,) = [s for s in studies["study_summaries"] if s["study_name"] == "dash"]
        detail = json.loads(
            urllib.request.urlopen(f"{url}/api/studies/{study['study_id']}").read()
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    trials = {t["number"]: t for t in detail["trials"]}
    for n, curve in curves.items():
        values = {v["step"]: v["value"] for v in trials[n]["intermediate_values"]}
        assert [values[e] for e in range(len(curve))] == pytest.approx(curve, rel=1e-12)
