"""Built-in losses: mse, mae, huber, bce, cross_entropy (mean reduction, as in PyTorch).

Each loss has a numba kernel with the canonical loss signature (see ``lossbench.specs``) and a
NumPy reference with the same meaning. Kernels accumulate the loss in float64 and return it;
they write the gradient of the *mean* loss into ``grad``.

References: PyTorch documentation of torch.nn.MSELoss, L1Loss, HuberLoss, BCEWithLogitsLoss and
CrossEntropyLoss (label smoothing: Szegedy et al. 2016, "Rethinking the Inception Architecture",
section 7, in the form PyTorch implements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from lossbench.errors import ConfigError
from lossbench.hookspecs import hookimpl
from lossbench.specs import LossSpec

# ---------------------------------------------------------------------------------------------
# mse


@njit(cache=True, nogil=True)
def mse_kernel(pred, target, hp, grad):
    """Mean squared error.

    L = 1/N * sum_ij (p_ij - y_ij)^2, N = rows * cols;  dL/dp_ij = 2 (p_ij - y_ij) / N.
    """
    rows, cols = pred.shape
    scale = 2.0 / (rows * cols)
    total = 0.0
    for i in range(rows):
        for j in range(cols):
            d = pred[i, j] - target[i, j]
            total += d * d
            grad[i, j] = scale * d
    return total / (rows * cols)


def mse_unreduced(pred, target, hp):
    """(p - y)^2 of every element, in the inputs' dtype."""
    d = pred - target
    return d * d


def mse_reference(pred, target, hp):
    d = pred - target
    return float(np.mean(mse_unreduced(pred, target, hp))), 2.0 * d / d.size


# ---------------------------------------------------------------------------------------------
# mae


@njit(cache=True, nogil=True)
def mae_kernel(pred, target, hp, grad):
    """Mean absolute error (PyTorch's L1Loss).

    L = 1/N * sum_ij |p_ij - y_ij|;  dL/dp_ij = sign(p_ij - y_ij) / N, with sign(0) = 0 as in
    PyTorch's autograd of abs.
    """
    rows, cols = pred.shape
    scale = 1.0 / (rows * cols)
    total = 0.0
    for i in range(rows):
        for j in range(cols):
            d = pred[i, j] - target[i, j]
            total += abs(d)
            if d > 0:
                grad[i, j] = scale
            elif d < 0:
                grad[i, j] = -scale
            else:
                grad[i, j] = 0.0
    return total / (rows * cols)


def mae_unreduced(pred, target, hp):
    """|p - y| of every element, in the inputs' dtype."""
    return np.abs(pred - target)


def mae_reference(pred, target, hp):
    d = pred - target
    return float(np.mean(mae_unreduced(pred, target, hp))), np.sign(d) / d.size


# ---------------------------------------------------------------------------------------------
# huber


@dataclass
class HuberOptions:
    delta: float = 1.0


def _check_huber(options):
    if not options.delta > 0:
        raise ConfigError(
            f"loss.delta={options.delta} is not allowed: the Huber threshold must be > 0. "
            "Fix: pass a positive value, e.g. loss.delta=1.0."
        )


@njit(cache=True, nogil=True)
def huber_kernel(pred, target, hp, grad):
    """Huber loss with threshold delta = hp[0] (PyTorch's HuberLoss).

    l(d) = d^2 / 2 if |d| <= delta else delta (|d| - delta / 2), d = p - y;
    L = mean l;  dl/dd = d if |d| <= delta else delta sign(d).
    """
    delta = hp[0]
    rows, cols = pred.shape
    scale = 1.0 / (rows * cols)
    total = 0.0
    for i in range(rows):
        for j in range(cols):
            d = pred[i, j] - target[i, j]
            a = abs(d)
            if a <= delta:
                total += 0.5 * d * d
                grad[i, j] = scale * d
            else:
                total += delta * (a - 0.5 * delta)
                grad[i, j] = scale * delta * (1.0 if d > 0 else -1.0)
    return total * scale


def huber_unreduced(pred, target, hp):
    """The Huber loss of every element: d^2 / 2 within delta = hp[0], linear beyond."""
    delta = hp[0]
    d = pred - target
    a = np.abs(d)
    return np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))


def huber_reference(pred, target, hp):
    delta = hp[0]
    d = pred - target
    grad = np.where(np.abs(d) <= delta, d, delta * np.sign(d)) / d.size
    return float(np.mean(huber_unreduced(pred, target, hp))), grad


