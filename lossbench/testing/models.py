"""The checks of a model: a consistent layout, kernels against references, backward against finite
differences of forward, inputs left alone, its modes (evaluation draws nothing from the random
stream, training draws the same for the same seed and step), its parameter groups. Forward gets
``work`` filled with NaN (it is not zeroed in a run either) and backward ``grads`` filled with
NaN, so reading what was never written shows; a gradient that misses is named by tensor
(``W1[3, 0]``). Kernels and references are compared in training mode at one (seed, step)
(``TRAINING``), so what a model draws (dropout) is compared too."""

from __future__ import annotations

import dataclasses

import numpy as np

from lossbench.errors import PluginError
from lossbench.testing._base import (
    _N_IN,
    _N_OUT,
    _ROWS,
    _compare,
    _each_case,
    _fail,
    central_difference,
    dtypes,
    not_applicable,
)
from lossbench.testing._harness import Arg, call
from lossbench.training.groups import check_groups

# the context the kit's calls run in (lossbench.specs.CONTEXT): training, stream seed 7, step 3
TRAINING = {"training": True, "seed": 7, "step": 3}


def _model_setup(spec, options, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    layout = spec.build(options, _N_IN, _N_OUT)
    params = np.empty(layout.n_params)
    layout.init(rng, params)
    x = rng.normal(size=(_ROWS, _N_IN))
    c = np.ascontiguousarray
    return layout, c(params, dtype=dtype), c(x, dtype=dtype), layout.kernel_hp(**TRAINING)


def tensor_slot(layout):
    """Names an index of the flat parameter vector by its tensor: ``W1[3, 0] (params[19])``."""
    spans = sorted((off, name, shape) for name, (off, shape) in layout.tensors.items())

    def name(i: tuple[int, ...]) -> str:
        k = i[0]
        for off, tensor, shape in spans:
            size = int(np.prod(shape))
            if off <= k < off + size:
                where = np.unravel_index(k - off, shape) if shape else ()
                return f"{tensor}[{', '.join(str(int(j)) for j in where)}] (params[{k}])"
        return f"params[{k}] (in no tensor of the layout)"

    return name


def _model_fns(spec, layout):
    """forward(params, hp, x) -> out and backward(params, hp, x, dout) -> grads through the
    kernels (in the harness), or the references if the model has none."""
    if spec.numpy_only:
        return (
            lambda p, hp, x: spec.reference_forward(p, layout.layout, hp, x),
            lambda p, hp, x, d: spec.reference_backward(p, layout.layout, hp, x, d),
        )

    def forward(p, hp, x, keep_work=False):
        work = np.full(layout.workspace(len(x)), np.nan, p.dtype)  # not zeroed, as in a run
        out = np.empty((len(x), _N_OUT), p.dtype)
        args = [Arg("params", p), Arg("layout", layout.layout), Arg("hp", hp), Arg("x", x),
                Arg("work", work, "work"), Arg("out", out, "out")]  # fmt: skip
        _, arrays = call(spec.forward, "forward", args)
        return (arrays["out"], arrays["work"]) if keep_work else arrays["out"]

    def backward(p, hp, x, dout):
        _, work = forward(p, hp, x, keep_work=True)
        args = [Arg("params", p), Arg("layout", layout.layout), Arg("hp", hp), Arg("x", x),
                Arg("work", work, "work"), Arg("dout", dout),
                Arg("grads", np.empty(len(p), p.dtype), "out")]  # fmt: skip
        _, arrays = call(spec.backward, "backward", args)
        return arrays["grads"]

    return forward, backward


def _model_builds(pm, group, spec, cases):
    def body(options):
        layout = spec.build(options, _N_IN, _N_OUT)
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
        return not_applicable("it has no kernels (numpy only): its references are what is checked")

    def body(options):
        if spec.reference_forward is None or spec.reference_backward is None:
            _fail("it has no NumPy reference_forward/reference_backward. Fix: pass both")
        layout, params, x, mhp = _model_setup(spec, options)
        dout = np.random.default_rng(1).normal(size=(_ROWS, _N_OUT))
        ref_out = spec.reference_forward(params, layout.layout, mhp, x)
        ref_grads = spec.reference_backward(params, layout.layout, mhp, x, dout)
        for dtype in dtypes():
            _compare_model(spec, layout, (params, x, mhp, dout), (ref_out, ref_grads), dtype)

    return lambda: _each_case(cases, body)


def _compare_model(spec, layout, inputs, expected, dtype):
    forward, backward = _model_fns(spec, layout)
    params, x, mhp, dout = inputs
    params, x, dout = params.astype(dtype), x.astype(dtype), dout.astype(dtype)  # hp: float64
    ref_out, ref_grads = expected
    if dtype == "float64":
        rtol, atol_out, atol_grads = 1e-9, 1e-12, 1e-12
    else:
        rtol = 1e-3
        atol_out = 1e-4 * max(1.0, float(np.max(np.abs(ref_out))))
        atol_grads = 1e-4 * max(1.0, float(np.max(np.abs(ref_grads))))
    _compare(f"{dtype} forward outputs (kernel vs reference)", forward(params, mhp, x),
             ref_out, rtol, atol_out)  # fmt: skip
    _compare(f"{dtype} gradients (kernel vs reference)", backward(params, mhp, x, dout),
             ref_grads, rtol, atol_grads, slot=tensor_slot(layout))  # fmt: skip


def _model_gradient(pm, group, spec, cases):
    def body(options):
        layout, params, x, mhp = _model_setup(spec, options)
        forward, backward = _model_fns(spec, layout)
        dout = np.random.default_rng(1).normal(size=(_ROWS, _N_OUT))
        grads = backward(params, mhp, x, dout)
        numeric = central_difference(lambda: float(np.sum(forward(params, mhp, x) * dout)), params)
        _compare(
            "d sum(forward * dout) / d params (backward vs central differences, eps 1e-6)",
            grads, numeric, 1e-5, 1e-7, slot=tensor_slot(layout),
        )  # fmt: skip

    return lambda: _each_case(cases, body)


def _model_inputs_unchanged(pm, group, spec, cases):
    def body(options):
        for dtype in dtypes() if not spec.numpy_only else ("float64",):
            layout, params, x, mhp = _model_setup(spec, options, np.dtype(dtype))
            forward, backward = _model_fns(spec, layout)
            dout = np.random.default_rng(1).normal(size=(_ROWS, _N_OUT)).astype(dtype)
            inputs = {"params": params, "x": x, "hp": mhp, "layout": layout.layout, "dout": dout}
            before = {k: v.copy() for k, v in inputs.items()}
            forward(params, mhp, x)  # the harness checks the kernels' inputs
            backward(params, mhp, x, dout)
            for k, v in inputs.items():  # and these the references'
                if not np.array_equal(before[k], v, equal_nan=True):
                    _fail(f"it modifies its input {k} ({dtype}). Fix: write only to its outputs")

    return lambda: _each_case(cases, body)


def _model_modes(pm, group, spec, cases):
    def body(options):
        layout, params, x, _ = _model_setup(spec, options)
        forward, _ = _model_fns(spec, layout)

        def out(training, seed, step):
            return forward(params, layout.kernel_hp(training, seed, step), x)

        a, b = out(False, 1, 0), out(False, 2, 5)
        if not np.array_equal(a, b, equal_nan=True):
            _fail(
                "forward in evaluation mode (hp[-3] = 0) changed when the stream's seed and step "
                f"changed (by up to {float(np.nanmax(np.abs(a - b))):.3g}): is dropout (or another "
                "draw) applied while evaluating? Fix: draw only while hp[-3] is 1.0 (training)"
            )
        t1, t2 = out(True, 3, 4), out(True, 3, 4)
        if not np.array_equal(t1, t2, equal_nan=True):
            _fail(
                "forward in training mode gave two results for one (seed, step): it draws from "
                "a stream of its own. Fix: draw from lossbench.streams with "
                "stream_key(hp[-2], hp[-1]), so a seed gives the same bits"
            )

    return lambda: _each_case(cases, body)


def _optimizer_options(pm) -> dict[str, set[str]]:
    """Each registered optimizer's option names."""
    table = pm.registry.components.get("optimizer", {})
    return {name: {f.name for f in dataclasses.fields(s.options)} for name, s in table.items()}


def _model_groups(pm, group, spec, cases):
    try:
        declared = any(spec.build(hp, _N_IN, _N_OUT).groups for hp in cases)
    except Exception:  # a build that raises: builds_layout names it; check here anyway
        declared = True
    if not declared:
        return not_applicable("its layouts declare no parameter groups (ModelLayout.groups)")

    def body(options):
        layout = spec.build(options, _N_IN, _N_OUT)
        try:
            check_groups(layout, f"model {spec.name!r}")
        except PluginError as exc:
            _fail(str(exc))
        known = _optimizer_options(pm)
        every = set().union(*known.values()) if known else set()
        for g in layout.groups:
            label = g.name or repr(g.tensors)
            for key in g.options:
                if key not in every:
                    _fail(
                        f"parameter group {label} sets {key!r}, which no registered optimizer "
                        f"has ({', '.join(sorted(known))}): is it misspelled? A key the "
                        "optimizer does not have is ignored, so the group changes nothing. "
                        "Fix: name an option, e.g. weight_decay"
                    )
        _no_decay_covers_every_1d_tensor(layout)

    return lambda: _each_case(cases, body)


def _no_decay_covers_every_1d_tensor(layout) -> None:
    """A group with weight_decay = 0 over 1-D tensors (biases) should hold every 1-D tensor (the
    rule torch users write: ``p.ndim == 1`` -> no decay)."""
    for g in layout.groups:
        shapes = [layout.tensors[t][1] for t in g.tensors]
        if g.options.get("weight_decay", None) != 0 or not shapes or \
                any(len(s) != 1 for s in shapes):  # fmt: skip
            continue
        no_decay = [h for h in layout.groups if h.options.get("weight_decay") == 0]
        grouped = {t for h in no_decay for t in h.tensors}
        left = [t for t, (_, sh) in layout.tensors.items() if len(sh) == 1 and t not in grouped]
        if left:
            _fail(
                f"tensor {left[0]} is 1-D like the tensors of parameter group "
                f"{g.name or repr(g.tensors)} ({', '.join(g.tensors)}), which sets "
                "weight_decay = 0, but is in no such group, so weight decay still shrinks it: "
                "is a bias left out? Fix: put every bias in the group"
            )
