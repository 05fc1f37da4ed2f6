"""The training epoch in plain Python with the same meaning as ``lossbench.engine.train_epoch``.

Two uses, one loop:

- ``reference_epoch`` runs an epoch on the specs' NumPy references (model forward/backward,
  loss, optimizer step). Tests hold the fused epoch to it; the benchmark reports its speed.
- the *slow path*: a run whose loss, optimizer or model gives only a NumPy reference (no numba
  kernel) trains with ``python_epoch``/``python_evaluate`` over ``python_parts(specs)``, which
  takes each component's reference where there is no kernel and calls the others' kernels from
  Python. ``lossbench.engine.train`` picks this path; nothing here is on the fused path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PythonParts:
    """A run's components as Python callables with the references' signatures:
    ``forward(params, layout, hp, x) -> out``, ``backward(params, layout, hp, x, dout) ->
    grads``, ``loss(pred, target, hp) -> (value, grad)``, ``step(params, grads, state, hp, t,
    lr)`` (in place)."""

    forward: Callable
    backward: Callable
    loss: Callable
    step: Callable


def python_parts(specs: dict, model_layout, n_out: int) -> PythonParts:
    """The components of ``specs`` (group -> spec) for the slow path: the NumPy reference of a
    component without kernels, otherwise its kernel wrapped to the reference's signature.
    ``model_layout`` is the model's ``ModelLayout``, ``n_out`` its output width."""
    workspace = model_layout.workspace
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
            # (the slow path trades time for keeping forward and backward separate calls)
            work = np.empty(workspace(len(x)), dtype=params.dtype)
            model.forward(params, layout, hp, x, work, np.empty(dout.shape, params.dtype))
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

        def step(params, grads, state, hp, t, lr):
            opt.kernel(params, np.ascontiguousarray(grads), state, hp, t, params.dtype.type(lr))

    return PythonParts(forward, backward, loss_fn, step)


def count_correct(out: np.ndarray, labels: np.ndarray) -> int:
    """Correct predictions: argmax over columns (first maximum wins), or logit > 0 for one
    output column; the same rule as the fused epoch."""
    pred = (out[:, 0] > 0).astype(np.int64) if out.shape[1] == 1 else np.argmax(out, axis=1)
    return int(np.count_nonzero(pred == labels))


def python_epoch(
    parts, params, layout, model_hp, loss_hp, opt_hp, state, X, Y, labels, order, batch_size,
    t, lr,
):  # fmt: skip
    """One epoch over minibatches of ``order``; updates ``params``/``state`` in place.

    Returns (sum of batch loss x batch size, samples seen, correct predictions, step count) as
    the fused epoch does; ``labels`` may be empty (regression: no accuracy). Stops at the first
    non-finite batch loss."""
    n = len(order)
    total, seen, correct = 0.0, 0, 0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        xb, yb = X[idx], Y[idx]
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
        parts.step(params, grads.astype(params.dtype), state, opt_hp, t, lr)
    return total, seen, correct, t


def python_evaluate(parts, params, layout, model_hp, loss_hp, X, Y, labels, chunk):
    """Loss and correct predictions on a whole set in chunks of at most ``chunk`` rows:
    (sum of chunk loss x chunk size, correct), as ``lossbench.engine.evaluate``."""
    total, correct = 0.0, 0
    for start in range(0, len(X), chunk):
        out = parts.forward(params, layout, model_hp, X[start : start + chunk])
        total += float(parts.loss(out, Y[start : start + chunk], loss_hp)[0]) * len(out)
        if len(labels):
            correct += count_correct(out, labels[start : start + chunk])
    return total, correct


def reference_epoch(
    model, loss, optimizer, params, layout, model_hp, loss_hp, opt_hp, state, X, Y, order,
    batch_size, t, lr,
):  # fmt: skip
    """One epoch on the NumPy references only; updates ``params``/``state`` in place.

    Returns (sum of batch loss x batch size, samples seen, step count) like the fused epoch
    (without the accuracy count)."""
    parts = PythonParts(
        model.reference_forward, model.reference_backward, loss.reference, optimizer.reference
    )
    no_labels = np.empty(0, np.int64)
    total, seen, _, t = python_epoch(
        parts, params, layout, model_hp, loss_hp, opt_hp, state, X, Y, no_labels, order,
        batch_size, t, lr,
    )  # fmt: skip
    return total, seen, t
