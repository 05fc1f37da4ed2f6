"""A plugin's code that raises fails the run, naming the plugin: a kernel on the fused path
(numba calls it through a function pointer, whose wrapper only prints "Exception ignored"),
a kernel or reference on the slow path, an on_epoch_end or on_run_end hook; through the API,
the command line (exit 1, the MLflow run FAILED with the reason) and a sweep (the trial failed
with it)."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from numba import njit

import lossbench
from conftest import TINY
from lossbench.builtin.losses import LOSSES
from lossbench.builtin.models import MODELS, mlp_forward
from lossbench.builtin.optimizers import OPTIMIZERS, adam_kernel
from lossbench.errors import PluginFailure
from lossbench.plugins import build_plugin_manager

LOSS = {s.name: s for s in LOSSES}
OPT = {s.name: s for s in OPTIMIZERS}


@njit(cache=True)
def forward_that_raises(params, layout, hp, x, work, out):
    mlp_forward(params, layout, hp, x, work, out)
    if x.shape[0] > 0:
        raise ValueError("the forward kernel refuses this batch")


@njit(cache=True)
def backward_that_raises(params, layout, hp, x, work, dout, grads):
    raise ZeroDivisionError("the backward kernel divided by zero")


@njit(cache=True)
def loss_that_raises(pred, target, hp, grad):
    if pred.shape[0] > 0:
        raise ValueError("the loss kernel refuses this batch")
    return 0.0


@njit(cache=True)
def step_that_raises(params, grads, state, scalars, hp, t, lr):
    adam_kernel(params, grads, state, scalars, hp, t, lr)
    if t >= 3:  # a few good steps first
        raise RuntimeError("the optimizer kernel gave up at step 3")


def reference_that_raises(*args):
    raise ValueError("the NumPy reference refuses")


class Raising:
    """Built-ins with one part replaced by one that raises: model raising_forward and
    raising_backward, loss raising, optimizer raising; NumPy-only (slow path) twins *_np."""

    @lossbench.hookimpl
    def register_models(self, register):
        mlp = MODELS[0]
        register(dataclasses.replace(mlp, name="raising_forward", forward=forward_that_raises))
        register(dataclasses.replace(mlp, name="raising_backward", backward=backward_that_raises))
        register(dataclasses.replace(mlp, name="raising_np", forward=None, backward=None,
                                     reference_forward=reference_that_raises))  # fmt: skip

    @lossbench.hookimpl
    def register_losses(self, register):
        ce = LOSS["cross_entropy"]
        register(dataclasses.replace(ce, name="raising", kernel=loss_that_raises))
        register(dataclasses.replace(ce, name="raising_np", kernel=None,
                                     reference=reference_that_raises))  # fmt: skip

    @lossbench.hookimpl
    def register_optimizers(self, register):
        register(dataclasses.replace(OPT["adam"], name="raising", kernel=step_that_raises))


class Ends:
    """Records the status on_run_end sees."""

    def __init__(self):
        self.statuses = []

    @lossbench.hookimpl
    def on_run_end(self, run, status):
        self.statuses.append(status)


FUSED = {  # id -> (overrides, the kernel's role, its function, its message)
    "forward": (["model=raising_forward"], "forward", "forward_that_raises",
                "ValueError: the forward kernel refuses this batch"),
    "backward": (["model=raising_backward"], "backward", "backward_that_raises",
                 "ZeroDivisionError: the backward kernel divided by zero"),
    "loss": (["loss=raising"], "loss", "loss_that_raises",
             "ValueError: the loss kernel refuses this batch"),
    "optimizer": (["optimizer=raising"], "optimizer", "step_that_raises",
                  "RuntimeError: the optimizer kernel gave up at step 3"),
}  # fmt: skip


def _train(*overrides, output_dir=None):
    ends = Ends()
    pm = build_plugin_manager(entry_points=False, extra=[("raising_plugin", Raising()), ends])
    with pytest.raises(PluginFailure) as info:
        lossbench.train(overrides=[*TINY, "data=iris", *overrides], plugin_manager=pm,
                        output_dir=output_dir)  # fmt: skip
    return str(info.value), ends.statuses


@pytest.mark.parametrize("case", list(FUSED))
def test_an_exception_in_a_plugin_kernel_fails_the_run_on_the_fused_path(case, capfd, tmp_path):
    overrides, role, function, message = FUSED[case]
    error, statuses = _train(*overrides, output_dir=tmp_path / "run")
    assert statuses == ["failed"]  # on_run_end saw it: the record says failed
    assert f"the {role} kernel" in error and function in error, error
    assert "plugin 'raising_plugin'" in error and message in error, error
    assert "test_plugin_failures.py" in error  # where it raised
    assert "Fix:" in error
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["path"] == "fused"
    assert "Exception ignored" not in capfd.readouterr().err  # numba's per-batch print


SLOW = {  # id -> (overrides, what the message names)
    "model_reference": (["model=raising_np", "model.hidden=[8]"], "the forward reference"),
    "loss_reference": (["loss=raising_np"], "the loss reference"),
    # a kernel called from Python: the model has no kernels, the loss kernel raises
    "kernel_from_python": (["model=raising_np", "loss=raising"], "the forward reference"),
    "loss_kernel_from_python": (["model=mlp_np_twin", "loss=raising"], "the loss kernel"),
}


class NumpyMlp:
    @lossbench.hookimpl
    def register_models(self, register):
        register(dataclasses.replace(MODELS[0], name="mlp_np_twin", forward=None, backward=None))


@pytest.mark.parametrize("case", list(SLOW))
def test_an_exception_in_a_plugin_kernel_fails_the_run_on_the_slow_path(case):
    overrides, named = SLOW[case]
    ends = Ends()
    pm = build_plugin_manager(
        entry_points=False, extra=[("raising_plugin", Raising()), NumpyMlp(), ends]
    )
    with pytest.raises(PluginFailure) as info:
        lossbench.train(overrides=[*TINY, "data=iris", *overrides], plugin_manager=pm)
    error = str(info.value)
    assert ends.statuses == ["failed"]
    assert named in error and "raised" in error and "Fix:" in error, error
    assert "refuses" in error  # the exception's own message


def _cli(*args, cwd, env=None):
    full = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full.update(LOSSBENCH_LOAD_PLUGINS="", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "lossbench", *args, "trainer.progress=false"],
        cwd=cwd, env=full, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


PLUGIN_FILE = '''
"""A loss whose kernel raises when loss.label_smoothing > 0.5."""
import dataclasses
from numba import njit
import lossbench
from lossbench.builtin.losses import LOSSES, cross_entropy_kernel

@njit(cache=True)
def exploding_loss(pred, target, hp, grad):
    value = cross_entropy_kernel(pred, target, hp, grad)
    if hp[0] > 0.5:
        raise ValueError("the exploding loss was told to explode")
    return value

@lossbench.hookimpl
def register_losses(register):
    ce = [s for s in LOSSES if s.name == "cross_entropy"][0]
    register(dataclasses.replace(ce, name="exploding", kernel=exploding_loss))
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "exploding.py").write_text(PLUGIN_FILE)
    return folder


def test_a_kernel_that_raises_fails_the_run_from_the_command_line(tmp_path, plugin_dir):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = _cli("--plugins-dir", str(plugin_dir), "data=iris", "loss=exploding",
             "loss.label_smoothing=0.9", "trainer.epochs=3", f"tracking.uri={uri}",
             "hydra.run.dir=run", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1, (r.stdout, r.stderr)
    out = r.stdout + r.stderr
    assert "Traceback" not in out and "Exception ignored" not in out, out
    assert "the exploding loss was told to explode" in out
    assert "plugin 'exploding'" in out and "exploding_loss" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("lossbench").experiment_id])
    assert run.info.status == "FAILED"
    assert "the exploding loss was told to explode" in run.data.tags["lossbench.failure_reason"]


def test_a_kernel_that_raises_fails_lr_find_naming_it(tmp_path, plugin_dir):
    r = _cli("lr_find", "--plugins-dir", str(plugin_dir), "--steps", "20", "data=iris",
             "loss=exploding", "loss.label_smoothing=0.9", "tracking=none",
             cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Exception ignored" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "the loss kernel exploding_loss of loss 'exploding'" in r.stderr
    assert "the exploding loss was told to explode" in r.stderr


def test_a_kernel_that_raises_fails_the_trial_of_a_sweep_with_its_reason(tmp_path, plugin_dir):
    r = _cli("--plugins-dir", str(plugin_dir), "--multirun", "data=iris", "loss=exploding",
             "loss.label_smoothing=0.9", "trainer.epochs=2", "tracking=none",
             "optimizer.lr=tag(log, interval(1e-3, 1e-2))", "sweep.n_trials=2",
             "sweep.pruner=none", "sweep.study_name=exploding", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-2000:])
    assert "the exploding loss was told to explode" in r.stdout + r.stderr
    import optuna

    from lossbench.sweep.study import open_storage

    storage = open_storage(f"journal:{tmp_path}/multirun/exploding/journal.log")
    trials = optuna.load_study(study_name="exploding", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    for t in trials:
        assert "the exploding loss was told to explode" in t.user_attrs["error"]
        assert "plugin 'exploding'" in t.user_attrs["error"]


def test_numba_reports_a_kernel_exception_to_the_unraisable_hook():
    """What the fused path relies on (numba's cfunc wrapper: PyErr_WriteUnraisable with a
    string object), so that a numba that changes it fails here, not silently in runs."""
    from lossbench.kernels import kernel_ref

    ref = kernel_ref(loss_that_raises, "loss", "float64", owner="loss 'raising'")
    seen = []
    old = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        call_loss(ref, np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(1), np.zeros((2, 3)))
    finally:
        sys.unraisablehook = old
    (u,) = seen
    assert isinstance(u.object, str) and str(u.exc_value) == "the loss kernel refuses this batch"


@njit
def call_loss(loss, pred, target, hp, grad):
    return loss(pred, target, hp, grad)


HOOKS_FILE = '''
"""Lifecycle hooks that raise when LOSSBENCH_TEST_RAISE names them."""
import os
import lossbench

@lossbench.hookimpl
def on_epoch_end(run, epoch, metrics):
    if os.environ.get("LOSSBENCH_TEST_RAISE") == "on_epoch_end" and epoch == 1:
        raise KeyError("the metric this hook wanted")

@lossbench.hookimpl
def on_run_end(run, status):
    if os.environ.get("LOSSBENCH_TEST_RAISE") == "on_run_end":
        raise RuntimeError("the hook could not upload its report")
'''


@pytest.mark.parametrize(
    "hook,message",
    [("on_epoch_end", "KeyError: 'the metric this hook wanted'"),
     ("on_run_end", "RuntimeError: the hook could not upload its report")],
)  # fmt: skip
def test_a_lifecycle_hook_that_raises_fails_the_run_naming_the_plugin(tmp_path, hook, message):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "reporter.py").write_text(HOOKS_FILE)
    r = _cli("--plugins-dir", "plugins", "data=iris", "trainer.epochs=3", "tracking=none",
             "hydra.run.dir=run", cwd=tmp_path, env={"LOSSBENCH_TEST_RAISE": hook})  # fmt: skip
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    err = r.stderr.strip()
    assert err.startswith("lossbench: error: ") and "\n" not in err, err  # one paragraph
    assert f"the {hook} hook of plugin 'reporter' raised {message}" in err, err
    assert "Fix:" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed", summary


FAR_WRITE_FILE = '''
"""A loss whose kernel writes a terabyte past its gradient buffer: a segmentation fault."""
import dataclasses
from numba import njit
import lossbench
from lossbench.builtin.losses import LOSSES, cross_entropy_kernel

@njit(cache=True)
def far_writing_loss(pred, target, hp, grad):
    value = cross_entropy_kernel(pred, target, hp, grad)
    flat = grad.ravel()
    flat[1 << 40] = 1.0  # no bounds checks in compiled code
    return value

@lossbench.hookimpl
def register_losses(register):
    ce = [s for s in LOSSES if s.name == "cross_entropy"][0]
    register(dataclasses.replace(ce, name="far_write", kernel=far_writing_loss))
'''


def test_a_kernel_that_crashes_the_process_names_the_kernels_that_were_running(tmp_path):
    """A segmentation fault cannot be caught, and compiled code cannot say which kernel made
    it: the process dies (SIGSEGV), but the terminal, RUN_DIR/crash.log and the MLflow run
    name the kernels that were running and what to run to find the culprit."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "farwrite.py").write_text(FAR_WRITE_FILE)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = _cli("--plugins-dir", "plugins", "data=iris", "loss=far_write", "trainer.epochs=2",
             f"tracking.uri={uri}", "hydra.run.dir=run", cwd=tmp_path)  # fmt: skip
    assert r.returncode == -11, (r.returncode, r.stdout, r.stderr)  # SIGSEGV: exit 139
    note = "the loss kernel far_writing_loss of loss 'far_write' from plugin 'farwrite'"
    assert note in r.stderr, r.stderr
    assert "python -m lossbench check farwrite" in r.stderr
    assert str(tmp_path / "run" / "crash.log") in r.stderr
    crash = (tmp_path / "run" / "crash.log").read_text()
    assert note in crash and "Fatal Python error: Segmentation fault" in crash
    from lossbench.tracking.store import open_client

    client = open_client(uri)  # under the store's lock: the side process may still create it
    deadline = time.time() + 120  # the side process outlives the trainer and ends the run
    while time.time() < deadline:
        experiment = client.get_experiment_by_name("lossbench")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and runs[0].info.status != "RUNNING":
            break
        time.sleep(0.2)
    (run,) = runs
    assert run.info.status == "KILLED"  # not RUNNING
    assert note in run.data.tags["lossbench.failure_reason"]


def test_a_run_that_ends_leaves_no_crash_log(tmp_path):
    (tmp_path / "run").mkdir()
    seen = []

    class Looks:
        @lossbench.hookimpl
        def on_epoch_end(self, run, epoch, metrics):
            seen.append((tmp_path / "run" / "crash.log").is_file())

    pm = build_plugin_manager(entry_points=False, extra=[Looks()])
    run = lossbench.train(overrides=[*TINY, "data=iris"], output_dir=tmp_path / "run",
                          plugin_manager=pm)  # fmt: skip
    assert run.status == "finished"
    assert seen == [True, True, True]  # kept while it trained
    assert not (tmp_path / "run" / "crash.log").exists()
