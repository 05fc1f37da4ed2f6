"""The checks that hyperparameters reach the kernels as values: each numeric or boolean option
changed on its own changes what the kernel computes (a value read from a global or a closure is
frozen at compile time and would not), and a run with changed options trains differently
without compiling anything again."""

from __future__ import annotations

import dataclasses

import numpy as np

from lossbench.kernels import overload_count, recording_compiles
from lossbench.testing._base import _N_IN, _N_OUT, _fail, _packed, not_applicable
from lossbench.testing.common import _train, _training, _values
from lossbench.testing.losses import _loss_batch, _loss_fn
from lossbench.testing.models import _model_fns, _model_setup
from lossbench.testing.optimizers import STEPS, _opt_setup, _step_fn, lr_at
from lossbench.training import evaluate, train_epoch


def candidates(value) -> list:
    """New values to try for an option, nearest first: 0.9 -> 0.8, 1.0 -> 0.5, 0 -> 0.1, an int
    -> +1, a boolean flipped, a list of ints each +1."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if isinstance(value, float):
        if value == 0:
            return [0.1, 1.0]
        near = [round(value - 0.1, 12)] if 0.1 < value < 1 else []
        return [*near, value * 0.5, value * 2, value + 1]
    if isinstance(value, list) and value and all(type(v) is int for v in value):
        return [[v + 1 for v in value]]
    return []


def _reach(group, spec, options, new) -> str | None:
    """Where ``new`` differs from ``hp`` in what the kernels receive (``hp[2]``, ``layout``), or
    None when the kernels get the same, the component refuses it, or (a model) it changes the
    model's shape."""
    try:
        if group == "model":
            a, b = spec.build(options, _N_IN, _N_OUT), spec.build(new, _N_IN, _N_OUT)
            if a.n_params != b.n_params or a.layout.shape != b.layout.shape:
                return "the model's shape"
            if list(a.options) != list(b.options):
                return f"hp[{_first_difference(a.hp, b.hp)}] (ModelLayout.hp)"
            return None if np.array_equal(a.layout, b.layout) else "layout"
        if spec.check is not None:
            spec.check(new)
        old, now = list(spec.pack(options)), list(spec.pack(new))
        return None if old == now else f"hp[{_first_difference(old, now)}]"
    except Exception:  # refused (ConfigError), or pack/build cannot take it: the others say
        return None


def _first_difference(a, b) -> int:
    pairs = enumerate(zip(a, b, strict=False))
    return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))


def _option_names(options) -> list[str]:
    return [
        f.name for f in dataclasses.fields(options)
        if f.name != "lr" and type(getattr(options, f.name)) in (bool, int, float)
    ]  # fmt: skip


def _perturb(group, spec, options, name):
    """(the changed options, where they reach the kernels) for option ``name``, or None."""
    for value in candidates(getattr(options, name)):
        new = dataclasses.replace(options, **{name: value})
        where = _reach(group, spec, options, new)
        if where is not None:
            return new, where
    return None


# ---------------------------------------------------------------------------------------------
# what a kernel (or reference) computes for a case, as one float64 vector


def _loss_outputs(spec, options, use_kernel):
    rng = np.random.default_rng(11)
    fn = _loss_fn(spec) if use_kernel else spec.reference
    parts = []
    for _ in range(2):
        pred, target = _loss_batch(spec, rng, np.float64)
        value, grad = fn(pred, target, _packed(spec, options))
        parts += [np.array([value], dtype=np.float64), np.asarray(grad, np.float64).ravel()]
    return np.concatenate(parts)


def _optimizer_outputs(spec, options, use_kernel):
    rng = np.random.default_rng(12)
    state, hp64 = _opt_setup(spec, options, 23)
    p = rng.normal(size=23)
    step = _step_fn(spec)
    parts = []
    for t in range(1, STEPS + 1):
        g = rng.normal(size=23)
        if use_kernel:
            step(p, g, state, hp64, t, lr_at(t))
        else:
            spec.reference(p, g, state.rows, state.scalars, hp64.copy(), t, lr_at(t))
        parts += [p.copy(), state.values()]
    return np.concatenate(parts)


def _model_outputs(spec, options, use_kernel):
    layout, params, x, mhp = _model_setup(spec, options)
    dout = np.random.default_rng(13).normal(size=(len(x), _N_OUT))
    if use_kernel:
        forward, backward = _model_fns(spec, layout)
        (out, written), grads = forward(params, mhp, x, keep_params=True), \
            backward(params, mhp, x, dout)  # fmt: skip
    else:
        written = params.copy()  # what forward writes while training: the buffers
        out = spec.reference_forward(written, layout.layout, mhp, x)
        grads = spec.reference_backward(params.copy(), layout.layout, mhp, x, dout)
    parts = [np.ravel(out), np.ravel(grads), written]
    return np.concatenate(parts).astype(np.float64)


_OUTPUTS = {"loss": _loss_outputs, "optimizer": _optimizer_outputs, "model": _model_outputs}
_WHAT = {"loss": "2 batches", "optimizer": f"{STEPS} steps",
         "model": "forward (its outputs and the buffers it writes) and backward"}


def _has_reference(group, spec) -> bool:
    refs = ("reference_forward", "reference_backward") if group == "model" else ("reference",)
    return all(getattr(spec, r, None) is not None for r in refs)


