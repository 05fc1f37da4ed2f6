"""The example plugins in plugins/, as a user meets them: a fresh venv outside the repo, lossbench
and the plugins installed with pip, training from the command line with the plugins' loss and
optimizer, and the plugins' own test suites (the conformance kit) passing there."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "plugins"


def pip_install(py: Path, *paths: Path) -> None:
    """pip install --no-deps: without build isolation when this environment has hatchling (no
    download), else pip fetches it for the build (pip's cache keeps it)."""
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    cmd = [str(py), "-m", "pip", "install", "--no-deps", "-q", *isolation, *map(str, paths)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def fresh_venv(root: Path, *distributions: Path):
    """A fresh venv under ``root`` with ``distributions`` installed (not editable) and
    lossbench installed editable from this checkout (so the fused epoch and the built-in kernels
    load from the numba cache the suite warmed, instead of compiling again in every such venv;
    tests/test_cli.py's test_wheel_install_outside_the_repo is the one that installs the wheel),
    reusing this environment's dependencies through a .pth file; returns a command runner that
    works in ``root / "elsewhere"``, outside the repo, with installed plugins loaded (no
    LOSSBENCH_LOAD_PLUGINS)."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next(p for p in sys.path if p.endswith("site-packages"))
    (next((venv / "lib").glob("python*/site-packages")) / "deps.pth").write_text(site + "\n")
    py = venv / "bin" / "python"
    pip_install(py, "-e", REPO, *distributions)
    work = root / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSBENCH_")}
    env["PYTHONPATH"] = ""

    def run(*args, extra_env=None, timeout=600):
        return subprocess.run(
            [str(py), *args],
            cwd=work,
            env={**env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    run.venv, run.python, run.cwd = venv, py, work
    return run


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A fresh venv with lossbench and the three example distributions (``fresh_venv``)."""
    distributions = ("lossbench-focal", "lossbench-lion", "lossbench-nadam")
    return fresh_venv(tmp_path_factory.mktemp("plugin-user"),
                      *(PLUGINS / name for name in distributions))  # fmt: skip


def test_plugins_are_installed_outside_the_repo(user):
    r = user("-c", "import lossbench, lossbench_focal, lossbench_lion as m; print(m.__file__)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(str(user.venv)), r.stdout


def test_listing_shows_plugins_versions_and_components(user):
    r = user("-m", "lossbench", "plugins", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["focal"]["version"] == "0.1.0" and rows["focal"]["source"] == "lossbench-focal"
    assert rows["focal"]["components"] == {"loss": ["binary_focal", "focal"]}
    assert rows["lion"]["components"] == {"optimizer": ["lion"]}
    assert rows["lion"]["hooks"] == ["register_optimizers"]
    assert rows["nadam"]["components"] == {"optimizer": ["nadam"]}
    table = user("-m", "lossbench", "plugins", "--plugins-dir", str(PLUGINS / "single-file"))
    assert table.returncode == 0, table.stderr
    focal_row = next(line for line in table.stdout.splitlines() if "lossbench-focal" in line)
    assert "focal" in focal_row and "0.1.0" in focal_row and "binary_focal, focal" in focal_row
    assert "poly1 (numpy only: slow path)" in table.stdout
    assert "pseudo_huber (numpy only" not in table.stdout


QUICK = ["tracking=none", "trainer.epochs=2"]


def test_train_with_the_plugins_loss_and_optimizer_from_the_command_line(user):
    r = user("-m", "lossbench", "loss=focal", "loss.gamma=2", *QUICK)
    assert r.returncode == 0, r.stderr
    assert "finished after 2 epochs" in r.stdout
    (run_dir,) = (user.venv.parent / "elsewhere" / "outputs").glob("*/*")
    assert "gamma: 2.0" in (run_dir / ".hydra" / "config.yaml").read_text()
    r = user("-m", "lossbench", "loss=focal", "optimizer=lion", "optimizer.lr=3e-4", *QUICK)
    assert r.returncode == 0, r.stderr
    assert "finished after 2 epochs" in r.stdout
    r = user("-m", "lossbench", "data=moons", "loss=binary_focal", "loss.alpha=null", *QUICK)
    assert r.returncode == 0, r.stderr


def test_train_with_the_scalar_state_optimizer_from_the_command_line(user):
    # NAdam keeps its running product of momentum factors as scalar state, in both dtypes
    for dtype in ("float32", "float64"):
        r = user("-m", "lossbench", "optimizer=nadam", "optimizer.lr=0.005",
                 f"trainer.dtype={dtype}", "hydra.run.dir=nadam-" + dtype, *QUICK)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "finished after 2 epochs" in r.stdout
        summary = json.loads((user.venv.parent / "elsewhere" / f"nadam-{dtype}" /
                              "summary.json").read_text())  # fmt: skip
        assert summary["status"] == "finished" and summary["path"] == "fused"
    r = user("-m", "lossbench", "optimizer=nadam", "optimizer.lr=fast", *QUICK)
    assert r.returncode == 2 and "optimizer.lr must be a number. Fix:" in r.stderr, r.stderr


def test_the_kit_names_an_installed_plugin_by_its_entry_point(user):
    code = (
        "import lossbench_lion; from lossbench.testing import checks_for; "
        "print(sorted({c.subject for c in checks_for(lossbench_lion)}))"
    )
    r = user("-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[\"optimizer 'lion' from plugin 'lion'\", \"plugin 'lion'\"]"


def test_plugin_options_are_type_checked_and_a_plugin_can_be_disabled(user):
    r = user("-m", "lossbench", "loss=focal", "loss.gamma=strong", *QUICK)
    assert r.returncode == 2 and "loss.gamma=strong" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    off = {"LOSSBENCH_DISABLE_PLUGINS": "lossbench-focal"}
    r = user("-m", "lossbench", "loss=focal", *QUICK, extra_env=off)
    assert r.returncode == 2 and "loss='focal' is not a known loss" in r.stderr, r.stderr


def test_the_plugins_own_tests_pass_with_the_kit(user):
    names = ("lossbench-focal", "lossbench-lion", "lossbench-nadam")
    suites = [PLUGINS / name / "tests" for name in names]
    suites.append(PLUGINS / "single-file" / "tests")
    r = user("-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, suites))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    passed = int(r.stdout.strip().splitlines()[-1].split(" passed")[0].split()[-1])
    assert passed >= 90, r.stdout[-500:]


@pytest.fixture(scope="module")
def tensorboard_user(tmp_path_factory):
    """A fresh venv with lossbench and the example tracker (tensorboardX, tensorboard and
    MLflow come from this environment, the test extra)."""
    root = tmp_path_factory.mktemp("tensorboard-user")
    return fresh_venv(root, PLUGINS / "lossbench-tensorboard")


def test_mlflow_and_tensorboard_record_one_command_with_the_same_curves(tensorboard_user):
    from mlflow.tracking import MlflowClient  # start-up: MLflow for this test only

    # start-up: TensorBoard's reader for this test only
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    user = tensorboard_user
    store = f"sqlite:///{user.cwd / 'mlflow.db'}"
    r = user("-m", "lossbench", "tracking=[mlflow,tensorboard]", f"tracking.uri={store}",
             "data=iris", "trainer.epochs=5", "trainer.progress=false",
             "hydra.run.dir=both")  # fmt: skip
    assert r.returncode == 0, r.stderr
    listed = user("-m", "lossbench", "plugins", "--json")
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["tensorboard"]["hooks"] == ["register_trackers"]
    assert rows["tensorboard"]["components"] == {"tracking": ["tensorboard"]}
    (mlflow_run,) = MlflowClient(store).search_runs(
        [MlflowClient(store).get_experiment_by_name("lossbench").experiment_id]
    )
    (event_file,) = (user.cwd / "both" / "tensorboard").glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
    events.Reload()
    client = MlflowClient(store)
    for key in ("train_loss", "val_loss"):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(
            mlflow_run.info.run_id, key))  # fmt: skip
        scalars = [(s.step, s.value) for s in events.Scalars(key)]
        assert [s for s, _ in logged] == [s for s, _ in scalars] == [0, 1, 2, 3, 4], key
        # TensorBoard keeps float32 values, MLflow float64
        assert [v for _, v in scalars] == pytest.approx([v for _, v in logged], rel=1e-6), key
    assert mlflow_run.info.status == "FINISHED"


def test_the_tensorboard_plugins_own_tests_pass(tensorboard_user):
    suite = PLUGINS / "lossbench-tensorboard" / "tests"
    r = tensorboard_user("-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# the example launcher: plugins/lossbench-dask brings its own dependency (distributed)

SWEEP = ["--multirun", "optimizer.lr=tag(log, interval(1e-3, 0.1))", "data=probe",
         "--plugins-dir", str(REPO / "tests" / "plugins"), "tracking=none", "sweep.pruner=none",
         "sweep.launcher=dask", "sweep.n_jobs=2"]  # fmt: skip


@pytest.fixture(scope="module")
def dask_user(tmp_path_factory):
    """A fresh venv with lossbench (``fresh_venv``) and the example launcher installed as a
    user installs it: pip resolves its dependency, distributed, which lossbench lacks."""
    run = fresh_venv(tmp_path_factory.mktemp("dask-user"))
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    package = str(PLUGINS / "lossbench-dask")
    cmd = [str(run.python), "-m", "pip", "install", "-q", *isolation, package]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return run


def _study(folder: Path, name: str):
    import optuna  # start-up: Optuna for the sweep tests only

    from lossbench.sweep.study import open_storage

    storage = open_storage(f"journal:{folder}/multirun/{name}/journal.log")
    return optuna.load_study(study_name=name, storage=storage)


def test_a_sweep_runs_to_completion_as_tasks_on_a_dask_cluster(dask_user):
    listed = dask_user("-m", "lossbench", "plugins", "--json")
    row = next(r for r in json.loads(listed.stdout) if r["name"] == "dask")
    assert row["source"] == "lossbench-dask"
    assert row["components"] == {"sweep.launcher": ["dask"]}
    r = dask_user("-m", "lossbench", *SWEEP, "trainer.epochs=3", "sweep.n_trials=4",
                  "sweep.study_name=dask_done")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "dask: a LocalCluster on this machine, 2 worker(s)" in r.stderr
    assert "trials 4/4 done" in r.stdout and "Traceback" not in r.stderr, r.stderr[-3000:]
    study = _study(dask_user.cwd, "dask_done")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 4
    logs = sorted(p.name for p in (dask_user.cwd / "multirun" / "dask_done").glob("dask-*.log"))
    assert logs == ["dask-worker-0.log", "dask-worker-1.log"]  # one sweep worker per task


def test_ctrl_c_stops_the_dask_tasks_and_the_next_run_retries_their_trials(dask_user):
    marks = dask_user.cwd / "marks"
    marks.mkdir()
    args = [*SWEEP, "trainer.epochs=20", "sweep.n_trials=3", "sweep.study_name=dask_ctrlc"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSBENCH_")}
    env.update(PYTHONPATH="", LOSSBENCH_PROBE_DIR=str(marks), LOSSBENCH_PROBE_HOLD="epoch_1")
    proc = subprocess.Popen([str(dask_user.python), "-m", "lossbench", *args], cwd=dask_user.cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    while not (marks / "epoch_1").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)  # a trial is mid-training, held after its second epoch
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    stopped = time.time()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert time.time() - stopped < 20, "the tasks did not stop promptly"
    assert "run the same command to resume" in err and "Traceback" not in err, err[-3000:]
    study = _study(dask_user.cwd, "dask_ctrlc")
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    lost = [t for t in study.trials if t.user_attrs.get("lossbench_lost")]
    assert lost, "no running trial was lost"
    r = dask_user("-m", "lossbench", *args)  # without the hold: the same command resumes
    assert r.returncode == 0, r.stderr[-3000:]
    study = _study(dask_user.cwd, "dask_ctrlc")
    counted = [t for t in study.trials if not t.user_attrs.get("lossbench_lost")]
    assert sorted(t.state.name for t in counted) == ["COMPLETE"] * 3
    retried = {t.user_attrs.get("retry_of") for t in counted}
    assert {t.number for t in lost} <= retried  # each lost trial retried with its parameters


def test_the_dask_plugins_own_tests_pass(dask_user):
    suite = PLUGINS / "lossbench-dask" / "tests"
    r = dask_user("-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
