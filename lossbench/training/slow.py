"""The slow path: the training epoch in plain Python, with the same meaning as the fused
``lossbench.training.fused.train_epoch``.

Two uses, one loop:

- ``reference_epoch`` runs an epoch on the specs' NumPy references (model forward/backward,
  loss, optimizer step). The benchmark reports its speed.
- a run whose loss, optimizer or model gives only a NumPy reference (no numba kernel) trains
  with ``python_epoch``/``python_evaluate`` over ``python_parts(specs)`` (``slow_runner``),
  which takes each component's reference where there is no kernel and calls the others'
  kernels from Python. Nothing here is on the fused path.

A model's buffers (``ModelLayout.buffers``) are written by the one forward of each minibatch:
the kernel's backward needs its forward's workspace, so ``python_parts`` runs that forward
again, on a copy of the parameters when there are buffers (the statistics are updated once per
minibatch, as on the fused path); a reference backward must not write them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lossbench.errors import LossbenchError, PluginFailure
from lossbench.kernels import failure_text
from lossbench.training.groups import Segments
from lossbench.training.metrics import predicted_classes, reset, tally_outputs
from lossbench.training.setup import Runner, Setup


@dataclass(frozen=True)
class PythonParts:
    """A run's components as Python callables with the references' signatures:
    ``forward(params, layout, hp, x) -> out``, ``backward(params, layout, hp, x, dout) ->
    grads``, ``loss(pred, target, hp) -> (value, grad)``, ``step(params, grads, state, scalars,
    hp, t, lr)`` (in place)."""

    forward: Callable
    backward: Callable
    loss: Callable
    step: Callable


def python_parts(specs: dict, model_layout, n_out: int) -> PythonParts:
    """The components of ``specs`` (group -> spec) for the slow path: the NumPy reference of a
    component without kernels, otherwise its kernel wrapped to the reference's signature.
    ``model_layout`` is the model's ``ModelLayout``, ``n_out`` its output width."""
    workspace = model_layout.workspace
    buffers = bool(getattr(model_layout, "buffers", ()))
    model, loss, opt = specs["model"], specs["loss"], specs["optimizer"]
    if model.numpy_only:
        forward, backward = model.reference_forward, model.reference_backward
    else:

        def forward(params, layout, hp, x):
            work = np.empty(workspace(len(x)), dtype=params.dtype)
            out = np.empty((len(x), n_out), dtype=params.dtype)
            model.forward(params, layout, hp, x, work, out)
            return out

        def backward(params, layout, hp, x, dout):
            # the kernel's backward reads what its forward left in the workspace: run it again
            # (the slow path trades time for keeping forward and backward separate calls), on
            # a copy when the model has buffers: the step's forward has updated them once
            work = np.empty(workspace(len(x)), dtype=params.dtype)
            again = params.copy() if buffers else params
            model.forward(again, layout, hp, x, work, np.empty(dout.shape, params.dtype))
            grads = np.empty_like(params)
            model.backward(params, layout, hp, x, work, np.ascontiguousarray(dout), grads)
            return grads

    if loss.numpy_only:
        loss_fn = loss.reference
    else:

        def loss_fn(pred, target, hp):
            pred = np.ascontiguousarray(pred, dtype=target.dtype)
            grad = np.empty_like(pred)
            return loss.kernel(pred, target, hp, grad), grad

    if opt.numpy_only:
        step = opt.reference
    else:

        def step(params, grads, state, scalars, hp, t, lr):
            opt.kernel(params, np.ascontiguousarray(grads), state, scalars, hp, t, float(lr))

    return PythonParts(forward, backward, loss_fn, step)


def count_correct(out: np.ndarray, labels: np.ndarray) -> int:
    """Correct predictions among the rows of ``out``."""
    return int(np.count_nonzero(predicted_classes(out) == labels))


def one_segment(opt_hp, state, scalars, n_params: int) -> Segments:
    """The optimizer's arrays as one segment over the whole vector (no parameter groups)."""
    bounds = np.array([[0, n_params, 0, len(opt_hp)]], dtype=np.int64)
    return Segments(bounds, opt_hp, state, scalars)


