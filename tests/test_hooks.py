"""One test per hook (test_hook_<name>), and meta-tests: every hook is tested and documented."""

import ctypes
import dataclasses
import enum
import inspect
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from trackers_helpers import Recording, recording_plugin

import lossbench
import lossbench.training.fit as fit_module
from conftest import TINY
from lossbench import hookspecs
from lossbench.builtin.models import MODELS
from lossbench.data import DataOptions, Dataset
from lossbench.errors import ConfigError, DataError, PluginError, PluginFailure
from lossbench.plugins import build_plugin_manager
from lossbench.sweep.coordinator import make_launcher, make_plan

HOOKS = sorted(n for n, f in vars(hookspecs).items() if hasattr(f, "lossbench_spec"))
DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


class Recorder:
    """A lifecycle plugin that records calls and can stop, fail or interrupt on request."""

    def __init__(self, action=None, at_epoch=1):
        self.calls = []
        self.action, self.at_epoch = action, at_epoch

    @lossbench.hookimpl
    def on_run_start(self, run):
        self.calls.append(("start", len(run.history), run.dataset is not None))
        if self.action == "fail_start":
            raise RuntimeError("cannot start")

    @lossbench.hookimpl
    def on_epoch_end(self, run, epoch, metrics):
        self.calls.append(("epoch", epoch, dict(metrics)))
        if epoch == self.at_epoch:
            if self.action == "stop":
                return "enough"
            if self.action == "fail":
                raise ValueError("plugin bug")
            if self.action == "interrupt":
                raise KeyboardInterrupt
        return None

    @lossbench.hookimpl
    def on_run_end(self, run, status):
        self.calls.append(("end", status, run.status))


def train_with(recorder, *overrides):
    pm = build_plugin_manager(entry_points=False, extra=[recorder])
    return lossbench.train(overrides=[*TINY, "data=iris", *overrides], plugin_manager=pm)


def ends(recorder):
    return [c for c in recorder.calls if c[0] == "end"]


def test_hook_on_run_start():
    rec = Recorder()
    train_with(rec)
    assert rec.calls[0] == ("start", 0, True)
    rec = Recorder("fail_start")
    with pytest.raises(RuntimeError, match="cannot start"):
        train_with(rec)
    assert ends(rec) == [("end", "failed", "failed")]


def test_hook_on_epoch_end():
    rec = Recorder()
    run = train_with(rec)
    epochs = [c for c in rec.calls if c[0] == "epoch"]
    assert [c[1] for c in epochs] == [0, 1, 2]
    assert set(epochs[0][2]) == {
        "epoch",
        "train_loss",
        "val_loss",
        "train_accuracy",
        "val_accuracy",
        "val_macro_f1",
        "lr",
        "epoch_seconds",
    }
    assert epochs[-1][2] == run.history[-1]
    rec = Recorder("stop", at_epoch=1)
    run = train_with(rec, "trainer.epochs=10")
    assert run.status == "stopped" and run.stop_reason == "enough" and len(run.history) == 2


