"""RAdam and a Poisson negative log-likelihood, as a plugin author writes them (tests/
test_planted_bugs.py holds them to the conformance kit and to torch's values), and six copies
that each carry one planted bug: a hyperparameter read from a global, an input modified only
after the step-count branch, bias correction missing in kernel and reference alike, a gradient
twice too large, a scalar-state slot never written back, and a step that costs O(t).

RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and Beyond"; as
torch.optim.RAdam): scalars = [beta1^t, beta2^t] (running products), state = [m, v];

    m <- beta1 m + (1 - beta1) g;   v <- beta2 v + (1 - beta2) g^2;   m_hat = m / (1 - beta1^t)
    rho_inf = 2 / (1 - beta2) - 1;   rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
    rho_t > 5:  p <- p - lr r_t m_hat sqrt(1 - beta2^t) / (sqrt(v) + eps),
                r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
    else:       p <- p - lr m_hat

Poisson NLL with log input (torch.nn.PoissonNLLLoss(log_input=True)): L = mean(exp(x) - y x),
dL/dx = (exp(x) - y) / N.
"""

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from numba import njit

import lossbench


@dataclass
class RAdamOptions:
    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


def pack(options):
    return [options.beta1, options.beta2, options.eps]


def init_scalars(scalars, hp):
    scalars[:] = 1.0  # empty products


@njit(cache=True, inline="always")
def _rectification(rho_t, rho_inf):
    return math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))


@njit(cache=True)
def radam_kernel(p, g, state, scalars, hp, t, lr):
    """RAdam (above); hp = [beta1, beta2, eps], scalars = [beta1^t, beta2^t]."""
    b1, b2 = hp[0], hp[1]
    scalars[0] *= b1
    scalars[1] *= b2
    bc1, bc2 = 1.0 - scalars[0], 1.0 - scalars[1]
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho_t = rho_inf - 2.0 * t * scalars[1] / bc2
    f = p.dtype.type
    rectified = rho_t > 5.0
    c = lr / bc1 * (_rectification(rho_t, rho_inf) * math.sqrt(bc2) if rectified else 1.0)
    step, eps, b1f, b2f, one_b1, one_b2 = f(c), f(hp[2]), f(b1), f(b2), f(1 - b1), f(1 - b2)
    m, v = state[0], state[1]
    for i in range(p.shape[0]):
        m[i] = b1f * m[i] + one_b1 * g[i]
        v[i] = b2f * v[i] + one_b2 * g[i] * g[i]
        p[i] -= step * m[i] / (math.sqrt(v[i]) + eps) if rectified else step * m[i]


def radam_reference(p, g, state, scalars, hp, t, lr):
    """RAdam in NumPy."""
    _radam_numpy(p, g, state, scalars, hp, t, lr, bias_correction=True)


def _radam_numpy(p, g, state, scalars, hp, t, lr, bias_correction):
    b1, b2, eps = (float(x) for x in hp[:3])
    scalars *= [b1, b2]
    bc1 = 1 - scalars[0] if bias_correction else 1.0
    bc2 = 1 - scalars[1]
    state[0] = b1 * state[0] + (1 - b1) * g
    state[1] = b2 * state[1] + (1 - b2) * g * g
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * scalars[1] / bc2
    if rho_t > 5:
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2)
                                                                 * rho_t))  # fmt: skip
        p -= lr * rect * math.sqrt(bc2) / bc1 * state[0] / (np.sqrt(state[1]) + eps)
    else:
        p -= lr / bc1 * state[0]


RADAM = lossbench.OptimizerSpec(
    name="radam", options=RAdamOptions, description="RAdam (torch.optim.RAdam)",
    kernel=radam_kernel, reference=radam_reference, state_rows=2, scalar_slots=2,
    init_scalars=init_scalars, pack=pack,
)  # fmt: skip


@dataclass
class NoOptions:
    pass


@njit(cache=True)
def poisson_nll_kernel(pred, target, hp, grad):
    """L = mean(exp(x) - y x), dL/dx = (exp(x) - y) / N."""
    rows, cols = pred.shape
    n = rows * cols
    total = 0.0
    for i in range(rows):
        for j in range(cols):
            e = math.exp(pred[i, j])
            total += e - target[i, j] * pred[i, j]
            grad[i, j] = (e - target[i, j]) / n
    return total / n


