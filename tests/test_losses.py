"""Every built-in loss: kernel == NumPy reference, gradient == central finite differences."""

import numpy as np
import pytest

from conftest import central_difference
from lossbench.builtin.losses import LOSSES

CASES = {  # name -> list of hyperparameter dicts
    "mse": [{}],
    "mae": [{}],
    "huber": [{"delta": 1.0}, {"delta": 0.3}],
    "bce": [{}],
    "cross_entropy": [{"label_smoothing": 0.0}, {"label_smoothing": 0.2}],
}
SPECS = {s.name: s for s in LOSSES}


def make_batch(spec, rng, dtype=np.float64, rows=6, cols=4, scale=2.0):
    pred = (rng.normal(size=(rows, cols)) * scale).astype(dtype)
    if spec.target == "class_index":
        target = rng.integers(0, cols, size=(rows, 1)).astype(dtype)
    elif spec.target == "binary":
        pred = pred[:, :1].copy()
        target = rng.integers(0, 2, size=(rows, 1)).astype(dtype)
    else:
        target = rng.normal(size=(rows, cols)).astype(dtype)
    return pred, target


def cases():
    return [pytest.param(name, hp, id=f"{name}-{hp}") for name, hps in CASES.items() for hp in hps]


def test_every_builtin_loss_is_covered():
    assert set(CASES) == set(SPECS)


@pytest.mark.parametrize("name,hp", cases())
def test_kernel_matches_reference(name, hp, rng):
    spec = SPECS[name]
    packed = np.array(spec.pack(spec.options(**hp)), dtype=np.float64)
    for _ in range(5):
        pred, target = make_batch(spec, rng)
        grad = np.empty_like(pred)
        value = spec.kernel(pred, target, packed, grad)
        ref_value, ref_grad = spec.reference(pred, target, packed)
        assert value == pytest.approx(ref_value, rel=1e-12, abs=1e-14)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("name,hp", cases())
def test_kernel_float32_close_to_float64(name, hp, rng):
    spec = SPECS[name]
    pred, target = make_batch(spec, rng)
    packed = np.array(spec.pack(spec.options(**hp)))
    g64 = np.empty_like(pred)
    v64 = spec.kernel(pred, target, packed, g64)
    p32, t32 = pred.astype(np.float32), target.astype(np.float32)
    g32 = np.empty_like(p32)
    v32 = spec.kernel(p32, t32, packed.astype(np.float32), g32)
    assert v32 == pytest.approx(v64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,options", cases())
def test_gradient_matches_finite_differences(name, options, rng):
    spec = SPECS[name]
    packed = np.array(spec.pack(spec.options(**options)), dtype=np.float64)
    pred, target = make_batch(spec, rng)
    if name in ("mae", "huber"):  # keep away from the kinks, where the derivative jumps
        d = pred - target
        pred = np.where(np.abs(np.abs(d) - options.get("delta", 0)) < 1e-3, pred + 0.01, pred)
        pred = np.where(np.abs(pred - target) < 1e-3, pred + 0.01, pred)
    grad = np.empty_like(pred)
    spec.kernel(pred, target, packed, grad)
    scratch = np.empty_like(pred)
    numeric = central_difference(lambda: spec.kernel(pred, target, packed, scratch), pred)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_bce_and_cross_entropy_are_stable_for_huge_logits():
    bce, ce = SPECS["bce"], SPECS["cross_entropy"]
    pred = np.array([[800.0], [-800.0], [30.0], [-30.0]])
    target = np.array([[0.0], [1.0], [1.0], [0.0]])
    grad = np.empty_like(pred)
    value = bce.kernel(pred, target, np.zeros(0), grad)
    # two rows are wrong by 800 nats each, two are right with loss log1p(exp(-30))
    assert value == pytest.approx((800 + 800 + 2 * np.log1p(np.exp(-30))) / 4)
    np.testing.assert_allclose(
        grad[:, 0], [0.25, -0.25, -np.exp(-30) / 4, np.exp(-30) / 4], rtol=1e-6, atol=1e-12
    )
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    labels = np.array([[2.0], [1.0]])
    g = np.empty_like(logits)
    v = ce.kernel(logits, labels, np.zeros(1), g)
    assert v == pytest.approx((2000.0 + np.log(3)) / 2)
    assert np.all(np.isfinite(g))


def test_cross_entropy_label_smoothing_matches_pytorch_formula():
    # PyTorch: loss = (1 - e) * nll + e * mean_c(-log p_c)
    ce = SPECS["cross_entropy"]
    logits = np.array([[2.0, 1.0, 0.1]])
    e = 0.1
    logp = logits - np.log(np.exp(logits).sum())
    expected = (1 - e) * -logp[0, 0] + e * -logp.mean()
    v = ce.kernel(logits, np.array([[0.0]]), np.array([e]), np.empty_like(logits))
    assert v == pytest.approx(expected, rel=1e-13)


def test_mean_reduction_is_over_all_elements():
    mse = SPECS["mse"]
    pred = np.ones((2, 3))
    v = mse.kernel(pred, np.zeros((2, 3)), np.zeros(0), np.empty_like(pred))
    assert v == 1.0  # sum 6 / 6 elements, as torch.nn.MSELoss(reduction="mean")