@pytest.mark.parametrize(
    "action,overrides,status,raises",
    [
        pytest.param(None, [], "finished", None, id="finished"),
        pytest.param("stop", [], "stopped", None, id="stopped"),
        pytest.param(
            None,
            [
                "data=regression",
                "loss=mse",
                "optimizer=sgd",
                "optimizer.lr=1e8",
                "trainer.epochs=20",
            ],
            "diverged",
            None,
            id="diverged",
        ),
        # a failing plugin and a Ctrl-C end the run and then reach the caller (the plugin's
        # exception as the cause of a PluginFailure naming it)
        pytest.param("fail", [], "failed", PluginFailure, id="failed"),
        pytest.param("interrupt", [], "interrupted", KeyboardInterrupt, id="interrupted"),
    ],
)
def test_hook_on_run_end(action, overrides, status, raises):
    rec = Recorder(action)
    if raises is None:
        run = train_with(rec, *overrides)
        assert run.status == status
    else:
        with pytest.raises(raises) as info:
            train_with(rec, *overrides)
        if raises is PluginFailure:
            assert str(info.value.__cause__) == "plugin bug", "not the plugin's own exception"
            assert "the on_epoch_end hook of plugin 'Recorder' raised ValueError" in str(
                info.value
            )
    assert ends(rec) == [("end", status, status)]  # exactly once, with the run's status


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_on_run_end_sees_a_ctrl_c_that_came_inside_a_compiler_callback(monkeypatch, sig):
    """numba's compiler calls back into Python through ctypes (llvmlite's object cache), and
    ctypes prints and drops an exception raised inside a callback: a Ctrl-C whose handler ran
    there was lost and the run went on to finish (seen as a flaky failure of
    test_interrupts.py's cold-compile test on a loaded machine). Here the signal arrives inside
    such a callback while the run binds its kernels."""
    fused_runner = fit_module.fused_runner

    @ctypes.CFUNCTYPE(None)
    def callback():
        signal.raise_signal(sig)  # its Python handler runs here, inside the callback
        sum(range(100))

    def runner_after_a_callback(run, setup):
        callback()
        return fused_runner(run, setup)

    monkeypatch.setattr(fit_module, "fused_runner", runner_after_a_callback)
    rec = Recorder()
    with pytest.raises(KeyboardInterrupt):
        train_with(rec)
    assert ends(rec) == [("end", "interrupted", "interrupted")]
    assert [c for c in rec.calls if c[0] == "epoch"] == [], "the run went on training"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_on_run_end_sees_a_ctrl_c_that_numba_turned_into_a_type_error(monkeypatch, sig):
    """Every call of the fused epoch unboxes its kernel arguments, unpickling their signature
    through numba.core.serialize without checking for failure: a Ctrl-C whose handler ran there
    came out as "TypeError: _get_wrapper_address() missing 1 required positional argument:
    'sig'" and the run ended as failed (seen as a flaky failure of test_tracking.py's SIGTERM
    test). Here the signal arrives in that unpickling, in the second epoch."""
    import numba.core.serialize

    class Memo(dict):  # numba's memo of unpickled objects, looked up on every unboxing
        armed = fired = False

        def __getitem__(self, key):
            if Memo.armed and not Memo.fired:
                Memo.fired = True
                signal.raise_signal(sig)  # its Python handler runs here
            return super().__getitem__(key)

    class ArmAfterTheFirstEpoch(Recorder):
        @lossbench.hookimpl
        def on_epoch_end(self, run, epoch, metrics):
            Memo.armed = True
            return super().on_epoch_end(run, epoch, metrics)

    monkeypatch.setattr(
        numba.core.serialize, "_unpickled_memo", Memo(numba.core.serialize._unpickled_memo)
    )
    rec = ArmAfterTheFirstEpoch()
    with pytest.raises(KeyboardInterrupt):
        train_with(rec)
    assert Memo.fired, "numba no longer unpickles there: this test needs a new way in"
    assert ends(rec) == [("end", "interrupted", "interrupted")]
    assert [c[1] for c in rec.calls if c[0] == "epoch"] == [0]


def test_on_run_end_failure_in_one_plugin_does_not_skip_others():
    class Broken:
        @lossbench.hookimpl
        def on_run_end(self, run, status):
            raise RuntimeError("oops")

    rec = Recorder()
    pm = build_plugin_manager(entry_points=False, extra=[rec, Broken()])
    with pytest.raises(PluginFailure, match="on_run_end hook of plugin 'Broken' raised .*oops"):
        lossbench.train(overrides=[*TINY, "data=iris"], plugin_manager=pm)
    # Broken's on_run_end ran first (registered last): the others still ran, and saw the failure
    assert ends(rec) == [("end", "failed", "failed")]


class FailingLoad:
    """A dataset whose load raises what it is given: the run ends in set-up, before
    on_run_start."""

    def __init__(self, error):
        self.error = error

    @lossbench.hookimpl
    def register_datasets(self, register):
        def load(hp, seed):
            raise self.error

        register(lossbench.DatasetSpec(name="failing", options=DataOptions, load=load))


@pytest.mark.parametrize(
    "error,status",
    [(KeyboardInterrupt(), "interrupted"), (RuntimeError("disk"), "failed"),
     (DataError("bad file"), "rejected")],
    ids=["interrupt", "bug", "bad_input"],
)  # fmt: skip
def test_on_run_end_runs_when_the_run_ends_during_setup(error, status):
    rec = Recorder()
    pm = build_plugin_manager(entry_points=False, extra=[rec, FailingLoad(error)])
    with pytest.raises(type(error)):
        lossbench.train(overrides=[*TINY, "data=failing"], plugin_manager=pm)
    assert [c for c in rec.calls if c[0] == "start"] == []  # set-up never finished
    assert ends(rec) == [("end", status, status)]


