"""Built-in optimizers: sgd, adam, adamw, rmsprop, adagrad, with torch.optim's update rules.

Each optimizer is one loop over the flat parameter vector ``p`` with gradient ``g``; its state is
a few rows of the same length (none needs scalar state: ``scalars`` is empty). ``t`` is the
1-based step count, ``lr`` this epoch's learning rate. ``hp`` and ``lr`` arrive in float64; as
torch.optim does, constants such as ``1 - beta2`` and the bias corrections are formed in float64
and rounded once to the parameters' dtype, so float32 runs follow PyTorch's float32 runs.
The pseudocode in each kernel's docstring is torch.optim's (PyTorch 2.x documentation of SGD,
Adam, AdamW, RMSprop and Adagrad; Kingma & Ba 2015; Loshchilov & Hutter 2019; Hinton's RMSprop
lecture 6e; Duchi et al. 2011). Betas are split into ``beta1`` and ``beta2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from lossbench.errors import ConfigError, require
from lossbench.hookspecs import hookimpl
from lossbench.specs import OptimizerSpec


def _require(cond: bool, key: str, value, rule: str, example: str) -> None:
    require(cond, f"optimizer.{key}", value, rule, example)


def _check_common(options) -> None:
    lr = options.lr  # inf passed "> 0" and then "diverged" every run
    _require(math.isfinite(lr) and lr > 0, "lr", lr, "it must be a finite number > 0", "0.001")
    decay = options.weight_decay
    _require(decay >= 0, "weight_decay", decay, "it must be >= 0", "0")
    if hasattr(options, "eps"):
        _require(options.eps >= 0, "eps", options.eps, "it must be >= 0", "1e-8")


# ---------------------------------------------------------------------------------------------
# sgd


@dataclass
class SGDOptions:
    lr: float = 0.01
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0


def _check_sgd(options) -> None:
    _check_common(options)
    _require(options.momentum >= 0, "momentum", options.momentum, "it must be >= 0", "0.9")
    if options.nesterov and (options.momentum <= 0 or options.dampening != 0):
        raise ConfigError(
            f"optimizer.nesterov=true needs momentum > 0 and dampening = 0 (got momentum="
            f"{options.momentum}, dampening={options.dampening}). Fix: pass optimizer.momentum=0.9 "
            "optimizer.dampening=0, or optimizer.nesterov=false."
        )


@njit(cache=True, nogil=True, error_model="numpy")
def sgd_kernel(p, g, state, scalars, hp, t, lr):
    """SGD with momentum, dampening, Nesterov and L2 weight decay (torch.optim.SGD).

    hp = [momentum mu, dampening tau, nesterov, weight_decay lambda]; state[0] = buffer b.
        g <- g + lambda p
        if mu != 0:  b <- g if t == 1 else mu b + (1 - tau) g
                     g <- g + mu b if nesterov else b
        p <- p - lr g
    The options are tested once, outside the loops, so each loop vectorises.
    """
    f = p.dtype.type  # constants in the parameters' dtype, formed in float64 (as torch.optim)
    mu, one_tau, nesterov, wd, lr_f = f(hp[0]), f(1.0 - hp[1]), hp[2] != 0, f(hp[3]), f(lr)
    buf = state[0]
    n = p.shape[0]
    if mu == 0:
        for i in range(n):
            p[i] -= lr_f * (g[i] + wd * p[i])
        return
    if t == 1:
        for i in range(n):
            buf[i] = g[i] + wd * p[i]
    else:
        for i in range(n):
            buf[i] = mu * buf[i] + one_tau * (g[i] + wd * p[i])
    if nesterov:
        for i in range(n):
            p[i] -= lr_f * (g[i] + wd * p[i] + mu * buf[i])
    else:
        for i in range(n):
            p[i] -= lr_f * buf[i]


def sgd_reference(p, g, state, scalars, hp, t, lr):
    mu, tau, nesterov, wd = hp[0], hp[1], hp[2] != 0, hp[3]
    g = g + wd * p
    if mu != 0:
        state[0] = g if t == 1 else mu * state[0] + (1 - tau) * g
        g = g + mu * state[0] if nesterov else state[0].copy()
    p -= lr * g


# ---------------------------------------------------------------------------------------------
# adam / adamw


@dataclass
class AdamOptions:
    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False


@dataclass
class AdamWOptions(AdamOptions):
    weight_decay: float = 0.01


def _check_adam(options) -> None:
    _check_common(options)
    for key in ("beta1", "beta2"):
        v = getattr(options, key)
        _require(0 <= v < 1, key, v, "it must lie in [0, 1)", "0.9" if key == "beta1" else "0.999")


def _pack_adam(options):
    return [options.beta1, options.beta2, options.eps, options.weight_decay, float(options.amsgrad)]


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_update(p, g, state, hp, t, lr, decoupled):
    """Shared body of Adam and AdamW (see their kernels).

    The options are resolved before the loops, and numpy's error model drops the division
    check: with branches inside it, the loop stayed scalar (1.1 ms against 0.09 ms per step for
    535k float32 parameters, measured in the benchmark)."""
    f = p.dtype.type  # the loop's constants: formed in float64, rounded once to p's dtype
    b1_64, b2_64, amsgrad = hp[0], hp[1], hp[4] != 0
    step_size = f(lr / (1.0 - b1_64**t))
    inv_bc2 = f(1.0 / math.sqrt(1.0 - b2_64**t))
    b1, b2, eps, wd = f(b1_64), f(b2_64), f(hp[2]), f(hp[3])
    one_b1, one_b2 = f(1.0 - b1_64), f(1.0 - b2_64)
    m = state[0]
    v = state[1]
    vmax = state[2]
    n = p.shape[0]
    l2 = f(0.0)
    if decoupled:
        if wd != 0:
            decay = f(1.0 - lr * hp[3])
            for i in range(n):
                p[i] *= decay
    else:
        l2 = wd
    if not amsgrad:
        for i in range(n):
            gi = g[i] + l2 * p[i]
            mi = b1 * m[i] + one_b1 * gi
            vi = b2 * v[i] + one_b2 * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] -= step_size * mi / (math.sqrt(vi) * inv_bc2 + eps)
    else:
        for i in range(n):
            gi = g[i] + l2 * p[i]
            mi = b1 * m[i] + one_b1 * gi
            vi = b2 * v[i] + one_b2 * gi * gi
            m[i] = mi
            v[i] = vi
            vm = max(vmax[i], vi)
            vmax[i] = vm
            p[i] -= step_size * mi / (math.sqrt(vm) * inv_bc2 + eps)


@njit(cache=True, nogil=True, error_model="numpy")
def adam_kernel(p, g, state, scalars, hp, t, lr):
    """Adam (torch.optim.Adam), L2 weight decay added to the gradient.

    hp = [beta1, beta2, eps, weight_decay lambda, amsgrad]; state = [m, v, v_max].
        g <- g + lambda p
        m <- beta1 m + (1 - beta1) g;   v <- beta2 v + (1 - beta2) g^2
        v_hat <- max(v_max, v) if amsgrad else v
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v_hat) / sqrt(1 - beta2^t) + eps)
    """
    _adam_update(p, g, state, hp, t, lr, False)


@njit(cache=True, nogil=True, error_model="numpy")
def adamw_kernel(p, g, state, scalars, hp, t, lr):
    """AdamW (torch.optim.AdamW): Adam with decoupled weight decay.

    As Adam without the L2 term, after first shrinking the weights: p <- p (1 - lr lambda).
    """
    _adam_update(p, g, state, hp, t, lr, True)


def _adam_reference(p, g, state, hp, t, lr, decoupled):
    b1, b2, eps, wd, amsgrad = hp[0], hp[1], hp[2], hp[3], hp[4] != 0
    if decoupled:
        p *= 1 - lr * wd
    elif wd != 0:
        g = g + wd * p
    state[0] = b1 * state[0] + (1 - b1) * g
    state[1] = b2 * state[1] + (1 - b2) * g * g
    v = state[1]
    if amsgrad:
        state[2] = np.maximum(state[2], state[1])
        v = state[2]
    denom = np.sqrt(v) / math.sqrt(1 - b2**t) + eps
    p -= lr / (1 - b1**t) * state[0] / denom


def adam_reference(p, g, state, scalars, hp, t, lr):
    _adam_reference(p, g, state, hp, t, lr, False)


def adamw_reference(p, g, state, scalars, hp, t, lr):
    _adam_reference(p, g, state, hp, t, lr, True)


# ---------------------------------------------------------------------------------------------
# rmsprop


@dataclass
class RMSpropOptions:
    lr: float = 0.01
    alpha: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    centered: bool = False


def _check_rmsprop(options) -> None:
    _check_common(options)
    _require(0 <= options.alpha <= 1, "alpha", options.alpha, "it must lie in [0, 1]", "0.99")
    _require(options.momentum >= 0, "momentum", options.momentum, "it must be >= 0", "0.9")


@njit(cache=True, nogil=True, error_model="numpy")  # no division check: vectorisable
def rmsprop_kernel(p, g, state, scalars, hp, t, lr):
    """RMSprop (torch.optim.RMSprop).

    hp = [alpha, eps, weight_decay lambda, momentum mu, centered]; state = [s, g_avg, b].
        g <- g + lambda p
        s <- alpha s + (1 - alpha) g^2
        if centered: g_avg <- alpha g_avg + (1 - alpha) g;  d = sqrt(s - g_avg^2) + eps
        else: d = sqrt(s) + eps
        if mu > 0: b <- mu b + g / d;  p <- p - lr b
        else: p <- p - lr g / d
    """
    f = p.dtype.type  # constants in the parameters' dtype, formed in float64 (as torch.optim)
    alpha, eps, wd, mu, centered = f(hp[0]), f(hp[1]), f(hp[2]), f(hp[3]), hp[4] != 0
    one_alpha, lr_f = f(1.0 - hp[0]), f(lr)
    sq = state[0]
    gavg = state[1]
    buf = state[2]
    for i in range(p.shape[0]):
        gi = g[i] + wd * p[i]
        s = alpha * sq[i] + one_alpha * gi * gi
        sq[i] = s
        if centered:
            ga = alpha * gavg[i] + one_alpha * gi
            gavg[i] = ga
            d = math.sqrt(s - ga * ga) + eps
        else:
            d = math.sqrt(s) + eps
        if mu > 0:
            b = mu * buf[i] + gi / d
            buf[i] = b
            p[i] -= lr_f * b
        else:
            p[i] -= lr_f * gi / d


def rmsprop_reference(p, g, state, scalars, hp, t, lr):
    alpha, eps, wd, mu, centered = hp[0], hp[1], hp[2], hp[3], hp[4] != 0
    g = g + wd * p
    state[0] = alpha * state[0] + (1 - alpha) * g * g
    if centered:
        state[1] = alpha * state[1] + (1 - alpha) * g
        d = np.sqrt(state[0] - state[1] ** 2) + eps
    else:
        d = np.sqrt(state[0]) + eps
    if mu > 0:
        state[2] = mu * state[2] + g / d
        p -= lr * state[2]
    else:
        p -= lr * g / d


# ---------------------------------------------------------------------------------------------
# adagrad


@dataclass
class AdagradOptions:
    lr: float = 0.01
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10


def _check_adagrad(options) -> None:
    _check_common(options)
    _require(options.lr_decay >= 0, "lr_decay", options.lr_decay, "it must be >= 0", "0")
    _require(
        options.initial_accumulator_value >= 0,
        "initial_accumulator_value",
        options.initial_accumulator_value,
        "it must be >= 0",
        "0.1",
    )


def _init_adagrad(state, options) -> None:
    state[0] = options.initial_accumulator_value


@njit(cache=True, nogil=True, error_model="numpy")  # no division check: vectorisable
def adagrad_kernel(p, g, state, scalars, hp, t, lr):
    """Adagrad (torch.optim.Adagrad).

    hp = [lr_decay eta, weight_decay lambda, eps]; state[0] = sum of squares S, initialised to
    initial_accumulator_value.
        g <- g + lambda p
        lr_t = lr / (1 + (t - 1) eta)
        S <- S + g^2
        p <- p - lr_t g / (sqrt(S) + eps)
    """
    f = p.dtype.type  # constants in the parameters' dtype, formed in float64 (as torch.optim)
    wd, eps = f(hp[1]), f(hp[2])
    clr = f(lr / (1 + (t - 1) * hp[0]))
    acc = state[0]
    for i in range(p.shape[0]):
        gi = g[i] + wd * p[i]
        s = acc[i] + gi * gi
        acc[i] = s
        p[i] -= clr * gi / (math.sqrt(s) + eps)


def adagrad_reference(p, g, state, scalars, hp, t, lr):
    eta, wd, eps = hp[0], hp[1], hp[2]
    g = g + wd * p
    clr = lr / (1 + (t - 1) * eta)
    state[0] += g * g
    p -= clr * g / (np.sqrt(state[0]) + eps)


OPTIMIZERS = [
    OptimizerSpec(
        name="sgd",
        options=SGDOptions,
        description="stochastic gradient descent with momentum (torch.optim.SGD)",
        kernel=sgd_kernel,
        reference=sgd_reference,
        state_rows=1,
        pack=lambda o: [o.momentum, o.dampening, float(o.nesterov), o.weight_decay],
        check=_check_sgd,
    ),
    OptimizerSpec(
        name="adam",
        options=AdamOptions,
        description="Adam (torch.optim.Adam)",
        kernel=adam_kernel,
        reference=adam_reference,
        state_rows=3,
        pack=_pack_adam,
        check=_check_adam,
    ),
    OptimizerSpec(
        name="adamw",
        options=AdamWOptions,
        description="Adam with decoupled weight decay (torch.optim.AdamW)",
        kernel=adamw_kernel,
        reference=adamw_reference,
        state_rows=3,
        pack=_pack_adam,
        check=_check_adam,
    ),
    OptimizerSpec(
        name="rmsprop",
        options=RMSpropOptions,
        description="RMSprop (torch.optim.RMSprop)",
        kernel=rmsprop_kernel,
        reference=rmsprop_reference,
        state_rows=3,
        pack=lambda o: [o.alpha, o.eps, o.weight_decay, o.momentum, float(o.centered)],
        check=_check_rmsprop,
    ),
    OptimizerSpec(
        name="adagrad",
        options=AdagradOptions,
        description="Adagrad (torch.optim.Adagrad)",
        kernel=adagrad_kernel,
        reference=adagrad_reference,
        state_rows=1,
        pack=lambda o: [o.lr_decay, o.weight_decay, o.eps],
        init_state=_init_adagrad,
        check=_check_adagrad,
    ),
]


@hookimpl
def register_optimizers(register):
    for spec in OPTIMIZERS:
        register(spec)
