"""Optuna sweeps, run as users run them: python -m lossbench --multirun ..."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

import lossbench
from conftest import wait_for_summaries
from lossbench.sweep.space import build_space, split_overrides

pytestmark = pytest.mark.slow

BASE = ["data=iris", "trainer.epochs=6", "tracking=none"]


def sweep(*args, cwd, check=True, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["LOSSBENCH_LOAD_PLUGINS"] = ""
    r = subprocess.run(
        [sys.executable, "-m", "lossbench", "--multirun", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wait_for_summaries(cwd)  # the figures and the parent run's end, drawn in the background
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def load(cwd, name):
    import optuna

    from lossbench.sweep.study import open_storage

    storage = open_storage(f"journal:{cwd}/multirun/{name}/journal.log")
    return optuna.load_study(study_name=name, storage=storage)


def states(study):
    return sorted(t.state.name for t in study.get_trials())


def test_range_is_stop_exclusive_like_hydra():
    base = lossbench.compose(["tracking=none"])
    _, exprs = split_overrides(["trainer.epochs=range(5, 100, step=5)", "x.y=range(1,4)"])
    space = build_space({"trainer.epochs": exprs["trainer.epochs"]}, base)
    d = space["trainer.epochs"].distribution
    assert (d.low, d.high, d.step) == (5, 95, 5)  # 100 is excluded, as in Python's range
    assert space["trainer.epochs"].discrete_values == list(range(5, 100, 5))
    assert build_space({"seed": "range(1,4)"}, base)["seed"].discrete_values == [1, 2, 3]
    lr = build_space({"optimizer.lr": "tag(log, interval(1e-4, 1))"}, base)["optimizer.lr"]
    assert lr.distribution.log and lr.discrete_values is None


def test_lr_sweep_writes_results_and_a_trial_reproduces_bit_for_bit(tmp_path):
    r = sweep(
        "optimizer.lr=tag(log, interval(1e-4, 1))", *BASE, "sweep.n_trials=12",
        "sweep.study_name=lr12", cwd=tmp_path,
    )  # fmt: skip
    results = yaml.safe_load((tmp_path / "multirun/lr12/optimization_results.yaml").read_text())
    assert results["trials"]["done"] == 12 and results["status"] == "finished"
    assert "trials by val_loss" in r.stdout and "rerun it with" in r.stdout
    study = load(tmp_path, "lr12")
    assert len(study.trials) == 12 and len({t.number for t in study.trials}) == 12
    best = study.best_trial
    assert results["best_overrides"] == best.user_attrs["overrides"]
    assert {t.user_attrs["seed"] for t in study.trials} == {0}  # one training seed, shared
    assert (tmp_path / f"multirun/lr12/{best.number}/history.csv").is_file()
    assert (tmp_path / f"multirun/lr12/{best.number}/.hydra/overrides.yaml").is_file()
    run = lossbench.train(overrides=[*results["best_overrides"], "trainer.progress=false"])
    assert [h["val_loss"] for h in run.history] == best.user_attrs["val_loss"]
    assert run.history[-1]["val_loss"] == best.value


def test_grid_sweep_runs_every_point_once_and_ends_cleanly(tmp_path):
    r = sweep(
        "optimizer.lr=choice(0.001, 0.01, 0.1)", "loss=mse,cross_entropy", *BASE,
        "sweep.sampler=grid", "sweep.pruner=none", "sweep.n_trials=50", "sweep.study_name=grid",
        cwd=tmp_path,
    )  # fmt: skip
    assert "ended unexpectedly" not in r.stderr
    study = load(tmp_path, "grid")
    points = sorted((t.params["optimizer.lr"], t.params["loss"]) for t in study.trials)
    grid = [(lr, loss) for lr in (0.001, 0.01, 0.1) for loss in ("mse", "cross_entropy")]
    assert points == sorted(grid)
    assert states(study) == ["COMPLETE"] * 6  # n_trials is capped at the grid's size


def test_pruner_stops_an_obviously_bad_lr_early(tmp_path):
    import optuna

    from lossbench.sweep.study import open_storage

    storage = open_storage(f"journal:{tmp_path}/multirun/prune/journal.log")
    study = optuna.create_study(study_name="prune", storage=storage)
    for lr in (0.02, 0.03, 0.04, 1.5e-7):  # three good learning rates, then a hopeless one
        study.enqueue_trial({"optimizer.lr": lr})
    sweep("optimizer.lr=tag(log, interval(1e-7, 0.04))", *BASE, "trainer.epochs=12",
          "sweep.study_name=prune", "sweep.pruner=median", "sweep.pruner_warmup_epochs=2",
          "sweep.pruner_startup_trials=2", "sweep.n_trials=4", cwd=tmp_path)  # fmt: skip
    study = load(tmp_path, "prune")
    bad = study.trials[3]
    assert bad.params["optimizer.lr"] < 1e-6
    assert bad.state.name == "PRUNED"
    assert 2 <= len(bad.user_attrs["val_loss"]) < 12


def mlflow_runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lossbench")
    return client, client.search_runs([exp.experiment_id], run_view_type=3) if exp else []


def test_two_workers_on_a_journal_file_with_one_mlflow_parent(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep(
        "optimizer.lr=tag(log, interval(1e-3, 0.1))", "data=iris", "trainer.epochs=5",
        f"tracking.uri={uri}", "sweep.n_trials=6", "sweep.n_jobs=2", "sweep.study_name=two",
        "sweep.pruner=none", cwd=tmp_path,
    )  # fmt: skip
    study = load(tmp_path, "two")
    assert states(study) == ["COMPLETE"] * 6
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2  # both workers trained
    client, runs = mlflow_runs(uri)
    parents = [r for r in runs if r.data.tags.get("lossbench.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("lossbench.role") == "trial"]
    assert len(parents) == 1 and len(children) == 6
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.tags["lossbench.trial"]) for c in children) == list(range(6))
    assert all(r.info.status == "FINISHED" for r in runs)
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"curves.png", "final_vs_lr.png", "optimization_results.yaml"} <= names
    assert "best_val_loss" in parent.data.metrics


def test_two_workers_on_postgresql(tmp_path, postgres_database):
    sweep(
        "optimizer.lr=tag(log, interval(1e-3, 0.1))", *BASE, "sweep.n_trials=6",
        "sweep.n_jobs=2", "sweep.study_name=pg", "sweep.pruner=none",
        f"sweep.storage={postgres_database}", cwd=tmp_path,
    )  # fmt: skip
    import optuna

    study = optuna.load_study(study_name="pg", storage=postgres_database)
    assert states(study) == ["COMPLETE"] * 6
    assert sorted(t.number for t in study.trials) == list(range(6))


PROBE = os.path.join(os.path.dirname(__file__), "plugins")


def held_sweep(args, cwd, **popen):
    """Start a sweep whose trials hold after their second epoch (tests/plugins/probe.py), so a
    test kills or interrupts it mid-trial for sure; returns (process, marks folder)."""
    marks = cwd / "marks"
    marks.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(LOSSBENCH_LOAD_PLUGINS="", LOSSBENCH_PROBE_DIR=str(marks),
               LOSSBENCH_PROBE_HOLD="epoch_1")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "lossbench", "--multirun", *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,
    )  # fmt: skip
    return proc, marks


def test_sigkilled_worker_then_rerun_completes_exactly_n_trials(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [
        "--plugins-dir", PROBE, "optimizer.lr=tag(log, interval(1e-3, 0.1))", "data=probe",
        "trainer.epochs=30", f"tracking.uri={uri}", "tracking.flush_seconds=0.2",
        "sweep.n_trials=3", "sweep.pruner=none", "sweep.study_name=kill",
    ]  # fmt: skip
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).search_experiments()  # create the store before this test polls it
    proc, marks = held_sweep(args, tmp_path)
    pid, deadline = None, time.time() + 300
    while pid is None and time.time() < deadline:  # the trial holds; its curves reach MLflow
        time.sleep(0.3)
        if not (marks / "epoch_1").exists():
            continue
        running = [t for t in load(tmp_path, "kill").trials if t.state.name == "RUNNING"]
        live = [
            r for r in mlflow_runs(uri)[1]
            if r.info.status == "RUNNING" and r.data.tags.get("lossbench.role") == "trial"
            and "val_loss" in r.data.metrics
        ]  # fmt: skip
        if running and live and "pid" in running[0].user_attrs:
            pid = running[0].user_attrs["pid"]
    assert pid, "no trial started"
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "resume" in err
    sweep(*args, cwd=tmp_path)
    study = load(tmp_path, "kill")
    counted = [t for t in study.trials if not t.user_attrs.get("lossbench_lost")]
    assert sorted(t.state.name for t in counted) == ["COMPLETE"] * 3
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    lost = [t for t in study.trials if t.user_attrs.get("lossbench_lost")]
    assert len(lost) == 1  # the killed trial, retried with the same parameters
    assert any(t.user_attrs.get("retry_of") == lost[0].number for t in counted)
    _, runs = mlflow_runs(uri)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    trial_runs = [r for r in runs if r.data.tags.get("lossbench.role") == "trial"]
    assert len(trial_runs) == 4  # three counted trials and the killed one
    (killed,) = [r for r in trial_runs if r.data.tags["lossbench.trial"] == str(lost[0].number)]
    # killed mid-training: its MLflow side process saw its input close and ended the run
    assert killed.info.status == "KILLED"
    assert "ended without finishing" in killed.data.tags["lossbench.failure_reason"]


def test_ctrl_c_stops_cleanly_and_the_next_run_resumes(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [
        "--plugins-dir", PROBE, "optimizer.lr=tag(log, interval(1e-3, 0.1))", "data=probe",
        "trainer.epochs=20", f"tracking.uri={uri}", "sweep.n_trials=3", "sweep.pruner=none",
        "sweep.study_name=ctrlc", "sweep.n_jobs=2",
    ]  # fmt: skip
    proc, marks = held_sweep(args, tmp_path, start_new_session=True)
    deadline = time.time() + 300
    while not (marks / "epoch_1").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)  # a trial is mid-training (held after its second epoch)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command to resume" in err and "Traceback" not in err
    study = load(tmp_path, "ctrlc")
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    assert [t for t in study.trials if t.user_attrs.get("lossbench_lost")], "no trial was lost"
    _, runs = mlflow_runs(uri)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags.get("lossbench.role") == "parent"]
    assert parent.info.status == "KILLED"
    sweep(*args, cwd=tmp_path)
    study = load(tmp_path, "ctrlc")
    counted = [t for t in study.trials if not t.user_attrs.get("lossbench_lost")]
    assert sorted(t.state.name for t in counted) == ["COMPLETE"] * 3
    _, runs = mlflow_runs(uri)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags.get("lossbench.role") == "parent"]
    assert parent.info.status == "FINISHED"


@pytest.mark.parametrize(
    "args,message",
    [
        (["sweep.sampler=grid", "optimizer.lr=interval(0.001, 0.1)"],
         "sweep.sampler=grid needs discrete values"),
        (["optimizer.lr=interval(0.001, 0.1)", "sweep.metric=val_acc"],
         "sweep.metric='val_acc' is not a metric these runs produce"),
        (["optimizer.lr=interval(0.001, 0.1)", "data=diabetes", "loss=mse",
          "sweep.metric=val_accuracy", "sweep.direction=maximize"], "Available: train_loss"),
        (["optimizer.lr=tag(log, range(1, 10, step=2))"], "log scale with a step"),
        (["optimizer.lr=interval(0.001, 0.1)",
          "sweep.storage=postgresql+psycopg2://postgres@127.0.0.1:1/nope"],
         "cannot be used"),
        (["loss=choice(mse,focal)"], "loss='focal' is not a known loss"),
        ([], "--multirun needs a search space"),
        (["optimizer.lr=interval(0.001, 0.1)", "sweep.summary_wait_seconds=-1"],
         "sweep.summary_wait_seconds=-1.0 is not allowed: it must be a number of seconds"),
    ],
)  # fmt: skip
def test_bad_sweeps_fail_before_any_trial(tmp_path, args, message):
    r = sweep(*BASE, *args, cwd=tmp_path, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("multirun/*/0"))


def test_existing_study_with_another_direction(tmp_path):
    common = [*BASE, "optimizer.lr=interval(0.001, 0.1)", "sweep.study_name=dir",
              "sweep.n_trials=1"]  # fmt: skip
    sweep(*common, cwd=tmp_path)
    r = sweep(*common, "sweep.direction=maximize", cwd=tmp_path, check=False)
    assert r.returncode == 2 and "exists with direction(s) ['minimize']" in r.stderr


def test_multi_objective_sweep_writes_the_pareto_front(tmp_path):
    sweep(
        "optimizer.lr=tag(log, interval(1e-3, 0.1))", "trainer.epochs=range(2, 12, step=2)",
        *BASE[:1], "tracking=none", "hydra.sweeper.n_trials=5", "sweep.study_name=mo",
        "sweep.metric=[val_loss,train_seconds]", "sweep.direction=[minimize,minimize]",
        cwd=tmp_path,
    )  # fmt: skip
    results = yaml.safe_load((tmp_path / "multirun/mo/optimization_results.yaml").read_text())
    assert results["trials"]["complete"] == 5  # hydra.sweeper.X is read as sweep.X
    front = results["pareto_front"]
    assert front and all(len(p["value"]) == 2 and p["overrides"] for p in front)


def test_hydra_sweep_dir_and_subdir_place_the_trials_and_multirun_yaml(tmp_path):
    r = sweep(
        "optimizer.lr=tag(log, interval(1e-3, 0.1))", "sweep=lr", "data=iris", "tracking=none",
        "trainer.epochs=3", "sweep.n_trials=2", "hydra.sweep.dir=runs/lr",
        "hydra.sweep.subdir=trial_${hydra.job.num}_${optimizer.name}", cwd=tmp_path,
    )  # fmt: skip
    root = tmp_path / "runs/lr"
    assert not (tmp_path / "multirun").exists()
    assert sorted(p.name for p in root.glob("trial_*")) == ["trial_0_adam", "trial_1_adam"]
    assert (root / "trial_1_adam/history.csv").is_file()
    assert (root / "trial_1_adam/.hydra/overrides.yaml").is_file()
    results = yaml.safe_load((root / "optimization_results.yaml").read_text())
    assert results["trials"]["done"] == 2
    saved = yaml.safe_load((root / "multirun.yaml").read_text())  # as Hydra's sweepers write it
    assert saved["hydra"]["mode"] == "MULTIRUN"
    assert saved["hydra"]["sweep"] == {
        "dir": "runs/lr", "subdir": "trial_${hydra.job.num}_${optimizer.name}"
    }
    assert "optimizer.lr=tag(log, interval(1e-3, 0.1))" in saved["hydra"]["overrides"]["task"]
    assert saved["data"]["name"] == "iris" and saved["sweep"]["name"] == "lr"
    # the preset's trainer.epochs=30 and the command's trainer.epochs=3: printed once, the last
    rerun = r.stdout.split("rerun it with:")[1].split("\n")[1].split()
    keys = [o.split("=")[0] for o in rerun[3:]]
    assert len(keys) == len(set(keys)) and "trainer.epochs=3" in rerun
    assert len(load_from(root, results["name"]).best_trial.user_attrs["val_loss"]) == 3


def test_default_layout_is_multirun_study_with_multirun_yaml(tmp_path):
    sweep("optimizer.lr=interval(0.001, 0.1)", *BASE, "sweep.n_trials=1",
          "sweep.study_name=layout", cwd=tmp_path)  # fmt: skip
    root = tmp_path / "multirun/layout"
    assert (root / "0/history.csv").is_file() and (root / "optimization_results.yaml").is_file()
    saved = yaml.safe_load((root / "multirun.yaml").read_text())
    assert saved["sweep"]["study_name"] == "layout"
    assert saved["hydra"]["sweep"]["subdir"] == "${hydra.job.num}"


def test_a_subdir_outside_the_sweep_dir_is_refused(tmp_path):
    r = sweep("optimizer.lr=interval(0.001, 0.1)", *BASE, "hydra.sweep.subdir=../x",
              cwd=tmp_path, check=False)  # fmt: skip
    assert r.returncode == 2 and "hydra.sweep.subdir" in r.stderr
    assert "Traceback" not in r.stderr and not list(tmp_path.rglob("*"))


def load_from(root, name):
    import optuna

    from lossbench.sweep.study import open_storage

    storage = open_storage(f"journal:{root}/journal.log")
    return optuna.load_study(study_name=name, storage=storage)


def test_without_a_pruner_trials_report_no_epochs_but_keep_their_curves(tmp_path):
    """sweep.pruner=none: nothing can prune, so no per-epoch report (each was an fsynced
    journal append); the curves are still the trial's, and a pruner gets every epoch."""
    for pruner in ("none", "median"):
        sweep("optimizer.lr=tag(log, interval(1e-3, 0.1))", *BASE, "sweep.n_trials=2",
              f"sweep.pruner={pruner}", f"sweep.study_name=p{pruner}", cwd=tmp_path)  # fmt: skip
    for t in load(tmp_path, "pnone").trials:
        assert t.state.name == "COMPLETE" and t.intermediate_values == {}
        assert len(t.user_attrs["val_loss"]) == 6 and t.value == t.user_attrs["val_loss"][-1]
    for t in load(tmp_path, "pmedian").trials:
        assert sorted(t.intermediate_values) == list(range(6))


