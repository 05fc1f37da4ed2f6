"""Model kernels: forward/backward == NumPy reference == finite differences; PyTorch init."""

import numpy as np
import pytest

from conftest import central_difference
from lossbench.builtin.models import (
    ACTIVATIONS,
    build_mlp_layout,
    mlp_backward,
    mlp_forward,
    mlp_reference_backward,
    mlp_reference_forward,
)
from lossbench.errors import ConfigError

ACTS = [a for a in ACTIVATIONS if a != "identity"]
NETS = [[3, 2], [3, 5, 2], [4, 6, 5, 3]]


def make(widths, act, rng, m=7, dtype=np.float64):
    ml = build_mlp_layout(widths, act)
    params = np.empty(ml.n_params)
    ml.init(rng, params)
    params = params.astype(dtype)
    x = rng.normal(size=(m, widths[0])).astype(dtype)
    hp = ml.kernel_hp().astype(dtype)
    work = np.empty(ml.workspace(m), dtype=dtype)
    return ml, params, x, hp, work


def run_forward(ml, params, x, hp, work):
    out = np.empty((x.shape[0], ml.layout[-1, 1]), dtype=params.dtype)
    mlp_forward(params, ml.layout, hp, x, work, out)
    return out


@pytest.mark.parametrize("widths", NETS, ids=str)
@pytest.mark.parametrize("act", ACTS)
def test_forward_and_backward_match_reference(widths, act, rng):
    ml, params, x, hp, work = make(widths, act, rng)
    out = run_forward(ml, params, x, hp, work)
    np.testing.assert_allclose(
        out, mlp_reference_forward(params, ml.layout, hp, x), rtol=1e-12, atol=1e-14
    )
    dout = rng.normal(size=out.shape)
    grads = np.full(ml.n_params, np.nan)
    mlp_backward(params, ml.layout, hp, x, work, dout, grads)
    ref = mlp_reference_backward(params, ml.layout, hp, x, dout)
    np.testing.assert_allclose(grads, ref, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("act", ACTS)
def test_gradient_matches_finite_differences(act, rng):
    ml, params, x, hp, work = make([3, 4, 3, 2], act, rng, m=5)
    x += 0.05  # keep relu/leaky_relu inputs off the kink at 0
    dout = rng.normal(size=(5, 2))
    out = run_forward(ml, params, x, hp, work)
    grads = np.empty(ml.n_params)
    mlp_backward(params, ml.layout, hp, x, work, dout, grads)

    def objective():
        return float(np.sum(run_forward(ml, params, x, hp, np.empty_like(work)) * dout))

    numeric = central_difference(objective, params)
    np.testing.assert_allclose(grads, numeric, rtol=1e-5, atol=1e-7)
    assert out.shape == (5, 2)


def test_inputs_are_not_modified(rng):
    ml, params, x, hp, work = make([3, 5, 2], "tanh", rng)
    p0, x0 = params.copy(), x.copy()
    run_forward(ml, params, x, hp, work)
    dout = rng.normal(size=(x.shape[0], 2))
    d0 = dout.copy()
    mlp_backward(params, ml.layout, hp, x, work, dout, np.empty(ml.n_params))
    np.testing.assert_array_equal(params, p0)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dout, d0)


def test_smaller_batch_than_workspace(rng):
    # the last minibatch of an epoch is smaller than the buffers sized for batch_size
    ml, params, x, hp, work = make([3, 8, 2], "relu", rng, m=10)
    out = run_forward(ml, params, x[:3], hp, work)
    np.testing.assert_allclose(out, mlp_reference_forward(params, ml.layout, hp, x[:3]))


def test_pytorch_default_initialisation_bounds(rng):
    ml = build_mlp_layout([400, 30, 10], "relu")
    params = np.empty(ml.n_params)
    ml.init(rng, params)
    views = ml.views(params)
    for name, fan_in in (("W0", 400), ("b0", 400), ("W1", 30), ("b1", 30)):
        k = 1 / np.sqrt(fan_in)
        assert np.abs(views[name]).max() <= k
        if name.startswith("W"):  # uniform over the whole interval
            assert np.abs(views[name]).max() > 0.9 * k
    assert views["W0"].shape == (400, 30) and views["b1"].shape == (10,)


def test_float32_forward_close_to_float64(rng):
    ml, params, x, hp, work = make([3, 5, 2], "gelu", rng)
    out64 = run_forward(ml, params, x, hp, work)
    p32, x32, hp32 = params.astype(np.float32), x.astype(np.float32), hp.astype(np.float32)
    out32 = run_forward(ml, p32, x32, hp32, np.empty(len(work), np.float32))
    np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-5)


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(ConfigError, match="model.activation='swish'.*Choices: relu, tanh"):
        build_mlp_layout([3, 4, 2], "swish")
