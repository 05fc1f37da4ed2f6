"""The single-file plugins of this directory: the conformance kit, the --plugins-dir route, the
NumPy-only slow path, and the residual MLP (the guide's model example) held to torch's values
(golden_residual_mlp.json, written by make_golden.py)."""

from pathlib import Path

import numpy as np
import pytest

import lossbench
import lossbench.errors
from lossbench.plugins import build_plugin_manager, describe, load_plugin_file
from lossbench.testing import parametrize_with_checks
from lossbench.testing.golden import parametrize_golden

HERE = Path(__file__).resolve().parents[1]


@parametrize_with_checks(
    HERE / "pseudo_huber.py",
    HERE / "poly1.py",
    HERE / "residual_mlp.py",
    options={"pseudo_huber": [{}, {"delta": 0.3}], "poly1": [{}, {"epsilon": -0.5}],
             "residual_mlp": [{}, {"width": 5, "blocks": 3, "residual_scale": 0.5}]},
)  # fmt: skip
def test_lossbench_conformance(check):
    check()


RESIDUAL_MLP = load_plugin_file(HERE / "residual_mlp.py").RESIDUAL_MLP


@parametrize_golden(RESIDUAL_MLP, HERE / "tests" / "golden_residual_mlp.json")
def test_residual_mlp_matches_torch(case):
    case()


@pytest.fixture(scope="module")
def pm():
    return build_plugin_manager(str(HERE), entry_points=False)


TINY = ["trainer.progress=false", "tracking=none", "data=iris", "trainer.epochs=5"]


def test_plugins_dir_route_lists_both_and_marks_the_numpy_only_one(pm):
    rows = {r["name"]: r for r in describe(pm)}
    assert rows["pseudo_huber"]["components"] == {"loss": ["pseudo_huber"]}
    assert rows["pseudo_huber"]["numpy_only"] == {}
    assert rows["poly1"]["numpy_only"] == {"loss": ["poly1"]}
    assert rows["residual_mlp"]["components"] == {"model": ["residual_mlp"]}


def test_residual_mlp_trains_and_refuses_what_it_cannot_build(pm):
    run = lossbench.train(overrides=[*TINY, "model=residual_mlp", "model.blocks=3"],
                          plugin_manager=pm)  # fmt: skip
    assert run.status == "finished" and run.path == "fused"
    assert run.history[-1]["val_loss"] < run.history[0]["val_loss"]
    with pytest.raises(lossbench.errors.ConfigError, match="model.width=0 model.blocks=2 is not"):
        lossbench.train(overrides=[*TINY, "model=residual_mlp", "model.width=0"],
                        plugin_manager=pm)  # fmt: skip


def test_numpy_only_loss_trains_on_the_slow_path(pm):
    run = lossbench.train(overrides=[*TINY, "loss=poly1", "loss.epsilon=2"], plugin_manager=pm)
    assert run.path == "numpy" and run.status == "finished"
    assert run.history[-1]["val_loss"] < run.history[0]["val_loss"]


def test_poly1_with_epsilon_zero_is_cross_entropy(pm):
    ce = pm.registry.get("loss", "cross_entropy")
    poly1 = pm.registry.get("loss", "poly1")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 4)) * 3
    k = rng.integers(0, 4, size=(9, 1)).astype(float)
    value, grad = poly1.reference(x, k, np.array([0.0]))
    ce_grad = np.empty_like(x)
    assert value == pytest.approx(ce.kernel(x, k, np.array([0.0]), ce_grad), rel=1e-13)
    np.testing.assert_allclose(grad, ce_grad, rtol=1e-12, atol=1e-15)


def test_pseudo_huber_is_quadratic_near_zero_and_linear_far_away(pm):
    spec = pm.registry.get("loss", "pseudo_huber")
    small, far = np.array([[1e-3]]), np.array([[1e3]])
    zero, delta = np.zeros((1, 1)), np.array([2.0])
    assert spec.kernel(small, zero, delta, np.empty_like(small)) == pytest.approx(0.5e-6)
    g = np.empty_like(far)
    assert spec.kernel(far, zero, delta, g) == pytest.approx(2.0 * 1e3 - 4.0, rel=1e-5)
    assert g[0, 0] == pytest.approx(2.0, rel=1e-5)  # slope delta
