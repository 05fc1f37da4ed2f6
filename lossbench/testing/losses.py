"""The checks of a loss: kernel against its NumPy reference, gradient against finite differences,
inputs left alone. Every kernel call goes through the harness (guard rows, boundscheck, inputs
unchanged, outputs written and finite)."""

from __future__ import annotations

import numpy as np

from lossbench.testing._base import (
    _compare,
    _each_case,
    _fail,
    _packed,
    _unchanged,
    central_difference,
    dtypes,
    index_slot,
    not_applicable,
)
from lossbench.testing._harness import Arg, call


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


def _loss_fn(spec, when: str = ""):
    """(pred, target, hp) -> (value, grad) through the kernel (in the harness), or the reference
    if there is none."""
    if spec.numpy_only:
        return spec.reference

    def run(pred, target, hp):
        args = [Arg("pred", pred), Arg("target", target), Arg("hp", hp),
                Arg("grad", np.empty_like(pred), "out")]  # fmt: skip
        value, arrays = call(spec.kernel, "loss", args, when)
        return value, arrays["grad"]

    return run


def _loss_matches_reference(pm, group, spec, cases):
    if spec.numpy_only:
        return not_applicable("it has no kernel (numpy only): its reference is what is checked")

    def body(options):
        if spec.reference is None:
            _fail("it has no NumPy reference. Fix: pass reference=FUNCTION(pred, target, hp)")
        rng = np.random.default_rng(0)
        for batch in range(4):
            pred, target = _loss_batch(spec, rng, np.float64)
            hp64 = _packed(spec, options)
            ref_value, ref_grad = spec.reference(pred.copy(), target.copy(), hp64.copy())
            for dtype in dtypes():
                _compare_batch(spec, options, dtype, pred, target, ref_value, ref_grad, batch)

    return lambda: _each_case(cases, body)


def _compare_batch(spec, options, dtype, pred, target, ref_value, ref_grad, batch):
    p, t = pred.astype(dtype), target.astype(dtype)
    value, grad = _loss_fn(spec, f" in batch {batch + 1}")(p, t, _packed(spec, options))
    slot = index_slot("grad")
    if dtype == "float64":
        _compare("float64 loss values (kernel vs reference)", value, ref_value, 1e-9, 1e-12)
        _compare("float64 gradients (kernel vs reference)", grad, ref_grad, 1e-9, 1e-12,
                 slot=slot)  # fmt: skip
        return
    scale = max(1.0, abs(ref_value))
    _compare("float32 loss values (kernel vs reference)", value, ref_value, 1e-4, 1e-6 * scale)
    gscale = max(1e-3, float(np.max(np.abs(ref_grad))))
    _compare("float32 gradients (kernel vs reference)", grad, ref_grad, 1e-3, 1e-5 * gscale,
             slot=slot)  # fmt: skip


def _loss_gradient(pm, group, spec, cases):
    def body(options):
        rng = np.random.default_rng(1)
        pred, target = _loss_batch(spec, rng, np.float64)
        hp64 = _packed(spec, options)
        loss = _loss_fn(spec)
        _, grad = loss(pred, target, hp64)
        numeric = central_difference(lambda: float(loss(pred, target, hp64)[0]), pred)
        _compare(
            "gradients (analytic vs central differences, eps 1e-6)", grad, numeric, 1e-5, 1e-8,
            slot=index_slot("grad"),
        )  # fmt: skip

    return lambda: _each_case(cases, body)


def _loss_inputs_unchanged(pm, group, spec, cases):
    def body(options):
        rng = np.random.default_rng(2)
        for dtype in dtypes() if not spec.numpy_only else ("float64",):
            pred, target = _loss_batch(spec, rng, dtype)
            hp_arr = _packed(spec, options)
            _loss_fn(spec)(pred, target, hp_arr)  # the harness checks the kernel's inputs
            if spec.reference is None:
                continue
            before = [a.copy() for a in (pred, target, hp_arr)]
            spec.reference(pred, target, hp_arr)
            for what, b, a in zip(("pred", "target", "hp"), before, (pred, target, hp_arr),
                                  strict=True):  # fmt: skip
                _unchanged(f"{what} ({dtype}) in the reference", b, a)

    return lambda: _each_case(cases, body)
