"""Every built-in optimizer: kernel == NumPy reference over many steps, plus basic properties."""

import numpy as np
import pytest

from lossbench.builtin.optimizers import OPTIMIZERS

SPECS = {s.name: s for s in OPTIMIZERS}
CASES = {
    "sgd": [
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "dampening": 0.3},
        {"momentum": 0.9, "nesterov": True},
        {"weight_decay": 0.1, "momentum": 0.5},
    ],
    "adam": [{}, {"weight_decay": 0.05}, {"amsgrad": True}, {"beta1": 0.5, "beta2": 0.9}],
    "adamw": [{}, {"amsgrad": True, "weight_decay": 0.2}],
    "rmsprop": [
        {},
        {"centered": True},
        {"momentum": 0.9},
        {"weight_decay": 0.1, "centered": True, "momentum": 0.5},
    ],
    "adagrad": [{}, {"lr_decay": 0.1}, {"initial_accumulator_value": 0.5, "weight_decay": 0.1}],
}


def cases():
    return [pytest.param(n, hp, id=f"{n}-{hp}") for n, hps in CASES.items() for hp in hps]


NO_SCALARS = np.zeros(0)  # no built-in optimizer keeps scalar state


def setup(spec, hp, n, dtype, rng):
    options = spec.options(**hp)
    state = np.zeros((spec.state_rows, n), dtype=dtype)
    if spec.init_state:
        spec.init_state(state, options)
    return options, np.asarray(spec.pack(options), dtype=np.float64), state


def test_every_builtin_optimizer_is_covered():
    assert set(CASES) == set(SPECS)


@pytest.mark.parametrize("name,hp", cases())
def test_kernel_matches_reference_over_steps(name, hp, rng):
    spec = SPECS[name]
    n = 37
    options, packed, state_k = setup(spec, hp, n, np.float64, rng)
    state_r = state_k.copy()
    p_k = rng.normal(size=n)
    p_r = p_k.copy()
    for t in range(1, 26):
        g = rng.normal(size=n)
        lr = options.lr * (0.9 ** (t // 5))  # a changing lr, as schedules make it
        spec.kernel(p_k, g, state_k, NO_SCALARS, packed, t, lr)
        spec.reference(p_r, g.copy(), state_r, NO_SCALARS, packed, t, lr)
        np.testing.assert_allclose(p_k, p_r, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(state_k, state_r, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,hp", cases())
def test_grads_are_not_modified(name, hp, rng):
    spec = SPECS[name]
    options, packed, state = setup(spec, hp, 9, np.float64, rng)
    p, g = rng.normal(size=9), rng.normal(size=9)
    g0 = g.copy()
    spec.kernel(p, g, state, NO_SCALARS, packed, 1, options.lr)
    np.testing.assert_array_equal(g, g0)


@pytest.mark.parametrize("name", list(SPECS))
def test_decreases_a_convex_quadratic(name, rng):
    spec = SPECS[name]
    options, packed, state = setup(spec, {}, 5, np.float64, rng)
    a = np.array([1.0, 2.0, 0.5, 3.0, 1.5])
    p = np.full(5, 2.0)
    f0 = 0.5 * np.sum(a * p * p)
    lr = 0.05
    for t in range(1, 200):
        spec.kernel(p, a * p, state, NO_SCALARS, packed, t, lr)
    assert 0.5 * np.sum(a * p * p) < 0.25 * f0


@pytest.mark.parametrize("name", list(SPECS))
def test_zero_lr_changes_nothing(name, rng):
    spec = SPECS[name]
    options, packed, state = setup(spec, {}, 6, np.float64, rng)
    p = rng.normal(size=6)
    p0 = p.copy()
    spec.kernel(p, rng.normal(size=6), state, NO_SCALARS, packed, 1, 0.0)
    np.testing.assert_array_equal(p, p0)


@pytest.mark.parametrize("name", list(SPECS))
def test_float32_kernel_tracks_float64(name, rng):
    spec = SPECS[name]
    _, packed, state64 = setup(spec, {}, 11, np.float64, rng)
    _, packed32, state32 = setup(spec, {}, 11, np.float32, rng)
    p64 = rng.normal(size=11)
    p32 = p64.astype(np.float32)
    for t in range(1, 6):
        g = rng.normal(size=11)
        spec.kernel(p64, g, state64, NO_SCALARS, packed, t, 0.01)
        spec.kernel(p32, g.astype(np.float32), state32, NO_SCALARS, packed32, t, 0.01)
    np.testing.assert_allclose(p32, p64, rtol=1e-5, atol=1e-6)


def test_adam_first_step_moves_every_weight_by_lr():
    # with bias correction, Adam's first step is lr * g / (|g| + eps') ~ lr * sign(g)
    spec = SPECS["adam"]
    _, packed, state = setup(spec, {}, 4, np.float64, None)
    p = np.zeros(4)
    spec.kernel(p, np.array([3.0, -0.2, 1e-3, -50.0]), state, NO_SCALARS, packed, 1, 0.1)
    np.testing.assert_allclose(p, [-0.1, 0.1, -0.1, 0.1], rtol=1e-4)
