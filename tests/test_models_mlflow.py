"""A run's MLflow model, dataset inputs and registered versions, against a real sqlite store:
the pyfunc model reloaded in a fresh process predicts what the run predicts (classification
with softmax and with one logit, regression), without compiling; ``mlflow models serve``
answers REST predictions; ``tracking.register_model`` makes a version; the dataset inputs
are on the run. One store and one set of runs serve the module."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

import lossbench
from lossbench.errors import ConfigError
from lossbench.training.prepare import rows_digest

pytestmark = pytest.mark.slow

RUNS = {
    "digits": ["data=digits", "trainer.epochs=3", "tracking.register_model=digits-mlp"],
    "breast_cancer": ["data=breast_cancer", "loss=bce", "trainer.epochs=3"],
    "diabetes": ["data=diabetes", "loss=mse", "trainer.epochs=3"],
}


def env_for(**extra):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "LOSSBENCH_LOAD_PLUGINS": "", **extra}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three finished runs in one sqlite store; their Run objects and MLflow run ids."""
    root = tmp_path_factory.mktemp("models")
    uri = f"sqlite:///{root}/mlflow.db"
    old = os.getcwd()
    os.chdir(root)  # the store's default artifact root (./mlruns) goes here
    try:
        runs = {}
        for name, overrides in RUNS.items():
            run = lossbench.train(
                overrides=[*overrides, "trainer.progress=false", f"tracking.uri={uri}",
                           f"tracking.run_name={name}"],
                output_dir=root / name,
            )  # fmt: skip
            assert run.status == "finished" and not run.record_errors, run.record_errors
            runs[name] = run
    finally:
        os.chdir(old)
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lossbench")
    ids = {r.info.run_name: r.info.run_id for r in client.search_runs([exp.experiment_id])}
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # for mlflow's module-level functions the tests call
    yield {"root": root, "uri": uri, "runs": runs, "ids": ids, "client": client}
    mlflow.set_tracking_uri(before)


def raw_rows(run, n=7):
    """Validation rows in the units the dataset gave them (the model standardises them)."""
    prep = run.dataset
    return prep.X_val[:n].astype(np.float64) * prep.scale + prep.mean


def expected(run, X):
    """What the run predicts, from ``run.predict`` (the fused forward) and the rule of the
    run's loss, written out here independently of lossbench.training.predict."""
    prep = run.dataset
    out = run.predict((X - prep.mean) / prep.scale).astype(np.float64)
    if prep.task != "classification":
        return {"values": out}
    if out.shape[1] == 1:
        p = 1 / (1 + np.exp(-out[:, 0]))
        probs, idx = np.stack([1 - p, p], axis=1), (out[:, 0] > 0).astype(int)
    else:
        e = np.exp(out - out.max(axis=1, keepdims=True))
        probs, idx = e / e.sum(axis=1, keepdims=True), out.argmax(axis=1)
    return {"probabilities": probs, "labels": [prep.class_names[i] for i in idx]}


LOAD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import pandas as pd
    import mlflow
    uri, run_id, rows, cols = sys.argv[1:5]
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    X = np.load(rows)
    a = model.predict(X)
    b = model.predict(pd.DataFrame(X, columns=json.loads(cols)))
    assert a.equals(b), (a, b)
    from numba.core.registry import CPUDispatcher
    compiled = [f"{m}.{k}" for m, mod in list(sys.modules.items()) if m.startswith("lossbench")
                for k, v in vars(mod).items()
                if isinstance(v, CPUDispatcher) and v.overloads]
    print(json.dumps({"frame": a.to_dict(orient="list"), "compiled": compiled}))
