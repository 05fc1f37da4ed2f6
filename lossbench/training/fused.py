"""The fused path: every minibatch of an epoch in one jitted call, and the validation pass.

``train_epoch`` gathers each minibatch's rows into contiguous buffers, then forward, loss and its
gradient, backward, optimizer step. Its kernels arrive as first-class function values
(``lossbench.kernels.KernelRef``), so it compiles once per dtype per installation and is loaded
from numba's disk cache afterwards, whichever losses, optimizers and models a run combines.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from lossbench.kernels import KernelWatch, cache_counts, ensure_compiled, kernel_ref
from lossbench.specs import KIND_TABLE
from lossbench.training.setup import Runner, Setup

# which spec attribute holds the kernel of which role, by group, in call order (the kinds with
# kernels in lossbench.specs.KIND_TABLE)
ROLES = {k.group: k.kernels for k in KIND_TABLE if k.kernels}


@njit(cache=True, nogil=True)
def _predicted(out, i, c):
    """The class row ``i`` of ``out`` predicts: argmax (first maximum), or logit > 0."""
    if c == 1:
        return 1 if out[i, 0] > 0 else 0
    pred = 0
    best = out[i, 0]
    for j in range(1, c):
        if out[i, j] > best:
            best = out[i, j]
            pred = j
    return pred


@njit(cache=True, nogil=True)
def _count_correct(out, labels, start, order):
    """Correct predictions in ``out``, the rows ``order[start:]`` of the training set."""
    m, c = out.shape
    correct = 0
    for i in range(m):
        if _predicted(out, i, c) == labels[order[start + i]]:
            correct += 1
    return correct


@njit(cache=True, nogil=True)
def gather(X, Y, order, start, m, xm, ym):
    """Copy the rows ``order[start:start + m]`` of ``X`` and ``Y`` into the contiguous minibatch
    buffers ``xm`` and ``ym``."""
    n_x, n_y = X.shape[1], Y.shape[1]
    for i in range(m):
        r = order[start + i]
        # element loops: a slice assignment per row cost ~0.8 us per batch of 32 rows
        # (13% of a 20-32-3 epoch, benchmarks/epoch_breakdown.py); these copy the same bits
        for j in range(n_x):
            xm[i, j] = X[r, j]
        for j in range(n_y):
            ym[i, j] = Y[r, j]


@njit(cache=True, nogil=True)
def batch_loss(forward, loss, params, layout, model_hp, loss_hp, xm, ym, work, om, dm, failed):
    """Forward and loss of one gathered minibatch: the batch loss, its gradient into ``dm``.
    When a kernel raised (``failed[0]``), notes which call in ``failed[1]`` (1 forward, 2 loss)
    and returns NaN."""
    forward(params, layout, model_hp, xm, work, om)
    if failed[0]:
        failed[1] = 1
        return math.nan
    value = loss(om, ym, loss_hp, dm)
    if failed[0]:
        failed[1] = 2
        return math.nan
    return value


@njit(cache=True, nogil=True)
def batch_update(backward, step, params, layout, model_hp, xm, work, dm, grads, state, scalars,
                 opt_hp, t, lr, failed):  # fmt: skip
    """Backward and optimizer step ``t`` of one minibatch whose loss gradient is in ``dm``;
    notes a kernel that raised in ``failed[1]`` (3 backward, 4 step)."""
    backward(params, layout, model_hp, xm, work, dm, grads)
    if failed[0]:
        failed[1] = 3
        return
    step(params, grads, state, scalars, opt_hp, t, lr)
    if failed[0]:
        failed[1] = 4


@njit(cache=True, nogil=True)
def train_epoch(
    forward, backward, loss, step, params, layout, model_hp, loss_hp, opt_hp, state, scalars,
    grads, X, Y, labels, order, batch_size, work, xb, yb, out, dout, failed, t, lr,
):  # fmt: skip
    """One epoch of minibatch training; returns (sum of batch loss x batch size, samples seen,
    correct predictions, step count). Each minibatch: ``gather``, ``batch_loss``,
    ``batch_update`` (the steps ``lr_find.lr_ramp`` takes too). Stops at the first non-finite
    batch loss, and at once when a kernel raised (``failed[0]`` set: ``kernels.KernelWatch``),
    noting which call in ``failed[1]``."""
    n = order.shape[0]
    total = 0.0
    seen = 0
    correct = 0
    with_labels = labels.shape[0] > 0
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        xm, ym, om, dm = xb[:m], yb[:m], out[:m], dout[:m]
        gather(X, Y, order, start, m, xm, ym)
        value = batch_loss(forward, loss, params, layout, model_hp, loss_hp, xm, ym, work, om,
                           dm, failed)  # fmt: skip
        if failed[0]:
            break
        total += value * m
        seen += m
        if not math.isfinite(value):
            break
        if with_labels:
            correct += _count_correct(om, labels, start, order)
        t += 1
        batch_update(backward, step, params, layout, model_hp, xm, work, dm, grads, state,
                     scalars, opt_hp, t, lr, failed)  # fmt: skip
        if failed[0]:
            break
    return total, seen, correct, t


@njit(cache=True, nogil=True)
def _tally(out, Y, labels, start, confusion, err_scale, sq_err, abs_err):
    """Add the rows of ``out`` (rows ``start`` on of the set) to the common metrics' sums:
    the confusion matrix (true class x predicted class) for classification, and per target the
    squared and absolute errors in the target's original units (``err_scale`` undoes a target
    standardisation) for regression. Returns the correct predictions."""
    m, c = out.shape
    correct = 0
    if confusion.shape[0] > 0:
        for i in range(m):
            pred = _predicted(out, i, c)
            label = labels[start + i]
            confusion[label, pred] += 1
            if pred == label:
                correct += 1
    for j in range(sq_err.shape[0]):
        for i in range(m):
            e = (float(out[i, j]) - float(Y[start + i, j])) * err_scale[j]
            sq_err[j] += e * e
            abs_err[j] += abs(e)
    return correct


@njit(cache=True, nogil=True)
def evaluate(
    forward, loss, params, layout, model_hp, loss_hp, X, Y, labels, chunk, work, out, dout,
    confusion, err_scale, sq_err, abs_err, failed,
):  # fmt: skip
    """Loss and correct predictions on a whole set, in chunks of at most ``chunk`` rows;
    returns (sum of chunk loss x chunk size, correct). Fills (after zeroing) the sums the
    common metrics are made of: ``confusion`` (classes x classes; 0 x 0 for regression) and
    ``sq_err``/``abs_err`` (one per target; empty for classification). Stops when a kernel
    raised, as ``train_epoch``."""
    n = X.shape[0]
    total = 0.0
    correct = 0
    confusion[:] = 0
    sq_err[:] = 0.0
    abs_err[:] = 0.0
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        om = out[:m]
        forward(params, layout, model_hp, X[start : start + m], work, om)
        if failed[0]:
            failed[1] = 1
            break
        total += loss(om, Y[start : start + m], loss_hp, dout[:m]) * m
        if failed[0]:
            failed[1] = 2
            break
        correct += _tally(om, Y, labels, start, confusion, err_scale, sq_err, abs_err)
    return total, correct


def compile_stats() -> dict[str, dict[str, int]]:
    """Disk-cache hits and compilations of the fused epoch and evaluation in this process."""
    return {fn.__name__: cache_counts(fn) for fn in (train_epoch, evaluate)}


def bind(group: str, spec, dtype: str) -> dict:
    """The spec's kernels as KernelRefs (compiled or loaded from the cache), by role."""
    owner = f"{group} {spec.name!r} from plugin {spec.plugin!r}"
    return {
        role: kernel_ref(getattr(spec, attr), role, dtype, owner=owner)
        for attr, role in ROLES[group]
    }


