"""lossbench-focal: the conformance kit, the reductions to cross-entropy and BCE, the
focal-loss formula of Lin et al. 2017 / torchvision.ops.sigmoid_focal_loss, and values and
gradients held to torch's (golden_*.json, from make_golden.py)."""

import math
from pathlib import Path

import lossbench
import numpy as np
import pytest
from lossbench.builtin.losses import bce_kernel, cross_entropy_kernel
from lossbench.errors import ConfigError
from lossbench.plugins import build_plugin_manager
from lossbench.testing import parametrize_with_checks
from lossbench.testing.golden import parametrize_golden

import lossbench_focal

FOCAL = {s.name: s for s in lossbench_focal.LOSSES}
CASES = {
    "focal": [{}, {"gamma": 0.0}, {"gamma": 0.5, "alpha": 0.25}],
    "binary_focal": [{}, {"gamma": 0.0, "alpha": None}, {"gamma": 0.5, "alpha": 0.75}],
}


@parametrize_with_checks(lossbench_focal, options=CASES)
def test_lossbench_conformance(check):
    check()


HERE = Path(__file__).resolve().parent


@parametrize_golden(FOCAL["focal"], HERE / "golden_focal.json")
def test_focal_matches_torch(case):
    case()


@parametrize_golden(FOCAL["binary_focal"], HERE / "golden_binary_focal.json")
def test_binary_focal_matches_torch(case):
    case()


def logits(rng, rows, cols, dtype):
    return np.ascontiguousarray(rng.normal(size=(rows, cols)) * 3, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gamma_zero_is_cross_entropy_bit_for_bit(dtype):
    rng = np.random.default_rng(0)
    pred = logits(rng, 32, 5, dtype)
    target = rng.integers(0, 5, size=(32, 1)).astype(dtype)
    g_focal, g_ce = np.empty_like(pred), np.empty_like(pred)
    v_focal = lossbench_focal.focal_kernel(pred, target, np.array([0.0, 1.0], dtype), g_focal)
    v_ce = cross_entropy_kernel(pred, target, np.array([0.0], dtype), g_ce)
    assert v_focal == v_ce
    np.testing.assert_array_equal(g_focal, g_ce)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gamma_zero_alpha_off_is_bce_bit_for_bit(dtype):
    rng = np.random.default_rng(1)
    pred = logits(rng, 32, 1, dtype)
    target = rng.integers(0, 2, size=(32, 1)).astype(dtype)
    g_focal, g_bce = np.empty_like(pred), np.empty_like(pred)
    hp = np.array(FOCAL["binary_focal"].pack(lossbench_focal.BinaryFocalOptions(0.0, None)), dtype)
    v_focal = lossbench_focal.binary_focal_kernel(pred, target, hp, g_focal)
    v_bce = bce_kernel(pred, target, np.zeros(0, dtype), g_bce)
    assert v_focal == v_bce
    np.testing.assert_array_equal(g_focal, g_bce)


def torchvision_sigmoid_focal_loss(x, y, alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss(reduction="mean") transcribed to NumPy."""
    p = 1 / (1 + np.exp(-x))
    ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss.mean()


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.9, 0.5), (0.5, 3.0)])
def test_binary_focal_matches_torchvision(alpha, gamma):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 1)) * 2
    y = rng.integers(0, 2, size=(40, 1)).astype(float)
    value = lossbench_focal.binary_focal_kernel(x, y, np.array([gamma, alpha]), np.empty_like(x))
    assert value == pytest.approx(torchvision_sigmoid_focal_loss(x, y, alpha, gamma), rel=1e-12)


def test_known_values():
    # x = 0, y = 1: p_t = 1/2, so FL = alpha (1/2)^2 log 2 with torchvision's defaults
    one = np.array([[0.0]])
    v = lossbench_focal.binary_focal_kernel(one, np.array([[1.0]]), np.array([2.0, 0.25]), one * 0)
    assert v == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-15)
    # multi-class, an easy example (p_k = 0.9) weighs (1 - 0.9)^2 = 1/100 of its cross-entropy
    x = np.log(np.array([[0.9, 0.05, 0.05]]))
    k = np.array([[0.0]])
    v = lossbench_focal.focal_kernel(x, k, np.array([2.0, 1.0]), np.empty_like(x))
    assert v == pytest.approx(0.01 * -math.log(0.9), rel=1e-12)


def test_stable_for_huge_logits():
    x = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    grad = np.empty_like(x)
    v = lossbench_focal.focal_kernel(x, np.array([[0.0], [2.0]]), np.array([0.5, 1.0]), grad)
    # row 0 is certain and right: no loss, no gradient; row 1: (2/3)^0.5 log 3
    assert v == pytest.approx(math.sqrt(2 / 3) * math.log(3) / 2, rel=1e-12)
    assert np.all(np.isfinite(grad)) and np.all(grad[0] == 0)
    x = np.array([[800.0], [-800.0]])
    grad = np.empty_like(x)
    v = lossbench_focal.binary_focal_kernel(x, np.array([[0.0], [1.0]]), np.array([2.0, -1]), grad)
    assert v == pytest.approx(800.0) and np.all(np.isfinite(grad))


@pytest.fixture(scope="module")
def pm():
    return build_plugin_manager(entry_points=False, extra=[lossbench_focal])


TINY = ["trainer.progress=false", "tracking=none", "trainer.epochs=3"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["loss=focal", "loss.gamma=-1"], "loss.gamma=-1.0 is not allowed"),
        (["loss=focal", "loss.alpha=0"], "loss.alpha=0.0 is not allowed"),
        (["loss=binary_focal", "data=moons", "loss.alpha=2"], "loss.alpha=2.0 is not allowed"),
        (["loss=focal", "loss.gamma=strong"], "loss.gamma=strong"),
    ],
)
def test_bad_hyperparameters_are_config_errors(pm, overrides, message):
    with pytest.raises(ConfigError, match=message):
        lossbench.train(overrides=[*TINY, *overrides], plugin_manager=pm)


def test_trains_with_hydra_options(pm):
    run = lossbench.train(
        overrides=[*TINY, "data=iris", "loss=focal", "loss.gamma=2", "trainer.epochs=10"],
        plugin_manager=pm,
    )
    assert run.status == "finished" and run.options["loss"].gamma == 2.0
    assert run.path == "fused" and run.history[-1]["val_loss"] < run.history[0]["val_loss"]
    run = lossbench.train(
        overrides=[*TINY, "data=moons", "loss=binary_focal", "loss.alpha=null"], plugin_manager=pm
    )
    assert run.status == "finished" and run.options["loss"].alpha is None
