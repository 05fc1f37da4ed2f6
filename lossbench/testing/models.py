"""The checks of a model: a consistent layout, kernels against references, backward against finite
differences of forward, inputs left alone, its modes (evaluation draws nothing from the random
stream, training draws the same for the same seed and step), its parameter groups, its buffers.
Forward gets ``work`` filled with NaN (it is not zeroed in a run either) and backward ``grads``
filled with NaN, so reading what was never written shows; a gradient that misses is named by
tensor (``W1[3, 0]``). Kernels and references are compared in training mode at one (seed, step)
(``TRAINING``), so what a model draws (dropout) is compared too.

Buffers (``ModelLayout.buffers``, running statistics): every forward the kit runs (kernel or
reference) is checked to write no parameter, and no buffer in evaluation mode, naming the
tensor written; the buffers forward writes while training are compared kernel against
reference; finite differences leave them out and backward must give them a gradient of exactly
0; ``buffers_stay_out_of_the_optimizer`` steps every registered optimizer (weight decay and
momentum on) over the model's segments and fails if a buffer moves."""

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
from lossbench.testing._harness import Arg, call, kernel_label
from lossbench.training.groups import check_buffers, check_groups, make_segments

# the context the kit's calls run in (lossbench.specs.CONTEXT): training, stream seed 7, step 3
TRAINING = {"training": True, "seed": 7, "step": 3}


