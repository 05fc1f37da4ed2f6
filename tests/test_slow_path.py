"""Components that give only a NumPy reference train on the slow path, with the fused meaning."""

import dataclasses

import numpy as np
import pytest

import lossbench
import lossbench.training.run
from conftest import TINY
from lossbench.builtin.losses import LOSSES
from lossbench.builtin.models import MODELS
from lossbench.builtin.optimizers import OPTIMIZERS
from lossbench.plugins import build_plugin_manager, describe

LOSS = {s.name: s for s in LOSSES}
OPT = {s.name: s for s in OPTIMIZERS}


class NumpyOnly:
    """Built-ins without their kernels: cross_entropy_np, bce_np, adam_np, sgd_np, mlp_np."""

    @lossbench.hookimpl
    def register_losses(self, register):
        for name in ("cross_entropy", "bce"):
            register(dataclasses.replace(LOSS[name], name=f"{name}_np", kernel=None))

    @lossbench.hookimpl
    def register_optimizers(self, register):
        for name in ("adam", "sgd"):
            register(dataclasses.replace(OPT[name], name=f"{name}_np", kernel=None))

    @lossbench.hookimpl
    def register_models(self, register):
        register(dataclasses.replace(MODELS[0], name="mlp_np", forward=None, backward=None))


@pytest.fixture(scope="module")
def pm():
    return build_plugin_manager(entry_points=False, extra=[NumpyOnly()])


def history(run):
    return np.array([[h[k] for k in sorted(h) if k != "epoch_seconds"] for h in run.history])


