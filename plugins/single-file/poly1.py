"""A NumPy-only single-file lossbench plugin: the Poly-1 loss, ``loss=poly1 loss.epsilon=1``.

It gives no numba kernel, only the NumPy reference, so runs that use it train on the slow path
(a Python epoch; ``python -m lossbench plugins`` marks it "numpy only"). Start here, check it
with the conformance kit, and add a kernel when the speed matters.

Poly-1 (Leng et al. 2022, "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
Functions", ICLR, eq. 3) adds one term of the Taylor expansion of cross-entropy in (1 - p_t):

    l = -log p_k + epsilon (1 - p_k),   p = softmax(x), k the target class;  L = mean over rows;
    dl/dx_c = (p_c - [c == k]) (1 + epsilon p_k).

epsilon = 0 is cross-entropy.
"""

from dataclasses import dataclass

import numpy as np

import lossbench


@dataclass
class Options:
    epsilon: float = 1.0  # weight of the first polynomial term; the Hydra option loss.epsilon


def reference(pred, target, hp):
    """Poly-1 and its gradient in NumPy (stable log-softmax)."""
    epsilon = float(hp[0])
    x = pred.astype(np.float64)
    rows = len(x)
    k = target[:, 0].astype(np.int64)
    m = x.max(axis=1, keepdims=True)
    log_p = x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))
    p = np.exp(log_p)
    p_k = p[np.arange(rows), k]
    onehot = np.zeros_like(x)
    onehot[np.arange(rows), k] = 1.0
    loss = np.mean(-log_p[np.arange(rows), k] + epsilon * (1 - p_k))
    return float(loss), (p - onehot) * (1 + epsilon * p_k)[:, None] / rows


@lossbench.hookimpl
def register_losses(register):
    register(
        lossbench.LossSpec(
            name="poly1",
            options=Options,
            description="Poly-1 loss, cross-entropy plus epsilon (1 - p_t) (NumPy only)",
            kernel=None,  # no numba kernel: the slow path
            reference=reference,
            target="class_index",
            pack=lambda options: [options.epsilon],
        )
    )