def _model_setup(spec, options, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    layout = spec.build(options, _N_IN, _N_OUT)
    params = np.empty(layout.n_params)
    layout.init(rng, params)
    x = rng.normal(size=(max(_ROWS, getattr(layout, "min_batch", 1)), _N_IN))
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


def check_writes(layout, before, after, hp, who: str) -> None:
    """A miss when forward (``who``) changed a parameter, or a buffer in evaluation mode
    (``before``/``after``: the flat vector around the call)."""
    changed = ~((before == after) | (np.isnan(before) & np.isnan(after)))
    if not changed.any():
        return
    buffers = layout.buffer_mask() if getattr(layout, "buffers", ()) else \
        np.zeros(len(before), bool)  # fmt: skip
    slot = tensor_slot(layout)
    wrong = changed & ~buffers
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        _fail(
            f"{who} writes the trainable parameter {slot((i,))} ({int(wrong.sum())} values of "
            "parameters changed): forward may write only buffers (ModelLayout.buffers), and "
            "only while training. Fix: write outputs to out and work; declare running "
            "statistics as ModelLayout.buffers"
        )
    if hp[len(hp) - 3] <= 0.5:
        i = int(np.flatnonzero(changed)[0])
        _fail(
            f"{who} writes the buffer {slot((i,))} in evaluation mode (hp[-3] = 0; "
            f"{int(changed.sum())} values changed): the validation pass and predictions "
            "must leave running statistics as they are. Fix: update buffers only while "
            "hp[-3] is 1.0 (training)"
        )


def _model_fns(spec, layout):
    """forward(params, hp, x) -> out and backward(params, hp, x, dout) -> grads through the
    kernels (in the harness), or the references if the model has none. Neither changes
    ``params``: forward runs on a copy and checks what it wrote (``check_writes``);
    ``forward(..., keep_params=True)`` also returns that copy (the buffers it wrote)."""
    if spec.numpy_only:
        return _reference_fns(spec, layout)

    def forward(p, hp, x, keep_work=False, keep_params=False):
        work = np.full(layout.workspace(len(x)), np.nan, p.dtype)  # not zeroed, as in a run
        out = np.empty((len(x), _N_OUT), p.dtype)
        # what forward wrote into params is checked below, naming the tensor (check_writes)
        args = [Arg("params", p, "inout"), Arg("layout", layout.layout), Arg("hp", hp),
                Arg("x", x), Arg("work", work, "work"), Arg("out", out, "out")]  # fmt: skip
        _, arrays = call(spec.forward, "forward", args)
        check_writes(layout, p, arrays["params"], hp, kernel_label("forward", spec.forward))
        if keep_params:
            return arrays["out"], arrays["params"]
        return (arrays["out"], arrays["work"]) if keep_work else arrays["out"]

    def backward(p, hp, x, dout):
        _, work = forward(p, hp, x, keep_work=True)
        args = [Arg("params", p), Arg("layout", layout.layout), Arg("hp", hp), Arg("x", x),
                Arg("work", work, "work"), Arg("dout", dout),
                Arg("grads", np.empty(len(p), p.dtype), "out")]  # fmt: skip
        _, arrays = call(spec.backward, "backward", args)
        return arrays["grads"]

    return forward, backward


def _reference_fns(spec, layout):
    """``_model_fns`` for a model with only NumPy references."""

    def forward(p, hp, x, keep_params=False):
        q = p.copy()
        out = spec.reference_forward(q, layout.layout, hp, x)
        check_writes(layout, p, q, hp, kernel_label("forward", spec.reference_forward))
        return (out, q) if keep_params else out

    def backward(p, hp, x, dout):
        q = p.copy()
        grads = spec.reference_backward(q, layout.layout, hp, x, dout)
        if not np.array_equal(p, q, equal_nan=True):
            i = int(np.flatnonzero(p != q)[0])
            _fail(f"{kernel_label('backward', spec.reference_backward)} writes "
                  f"{tensor_slot(layout)((i,))}: backward must leave params as they are. "
                  "Fix: write only the gradients it returns")  # fmt: skip
        return grads

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
        dout = np.random.default_rng(1).normal(size=(len(x), _N_OUT))
        ref_forward, _ = _reference_fns(spec, layout)
        ref_out, ref_params = ref_forward(params, mhp, x, keep_params=True)
        ref_grads = spec.reference_backward(params.copy(), layout.layout, mhp, x, dout)
        for dtype in dtypes():
            _compare_model(spec, layout, (params, x, mhp, dout),
                           (ref_out, ref_grads, ref_params), dtype)  # fmt: skip

    return lambda: _each_case(cases, body)


def _compare_model(spec, layout, inputs, expected, dtype):
    forward, backward = _model_fns(spec, layout)
    params, x, mhp, dout = inputs
    params, x, dout = params.astype(dtype), x.astype(dtype), dout.astype(dtype)  # hp: float64
    ref_out, ref_grads, ref_params = expected
    if dtype == "float64":
        rtol, atol_out, atol_grads = 1e-9, 1e-12, 1e-12
    else:
        rtol = 1e-3
        atol_out = 1e-4 * max(1.0, float(np.max(np.abs(ref_out))))
        atol_grads = 1e-4 * max(1.0, float(np.max(np.abs(ref_grads))))
    out, written = forward(params, mhp, x, keep_params=True)
    _compare(f"{dtype} forward outputs (kernel vs reference)", out, ref_out, rtol, atol_out)
    if getattr(layout, "buffers", ()):
        _compare(f"{dtype} buffers forward wrote while training (kernel vs reference)",
                 written, ref_params, rtol, atol_grads, slot=tensor_slot(layout))  # fmt: skip
    _compare(f"{dtype} gradients (kernel vs reference)", backward(params, mhp, x, dout),
             ref_grads, rtol, atol_grads, slot=tensor_slot(layout))  # fmt: skip


def _model_gradient(pm, group, spec, cases):
    def body(options):
        layout, params, x, mhp = _model_setup(spec, options)
        forward, backward = _model_fns(spec, layout)
        dout = np.random.default_rng(1).normal(size=(len(x), _N_OUT))
        grads = backward(params, mhp, x, dout)
        buffers = _buffer_gradients_are_zero(spec, layout, grads)
        numeric = central_difference(lambda: float(np.sum(forward(params, mhp, x) * dout)),
                                     params, skip=buffers)  # fmt: skip
        numeric[buffers] = 0.0  # buffers: not parameters, no difference taken
        _compare(
            "d sum(forward * dout) / d params (backward vs central differences, eps 1e-6)",
            grads, numeric, 1e-5, 1e-7, slot=tensor_slot(layout),
        )  # fmt: skip

    return lambda: _each_case(cases, body)


def _buffer_gradients_are_zero(spec, layout, grads) -> np.ndarray:
    """The buffers' mask; a miss when backward gave one of them a gradient."""
    if not getattr(layout, "buffers", ()):
        return np.zeros(len(grads), bool)
    buffers = layout.buffer_mask()
    given = buffers & (grads != 0)
    if given.any():
        i = int(np.flatnonzero(given)[0])
        who = kernel_label("backward", spec.reference_backward if spec.numpy_only
                           else spec.backward)  # fmt: skip
        _fail(
            f"{who} gives the buffer {tensor_slot(layout)((i,))} a gradient of {grads[i]:.6g} "
            f"({int(given.sum())} buffer values nonzero): buffers are not parameters and get "
            "no gradient. Fix: write 0 into the buffers' entries of grads"
        )
    return buffers


def _model_inputs_unchanged(pm, group, spec, cases):
    def body(options):
        for dtype in dtypes() if not spec.numpy_only else ("float64",):
            layout, params, x, mhp = _model_setup(spec, options, np.dtype(dtype))
            forward, backward = _model_fns(spec, layout)
            dout = np.random.default_rng(1).normal(size=(len(x), _N_OUT)).astype(dtype)
            inputs = {"params": params, "x": x, "hp": mhp, "layout": layout.layout, "dout": dout}
            before = {k: v.copy() for k, v in inputs.items()}
            forward(params, mhp, x)  # the harness checks the kernels' inputs
            forward(params, layout.kernel_hp(training=False), x)  # and what forward writes
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
        declared = any(spec.build(o, _N_IN, _N_OUT).groups for o in cases)
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
        buffers = set(getattr(layout, "buffers", ()))  # never stepped: no decay to take off
        left = [t for t, (_, sh) in layout.tensors.items()
                if len(sh) == 1 and t not in grouped and t not in buffers]  # fmt: skip
        if left:
            _fail(
                f"tensor {left[0]} is 1-D like the tensors of parameter group "
                f"{g.name or repr(g.tensors)} ({', '.join(g.tensors)}), which sets "
                "weight_decay = 0, but is in no such group, so weight decay still shrinks it: "
                "is a bias left out? Fix: put every bias in the group"
            )


# every registered optimizer is stepped with these on (where it has them): weight decay moves
# every entry it steps even at a zero gradient, so a buffer it reached would move
_PUSH = {"weight_decay": 0.1, "momentum": 0.9}
_OPT_STEPS = 3


def _model_buffers(pm, group, spec, cases):
    try:
        declared = any(getattr(spec.build(o, _N_IN, _N_OUT), "buffers", ()) for o in cases)
    except Exception:  # a build that raises: builds_layout names it; check here anyway
        declared = True
    if not declared:
        return not_applicable("its layouts declare no buffers (ModelLayout.buffers)")
    optimizers = pm.registry.components.get("optimizer", {})

    def body(hp):
        layout, params, x, mhp = _model_setup(spec, hp)
        try:
            check_buffers(layout, f"model {spec.name!r}")
        except PluginError as exc:
            _fail(str(exc))
        forward, backward = _model_fns(spec, layout)
        dout = np.random.default_rng(1).normal(size=(len(x), _N_OUT))
        _, params = forward(params, mhp, x, keep_params=True)  # the buffers as training left them
        grads = backward(params, mhp, x, dout)
        buffers = _buffer_gradients_are_zero(spec, layout, grads)
        for name, opt in sorted(optimizers.items()):
            _steps_leave_buffers(layout, opt, params, grads, buffers, name)

    return lambda: _each_case(cases, body)


def _steps_leave_buffers(layout, opt, params, grads, buffers, name) -> None:
    """``_OPT_STEPS`` steps of optimizer ``opt`` over the model's segments (as the engine takes
    them, ``training.groups``); a miss when a buffer moved."""
    options = opt.options()
    fields = {f.name: f for f in dataclasses.fields(options)}
    options = dataclasses.replace(options, **{k: v for k, v in _PUSH.items() if k in fields})
    try:
        seg = make_segments(layout, opt, options, np.float64)
    except Exception:  # options this optimizer refuses (its check): its defaults then
        seg = make_segments(layout, opt, opt.options(), np.float64)
    p = params.copy()
    step = opt.kernel if opt.kernel is not None else opt.reference
    for t in range(1, _OPT_STEPS + 1):
        for views in seg.views(p, grads):
            step(*views, t, float(options.lr))
    moved = buffers & (p != params)
    if moved.any():
        i = int(np.flatnonzero(moved)[0])
        _fail(
            f"optimizer {name!r} ({_PUSH}) moved the buffer {tensor_slot(layout)((i,))} from "
            f"{params[i]:.6g} to {p[i]:.6g} in {_OPT_STEPS} steps over the model's segments: "
            "the optimizer must never step a buffer. Fix: name the running statistics in "
            "ModelLayout.buffers (training.groups leaves them out of every segment), and out "
            "of every ParamGroup"
        )
