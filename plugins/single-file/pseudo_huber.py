"""A single-file lossbench plugin: the pseudo-Huber loss, ``loss=pseudo_huber loss.delta=1``.

Drop this file into a directory and run ``python -m lossbench --plugins-dir DIR
loss=pseudo_huber`` (or set ``LOSSBENCH_PLUGINS_DIR=DIR``). The pseudo-Huber loss (Charbonnier
et al. 1997; Hartley & Zisserman, "Multiple View Geometry", 2nd ed., A6.8) is a smooth Huber
loss: quadratic for |d| << delta, linear with slope delta for |d| >> delta, and infinitely
differentiable in between, so its gradient has no kink.
"""

from dataclasses import dataclass

import numpy as np
from numba import njit

import lossbench
from lossbench.errors import ConfigError


@dataclass
class Options:
    delta: float = 1.0  # where quadratic turns linear; the Hydra option loss.delta


def check(options: Options) -> None:
    if not options.delta > 0:
        raise ConfigError(
            f"loss.delta={options.delta} is not allowed: it must be > 0. Fix: pass e.g. "
            "loss.delta=1."
        )


@njit(cache=True, nogil=True)
def kernel(pred, target, hp, grad):
    """Pseudo-Huber loss with delta = hp[0], mean over all N = rows x cols elements.

    l(d) = delta^2 (sqrt(1 + (d / delta)^2) - 1), d = p - y;  L = mean l;
    dl/dd = d / sqrt(1 + (d / delta)^2).
    """
    delta = hp[0]
    rows, cols = pred.shape
    scale = 1.0 / (rows * cols)
    total = 0.0
    for i in range(rows):
        for j in range(cols):
            d = float(pred[i, j]) - float(target[i, j])
            root = np.sqrt(1.0 + (d / delta) ** 2)
            total += delta * delta * (root - 1.0)
            grad[i, j] = scale * d / root
    return total * scale


def reference(pred, target, hp):
    """The same loss and gradient in NumPy."""
    delta = float(hp[0])
    d = pred.astype(np.float64) - target
    root = np.sqrt(1 + (d / delta) ** 2)
    return float(np.mean(delta**2 * (root - 1))), d / root / d.size


@lossbench.hookimpl
def register_losses(register):
    register(
        lossbench.LossSpec(
            name="pseudo_huber",
            options=Options,
            description="pseudo-Huber loss, a smooth Huber (single-file plugin example)",
            kernel=kernel,
            reference=reference,
            target="values",
            pack=lambda options: [options.delta],
            check=check,
        )
    )