def poisson_nll_reference(pred, target, hp):
    return float(np.mean(np.exp(pred) - target * pred)), (np.exp(pred) - target) / pred.size


POISSON_NLL = lossbench.LossSpec(
    name="poisson_nll", options=NoOptions, description="Poisson NLL, log input",
    kernel=poisson_nll_kernel, reference=poisson_nll_reference, target="values",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the planted bugs, one per copy

BETA1 = 0.9


@njit(cache=True)
def global_beta1_kernel(p, g, state, scalars, hp, t, lr):
    """As radam_kernel, but beta1 is the module's BETA1: frozen when numba compiles."""
    hp2 = hp.copy()
    hp2[0] = BETA1
    radam_kernel(p, g, state, scalars, hp2, t, lr)


@njit(cache=True)
def late_mutation_kernel(p, g, state, scalars, hp, t, lr):
    """As radam_kernel, but once rectified (rho_t > 5, from step 6) it clips grads in place."""
    b2t = scalars[1] * hp[1]
    rho_inf = 2.0 / (1.0 - hp[1]) - 1.0
    if rho_inf - 2.0 * t * b2t / (1.0 - b2t) > 5.0:
        for i in range(g.shape[0]):
            g[i] = min(max(g[i], -1.0), 1.0)
    radam_kernel(p, g, state, scalars, hp, t, lr)


@njit(cache=True)
def no_bias_correction_kernel(p, g, state, scalars, hp, t, lr):
    """As radam_kernel, but m is not divided by 1 - beta1^t."""
    bc1 = 1.0 - scalars[0] * hp[0]
    radam_kernel(p, g, state, scalars, hp, t, lr * bc1)


def no_bias_correction_reference(p, g, state, scalars, hp, t, lr):
    """The same mistake in the reference: the kit's comparison cannot see it."""
    _radam_numpy(p, g, state, scalars, hp, t, lr, bias_correction=False)


@njit(cache=True)
def double_gradient_kernel(pred, target, hp, grad):
    """As poisson_nll_kernel, but the gradient is twice too large."""
    value = poisson_nll_kernel(pred, target, hp, grad)
    for i in range(grad.shape[0]):
        for j in range(grad.shape[1]):
            grad[i, j] *= 2.0
    return value


@njit(cache=True)
def stale_slot_kernel(p, g, state, scalars, hp, t, lr):
    """As radam_kernel, but beta2^t is computed and never written back to scalars[1]."""
    kept = scalars[1]
    radam_kernel(p, g, state, scalars, hp, t, lr)
    scalars[1] = kept


@njit(cache=True)
def recomputing_kernel(p, g, state, scalars, hp, t, lr):
    """As radam_kernel, but beta1^t and beta2^t are recomputed from t every step: O(t)."""
    b1t, b2t = 1.0, 1.0
    for _ in range(t - 1):
        b1t *= hp[0]
        b2t *= hp[1]
    scalars[0], scalars[1] = b1t, b2t
    radam_kernel(p, g, state, scalars, hp, t, lr)


BUGS = {
    "global_hyperparameter": dataclasses.replace(RADAM, kernel=global_beta1_kernel),
    "late_mutation": dataclasses.replace(RADAM, kernel=late_mutation_kernel),
    "bias_correction_missing_in_both": dataclasses.replace(
        RADAM, kernel=no_bias_correction_kernel, reference=no_bias_correction_reference),
    "factor_of_two_gradient": dataclasses.replace(POISSON_NLL, kernel=double_gradient_kernel),
    "stale_state_slot": dataclasses.replace(RADAM, kernel=stale_slot_kernel),
    "o_of_t_step": dataclasses.replace(RADAM, kernel=recomputing_kernel),
}  # fmt: skip


@lossbench.hookimpl
def register_optimizers(register):
    register(RADAM)


@lossbench.hookimpl
def register_losses(register):
    register(POISSON_NLL)
