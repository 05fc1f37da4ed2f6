"""The checks of a loss: kernel against its NumPy reference, gradient against finite differences,
inputs left alone."""

from __future__ import annotations

import numpy as np

from lossbench.testing._base import (
    DTYPES,
    _compare,
    _each_case,
    _fail,
    _packed,
    _unchanged,
    central_difference,
)


def _loss_batch(spec, rng, dtype, rows=6, cols=4):
    pred = rng.normal(size=(rows, cols)) * 2.0
    if spec.target == "class_index":
        target = rng.integers(0, cols, size=(rows, 1)).astype(np.float64)
    elif spec.target == "binary":
        pred = pred[:, :1]
        target = (np.arange(rows) % 2)[rng.permutation(rows)][:, None].astype(np.float64)
    else:
        target = rng.uniform(size=(rows, cols))
    c = np.ascontiguousarray
    return c(pred, dtype=dtype), c(target, dtype=dtype)


def _loss_fn(spec):
    """(pred, target, hp) -> (value, grad) through the kernel, or the reference if none."""
    if spec.numpy_only:
        return spec.reference

    def call(pred, target, hp):
        grad = np.empty_like(pred)
        return spec.kernel(pred, target, hp, grad), grad

    return call


def _loss_matches_reference(pm, group, spec, cases):
    if spec.numpy_only:
        return None

    def body(hp):
        if spec.reference is None:
            _fail("it has no NumPy reference. Fix: pass reference=FUNCTION(pred, target, hp)")
        rng = np.random.default_rng(0)
        for _ in range(4):
            pred, target = _loss_batch(spec, rng, np.float64)
            hp64 = _packed(spec, hp)
            ref_value, ref_grad = spec.reference(pred.copy(), target.copy(), hp64.copy())
            value, grad = _loss_fn(spec)(pred, target, hp64)
            _compare("float64 loss values (kernel vs reference)", value, ref_value, 1e-9, 1e-12)
            _compare("float64 gradients (kernel vs reference)", grad, ref_grad, 1e-9, 1e-12)
            p32, t32 = pred.astype(np.float32), target.astype(np.float32)
            value, grad = _loss_fn(spec)(p32, t32, _packed(spec, hp))
            scale = max(1.0, abs(ref_value))
            _compare(
                "float32 loss values (kernel vs reference)", value, ref_value, 1e-4, 1e-6 * scale
            )
            gscale = max(1e-3, float(np.max(np.abs(ref_grad))))
            _compare("float32 gradients (kernel vs reference)", grad, ref_grad, 1e-3, 1e-5 * gscale)

    return lambda: _each_case(cases, body)


def _loss_gradient(pm, group, spec, cases):
    def body(hp):
        rng = np.random.default_rng(1)
        pred, target = _loss_batch(spec, rng, np.float64)
        hp64 = _packed(spec, hp)
        loss = _loss_fn(spec)
        _, grad = loss(pred, target, hp64)
        numeric = central_difference(lambda: float(loss(pred, target, hp64)[0]), pred)
        _compare("gradients (analytic vs central differences, eps 1e-6)", grad, numeric, 1e-5, 1e-8)

    return lambda: _each_case(cases, body)


def _loss_inputs_unchanged(pm, group, spec, cases):
    def body(hp):
        rng = np.random.default_rng(2)
        for dtype in DTYPES if not spec.numpy_only else ("float64",):
            pred, target = _loss_batch(spec, rng, dtype)
            hp_arr = _packed(spec, hp)
            before = [a.copy() for a in (pred, target, hp_arr)]
            functions = [_loss_fn(spec)]
            if not spec.numpy_only and spec.reference is not None:
                functions.append(spec.reference)
            for function in functions:
                function(pred, target, hp_arr)
                for what, b, a in zip(
                    ("pred", "target", "hp"), before, (pred, target, hp_arr), strict=True
                ):
                    _unchanged(f"{what} ({dtype})", b, a)

    return lambda: _each_case(cases, body)