def test_a_worker_started_before_the_parent_run_waits_for_its_id(tmp_path):
    """Local workers start while the coordinator opens the MLflow parent run; its id reaches
    them in SWEEP_DIR/parent_run.json, and a stopping worker does not wait for it."""
    import json
    import threading

    from lossbench.sweep.plan import PARENT_FILE, Plan, parent_run_id

    plan = Plan(study_name="s", storage="", sweep_dir=str(tmp_path), fixed=[], params={},
                metrics=["val_loss"], directions=["minimize"], n_trials=1, seed=0,
                sampler="tpe", pruner="none", pruner_warmup_epochs=0, heartbeat_seconds=1.0,
                grace_seconds=1.0, tracking=True, parent_pending=True)  # fmt: skip
    stop = threading.Event()
    stop.set()
    assert parent_run_id(plan, stop) is None and plan.parent_pending  # stopping: no wait
    writer = threading.Timer(0.3, lambda: (tmp_path / PARENT_FILE).write_text(
        json.dumps({"run_id": "abc"})))  # fmt: skip
    writer.start()
    assert parent_run_id(plan, threading.Event()) == "abc"
    assert plan.parent_run_id == "abc" and not plan.parent_pending
    (tmp_path / PARENT_FILE).write_text(json.dumps({"run_id": "other"}))
    assert parent_run_id(plan, threading.Event()) == "abc"  # read once