def _show(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else repr(value)


def _why_not(options, names: list[str]) -> str:
    if not dataclasses.fields(options):
        return "it has no hyperparameters"
    if not names:
        fields = [f.name for f in dataclasses.fields(options) if f.name != "lr"]
        if not fields:
            return "its only option is lr, which the engine passes to the kernel apart"
        return (
            f"none of its options ({', '.join(fields)}) is a single number or a boolean; what "
            "they change is checked by builds_layout, kernel_matches_reference and trains_small_mlp"
        )
    return (
        f"no change of {', '.join(names)} reaches its kernels as a value (pack gives the same hp, "
        "or, for a model, the change alters its shape: builds_layout and trains_small_mlp "
        "cover that)"
    )


def _comparable(group, spec, cases, name) -> bool:
    return any((found := _perturb(group, spec, hp, name)) and found[1] != "the model's shape"
               for hp in cases)  # fmt: skip


def _each_hyperparameter(pm, group, spec, cases):
    names = _option_names(cases[0])
    reaching = [n for n in names if _comparable(group, spec, cases, n)]
    if not reaching:
        return not_applicable(_why_not(cases[0], names))
    return lambda: [_takes_effect(group, spec, cases, name) for name in reaching]


def _takes_effect(group, spec, cases, name) -> None:
    """Option ``name`` changed on its own, in each case until the result changes; a miss when it
    changes nothing in any case the component accepts."""
    outputs, use_kernel = _OUTPUTS[group], not spec.numpy_only
    frozen = None
    for hp in cases:
        found = _perturb(group, spec, hp, name)
        if found is None or found[1] == "the model's shape":
            continue
        new = found[0]
        if not np.array_equal(outputs(spec, hp, use_kernel), outputs(spec, new, use_kernel),
                              equal_nan=True):  # fmt: skip
            return
        frozen = frozen or (hp, *found)
    hp, new, where = frozen
    who = "the kernel" if use_kernel else "the reference"
    also = ""
    if use_kernel and _has_reference(group, spec):
        moved = float(np.max(np.abs(outputs(spec, new, False) - outputs(spec, hp, False))))
        also = (f", while the reference's moved by up to {moved:.3g}" if moved > 0
                else ", nor the reference's")  # fmt: skip
    _fail(
        f"{name} = {_show(getattr(new, name))} gave the same result as "
        f"{_show(getattr(hp, name))} ({_WHAT[group]} of {who}, bit for bit{also}): is it read "
        f"from a global or a constant? It reaches the kernels as {where}. Fix: read {where} "
        f"in {who}: a global or a closure constant is frozen when numba compiles it"
    )


# ---------------------------------------------------------------------------------------------
# a run with changed options: no recompile, a different training curve


def _perturbed(group, spec, options) -> dict:
    """New values for the options that reach the kernels (through ``pack``, or the layout for a
    model), still accepted by the component: every numeric one at once if that reaches them,
    else the first numeric or boolean one that does; {} if none."""
    numeric = {
        f.name: candidates(getattr(options, f.name))[0]
        for f in dataclasses.fields(options)
        if f.name != "lr" and not isinstance(getattr(options, f.name), bool)
        and candidates(getattr(options, f.name))
    }  # fmt: skip
    flags = {
        f.name: not getattr(options, f.name) for f in dataclasses.fields(options)
        if isinstance(getattr(options, f.name), bool)
    }  # fmt: skip

    def reach(changes):
        return _reach(group, spec, options, dataclasses.replace(options, **changes)) is not None

    if numeric and reach(numeric):
        return numeric
    singles = [{k: v} for k, v in (*numeric.items(), *flags.items())]
    return next((c for c in singles if reach(c)), {})


def _hyperparameter_change(pm, group, spec, cases):
    if not _perturbed(group, spec, cases[0]):
        return not_applicable(_why_not(cases[0], _option_names(cases[0])))

    def check():
        hp = cases[0]
        changes = _perturbed(group, spec, hp)
        overrides = _training(pm, group, spec, hp)
        first = _train(pm, overrides, group, _values(hp))
        dispatchers = [train_epoch, evaluate] + [
            getattr(spec, k)
            for k in ("kernel", "forward", "backward")
            if getattr(spec, k, None) is not None
        ]
        loaded = [overload_count(d) for d in dispatchers]
        with recording_compiles() as compiled:
            second = _train(pm, overrides, group, {**_values(hp), **changes})
        reloaded = [
            d.py_func.__qualname__
            for d, n in zip(dispatchers, loaded, strict=True)
            if overload_count(d) != n
        ]
        if compiled or reloaded:
            _fail(
                f"changing {changes} compiled {', '.join(compiled + reloaded)} again; "
                "hyperparameters must reach kernels as values in hp (pack), not as types, "
                "closure constants or new functions"
            )
        curves = [[h["train_loss"] for h in r.history] for r in (first, second)]
        # the validation loss too: an option may reach only what evaluation reads (a buffer's
        # momentum: the running statistics)
        val = [[h["val_loss"] for h in r.history] for r in (first, second)]
        if curves[0] == curves[1] and val[0] == val[1]:
            _fail(
                f"changing {changes} leaves the training bit-identical ({curves[0]}): the "
                "kernels do not read them. Fix: pass them through pack into hp and read hp[i] "
                "in the kernel (a global or closure constant is frozen at compile time)"
            )

    return check
