"""Components that give only a NumPy reference train on the slow path, with the fused meaning."""

import dataclasses

import numpy as np
import pytest

import lossbench
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
}


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
