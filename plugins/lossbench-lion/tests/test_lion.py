"""lossbench-lion: the conformance kit, Lion's update rule (Chen et al. 2023, Algorithm 2), and
30 steps held to Lion written in torch ops (golden_lion.json, from make_golden.py)."""

from pathlib import Path

import lossbench
import numpy as np
import pytest
from lossbench.errors import ConfigError
from lossbench.plugins import build_plugin_manager
from lossbench.testing import parametrize_with_checks
from lossbench.testing.golden import parametrize_golden

import lossbench_lion

CASES = {"lion": [{}, {"weight_decay": 0.1}, {"beta1": 0.5, "beta2": 0.9}]}


@parametrize_with_checks(lossbench_lion, options=CASES)
def test_lossbench_conformance(check):
    check()


@parametrize_golden(lossbench_lion.LION, Path(__file__).with_name("golden_lion.json"))
def test_matches_lion_in_torch(case):
    case()


def step(p, g, m, lr, beta1=0.9, beta2=0.99, wd=0.0, dtype=np.float64):
    p, g = np.array(p, dtype), np.array(g, dtype)
    state = np.array([m], dtype)
    hp = np.array([beta1, beta2, wd])  # float64, as every run passes it
    lossbench_lion.lion_kernel(p, g, state, np.zeros(0), hp, 1, lr)
    return p, state[0]


def test_one_step_by_hand():
    # c = 0.9 m + 0.1 g = [0.9*1 + 0.1*(-3), 0.9*(-1) + 0.1*5, 0.9*0 + 0.1*0] = [0.6, -0.4, 0]
    p, m = step([1.0, 2.0, 3.0], [-3.0, 5.0, 0.0], [1.0, -1.0, 0.0], lr=0.1)
    np.testing.assert_array_equal(p, [1.0 - 0.1, 2.0 + 0.1, 3.0])  # sign(0) = 0: no move
    # m = 0.99 m + 0.01 g
    np.testing.assert_allclose(m, [0.99 - 0.03, -0.99 + 0.05, 0.0], rtol=1e-15)


def test_every_update_has_the_size_of_the_learning_rate():
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=1000)
    p, _ = step(p0, rng.normal(size=1000) * 10.0 ** rng.integers(-6, 6, 1000), np.zeros(1000), 3e-4)
    np.testing.assert_allclose(np.abs(p - p0), 3e-4, rtol=1e-9)


def test_decoupled_weight_decay_shrinks_before_the_step():
    p, _ = step([2.0], [1.0], [0.0], lr=0.1, wd=0.5)
    assert p[0] == pytest.approx(2.0 * (1 - 0.1 * 0.5) - 0.1, rel=1e-15)


def test_float32_stays_float32():
    p, m = step([1.0, -1.0], [0.5, -0.5], [0.0, 0.0], lr=1e-3, dtype=np.float32)
    assert p.dtype == np.float32 and m.dtype == np.float32
    np.testing.assert_array_equal(p, np.array([1.0 - 1e-3, -1.0 + 1e-3], np.float32))


@pytest.fixture(scope="module")
def pm():
    return build_plugin_manager(entry_points=False, extra=[lossbench_lion])


TINY = ["trainer.progress=false", "tracking=none", "data=iris"]


def test_trains_and_hyperparameters_are_options(pm):
    run = lossbench.train(
        overrides=[
            *TINY,
            "optimizer=lion",
            "optimizer.lr=3e-3",
            "optimizer.weight_decay=0.1",
            "trainer.epochs=15",
        ],
        plugin_manager=pm,
    )
    assert run.status == "finished" and run.options["optimizer"].weight_decay == 0.1
    assert run.history[-1]["val_loss"] < 0.5 * run.history[0]["val_loss"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr=0", "optimizer.lr=0.0 is not allowed"),
        ("optimizer.beta2=1", "optimizer.beta2=1.0 is not allowed: it must lie in [0, 1)"),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1.0 is not allowed"),
        ("optimizer.beta1=fast", "optimizer.beta1=fast"),
    ],
)
def test_bad_hyperparameters_are_config_errors(pm, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        lossbench.train(overrides=[*TINY, "optimizer=lion", override], plugin_manager=pm)
