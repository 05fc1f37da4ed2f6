"""NAdam for lossbench: ``optimizer=nadam``, an optimizer with scalar state.

NAdam is Adam with Nesterov momentum (Dozat 2016, "Incorporating Nesterov Momentum into Adam",
ICLR workshop), with the momentum schedule mu_t = beta1 (1 - 0.5 * 0.96^(t psi)) as
torch.optim.NAdam implements it (psi = momentum_decay). Its bias correction divides by
1 - prod_{k<=t} mu_k, a running product over every step so far: kept as one float64 value of
scalar state (``scalars[0]``), so a step costs the same at step 10 and at step 10,000.
Recomputing the product from ``t`` instead would cost O(t) per step; the conformance kit's
``step_cost_does_not_grow_with_t`` catches that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lossbench
import numpy as np
from lossbench.errors import ConfigError
from numba import njit


@dataclass
class NAdamOptions:
    lr: float = 0.002  # every optimizer has a float lr: the engine schedules it
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum_decay: float = 0.004  # psi in mu_t = beta1 (1 - 0.5 * 0.96^(t psi))
    decoupled_weight_decay: bool = False  # True: AdamW-style decay (NAdamW)


def check(options: NAdamOptions) -> None:
    """Refuse values NAdam cannot take, naming the option and a value that works."""
    rules = [
        ("lr", options.lr > 0, "the learning rate must be > 0", "0.002"),
        ("beta1", 0 <= options.beta1 < 1, "it must lie in [0, 1)", "0.9"),
        ("beta2", 0 <= options.beta2 < 1, "it must lie in [0, 1)", "0.999"),
        ("eps", options.eps >= 0, "it must be >= 0", "1e-8"),
        ("weight_decay", options.weight_decay >= 0, "it must be >= 0", "0"),
        ("momentum_decay", options.momentum_decay >= 0, "it must be >= 0", "0.004"),
    ]
    for key, ok, rule, example in rules:
        if not ok:
            raise ConfigError(
                f"optimizer.{key}={getattr(options, key)} is not allowed: {rule}. Fix: pass e.g. "
                f"optimizer.{key}={example}."
            )


def pack(options: NAdamOptions) -> list[float]:
    """hp = [beta1, beta2, eps, weight_decay, momentum_decay, decoupled] (lr is passed apart)."""
    return [options.beta1, options.beta2, options.eps, options.weight_decay, options.momentum_decay,
            float(options.decoupled_weight_decay)]  # fmt: skip


def init_scalars(scalars: np.ndarray, options: NAdamOptions) -> None:
    """The running product of momentum factors starts at 1 (an empty product)."""
    scalars[0] = 1.0


@njit(cache=True, nogil=True, error_model="numpy")
def kernel(p, g, state, scalars, hp, t, lr):
    """NAdam (torch.optim.NAdam). state = [m, v]; scalars[0] = prod_{k<=t} mu_k.

        g <- g + lambda p                (or p <- p (1 - lr lambda) if decoupled)
        mu_t = beta1 (1 - 0.5 * 0.96^(t psi));  mu_{t+1} likewise
        P_t = P_{t-1} mu_t               (scalar state, float64)
        m <- beta1 m + (1 - beta1) g;    v <- beta2 v + (1 - beta2) g^2
        d = sqrt(v / (1 - beta2^t)) + eps
        p <- p - lr (1 - mu_t) / (1 - P_t) g / d - lr mu_{t+1} / (1 - P_t mu_{t+1}) m / d

    hp and lr arrive in float64: every constant is formed in float64 and rounded once to the
    dtype of p (as torch.optim does), so the loop runs in the run's dtype.
    """
    b1, b2, psi = hp[0], hp[1], hp[4]
    mu = b1 * (1.0 - 0.5 * 0.96 ** (t * psi))
    mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * psi))
    product = scalars[0] * mu
    scalars[0] = product
    f = p.dtype.type
    c_grad = f(lr * (1.0 - mu) / (1.0 - product))
    c_mom = f(lr * mu_next / (1.0 - product * mu_next))
    bc2, eps = f(1.0 - b2**t), f(hp[2])
    b1f, b2f, one_b1, one_b2 = f(b1), f(b2), f(1.0 - b1), f(1.0 - b2)
    l2 = f(0.0)
    if hp[5] != 0:
        if hp[3] != 0:
            decay = f(1.0 - lr * hp[3])
            for i in range(p.shape[0]):
                p[i] *= decay
    else:
        l2 = f(hp[3])
    m, v = state[0], state[1]
    for i in range(p.shape[0]):
        gi = g[i] + l2 * p[i]
        mi = b1f * m[i] + one_b1 * gi
        vi = b2f * v[i] + one_b2 * gi * gi
        m[i] = mi
        v[i] = vi
        d = math.sqrt(vi / bc2) + eps
        p[i] = (p[i] - c_grad * gi / d) - c_mom * mi / d


def reference(p, g, state, scalars, hp, t, lr):
    """NAdam in NumPy (the same update, vectorised)."""
    b1, b2, eps, wd, psi, decoupled = (float(x) for x in hp[:6])
    if wd != 0:
        if decoupled:
            p *= 1 - lr * wd
        else:
            g = g + wd * p
    mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
    scalars[0] *= mu
    product = scalars[0]
    state[0] = b1 * state[0] + (1 - b1) * g
    state[1] = b2 * state[1] + (1 - b2) * g * g
    d = np.sqrt(state[1] / (1 - b2**t)) + eps
    p -= lr * (1 - mu) / (1 - product) * g / d
    p -= lr * mu_next / (1 - product * mu_next) * state[0] / d


NADAM = lossbench.OptimizerSpec(
    name="nadam",
    options=NAdamOptions,
    description="NAdam, Adam with Nesterov momentum (torch.optim.NAdam)",
    kernel=kernel,
    reference=reference,
    state_rows=2,  # m and v, one row each as long as the parameters
    scalar_slots=1,  # the running product of momentum factors
    init_scalars=init_scalars,
    pack=pack,
    check=check,
    api=2,  # the plugin interface version (lossbench.specs.PLUGIN_API) this is written for
)


@lossbench.hookimpl
def register_optimizers(register):
    register(NADAM)