def test_interrupt_during_setup_is_summarised_with_its_phase(tmp_path):
    pm = build_plugin_manager(entry_points=False, extra=[FailingLoad(KeyboardInterrupt())])
    with pytest.raises(KeyboardInterrupt):
        lossbench.train(overrides=[*TINY, "data=failing"], plugin_manager=pm, output_dir=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["phase"] == "setup"
    assert summary["epochs"] == 0 and "set-up" in summary["error"]


def test_bad_input_during_setup_leaves_no_files(tmp_path):
    pm = build_plugin_manager(entry_points=False, extra=[FailingLoad(DataError("bad file"))])
    with pytest.raises(DataError):
        lossbench.train(overrides=[*TINY, "data=failing"], plugin_manager=pm, output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@dataclasses.dataclass
class ToyOptions(DataOptions):
    n: int = 90


class Components:
    """Registers one component of each kind through the register_* hooks."""

    @lossbench.hookimpl
    def register_losses(self, register):
        from lossbench.builtin.losses import LOSSES

        register(dataclasses.replace(LOSSES[0], name="mse_again"))

    @lossbench.hookimpl
    def register_optimizers(self, register):
        from lossbench.builtin.optimizers import OPTIMIZERS

        register(dataclasses.replace(OPTIMIZERS[0], name="sgd_again"))

    @lossbench.hookimpl
    def register_models(self, register):
        register(dataclasses.replace(MODELS[1], name="linear_again"))

    @lossbench.hookimpl
    def register_datasets(self, register):
        def load(options, seed):
            rng = np.random.default_rng(seed)
            X = rng.normal(size=(options.n, 2))
            return Dataset(X=X, y=(X[:, 0] > 0).astype(np.int64), task="classification")

        register(lossbench.DatasetSpec(name="toy", options=ToyOptions, load=load))

    @lossbench.hookimpl
    def register_schedules(self, register):
        register(lossbench.ScheduleSpec(name="halving", options=HalvingOptions,
                                        rate=lambda e, n, lr, o: lr * o.factor**e))  # fmt: skip


@dataclasses.dataclass
class HalvingOptions:
    factor: float = 0.5


@pytest.fixture(scope="module")
def components_pm():
    return build_plugin_manager(entry_points=False, extra=[Components()])


def _train_components(pm):
    return lossbench.train(
        overrides=[
            *TINY,
            "data=toy",
            "data.n=60",
            "loss=mse_again",
            "optimizer=sgd_again",
            "model=linear_again",
            "schedule=halving",
            "optimizer.lr=0.2",
        ],
        plugin_manager=pm,
    )


def test_hook_register_losses(components_pm):
    assert components_pm.registry.get("loss", "mse_again").plugin.startswith("Components")
    assert _train_components(components_pm).specs["loss"].name == "mse_again"


def test_hook_register_optimizers(components_pm):
    assert _train_components(components_pm).specs["optimizer"].name == "sgd_again"


def test_hook_register_models(components_pm):
    run = _train_components(components_pm)
    assert run.specs["model"].name == "linear_again" and set(run.params) == {"W0", "b0"}


def test_hook_register_datasets(components_pm):
    run = _train_components(components_pm)
    assert len(run.dataset.X_train) + len(run.dataset.X_val) == 60


def test_hook_register_schedules(components_pm):
    run = _train_components(components_pm)
    assert run.specs["schedule"].name == "halving"
    assert [h["lr"] for h in run.history] == [0.2 * 0.5**e for e in range(len(run.history))]


@dataclasses.dataclass
class SlowEpochOptions:
    seconds: float = 1.0
    enabled: bool = True


class SlowEpochs:
    """A lifecycle plugin with options of its own: it records what it read."""

    def __init__(self):
        self.read = []

    @lossbench.hookimpl
    def register_options(self, register):
        register("slow_epochs", SlowEpochOptions)

    @lossbench.hookimpl
    def on_epoch_end(self, run, epoch, metrics):
        opts = run.config.plugins.slow_epochs
        self.read.append((opts.seconds, opts.enabled))


def test_hook_register_options():
    plugin = SlowEpochs()
    pm = build_plugin_manager(entry_points=False, extra=[plugin])
    run = lossbench.train(overrides=[*TINY, "plugins.slow_epochs.seconds=0.25"], plugin_manager=pm)
    assert plugin.read and set(plugin.read) == {(0.25, True)}
    assert OmegaConf.to_container(run.config.plugins) == {
        "slow_epochs": {"seconds": 0.25, "enabled": True}
    }


@pytest.mark.parametrize(
    "override,message",
    [
        ("plugins.slow_epochs.seconds=abc", "plugins.slow_epochs.seconds must be a number"),
        ("plugins.slow_epochs.second=1", "Did you mean plugins.slow_epochs.seconds?"),
    ],
)
def test_a_plugins_options_are_typed_like_any_option(override, message):
    pm = build_plugin_manager(entry_points=False, extra=[SlowEpochs()])
    with pytest.raises(ConfigError, match=re.escape(message)):
        lossbench.train(overrides=[*TINY, override], plugin_manager=pm)


def test_a_plugins_options_show_in_cfg_and_help(tmp_path):
    plugin = tmp_path / "slow_epochs.py"
    plugin.write_text(
        "from dataclasses import dataclass\nimport lossbench\n\n\n@dataclass\n"
        "class SlowEpochOptions:\n    seconds: float = 1.0\n\n\n@lossbench.hookimpl\n"
        "def register_options(register):\n    register('slow_epochs', SlowEpochOptions)\n"
    )
    for flag in ("--cfg=job", "--help"):
        done = subprocess.run(
            [sys.executable, "-m", "lossbench", "--plugins-dir", str(tmp_path), flag],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "plugins:\n  slow_epochs:\n    seconds: 1.0" in done.stdout, flag


def test_options_registered_twice_under_one_name_are_refused():
    class Again(SlowEpochs):
        pass

    with pytest.raises(PluginError, match="registered options under that name already"):
        build_plugin_manager(entry_points=False, extra=[SlowEpochs(), Again()])


class Queue(enum.Enum):
    short = "short"
    long = "long"


@dataclasses.dataclass
class QueueOptions:
    queue: Queue = Queue.short
    slots: int = 1


class QueueLauncher(lossbench.Launcher):
    """A launcher as a plugin registers it (tests/test_launchers.py runs a sweep through one
    installed from a package)."""

    def start(self):
        self.started = True

    def running(self):
        return False

    def interrupt(self):
        pass

    def codes(self):
        return [0] * self.options.slots


class Queues:
    @lossbench.hookimpl
    def register_launchers(self, register):
        register(lossbench.LauncherSpec(name="queue", launcher=QueueLauncher,
                                        options=QueueOptions))  # fmt: skip


def test_hook_register_launchers():
    pm = build_plugin_manager(entry_points=False, extra=[Queues()])
    assert pm.registry.launcher("queue").plugin.startswith("Queues")
    assert set(pm.registry.launchers) == {"local", "ray", "queue"}  # beside the built-ins
    plan, base, _ = make_plan(["optimizer.lr=0.1,0.01", *TINY, "data=iris",
                               "sweep.launcher=queue", "sweep.queue.slots=3",
                               "sweep.queue.queue=long"], pm.registry)  # fmt: skip
    assert (plan.launcher, plan.launcher_options) == ("queue", {"queue": "long", "slots": 3})
    json.dumps(plan.to_dict())  # plan.json holds them
    launcher = make_launcher(plan, base, pm.registry)
    assert isinstance(launcher, QueueLauncher) and launcher.options == QueueOptions(Queue.long, 3)
    assert launcher.codes() == [0, 0, 0] and not launcher.shares_sweep_dir
    with pytest.raises(ConfigError, match=re.escape("sweep.queue.slots must be an integer")):
        make_plan(["optimizer.lr=0.1,0.01", *TINY, "sweep.launcher=queue",
                   "sweep.queue.slots=many"], pm.registry)  # fmt: skip


def test_hook_register_trackers():
    pm = build_plugin_manager(entry_points=False, extra=[recording_plugin(Recording)])
    run = lossbench.train(overrides=[*TINY[:2], "data=iris", "tracking=[recording]",
                                     "tracking.recording.label=x"], plugin_manager=pm)  # fmt: skip
    (tracker,) = Recording.made
    assert [c[0] for c in tracker.calls] == ["start", "epoch", "epoch", "epoch", "artifacts",
                                             "model", "end"]  # fmt: skip
    assert tracker.config.label == "x" and tracker.calls[-1] == ("end", "finished")
    assert [c[2] for c in tracker.calls if c[0] == "epoch"] == [
        h["train_loss"] for h in run.history
    ]


def test_every_hook_is_called_through_pluggy_so_its_tracing_sees_it(components_pm):
    """Hooks called one implementation at a time (the registration hooks, to know who
    registered what; on_run_end, so one failing does not skip the others) still go through
    pluggy: hook-call monitoring sees every implementation of every hook."""
    seen = []
    undo = components_pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: seen.extend((name, i.plugin_name) for i in impls),
        lambda outcome, name, impls, kwargs: None,
    )
    try:
        components_pm.collect()
        _train_components(components_pm)
    finally:
        undo()
    for name in HOOKS:
        for impl in getattr(components_pm.hook, name).get_hookimpls():
            assert (name, impl.plugin_name) in seen, f"{name} of {impl.plugin_name} bypassed pluggy"


def test_every_hook_has_a_test():
    names = {n for n, f in globals().items() if inspect.isfunction(f)}
    missing = [h for h in HOOKS if f"test_hook_{h}" not in names]
    assert not missing, f"hooks without a test_hook_<name> test: {missing}"


def test_every_hook_is_documented_with_its_exact_signature():
    text = DOCS.read_text()
    for name in HOOKS:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert re.search(rf"^#+ `{name}\({re.escape(params)}\)`", text, re.M), (
            f"docs/plugins.md has no heading `{name}({params})`"
        )
