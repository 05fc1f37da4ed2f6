"""Where the time of a small fused epoch goes: per-minibatch parts, call overheads, the
validation pass and the Python work between epochs.

    python benchmarks/epoch_breakdown.py                    # the three benchmark shapes, float32
    python benchmarks/epoch_breakdown.py --dtype float64 --cases 20-32-3

Everything runs in this one process on the arrays of a real ``lossbench.train`` run (the same
overrides as benchmarks/throughput.py): the script trains a few epochs with the fused epoch's
and the evaluation's arguments recorded, then times, each as the median of interleaved rounds:

- ``epoch``: ``fused.train_epoch`` as ``train`` calls it (kernels as function pointers);
- ``epoch, direct calls``: train_epoch's own code compiled again here with the kernels as
  plain numba functions (direct calls LLVM may inline): the difference is the price of the
  indirect calls;
- ``call overhead``: ``train_epoch`` / ``evaluate`` called on zero rows (Python -> compiled code:
  typing and unboxing 14 / 9 arguments, four of them KernelRefs, the rest grouped in tuples);
- the per-batch parts, each repeated in a compiled loop: row gather, forward, loss, accuracy
  count, backward, optimizer step; and the GEMMs of forward and backward alone (np.dot, i.e.
  OpenBLAS through scipy's cython_blas) against the same products as plain loops;
- ``evaluate``: the validation pass;
- ``between epochs``: what ``fit`` does in Python from the end of one validation pass to the
  start of the next epoch (learning rate, shuffle, metrics, ``on_epoch_end`` hooks), measured
  inside a real ``lossbench.train`` run.

Timings move with the load of the machine: the script prints the load average and the CPU other
processes used while it ran.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import types

import numpy as np
from numba import njit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import CASES, COMMON, busy_cpu_seconds  # noqa: E402


def record_args(overrides, epochs):
    """Train ``epochs`` epochs; return the last arguments of train_epoch and evaluate, the
    specs and the seconds spent between one epoch's validation end and the next epoch."""
    import lossbench
    from lossbench.training import fused

    seen, marks = {}, []
    real_epoch, real_eval = fused.train_epoch, fused.evaluate

    class Rec:
        def __init__(self, real, name):
            self.real, self.name = real, name

        def __call__(self, *args):
            if self.name == "epoch":
                marks.append(("start", time.perf_counter()))
            seen[self.name] = args
            out = self.real(*args)
            if self.name == "eval":
                marks.append(("end", time.perf_counter()))
            return out

        def __getattr__(self, name):
            return getattr(self.real, name)

    fused.train_epoch, fused.evaluate = Rec(real_epoch, "epoch"), Rec(real_eval, "eval")
    try:
        run = lossbench.train(overrides=[*overrides, f"trainer.epochs={epochs}"])
    finally:
        fused.train_epoch, fused.evaluate = real_epoch, real_eval
    between = [b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)
               if a[0] == "end" and b[0] == "start"]  # fmt: skip
    return seen["epoch"], seen["eval"], run, between


def _uncached_copy(dispatcher, **names):
    """``dispatcher``'s Python function compiled again here, not cached, with the globals in
    ``names`` replaced."""
    f = dispatcher.py_func
    copy = types.FunctionType(f.__code__, {**f.__globals__, **names}, f.__name__, f.__defaults__)
    return njit(nogil=True)(copy)


def direct_epoch():
    """fused.train_epoch's own loop (and its batch_loss and batch_update) compiled here for
    kernels given as numba functions: direct calls LLVM may inline, where train_epoch calls
    function pointers. Not cached: a dispatcher argument is typed by identity."""
    from lossbench.training import fused

    steps = {f.__name__: _uncached_copy(f) for f in (fused.batch_loss, fused.batch_update)}
    return _uncached_copy(fused.train_epoch, **steps)


@njit(nogil=True)
def gather_only(X, Y, order, batch_size, xb, yb):
    """fused.train_epoch's row gather (element loops; before commit "Fused epoch: row gather
    ..." it was one slice assignment per row, ``xb[i, :] = X[r]``)."""
    n = order.shape[0]
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        for i in range(m):
            r = order[start + i]
            for j in range(X.shape[1]):
                xb[i, j] = X[r, j]
            for j in range(Y.shape[1]):
                yb[i, j] = Y[r, j]


@njit(nogil=True)
def repeat_forward(forward, reps, params, layout, hp, x, work, out):
    for _ in range(reps):
        forward(params, layout, hp, x, work, out)


@njit(nogil=True)
def repeat_loss(loss, reps, out, y, hp, dout):
    s = 0.0
    for _ in range(reps):
        s += loss(out, y, hp, dout)
    return s


