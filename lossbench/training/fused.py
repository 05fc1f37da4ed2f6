"""The fused path: every minibatch of an epoch in one jitted call, and the validation pass.

``train_epoch`` gathers each minibatch's rows into contiguous buffers, then forward, loss and its
gradient, backward, optimizer step. Its kernels arrive as first-class function values
(``lossbench.kernels.KernelRef``), so it compiles once per dtype per installation and is loaded
from numba's disk cache afterwards, whichever losses, optimizers and models a run combines.

Its other arguments arrive grouped, as plain tuples built in one place (``train_args``,
``eval_args``): the model's ``(params, layout, hp)``, the optimizer's ``(grads, state, scalars,
hp, segments)``, the data's ``(X, Y, labels)`` and the minibatch buffers ``(work, xb, yb, out,
dout)``; the compiled code unpacks them where a kernel is called.

Modes: the model's ``hp`` ends with the context (``specs.CONTEXT``), which the loops write
before calling the model: training mode and the step count before each minibatch
(``set_mode``), evaluation mode before a validation pass, so dropout's p, the mode and the step
are values, never types, and no recompile. Parameter groups: the optimizer kernel is called once
per segment of ``segments`` (``training.groups``) with that segment's slices and options; a
model without groups has one segment. Buffers (``ModelLayout.buffers``, running statistics) are
in no segment: forward writes them once per minibatch while training, nothing else does.
Plain tuples, not namedtuples: numba types a namedtuple in Python on every call (6 us more per
call, measured), a tuple of arrays in C (0.6 us more than the same arrays one by one). The four
kernels stay four arguments: a tuple of ``KernelRef``s cost 45 us more per call than the same
four given one by one.
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
# the roles in the order train_epoch and lr_ramp take them (evaluate: forward and loss)
KERNEL_ORDER = ("forward", "backward", "loss", "optimizer")


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


@njit(cache=True, nogil=True, inline="always")
def set_mode(model_hp, training, step):
    """Write the context the model kernels read (``specs.CONTEXT``): mode and step (the
    stream seed stays as set up)."""
    n = model_hp.shape[0]
    model_hp[n - 3] = training
    model_hp[n - 1] = step


@njit(cache=True, nogil=True)
def batch_loss(forward, loss, model, loss_hp, data, scratch, order, start, m, failed):
    """Gather the minibatch ``order[start:start + m]`` of ``data``, then forward and loss: the
    batch loss, its gradient into ``scratch``'s ``dout``. When a kernel raised (``failed[0]``),
    notes which call in ``failed[1]`` (1 forward, 2 loss) and returns NaN."""
    params, layout, model_hp = model
    X, Y, _ = data
    work, xb, yb, out, dout = scratch
    xm, ym = xb[:m], yb[:m]
    gather(X, Y, order, start, m, xm, ym)
    om = out[:m]
    forward(params, layout, model_hp, xm, work, om)
    if failed[0]:
        failed[1] = 1
        return math.nan
    value = loss(om, ym, loss_hp, dout[:m])
    if failed[0]:
        failed[1] = 2
        return math.nan
    return value


@njit(cache=True, nogil=True)
def batch_update(backward, step, model, optimizer, m, scratch, t, lr, failed):
    """Backward and optimizer step ``t`` of the minibatch of ``m`` rows ``batch_loss`` left in
    ``scratch``, the step once per segment (``training.groups``); notes a kernel that raised in
    ``failed[1]`` (3 backward, 4 step)."""
    params, layout, model_hp = model
    grads, state, scalars, opt_hp, segments = optimizer
    work, xb, _, _, dout = scratch
    backward(params, layout, model_hp, xb[:m], work, dout[:m], grads)
    if failed[0]:
        failed[1] = 3
        return
    n_seg = segments.shape[0]
    if n_seg == 1 and segments[0, 0] == 0 and segments[0, 1] == params.shape[0]:
        # no parameter groups and no buffers: the one call it always was
        step(params, grads, state, scalars, opt_hp, t, lr)
        if failed[0]:
            failed[1] = 4
        return
    rows, flat = state.shape[0], state.reshape(state.size)
    slots = scalars.shape[0] // n_seg
    for r in range(n_seg):
        a, b = segments[r, 0], segments[r, 1]
        block = flat[rows * a : rows * b].reshape(rows, b - a)
        hp = opt_hp[segments[r, 2] : segments[r, 3]]
        step(params[a:b], grads[a:b], block, scalars[r * slots : (r + 1) * slots], hp, t, lr)
        if failed[0]:
            failed[1] = 4
            return


@njit(cache=True, nogil=True)
def train_epoch(
    forward,
    backward,
    loss,
    step,
    model,
    loss_hp,
    optimizer,
    data,
    scratch,
    order,
    batch_size,
    failed,
    t,
    lr,
):
    """One epoch of minibatch training over the rows of ``data`` in ``order``; returns (sum of
    batch loss x batch size, samples seen, correct predictions, step count). Each minibatch:
    ``batch_loss``, ``batch_update`` (the steps ``lr_find.lr_ramp`` takes too). Stops at the
    first non-finite batch loss, and at once when a kernel raised (``failed[0]`` set:
    ``kernels.KernelWatch``), noting which call in ``failed[1]``."""
    n = order.shape[0]
    labels, out = data[2], scratch[3]
    total = 0.0
    seen = 0
    correct = 0
    with_labels = labels.shape[0] > 0
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        set_mode(model[2], 1.0, t + 1)
        value = batch_loss(forward, loss, model, loss_hp, data, scratch, order, start, m, failed)
        if failed[0]:
            break
        total += value * m
        seen += m
        if not math.isfinite(value):
            break
        if with_labels:
            correct += _count_correct(out[:m], labels, start, order)
        t += 1
        batch_update(backward, step, model, optimizer, m, scratch, t, lr, failed)
        if failed[0]:
            break
    return total, seen, correct, t


@njit(cache=True, nogil=True)
def _tally(out, Y, labels, start, tally):
    """Add the rows of ``out`` (rows ``start`` on of the set) to the common metrics' sums in
    ``tally`` (``eval_args``): the confusion matrix (true class x predicted class) for
    classification, and per target the squared and absolute errors in the target's original
    units (``err_scale`` undoes a target standardisation) for regression. Returns the correct
    predictions."""
    confusion, err_scale, sq_err, abs_err = tally
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
def evaluate(forward, loss, model, loss_hp, data, chunk, scratch, tally, failed):
    """Loss and correct predictions on the whole set ``data``, in chunks of at most ``chunk``
    rows (``scratch``: ``(work, out, dout)`` of ``chunk`` rows); returns (sum of chunk loss x
    chunk size, correct). Fills (after zeroing) the sums the common metrics are made of, in
    ``tally``: ``confusion`` (classes x classes; 0 x 0 for regression) and ``sq_err``/
    ``abs_err`` (one per target; empty for classification). Stops when a kernel raised, as
    ``train_epoch``. The model runs in evaluation mode."""
    params, layout, model_hp = model
    set_mode(model_hp, 0.0, 0)
    X, Y, labels = data
    work, out, dout = scratch
    n = X.shape[0]
    total = 0.0
    correct = 0
    confusion, _, sq_err, abs_err = tally
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
        correct += _tally(om, Y, labels, start, tally)
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


def bind_all(specs: dict, dtype) -> dict:
    """Every kernel of the run's components (``specs``: group -> spec) as a KernelRef, by
    role."""
    kernels = {}
    for group in ROLES:
        kernels.update(bind(group, specs[group], str(dtype)))
    return kernels


def kernel_watch(specs: dict) -> KernelWatch:
    """A ``KernelWatch`` over the run's kernels (``specs``: group -> spec), by role."""
    kernels = {}
    for group, roles in ROLES.items():
        spec = specs[group]
        for attr, role in roles:
            owner = f"{group} {spec.name!r} from plugin {spec.plugin!r}"
            kernels[role] = (getattr(spec, attr), owner, spec.plugin)
    return KernelWatch(kernels)