""")


def check_frame(frame: dict, want: dict, run) -> None:
    prep = run.dataset
    rtol = 1e-5 if run.flat_params.dtype == np.float32 else 1e-10
    if "values" in want:
        got = np.array([frame[c] for c in sorted(frame)]).T
        np.testing.assert_allclose(got, want["values"], rtol=rtol, atol=1e-6)
        return
    probs = np.array([frame[f"prob_{c}"] for c in prep.class_names]).T
    np.testing.assert_allclose(probs, want["probabilities"], rtol=rtol, atol=1e-6)
    assert frame["label"] == want["labels"]


@pytest.mark.parametrize("name", list(RUNS))
def test_pyfunc_model_reloaded_in_a_fresh_process_predicts_what_the_run_predicts(store, name):
    run, run_id = store["runs"][name], store["ids"][name]
    X = raw_rows(run)
    np.save(store["root"] / f"{name}.npy", X)
    cols = run.dataset.feature_names or [f"x{i}" for i in range(X.shape[1])]
    r = subprocess.run(
        [sys.executable, "-c", LOAD, store["uri"], run_id, str(store["root"] / f"{name}.npy"),
         json.dumps(cols)],
        capture_output=True, text=True, timeout=300, env=env_for(), cwd=store["root"],
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["compiled"] == [], f"loading the model compiled {got['compiled']}"
    check_frame(got["frame"], expected(run, X), run)


def test_model_requirements_name_lossbench_and_its_signature_the_features(store):
    from mlflow.models import get_model_info

    info = get_model_info(f"runs:/{store['ids']['digits']}/model")
    assert "python_function" in info.flavors
    assert info.flavors["python_function"]["loader_module"] == "lossbench.tracking.pyfunc"
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 64]
    assert [c["name"] for c in info.signature.outputs.to_dict()][-1] == "label"
    folder = Path(store["client"].download_artifacts(store["ids"]["digits"], "model",
                                                     str(store["root"] / "dl")))  # fmt: skip
    reqs = (folder / "requirements.txt").read_text().split()
    assert f"lossbench=={lossbench.__version__}" in reqs
    assert (folder / "input_example.json").is_file()


def test_each_run_records_its_training_and_validation_rows_as_dataset_inputs(store):
    for name, run in store["runs"].items():
        inputs = store["client"].get_run(store["ids"][name]).inputs.dataset_inputs
        by_context = {i.tags[0].value: i.dataset for i in inputs}
        assert set(by_context) == {"training", "validation"}, name
        for context, ds in by_context.items():
            assert ds.name == name
            assert ds.digest == run.dataset.digests[context][:36]
            assert json.loads(ds.profile)["num_rows"] == len(
                run.dataset.X_train if context == "training" else run.dataset.X_val
            )
    # the digest is of the rows as given: the training rows of digits, recomputed
    run = store["runs"]["digits"]
    X_tr = run.dataset.X_train.astype(np.float64) * run.dataset.scale + run.dataset.mean
    digest = rows_digest(np.round(X_tr) + 0.0, run.dataset.labels_train)  # + 0.0: no -0.0
    assert digest == run.dataset.digests["training"]


def test_register_model_makes_a_version_tagged_with_its_run(store):
    versions = store["client"].search_model_versions("name = 'digits-mlp'")
    assert [v.run_id for v in versions] == [store["ids"]["digits"]]
    assert versions[0].tags["lossbench.data"] == "digits"
    from mlflow.pyfunc import load_model

    model = load_model("models:/digits-mlp/1")
    run = store["runs"]["digits"]
    X = raw_rows(run)
    check_frame(model.predict(X).to_dict(orient="list"), expected(run, X), run)


@pytest.mark.parametrize("name", ["", "has space", "a/b", "-lead", "x" * 101])
def test_a_bad_register_model_name_is_refused_before_training(name, tmp_path):
    with pytest.raises(ConfigError, match="tracking.register_model"):
        lossbench.train(overrides=["trainer.epochs=1", f"tracking.register_model='{name}'",
                                   f"tracking.uri=sqlite:///{tmp_path}/m.db"])  # fmt: skip


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(store):
    """``mlflow models serve`` of the digits run's model, for the module; yields its URL."""
    run_id = store["ids"]["digits"]
    port = free_port()
    log = open(store["root"] / "serve.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m",
         f"runs:/{run_id}/model", "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1",
         "-w", "1"],
        # the server runs uvicorn from PATH, as in an activated environment
        env=env_for(MLFLOW_TRACKING_URI=store["uri"],
                    PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"),
        cwd=store["root"], stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/ping", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (
                    (store["root"] / "serve.log").read_text()[-3000:]
                )
                time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def invoke(url: str, body: dict) -> tuple[int, dict]:
    """POST ``body`` to the model server: (HTTP status, the JSON answer)."""
    request = urllib.request.Request(
        url + "/invocations", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_mlflow_models_serve_answers_rest_predictions(store, served):
    run = store["runs"]["digits"]
    X = raw_rows(run)
    status, answer = invoke(served, {"inputs": X.tolist()})
    assert status == 200, answer
    rows = answer["predictions"]
    frame = {k: [r[k] for r in rows] for k in rows[0]}
    check_frame(frame, expected(run, X), run)


def test_the_mlflow_model_refuses_rows_with_missing_or_infinite_values(store, served):
    """A NaN or infinite feature gives NaN probabilities, which argmax called class 0: refused,
    naming the row, in Python and over REST (HTTP 400, not 200)."""
    import mlflow

    X = raw_rows(store["runs"]["digits"])
    X[2, 5], X[4, 0] = np.nan, np.inf
    model = mlflow.pyfunc.load_model(f"runs:/{store['ids']['digits']}/model")
    with pytest.raises(Exception, match=r"2 rows with missing or infinite values \(the first: "
                                        r"row 2, column 5: nan\)") as info:  # fmt: skip
        model.predict(X)
    assert "Fix:" in str(info.value)
    status, answer = invoke(served, {"inputs": json.loads(json.dumps(X.tolist()))})
    assert status == 400, answer
    assert "2 rows with missing or infinite values" in answer["message"], answer


def sweep_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "lossbench", "--multirun", "trainer.epochs=3",
         "optimizer.lr=choice(1e-5,1e-4,1e-2)", "sweep.sampler=grid", "sweep.pruner=none",
         # seed 3: the grid hands out 1e-4 and 1e-5 first, 1e-2 (the best) in the resume
         "sweep.seed=3", "sweep.study_name=reg", "hydra.sweep.dir=sweep", *args],
        cwd=cwd, env=env_for(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_sweep_register_best_registers_the_best_trial_and_a_resume_moves_it(tmp_path):
    """Two trials, then the resumed study's third: the best trial's model is a version tagged
    with the study and the trial, the alias ``best`` points at it, and a better trial in the
    resume gets a new version and the alias."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)

    def state():
        versions = client.search_model_versions("name = 'digits-best'")
        best = client.get_model_version_by_alias("digits-best", "best")
        return {int(v.version): v for v in versions}, best

    def best_trial():
        results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
        return results["best_trial"], results["best_params"]["optimizer.lr"]

    seen = []
    for n_trials in (2, 3):
        r = sweep_cli(f"sweep.n_trials={n_trials}", "sweep.register_best=digits-best",
                      f"tracking.uri={uri}", cwd=tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        trial, lr = best_trial()
        versions, best = state()
        assert best.tags["lossbench.study"] == "reg"
        assert best.tags["lossbench.trial"] == str(trial)
        run = client.get_run(best.run_id)
        assert run.data.tags["lossbench.trial"] == str(trial)
        assert float(run.data.params["optimizer.lr"]) == float(lr)
        seen.append((trial, len(versions)))
        assert "models:/digits-best@best" in r.stdout
    (first, one), (second, two) = seen
    assert first != second and (one, two) == (1, 2), seen  # the resume found a better trial
    # sweep.log_models=best (the default): only trials as good as every trial completed before
    # them logged a model, so the best trial of each invocation has one and the others not
    values = {int(r.data.tags["lossbench.trial"]): (r.info.run_id, r.data.metrics["val_loss"])
              for r in client.search_runs([run.info.experiment_id],
                                          "tags.`lossbench.role` = 'trial'")}  # fmt: skip
    with_model = {m.source_run_id for m in client.search_logged_models([run.info.experiment_id])}
    best_so_far, expect = float("inf"), set()
    for n in sorted(values):
        run_id, value = values[n]
        if value <= best_so_far:
            expect.add(run_id)
        best_so_far = min(best_so_far, value)
    assert with_model == expect and len(expect) < len(values), (with_model, values)


def test_sweep_log_models_all_logs_every_trials_model(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = sweep_cli("sweep.n_trials=3", "sweep.log_models=all", f"tracking.uri={uri}",
                  cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lossbench").experiment_id
    trials = client.search_runs([exp], "tags.`lossbench.role` = 'trial'")
    models = {m.source_run_id for m in client.search_logged_models([exp])}
    assert len(trials) == 3 and models == {t.info.run_id for t in trials}


def test_bad_sweep_register_best_is_refused_before_any_trial(tmp_path):
    for args, says in [(["sweep.register_best=a/b"], "sweep.register_best='a/b'"),
                       (["sweep.register_best=m", "tracking=none"], "tracking=none")]:
        r = sweep_cli("sweep.n_trials=1", *args, cwd=tmp_path)
        assert r.returncode == 2, r.stderr[-2000:]
        assert says in r.stderr and "Traceback" not in r.stderr
        assert not (tmp_path / "sweep").exists()


class _PruneAtOnce:
    """The trial side of the sweep's ``Pruning`` hook: it reports, and the pruner says stop."""

    def report(self, value, epoch):
        pass

    def should_prune(self):
        return True


def test_a_pruned_trial_logs_no_model_but_a_finished_run_does(store, tmp_path):
    from lossbench.plugins import build_plugin_manager
    from lossbench.sweep.worker import Pruning

    pm = build_plugin_manager()
    pm.register(Pruning(_PruneAtOnce(), "val_loss"), name="pruning")
    run = lossbench.train(
        overrides=["data=iris", "trainer.epochs=5", "trainer.progress=false",
                   f"tracking.uri={store['uri']}", "tracking.run_name=pruned"],
        output_dir=tmp_path / "pruned", plugin_manager=pm,
    )  # fmt: skip
    assert run.status == "stopped" and "pruned" in run.stop_reason and len(run.history) == 1
    client = store["client"]
    exp = client.get_experiment_by_name("lossbench")
    pruned = client.search_runs([exp.experiment_id], "attributes.run_name = 'pruned'")[0]
    assert pruned.info.status == "FINISHED"
    models = {m.source_run_id for m in client.search_logged_models([exp.experiment_id])}
    assert pruned.info.run_id not in models
    assert store["ids"]["digits"] in models  # the same store, a run that was not pruned


class _RacingClient:
    """A store where another run created the same dataset between MLflow's lookup and insert
    ``races`` times (what four runs starting at once on a fresh store met)."""

    def __init__(self, races: int, error: str = "(sqlite3.IntegrityError) UNIQUE constraint "
                 "failed: datasets.experiment_id, datasets.name, datasets.digest"):  # fmt: skip
        self.races, self.error, self.calls = races, error, 0

    def log_inputs(self, run_id, datasets):
        from mlflow.exceptions import MlflowException

        self.calls += 1
        if self.calls <= self.races:
            raise MlflowException(self.error)


def test_dataset_inputs_survive_two_runs_creating_the_same_dataset_at_once(store):
    from mlflow.exceptions import MlflowException

    from lossbench.tracking.models import describe_datasets, log_datasets

    specs = describe_datasets(store["runs"]["digits"])
    client = _RacingClient(races=2)
    log_datasets(client, "run", specs)
    assert client.calls == 3
    other = _RacingClient(races=1, error="RESOURCE_DOES_NOT_EXIST: run 'run' not found")
    with pytest.raises(MlflowException):
        log_datasets(other, "run", specs)  # any other failure is not retried
    assert other.calls == 1


def test_the_registered_model_holds_the_best_epochs_weights(tmp_path):
    """trainer.keep_weights=best (the default): the run's MLflow model, and the version
    registered from it, predict with the best epoch's weights, exactly those of a run that
    ended at that epoch, not with the last epoch's."""
    from mlflow.pyfunc import load_model
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overfits = ["data=wine", "trainer.epochs=40", "optimizer.lr=0.05", "trainer.progress=false"]
    run = lossbench.train(overrides=[*overfits, f"tracking.uri={uri}",
                                     "tracking.register_model=wine-best"],
                          output_dir=tmp_path / "run")  # fmt: skip
    assert run.status == "finished" and not run.record_errors, run.record_errors
    best = run.best_epoch
    assert best < len(run.history) - 1  # the last epoch is not the best one
    ended = lossbench.train(overrides=[*overfits, "tracking=none", f"trainer.epochs={best + 1}",
                                       "trainer.keep_weights=last"])  # fmt: skip
    last = lossbench.train(overrides=[*overfits, "tracking=none", "trainer.keep_weights=last"])
    old = mlflow_uri(uri)
    try:
        model = load_model("models:/wine-best/1")
        X = raw_rows(run, n=20)
        frame = model.predict(X).to_dict(orient="list")
    finally:
        mlflow_uri(old)
    check_frame(frame, expected(ended, X), ended)
    probs_last = expected(last, X)["probabilities"]
    got = np.array([frame[f"prob_{c}"] for c in run.dataset.class_names]).T
    assert not np.allclose(got, probs_last, rtol=1e-4)
    version = MlflowClient(uri).get_model_version("wine-best", "1")
    assert MlflowClient(uri).get_run(version.run_id).data.metrics["best_epoch"] == best


def mlflow_uri(uri):
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    return before