@njit(nogil=True)
def repeat_count(count, reps, out, labels, order):
    s = 0
    for _ in range(reps):
        s += count(out, labels, 0, order)
    return s


@njit(nogil=True)
def repeat_backward(backward, reps, params, layout, hp, x, work, dout, grads):
    for _ in range(reps):
        backward(params, layout, hp, x, work, dout, grads)


@njit(nogil=True)
def repeat_step(step, reps, params, grads, state, scalars, hp, t, lr):
    for i in range(reps):
        step(params, grads, state, scalars, hp, t + i, lr)


@njit(nogil=True)
def gemm_blas(reps, a, b, c, kind):
    """c = a @ b (kind 0), a.T @ b (1: a stored (m, k)), a @ b.T (2: b stored (n, k))."""
    for _ in range(reps):
        if kind == 0:
            np.dot(a, b, c)
        elif kind == 1:
            np.dot(a.T, b, c)
        else:
            np.dot(a, b.T, c)


@njit(nogil=True, error_model="numpy")
def gemm_loops(reps, a, b, c, kind):
    """The same products as plain loops, the innermost loop over contiguous memory."""
    for _ in range(reps):
        if kind == 0:  # c[i, :] = sum_k a[i, k] b[k, :]
            for i in range(c.shape[0]):
                for j in range(c.shape[1]):
                    c[i, j] = 0
                for k in range(a.shape[1]):
                    aik = a[i, k]
                    for j in range(c.shape[1]):
                        c[i, j] += aik * b[k, j]
        elif kind == 1:  # c = a.T b: c[k, :] += a[i, k] b[i, :]
            c[:, :] = 0
            for i in range(a.shape[0]):
                for k in range(a.shape[1]):
                    aik = a[i, k]
                    for j in range(c.shape[1]):
                        c[k, j] += aik * b[i, j]
        else:  # c = a b.T: c[i, k] = sum_j a[i, j] b[k, j]
            for i in range(c.shape[0]):
                for k in range(c.shape[1]):
                    s = c.dtype.type(0)
                    for j in range(a.shape[1]):
                        s += a[i, j] * b[k, j]
                    c[i, k] = s


def timeit(fn, reps):
    """Median seconds of ``fn()`` over ``reps`` calls, after one discarded call."""
    fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def gemm_rows(widths, m, dtype, reps):
    """(label, BLAS us, loops us) for every GEMM a batch of ``m`` rows runs."""
    rng = np.random.default_rng(0)
    rows = []
    for l, (k, n) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        shapes = [
            (f"fwd  z{l} = a{l - 1}({m}x{k}) W{l}({k}x{n})", (m, k), (k, n), (m, n), 0),
            (f"bwd dW{l} = a{l - 1}.T dz{l} ({k}x{m}x{n})", (m, k), (m, n), (k, n), 1),
        ]
        if l > 0:
            shapes.append(
                (f"bwd da{l - 1} = dz{l} W{l}.T ({m}x{n}x{k})", (m, n), (k, n), (m, k), 2)
            )
        for label, sa, sb, sc, kind in shapes:
            a, b = rng.normal(size=sa).astype(dtype), rng.normal(size=sb).astype(dtype)
            c = np.empty(sc, dtype)
            t_blas = timeit(lambda a=a, b=b, c=c, kind=kind: gemm_blas(reps, a, b, c, kind), 7)
            t_loop = timeit(lambda a=a, b=b, c=c, kind=kind: gemm_loops(reps, a, b, c, kind), 7)
            rows.append((label, t_blas / reps * 1e6, t_loop / reps * 1e6))
    return rows


