"""The checks of a model: a consistent layout, kernels against references, backward against finite
differences of forward, inputs left alone."""

from __future__ import annotations

import numpy as np

from lossbench.testing._base import (
    _N_IN,
    _N_OUT,
    _ROWS,
    DTYPES,
    _compare,
    _each_case,
    _fail,
    _unchanged,
    central_difference,
)


def _model_setup(spec, hp, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    layout = spec.build(hp, _N_IN, _N_OUT)
    params = np.empty(layout.n_params)
    layout.init(rng, params)
    x = rng.normal(size=(_ROWS, _N_IN))
    c = np.ascontiguousarray
    return layout, c(params, dtype=dtype), c(x, dtype=dtype), np.asarray(layout.hp, np.float64)


def _model_fns(spec, layout):
    """forward(params, hp, x) -> out and backward(params, hp, x, dout) -> grads through the
    kernels, or the references if the model has none."""
    if spec.numpy_only:
        return (
            lambda p, hp, x: spec.reference_forward(p, layout.layout, hp, x),
            lambda p, hp, x, d: spec.reference_backward(p, layout.layout, hp, x, d),
        )

    def forward(p, hp, x, work=None):
        work = np.empty(layout.workspace(len(x)), p.dtype) if work is None else work
        out = np.empty((len(x), _N_OUT), p.dtype)
        spec.forward(p, layout.layout, hp, x, work, out)
        return out

    def backward(p, hp, x, dout):
        work = np.empty(layout.workspace(len(x)), p.dtype)
        forward(p, hp, x, work)
        grads = np.full(len(p), np.nan, p.dtype)
        spec.backward(p, layout.layout, hp, x, work, dout, grads)
        return grads

    return forward, backward


def _model_builds(pm, group, spec, cases):
    def body(hp):
        layout = spec.build(hp, _N_IN, _N_OUT)
        lay = layout.layout
        if not (isinstance(lay, np.ndarray) and lay.dtype == np.int64 and lay.ndim == 2):
            _fail(f"build() gives layout {lay!r}; the kernels need a 2-D int64 array")
        if not lay.flags.c_contiguous:
            _fail("build() gives a layout array that is not C-contiguous")
        size = sum(int(np.prod(shape)) for _, shape in layout.tensors.values())
        if size != layout.n_params:
            _fail(f"tensors hold {size} values but n_params is {layout.n_params}")
        params = np.full(layout.n_params, np.nan)
        layout.init(np.random.default_rng(0), params)
        if not np.all(np.isfinite(params)):
            _fail(
                f"init() leaves {int(np.sum(~np.isfinite(params)))} parameters unset or non-finite"
            )
        if int(layout.workspace(_ROWS)) < 0:
            _fail(f"workspace({_ROWS}) is negative")

    return lambda: _each_case(cases, body)


def _model_matches_reference(pm, group, spec, cases):
    if spec.numpy_only:
        return None

    def body(hp):
        if spec.reference_forward is None or spec.reference_backward is None:
            _fail("it has no NumPy reference_forward/reference_backward. Fix: pass both")
        layout, params, x, mhp = _model_setup(spec, hp)
        forward, backward = _model_fns(spec, layout)
        dout = np.random.default_rng(1).normal(size=(_ROWS, _N_OUT))
        ref_out = spec.reference_forward(params, layout.layout, mhp, x)
        ref_grads = spec.reference_backward(params, layout.layout, mhp, x, dout)
        _compare(
            "float64 forward outputs (kernel vs reference)",
            forward(params, mhp, x),
            ref_out,
            1e-9,
            1e-12,
        )
        _compare(
            "float64 gradients (kernel vs reference)",
            backward(params, mhp, x, dout),
            ref_grads,
            1e-9,
            1e-12,
        )
        f32 = np.float32
        p32, x32, h32 = params.astype(f32), x.astype(f32), mhp.astype(f32)
        scale = max(1.0, float(np.max(np.abs(ref_out))))
        _compare(
            "float32 forward outputs (kernel vs reference)",
            forward(p32, h32, x32),
            ref_out,
            1e-3,
            1e-4 * scale,
        )
        gscale = max(1.0, float(np.max(np.abs(ref_grads))))
        grads32 = backward(p32, h32, x32, dout.astype(f32))
        _compare("float32 gradients (kernel vs reference)", grads32, ref_grads, 1e-3, 1e-4 * gscale)

    return lambda: _each_case(cases, body)


def _model_gradient(pm, group, spec, cases):
    def body(hp):
        layout, params, x, mhp = _model_setup(spec, hp)
        forward, backward = _model_fns(spec, layout)
        dout = np.random.default_rng(1).normal(size=(_ROWS, _N_OUT))
        grads = backward(params, mhp, x, dout)
        numeric = central_difference(lambda: float(np.sum(forward(params, mhp, x) * dout)), params)
        _compare(
            "d sum(forward * dout) / d params (backward vs central differences, eps 1e-6)",
            grads, numeric, 1e-5, 1e-7,
        )  # fmt: skip

    return lambda: _each_case(cases, body)


def _model_inputs_unchanged(pm, group, spec, cases):
    def body(hp):
        for dtype in DTYPES if not spec.numpy_only else ("float64",):
            layout, params, x, mhp = _model_setup(spec, hp, np.dtype(dtype))
            forward, backward = _model_fns(spec, layout)
            dout = np.random.default_rng(1).normal(size=(_ROWS, _N_OUT)).astype(dtype)
            inputs = {"params": params, "x": x, "hp": mhp, "layout": layout.layout, "dout": dout}
            before = {k: v.copy() for k, v in inputs.items()}
            forward(params, mhp, x)
            backward(params, mhp, x, dout)
            for k, v in inputs.items():
                _unchanged(f"{k} ({dtype})", before[k], v)

    return lambda: _each_case(cases, body)