def python_epoch(
    parts, params, layout, model_hp, loss_hp, opt_hp, state, scalars, X, Y, labels, order,
    batch_size, t, lr, segments=None,
):  # fmt: skip
    """One epoch over minibatches of ``order``; updates ``params``/``state`` in place.

    Returns (sum of batch loss x batch size, samples seen, correct predictions, step count) as
    the fused epoch does; ``labels`` may be empty (regression: no accuracy). Stops at the first
    non-finite batch loss. ``model_hp`` ends with the context (``specs.CONTEXT``), written here
    as the fused epoch writes it; ``segments`` (the bounds of ``training.groups``; default: one
    segment) split each step as the fused epoch splits it."""
    seg = one_segment(opt_hp, state, scalars, len(params)) if segments is None else \
        Segments(segments, opt_hp, state, scalars)  # fmt: skip
    n = len(order)
    total, seen, correct = 0.0, 0, 0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        xb, yb = X[idx], Y[idx]
        model_hp[-3], model_hp[-1] = 1.0, t + 1  # training, this step's stream
        out = parts.forward(params, layout, model_hp, xb)
        value, dout = parts.loss(out, yb, loss_hp)
        total += float(value) * len(idx)
        seen += len(idx)
        if not math.isfinite(value):
            break
        if len(labels):
            correct += count_correct(out, labels[idx])
        grads = parts.backward(params, layout, model_hp, xb, dout.astype(params.dtype))
        t += 1
        for views in seg.views(params, grads.astype(params.dtype)):
            parts.step(*views, t, lr)
    return total, seen, correct, t


def python_evaluate(parts, params, layout, model_hp, loss_hp, X, Y, labels, chunk, tally):
    """Loss and correct predictions on a whole set in chunks of at most ``chunk`` rows:
    (sum of chunk loss x chunk size, correct), and the common metrics' sums in ``tally``
    (``lossbench.training.metrics``), as ``lossbench.training.fused.evaluate``."""
    total, correct = 0.0, 0
    model_hp[-3], model_hp[-1] = 0.0, 0.0  # evaluation mode
    reset(tally)
    for start in range(0, len(X), chunk):
        out = parts.forward(params, layout, model_hp, X[start : start + chunk])
        total += float(parts.loss(out, Y[start : start + chunk], loss_hp)[0]) * len(out)
        if len(labels):
            correct += count_correct(out, labels[start : start + chunk])
        tally_outputs(tally, out, Y[start : start + chunk], labels[start : start + chunk])
    return total, correct


def reference_epoch(
    model, loss, optimizer, params, layout, model_hp, loss_hp, opt_hp, state, scalars, X, Y,
    order, batch_size, t, lr,
):  # fmt: skip
    """One epoch on the NumPy references only; updates ``params``/``state`` in place.

    Returns (sum of batch loss x batch size, samples seen, step count) like the fused epoch
    (without the accuracy count)."""
    parts = PythonParts(
        model.reference_forward, model.reference_backward, loss.reference, optimizer.reference
    )
    no_labels = np.empty(0, np.int64)
    total, seen, _, t = python_epoch(
        parts, params, layout, model_hp, loss_hp, opt_hp, state, scalars, X, Y, no_labels,
        order, batch_size, t, lr,
    )  # fmt: skip
    return total, seen, t


# each part of PythonParts: (its group, the role, the kernel attribute, the reference attribute)
_PART_SOURCES = {
    "forward": ("model", "forward", "forward", "reference_forward"),
    "backward": ("model", "backward", "backward", "reference_backward"),
    "loss": ("loss", "loss", "kernel", "reference"),
    "step": ("optimizer", "optimizer", "kernel", "reference"),
}


def guarded_parts(parts: PythonParts, specs: dict) -> PythonParts:
    """``parts`` whose calls raise ``PluginFailure`` naming the plugin, the function (kernel or
    NumPy reference) and the exception when the plugin's code raises."""

    def guard(name: str):
        group, role, kernel_attr, reference_attr = _PART_SOURCES[name]
        spec, call = specs[group], getattr(parts, name)
        kind = "reference" if getattr(spec, kernel_attr) is None else "kernel"
        function = getattr(spec, reference_attr if kind == "reference" else kernel_attr)
        owner = f"{group} {spec.name!r} from plugin {spec.plugin!r}"

        def guarded(*args):
            try:
                return call(*args)
            except (LossbenchError, PluginFailure):
                raise
            except Exception as exc:  # the plugin's code: a bug, said in one paragraph
                text = failure_text(role, kind, function, owner, spec.plugin, exc)
                raise PluginFailure(text) from exc

        return guarded

    return PythonParts(*(guard(name) for name in ("forward", "backward", "loss", "step")))


def slow_runner(run, s: Setup) -> Runner:
    """The run's epochs on the slow path (a component has no numba kernel); a component's code
    that raises fails the run naming it (``guarded_parts``)."""
    prep, layout, params = run.dataset, run.layout, run.flat_params
    parts = guarded_parts(python_parts(run.specs, layout, prep.n_outputs), run.specs)

    def epoch(t, lr):
        return python_epoch(
            parts, params, layout.layout, s.model_hp, s.loss_hp, s.opt_hp, s.state, s.scalars,
            prep.X_train, prep.Y_train, prep.labels_train, s.epoch_order(), s.batch, t, lr,
            s.segments,
        )  # fmt: skip

    def evaluate():
        return python_evaluate(
            parts, params, layout.layout, s.model_hp, s.loss_hp, prep.X_val, prep.Y_val,
            prep.labels_val, s.chunk, s.tally,
        )  # fmt: skip

    return Runner(epoch, evaluate)