def breakdown(case, optimizer, dtype, rounds):
    """Print the breakdown of one case."""
    from lossbench.builtin.models import mlp_backward, mlp_forward
    from lossbench.training import fused

    overrides = [*COMMON, *case.overrides, f"optimizer={optimizer}", f"trainer.dtype={dtype}",
                 f"trainer.batch_size={case.batch}"]  # fmt: skip
    ep, ev, run, between = record_args(overrides, 30)
    (fwd, bwd, loss, step, model, lhp, optimizer, data, scratch, order, batch, failed, t,
     lr) = ep  # fmt: skip
    (params, layout, mhp), (grads, state, scalars, ohp, segments) = model, optimizer
    (X, Y, labels), (work, xb, yb, out, dout) = data, scratch
    n_batches = math.ceil(len(order) / batch)
    specs = run.specs
    lk, ok = specs["loss"].kernel, specs["optimizer"].kernel
    xb[:], yb[:] = X[order[:batch]], Y[order[:batch]]
    mlp_forward(params, layout, mhp, xb, work, out)
    lk(out, yb, lhp, dout)
    ep0 = (*ep[:9], order[:0], *ep[10:])
    val_data = ev[4]
    ev0 = (*ev[:4], tuple(a[:0] for a in val_data), *ev[5:])
    # a scratch copy of the parameters and state for the parts that update them
    p2, s2, c2 = params.copy(), state.copy(), scalars.copy()
    direct = direct_epoch()
    copies = (p2, layout, mhp), lhp, (grads, s2, c2, ohp, segments)
    direct_args = (mlp_forward, mlp_backward, lk, ok, *copies, *ep[7:])
    parts = {
        "epoch (fused.train_epoch, kernels as function pointers)": lambda: fused.train_epoch(*ep),
        "epoch, direct calls (same loop, kernels inlinable)": lambda: direct(*direct_args),
        "call overhead: train_epoch on 0 rows (Python -> compiled)": lambda: fused.train_epoch(
            *ep0
        ),
        "call overhead: evaluate on 0 rows": lambda: fused.evaluate(*ev0),
        "row gather (all batches)": lambda: gather_only(X, Y, order, batch, xb, yb),
        "forward (x n_batches)": lambda: repeat_forward(
            mlp_forward, n_batches, params, layout, mhp, xb, work, out
        ),
        "loss + gradient (x n_batches)": lambda: repeat_loss(lk, n_batches, out, yb, lhp, dout),
        "accuracy count (x n_batches)": lambda: repeat_count(
            fused._count_correct, n_batches, out, labels, order
        ),
        "backward (x n_batches)": lambda: repeat_backward(
            mlp_backward, n_batches, params, layout, mhp, xb, work, dout, grads
        ),
        "optimizer step (x n_batches)": lambda: repeat_step(
            ok, n_batches, p2, grads, s2, c2, ohp, 10, lr
        ),
        "evaluate (validation pass)": lambda: fused.evaluate(*ev),
    }
    for fn in parts.values():  # compile
        fn()
    times = {k: [] for k in parts}
    for _ in range(rounds):
        for k, fn in parts.items():
            times[k].append(timeit(fn, 5))
    med = {k: statistics.median(v) for k, v in times.items()}
    full = med["epoch (fused.train_epoch, kernels as function pointers)"]
    widths = [int(x) for x in layout[:, 0]] + [int(layout[-1, 1])]
    print(f"\n{case.label} {optimizer} {dtype}: {len(order)} rows, batch {batch}, {n_batches} "
          f"batches, {len(val_data[0])} validation rows")  # fmt: skip
    print(f"  {'part':62}{'us/epoch':>10}{'us/batch':>10}{'% epoch':>9}")
    for k, v in med.items():
        print(f"  {k:62}{v * 1e6:10.1f}{v * 1e6 / n_batches:10.2f}{v / full:9.1%}")
    if between:
        b = statistics.median(between[1:] or between)
        print(f"  {'between epochs in fit (Python: lr, shuffle, metrics, hooks)':62}"
              f"{b * 1e6:10.1f}{'':10}{b / full:9.1%}")  # fmt: skip
    print(f"  GEMMs of one batch of {batch} rows (us per call): np.dot (OpenBLAS) vs plain loops")
    total_blas = total_loop = 0.0
    for label, tb, tl in gemm_rows(widths, batch, np.dtype(dtype), max(1, 20000 // batch)):
        total_blas, total_loop = total_blas + tb, total_loop + tl
        print(f"    {label:44}{tb:9.2f}{tl:9.2f}  loops/blas {tl / tb:5.2f}")
    print(f"    {'all GEMMs of a batch':44}{total_blas:9.2f}{total_loop:9.2f}  "
          f"(x {n_batches} batches: {total_blas * n_batches:.0f} vs {total_loop * n_batches:.0f}"
          f" us per epoch)")  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="20-32-3,64-128-10,784-512-256-10")
    ap.add_argument("--optimizers", default="sgd,adam")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("LOSSBENCH_LOAD_PLUGINS", "")
    wanted = args.cases.split(",")
    print(f"epoch breakdown, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    b0, t0, c0 = busy_cpu_seconds(), time.perf_counter(), time.process_time()
    for case in CASES:
        if case.label.split()[0] in wanted:
            for opt in args.optimizers.split(","):
                breakdown(case, opt, args.dtype, args.rounds)
    wall = time.perf_counter() - t0
    other = (busy_cpu_seconds() - b0 - (time.process_time() - c0)) / wall
    print(
        f"\n(other processes used {max(other, 0):.2f} cores on average while this ran, "
        f"{wall:.0f} s; load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())})"
    )


if __name__ == "__main__":
    main()