# ---------------------------------------------------------------------------------------------
# bce (on logits)


@njit(cache=True, nogil=True)
def bce_kernel(pred, target, hp, grad):
    """Binary cross-entropy on logits (PyTorch's BCEWithLogitsLoss), numerically stable.

    l(x, y) = -[y log s(x) + (1 - y) log(1 - s(x))] = max(x, 0) - x y + log(1 + exp(-|x|));
    dl/dx = s(x) - y, with s the logistic sigmoid; L = mean l.
    """
    rows, cols = pred.shape
    scale = 1.0 / (rows * cols)
    total = 0.0
    for i in range(rows):
        for j in range(cols):
            x = float(pred[i, j])
            y = float(target[i, j])
            total += max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))
            if x >= 0:
                s = 1.0 / (1.0 + math.exp(-x))
            else:
                e = math.exp(x)
                s = e / (1.0 + e)
            grad[i, j] = scale * (s - y)
    return total * scale


def bce_unreduced(pred, target, hp):
    """The binary cross-entropy of every logit, in float64 (the stable form of the kernel)."""
    x = pred.astype(np.float64)
    y = target.astype(np.float64)
    return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def bce_reference(pred, target, hp):
    x = pred.astype(np.float64)
    y = target.astype(np.float64)
    from scipy.special import expit  # stable logistic sigmoid, exact for large |x|

    return float(np.mean(bce_unreduced(pred, target, hp))), (expit(x) - y) / x.size


# ---------------------------------------------------------------------------------------------
# cross_entropy (on logits, class-index targets)


@dataclass
class CrossEntropyOptions:
    label_smoothing: float = 0.0


def _check_ce(options):
    if not 0.0 <= options.label_smoothing <= 1.0:
        raise ConfigError(
            f"loss.label_smoothing={options.label_smoothing} is not allowed: it must lie in "
            "[0, 1]. Fix: pass e.g. loss.label_smoothing=0.1 (0 turns smoothing off)."
        )


@njit(cache=True, nogil=True, error_model="numpy")
def cross_entropy_kernel(pred, target, hp, grad):
    """Cross-entropy on logits with class-index targets (PyTorch's CrossEntropyLoss).

    For a row of logits x (C classes), target class k and smoothing e = hp[0]:
    lse = m + log sum_c exp(x_c - m), m = max_c x_c (stable log-sum-exp);
    l = (1 - e) (lse - x_k) + e (lse - mean_c x_c);
    dl/dx_c = softmax(x)_c - (1 - e) [c == k] - e / C;  L = mean over rows,
    with softmax(x)_c = exp(x_c - m) / sum_c' exp(x_c' - m).
    """
    eps = hp[0]
    rows, cols = pred.shape
    scale = 1.0 / rows
    total = 0.0
    # exp(x_c - m) once per element, kept in float64: softmax_c = exp(x_c - m) / s. (exp is a
    # scalar libm call; computing it twice, as exp(x_c - m) and exp(x_c - lse), was a quarter
    # of a 20-32-3 epoch, benchmarks/epoch_breakdown.py.)
    e = np.empty(cols, np.float64)
    for i in range(rows):
        m = -np.inf
        for j in range(cols):
            if pred[i, j] > m:
                m = float(pred[i, j])
        s = 0.0
        mean_x = 0.0
        for j in range(cols):
            ej = math.exp(pred[i, j] - m)
            e[j] = ej
            s += ej
            mean_x += pred[i, j]
        mean_x /= cols
        lse = m + math.log(s)
        k = int(target[i, 0])
        total += (1.0 - eps) * (lse - pred[i, k]) + eps * (lse - mean_x)
        inv_s = 1.0 / s
        smooth = eps / cols
        for j in range(cols):
            g = e[j] * inv_s - smooth
            if j == k:
                g -= 1.0 - eps
            grad[i, j] = scale * g
    return total * scale


def _log_sum_exp(x):
    """log sum_c exp(x_c) of every row, stable (the row's maximum taken out first)."""
    m = x.max(axis=1, keepdims=True)
    return m[:, 0] + np.log(np.exp(x - m).sum(axis=1))


