"""The Lion optimizer for lossbench: ``optimizer=lion``.

Lion, "EvoLved Sign Momentum" (Chen, Liang, Huang, Real, Wang, Pham, Dong, Luong, Hsieh, Lu, Le
2023, "Symbolic Discovery of Optimization Algorithms", NeurIPS, Algorithm 2), found by program
search: every parameter moves by exactly ``lr`` per step, in the direction of the sign of an
interpolation between the momentum and the gradient. It keeps one state row (the momentum), half
of Adam's memory. Because every update has the size of the learning rate, Lion wants a learning
rate 3-10x smaller than AdamW's, and a weight decay 3-10x larger (the paper's advice; defaults
lr = 1e-4, beta1 = 0.9, beta2 = 0.99, weight_decay = 0 as in the paper's code).
"""

from __future__ import annotations

from dataclasses import dataclass

import lossbench
import numpy as np
from lossbench.errors import ConfigError
from numba import njit


@dataclass
class LionOptions:
    lr: float = 1e-4
    beta1: float = 0.9  # interpolation between momentum and gradient for the update direction
    beta2: float = 0.99  # decay of the momentum
    weight_decay: float = 0.0  # decoupled, as AdamW's


def _check_lion(options: LionOptions) -> None:
    rules = [
        ("lr", options.lr > 0, "the learning rate must be > 0", "1e-4"),
        ("beta1", 0 <= options.beta1 <= 1, "it must lie in [0, 1]", "0.9"),
        ("beta2", 0 <= options.beta2 < 1, "it must lie in [0, 1)", "0.99"),
        ("weight_decay", options.weight_decay >= 0, "it must be >= 0", "0.1"),
    ]
    for key, ok, rule, example in rules:
        if not ok:
            raise ConfigError(
                f"optimizer.{key}={getattr(options, key)} is not allowed: {rule}. Fix: pass e.g. "
                f"optimizer.{key}={example}."
            )


@njit(cache=True, nogil=True)
def lion_kernel(p, g, state, scalars, hp, t, lr):
    """Lion (Chen et al. 2023, Algorithm 2); hp = [beta1, beta2, weight_decay lambda];
    state[0] = momentum m (zeros at the start); no scalar state.

        c <- beta1 m + (1 - beta1) g          (update direction, interpolated)
        p <- p (1 - lr lambda) - lr sign(c)   (decoupled weight decay, then a step of size lr)
        m <- beta2 m + (1 - beta2) g          (momentum, updated after the step)

    sign(0) = 0, as torch.sign. hp and lr arrive in float64: the constants are formed in float64
    and rounded once to the dtype of p, in which the loop runs.
    """
    f = p.dtype.type
    b1, b2, zero, step_size = f(hp[0]), f(hp[1]), f(0.0), f(lr)
    one_b1, one_b2 = f(1.0 - hp[0]), f(1.0 - hp[1])
    decay = f(1.0 - lr * hp[2])
    m = state[0]
    for i in range(p.shape[0]):
        gi = g[i]
        c = b1 * m[i] + one_b1 * gi
        step = step_size if c > 0 else (-step_size if c < 0 else zero)
        p[i] = p[i] * decay - step
        m[i] = b2 * m[i] + one_b2 * gi


def lion_reference(p, g, state, scalars, hp, t, lr):
    """Lion in NumPy (same update, vectorised)."""
    b1, b2, wd = hp[0], hp[1], hp[2]
    c = b1 * state[0] + (1 - b1) * g
    p *= 1 - lr * wd
    p -= lr * np.sign(c)
    state[0] = b2 * state[0] + (1 - b2) * g


LION = lossbench.OptimizerSpec(
    name="lion",
    options=LionOptions,
    description="Lion, sign momentum (Chen et al. 2023); lr ~ AdamW's / 3-10",
    kernel=lion_kernel,
    reference=lion_reference,
    state_rows=1,
    pack=lambda options: [options.beta1, options.beta2, options.weight_decay],
    check=_check_lion,
    api=2,  # the plugin interface version (lossbench.specs.PLUGIN_API) this is written for
)


@lossbench.hookimpl
def register_optimizers(register):
    register(LION)
