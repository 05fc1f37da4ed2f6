"""A plain NumPy training epoch with the same meaning as ``lossbench.engine.train_epoch``.

It calls each spec's NumPy references (model forward/backward, loss, optimizer step) batch by
batch. Tests hold the fused epoch to it; the benchmark reports its throughput beside the fused
one. Nothing here is on the fast path.
"""

from __future__ import annotations

import math


def reference_epoch(
    model, loss, optimizer, params, layout, model_hp, loss_hp, opt_hp, state, X, Y, order,
    batch_size, t, lr,
):  # fmt: skip
    """One epoch in NumPy; updates ``params``/``state`` in place.

    Returns (sum of batch loss x batch size, samples seen, step count) like the fused epoch
    (without the accuracy count)."""
    n = len(order)
    total, seen = 0.0, 0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        xb, yb = X[idx], Y[idx]
        out = model.reference_forward(params, layout, model_hp, xb)
        value, dout = loss.reference(out, yb, loss_hp)
        total += value * len(idx)
        seen += len(idx)
        if not math.isfinite(value):
            break
        grads = model.reference_backward(params, layout, model_hp, xb, dout.astype(params.dtype))
        t += 1
        optimizer.reference(params, grads.astype(params.dtype), state, opt_hp, t, lr)
    return total, seen, t