def kernel_watch(specs: dict) -> KernelWatch:
    """A ``KernelWatch`` over the run's kernels (``specs``: group -> spec), by role."""
    kernels = {}
    for group, roles in ROLES.items():
        spec = specs[group]
        for attr, role in roles:
            owner = f"{group} {spec.name!r} from plugin {spec.plugin!r}"
            kernels[role] = (getattr(spec, attr), owner, spec.plugin)
    return KernelWatch(kernels)


def fused_runner(run, s: Setup) -> Runner:
    """The run's epochs on the fused path: binds the kernels and compiles (or cache-loads) the
    epoch and the evaluation before returning, so no epoch pays for it."""
    prep, layout, params = run.dataset, run.layout, run.flat_params
    n_out, dtype = prep.n_outputs, s.dtype
    k = {}
    for group in ROLES:
        k.update(bind(group, run.specs[group], str(dtype)))
    watch = kernel_watch(run.specs)

    def buf(rows, cols):
        return np.empty((rows, cols), dtype=dtype)

    epoch_args = (
        k["forward"], k["backward"], k["loss"], k["optimizer"], params, layout.layout,
        s.model_hp, s.loss_hp, s.opt_hp, s.state, s.scalars, s.grads, prep.X_train, prep.Y_train,
        prep.labels_train, s.order, s.batch, np.empty(layout.workspace(s.batch), dtype=dtype),
        buf(s.batch, prep.X_train.shape[1]), buf(s.batch, prep.Y_train.shape[1]),
        buf(s.batch, n_out), buf(s.batch, n_out), watch.flag,
    )  # fmt: skip
    tally = s.tally
    eval_args = (
        k["forward"], k["loss"], params, layout.layout, s.model_hp, s.loss_hp, prep.X_val,
        prep.Y_val, prep.labels_val, s.chunk, np.empty(layout.workspace(s.chunk), dtype=dtype),
        buf(s.chunk, n_out), buf(s.chunk, n_out), tally.confusion, tally.err_scale,
        tally.sq_err, tally.abs_err, watch.flag,
    )  # fmt: skip
    ensure_compiled(train_epoch, (*epoch_args, 0, float(s.base_lr)))
    ensure_compiled(evaluate, eval_args)
    return Runner(
        epoch=lambda t, lr: watch.call(train_epoch, *epoch_args, t, lr),
        evaluate=lambda: watch.call(evaluate, *eval_args),
    )