CASES = {  # id -> (overrides on the fused path, the same run with NumPy-only components)
    "loss": (["data=iris"], ["data=iris", "loss=cross_entropy_np"]),
    "binary-loss": (["data=moons", "loss=bce"], ["data=moons", "loss=bce_np"]),
    "optimizer": (
        ["data=iris", "optimizer=sgd", "optimizer.momentum=0.9"],
        ["data=iris", "optimizer=sgd_np", "optimizer.momentum=0.9"],
    ),
    "model": (["data=iris"], ["data=iris", "model=mlp_np", "model.hidden=[64]"]),
    "all": (
        ["data=iris"],
        ["data=iris", "loss=cross_entropy_np", "optimizer=adam_np", "model=mlp_np"],
    ),
    # dropout draws the same masks, and biases leave weight decay the same way, on both paths
    "dropout-groups": (
        ["data=iris", "model.dropout=0.3", "model.decay_biases=false", "optimizer=sgd",
         "optimizer.weight_decay=0.1", "optimizer.momentum=0.9"],
        ["data=iris", "model=mlp_np", "model.hidden=[64]", "model.dropout=0.3",
         "model.decay_biases=false", "optimizer=sgd_np", "optimizer.weight_decay=0.1",
         "optimizer.momentum=0.9"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("fused,slow", list(CASES.values()), ids=list(CASES))
def test_numpy_only_components_train_like_the_fused_path(pm, fused, slow):
    base = [*TINY, "trainer.dtype=float64", "trainer.epochs=4"]
    a = lossbench.train(overrides=[*base, *fused], plugin_manager=pm)
    b = lossbench.train(overrides=[*base, *slow], plugin_manager=pm)
    assert (a.path, b.path) == ("fused", "numpy")
    assert b.status == "finished"
    # same losses, accuracies and lr, epoch by epoch (float64: only summation order differs)
    np.testing.assert_allclose(history(b), history(a), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.flat_params, a.flat_params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        b.predict(b.dataset.X_val), a.predict(a.dataset.X_val), rtol=1e-9, atol=1e-12
    )


def test_slow_path_trains_in_float32(pm):
    run = lossbench.train(
        overrides=[*TINY, "data=iris", "loss=cross_entropy_np", "optimizer=adam_np"],
        plugin_manager=pm,
    )
    assert run.path == "numpy" and run.status == "finished"
    assert run.history[-1]["val_loss"] < run.history[0]["val_loss"]
    assert run.flat_params.dtype == np.float32


def test_listing_marks_numpy_only_components(pm):
    row = next(r for r in describe(pm) if r["name"].startswith("NumpyOnly"))
    assert row["numpy_only"] == {
        "loss": ["bce_np", "cross_entropy_np"],
        "optimizer": ["adam_np", "sgd_np"],
        "model": ["mlp_np"],
    }
    builtin = next(r for r in describe(pm) if r["name"] == "lossbench.builtin.losses")
    assert builtin["numpy_only"] == {}


FRESH_OPTIMIZER = '''
from dataclasses import dataclass
from numba import njit
import lossbench
import lossbench.training.run

@dataclass
class Options:
    lr: float = 0.05

@njit  # no disk cache: compiled in this process on first use
def fresh_sgd_kernel(p, g, state, scalars, hp, t, lr):
    for i in range(p.shape[0]):
        p[i] -= lr * g[i]

def reference(p, g, state, scalars, hp, t, lr):
    p -= lr * g

@lossbench.hookimpl
def register_optimizers(register):
    register(lossbench.OptimizerSpec(name="fresh_sgd", options=Options,
                                     kernel=fresh_sgd_kernel, reference=reference))
'''


class CompilePhases:
    """Records the run's phase at every function numba compiles during the run."""

    def __init__(self):
        self.run, self.phases = None, []

    @lossbench.hookimpl
    def on_run_start(self, run):
        self.run = run

    def __enter__(self):
        from numba.core import event  # the compile events, as lossbench.kernels records them

        probe = self

        class Listener(event.Listener):
            def on_start(self, e):
                phase = probe.run.phase if probe.run else "setup"
                probe.phases.append((phase, e.data["dispatcher"].py_func.__name__))

            def on_end(self, e):
                pass

        self._listener = Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        from numba.core import event  # as above

        event.unregister("numba:compile", self._listener)


def test_the_slow_path_compiles_its_kernels_before_the_first_epoch(tmp_path):
    # a NumPy-only loss with a kernel optimizer the slow path calls from Python: the kernel
    # compiles in the compile phase (compile_seconds), not inside epoch 0 (train_seconds)
    (tmp_path / "fresh.py").write_text(FRESH_OPTIMIZER)
    probe = CompilePhases()
    pm = build_plugin_manager(str(tmp_path), entry_points=False, extra=[NumpyOnly(), probe])
    with probe:
        run = lossbench.train(
            overrides=[*TINY, "data=iris", "loss=cross_entropy_np", "optimizer=fresh_sgd"],
            plugin_manager=pm,
        )
    assert run.path == "numpy" and run.status == "finished"
    assert ("compile", "fresh_sgd_kernel") in probe.phases, probe.phases
    assert [p for p in probe.phases if p[0] == "train"] == [], probe.phases
    summary = lossbench.training.run.summary(run)
    assert summary["path"] == "numpy"
    assert "fresh_sgd_kernel" in summary["compile"]["compiled"]


def test_summary_says_the_path_and_what_was_compiled_or_loaded(pm):
    overrides = [*TINY, "data=iris", "trainer.epochs=1"]
    lossbench.train(overrides=overrides, plugin_manager=pm)
    again = lossbench.training.run.summary(lossbench.train(overrides=overrides, plugin_manager=pm))
    assert again["path"] == "fused"
    # the second run in a process finds everything loaded: nothing compiled, nothing read
    assert again["compile"]["compiled"] == [] and again["compile"]["loaded_from_cache"] == []
    assert {"train_epoch", "evaluate", "adam_kernel", "mlp_forward"} <= set(
        again["compile"]["in_memory"]
    )


def test_predict_calls_the_kernels_with_the_canonical_signature(pm):
    # hp in float64, as the epoch passes it: predicting adds no compiled (or cache-loaded)
    # version of the model's kernel beyond the one training used
    from lossbench.kernels import overload_count

    run = lossbench.train(overrides=[*TINY, "data=iris", "trainer.epochs=1"], plugin_manager=pm)
    forward = run.specs["model"].forward
    versions = overload_count(forward)
    run.predict(run.dataset.X_val)
    assert overload_count(forward) == versions
