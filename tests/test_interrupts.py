"""Ctrl-C and SIGTERM at any moment of a run, through the command line: the run directory and
MLflow both say how the run ended and in which phase.

Every test waits for the moment it interrupts (a mark left by the probe plugin in
tests/plugins/probe.py), never for a fixed time, so a slow machine or an empty numba cache
changes nothing.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROBE = Path(__file__).resolve().parent / "plugins"


def start(tmp_path, *overrides, env=None):
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    full_env = {
        **os.environ,
        "LOSSBENCH_LOAD_PLUGINS": "",
        "LOSSBENCH_PROBE_DIR": str(marks),
        **(env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "lossbench", "--plugins-dir", str(PROBE), "trainer.progress=false",
         *overrides],
        cwd=tmp_path, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, marks


def wait_for(proc, marks, event, timeout=300):
    """Wait until the run leaves the mark ``event`` (it is then in that phase)."""
    wait_until(proc, lambda: (marks / event).exists(), event, timeout)


def wait_until(proc, done, event, timeout=300):
    """Wait until ``done()`` is true while the run goes on."""
    deadline = time.time() + timeout
    while not done():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before {event}: {err[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"the run did not reach {event} within {timeout} s")
        time.sleep(0.02)


def interrupt(proc, sig=signal.SIGINT):
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    return out, err


def run_dir(tmp_path) -> Path:
    (found,) = list(tmp_path.glob("outputs/*/*"))
    return found


def summary_of(tmp_path) -> dict:
    return json.loads((run_dir(tmp_path) / "summary.json").read_text())


def mlflow_run(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("lossbench").experiment_id])
    return run


def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_ctrl_c_ends_the_run_cleanly_with_partial_outputs(tmp_path):
    proc, marks = start(
        tmp_path, "tracking=none", "data=moons", "data.n_samples=20000", "trainer.epochs=100000"
    )
    wait_for(proc, marks, "epoch_1")
    out, err = interrupt(proc)
    assert "interrupted" in err
    summary = summary_of(tmp_path)
    assert summary["status"] == "interrupted" and summary["phase"] == "train"
    assert "during training" in summary["error"]
    rows = (run_dir(tmp_path) / "history.csv").read_text().splitlines()
    assert len(rows) - 1 == summary["epochs"] >= 2
    assert {"model.npz", "loss_curve.png"} <= {p.name for p in run_dir(tmp_path).iterdir()}


def test_ctrl_c_during_the_first_compile_leaves_a_summary_that_says_so(tmp_path):
    """An empty numba cache (a fresh install): the run is interrupted while it compiles."""
    cold = tmp_path / "numba-cache"
    cold.mkdir()
    proc, marks = start(
        tmp_path, "data=probe", f"tracking.uri={store(tmp_path)}",
        env={"NUMBA_CACHE_DIR": str(cold)},
    )  # fmt: skip
    # numba writes a cache index when it has compiled a function: the run is compiling (the
    # on_run_start mark alone would race with the step into the compile phase on a busy machine)
    wait_until(proc, lambda: any(cold.rglob("*.nbi")), "the first compiled function")
    interrupt(proc)
    summary = summary_of(tmp_path)
    assert summary["status"] == "interrupted" and summary["phase"] == "compile"
    assert summary["epochs"] == 0 and "compiling" in summary["error"]
    assert summary["timings"]["total_seconds"] > 0
    assert not (run_dir(tmp_path) / "history.csv").exists()  # no epoch: no history, no model
    run = mlflow_run(store(tmp_path))
    assert run.info.status == "KILLED"
    assert run.data.tags["lossbench.status"] == "interrupted"
    assert run.data.tags["lossbench.phase"] == "compile"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_or_sigterm_while_loading_data_is_recorded_in_both_places(tmp_path, sig):
    proc, marks = start(
        tmp_path, "data=probe", f"tracking.uri={store(tmp_path)}",
        env={"LOSSBENCH_PROBE_HOLD": "load"},
    )  # fmt: skip
    wait_for(proc, marks, "loading")
    interrupt(proc, sig)
    summary = summary_of(tmp_path)
    assert summary["status"] == "interrupted" and summary["phase"] == "setup"
    assert summary["epochs"] == 0 and "loading the data" in summary["error"]
    run = mlflow_run(store(tmp_path))  # recorded although on_run_start was never reached
    assert run.info.status == "KILLED"
    assert run.data.tags["lossbench.phase"] == "setup"


def test_ctrl_c_while_writing_outputs_finishes_them_first(tmp_path):
    proc, marks = start(
        tmp_path, "data=probe", "trainer.epochs=3", f"tracking.uri={store(tmp_path)}",
        env={"LOSSBENCH_PROBE_HOLD": "run_end"},
    )  # fmt: skip
    wait_for(proc, marks, "run_end")  # the end hooks are running
    out, err = interrupt(proc)
    assert "finishing them" in err
    summary = summary_of(tmp_path)
    assert summary["status"] == "finished" and summary["epochs"] == 3
    names = {p.name for p in run_dir(tmp_path).iterdir()}
    assert {"history.csv", "model.npz", "loss_curve.png", "summary.json"} <= names
    assert not [n for n in names if n.startswith(".") and n != ".hydra"], "temporary files left"
    run = mlflow_run(store(tmp_path))
    assert run.info.status == "FINISHED"
    from mlflow.tracking import MlflowClient

    artifacts = MlflowClient(store(tmp_path)).list_artifacts(run.info.run_id)
    assert "history.csv" in {a.path for a in artifacts}


def test_sigterm_before_the_run_folder_exists_exits_130_and_says_nothing_was_recorded(tmp_path):
    proc, marks = start(tmp_path, "tracking=none", env={"LOSSBENCH_PROBE_HOLD": "register"})
    wait_for(proc, marks, "registered")  # plugins load before Hydra composes: no folder yet
    out, err = interrupt(proc, signal.SIGTERM)  # exit 130, no traceback
    assert "interrupted by SIGTERM before a run started; nothing was recorded" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "outputs").exists()


def test_sigterm_during_warmup_exits_130_with_one_line_saying_what_to_do(tmp_path):
    cold = tmp_path / "numba-cache"  # an empty cache: warmup compiles for many seconds
    cold.mkdir()
    env = {**os.environ, "LOSSBENCH_LOAD_PLUGINS": "", "NUMBA_CACHE_DIR": str(cold)}
    proc = subprocess.Popen([sys.executable, "-m", "lossbench", "warmup"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_until(proc, lambda: any(cold.rglob("*.nbi")), "the first compiled function")
    out, err = interrupt(proc, signal.SIGTERM)  # exit 130, no traceback
    (line,) = err.strip().splitlines()
    assert line.startswith("lossbench: warmup interrupted (SIGTERM)"), err
    assert "python -m lossbench warmup again" in line