def scratch(rows: int, n_x: int, n_y: int, n_out: int, workspace: int, dtype) -> tuple:
    """A minibatch's buffers, ``(work, xb, yb, out, dout)``, for at most ``rows`` rows:
    the model's workspace, the gathered inputs and targets, the output and its gradient."""
    rows_of = [np.empty((rows, cols), dtype=dtype) for cols in (n_x, n_y, n_out, n_out)]
    return (np.empty(workspace, dtype=dtype), *rows_of)


def train_args(run, s: Setup) -> tuple:
    """``(model, loss_hp, optimizer, data, scratch)``: the grouped arguments ``train_epoch`` and
    ``lr_find.lr_ramp`` take after the kernels, for the set-up run ``run``
    (the one place they are built: a new kernel argument joins its group here)."""
    prep, layout = run.dataset, run.layout
    model = (run.flat_params, layout.layout, s.model_hp)
    optimizer = (s.grads, s.state, s.scalars, s.opt_hp, s.segments)
    data = (prep.X_train, prep.Y_train, prep.labels_train)
    (n_x, n_y), work = (prep.X_train.shape[1], prep.Y_train.shape[1]), layout.workspace(s.batch)
    buffers = scratch(s.batch, n_x, n_y, prep.n_outputs, work, s.dtype)
    return model, s.loss_hp, optimizer, data, buffers


def eval_args(run, s: Setup) -> tuple:
    """``(model, loss_hp, data, chunk, scratch, tally)``: ``evaluate``'s arguments between the
    kernels and the flag, for the validation set; ``tally`` is ``s.tally``'s arrays, so the
    metrics read what ``evaluate`` fills."""
    prep, layout, dtype = run.dataset, run.layout, s.dtype
    model = (run.flat_params, layout.layout, s.model_hp)
    data = (prep.X_val, prep.Y_val, prep.labels_val)
    out = np.empty((s.chunk, prep.n_outputs), dtype=dtype)
    buffers = (np.empty(layout.workspace(s.chunk), dtype=dtype), out, np.empty_like(out))
    t = s.tally
    return model, s.loss_hp, data, s.chunk, buffers, (t.confusion, t.err_scale, t.sq_err, t.abs_err)


def fused_runner(run, s: Setup) -> Runner:
    """The run's epochs on the fused path: binds the kernels and compiles (or cache-loads) the
    epoch and the evaluation before returning, so no epoch pays for it."""
    k = bind_all(run.specs, s.dtype)
    watch = kernel_watch(run.specs)
    epoch_args = (*[k[r] for r in KERNEL_ORDER], *train_args(run, s), s.epoch_order(), s.batch,
                  watch.flag)  # fmt: skip
    eval_all = (k["forward"], k["loss"], *eval_args(run, s), watch.flag)
    ensure_compiled(train_epoch, (*epoch_args, 0, float(s.base_lr)))
    ensure_compiled(evaluate, eval_all)
    return Runner(
        epoch=lambda t, lr: watch.call(train_epoch, *epoch_args, t, lr),
        evaluate=lambda: watch.call(evaluate, *eval_all),
    )