def cross_entropy_unreduced(pred, target, hp):
    """The (smoothed) cross-entropy of every row, in float64: (rows,)."""
    eps = hp[0]
    x = pred.astype(np.float64)
    k = target[:, 0].astype(np.int64)
    lse = _log_sum_exp(x)
    nll = lse - x[np.arange(len(x)), k]
    return (1 - eps) * nll + eps * (lse - x.mean(axis=1))


def cross_entropy_reference(pred, target, hp):
    eps = hp[0]
    x = pred.astype(np.float64)
    rows, cols = x.shape
    k = target[:, 0].astype(np.int64)
    loss = np.mean(cross_entropy_unreduced(pred, target, hp))
    onehot = np.zeros_like(x)
    onehot[np.arange(rows), k] = 1.0
    grad = (np.exp(x - _log_sum_exp(x)[:, None]) - (1 - eps) * onehot - eps / cols) / rows
    return float(loss), grad


@dataclass
class NoOptions:
    pass


# What explain prints and docs/losses.md repeats: one term's loss and its derivative (p: the
# model's output, y: the target in the loss's layout; the reduction divides their sum).
FORMULAS = {
    "mse": "l_ij = (p_ij - y_ij)^2;  dl_ij/dp_ij = 2 (p_ij - y_ij)",
    "mae": "l_ij = |p_ij - y_ij|;  dl_ij/dp_ij = sign(p_ij - y_ij), with sign(0) = 0",
    "huber": (
        "d = p_ij - y_ij, delta = loss.delta;\n"
        "l_ij = d^2 / 2 if |d| <= delta, else delta (|d| - delta / 2);\n"
        "dl_ij/dp_ij = d if |d| <= delta, else delta sign(d)"
    ),
    "bce": (
        "x = p_ij is a logit (the model's raw output: the sigmoid s is inside the loss), y in "
        "{0, 1};\n"
        "l_ij = -[y log s(x) + (1 - y) log(1 - s(x))] = max(x, 0) - x y + log(1 + exp(-|x|));\n"
        "dl_ij/dx = s(x) - y"
    ),
    "cross_entropy": (
        "x = p_i, a row of C logits; k = y_i, its class; e = loss.label_smoothing;\n"
        "lse = log sum_c exp(x_c);  l_i = (1 - e) (lse - x_k) + e (lse - mean_c x_c)\n"
        "(e = 0: l_i = -log softmax(x)_k; e > 0: the target is (1 - e) one-hot(k) + e / C);\n"
        "dl_i/dx_c = softmax(x)_c - (1 - e) [c == k] - e / C"
    ),
}

LOSSES = [
    LossSpec(
        name="mse",
        options=NoOptions,
        description="mean squared error (torch.nn.MSELoss)",
        kernel=mse_kernel,
        reference=mse_reference,
        target="values",
        formula=FORMULAS["mse"],
        reduction="elements",
        unreduced=mse_unreduced,
    ),
    LossSpec(
        name="mae",
        options=NoOptions,
        description="mean absolute error (torch.nn.L1Loss)",
        kernel=mae_kernel,
        reference=mae_reference,
        target="values",
        formula=FORMULAS["mae"],
        reduction="elements",
        unreduced=mae_unreduced,
    ),
    LossSpec(
        name="huber",
        options=HuberOptions,
        description="Huber loss with threshold delta (torch.nn.HuberLoss)",
        kernel=huber_kernel,
        reference=huber_reference,
        target="values",
        pack=lambda o: [o.delta],
        check=_check_huber,
        formula=FORMULAS["huber"],
        reduction="elements",
        unreduced=huber_unreduced,
    ),
    LossSpec(
        name="bce",
        options=NoOptions,
        description="binary cross-entropy on logits (torch.nn.BCEWithLogitsLoss)",
        kernel=bce_kernel,
        reference=bce_reference,
        target="binary",
        formula=FORMULAS["bce"],
        reduction="elements",
        unreduced=bce_unreduced,
    ),
    LossSpec(
        name="cross_entropy",
        options=CrossEntropyOptions,
        description="cross-entropy on logits, class targets (torch.nn.CrossEntropyLoss)",
        kernel=cross_entropy_kernel,
        reference=cross_entropy_reference,
        target="class_index",
        pack=lambda o: [o.label_smoothing],
        check=_check_ce,
        formula=FORMULAS["cross_entropy"],
        reduction="rows",
        unreduced=cross_entropy_unreduced,
    ),
]


@hookimpl
def register_losses(register):
    for spec in LOSSES:
        register(spec)
