"""Focal loss for lossbench: ``loss=focal`` (multi-class) and ``loss=binary_focal`` (two classes).

Focal loss (Lin, Goyal, Girshick, He, Dollar 2017, "Focal Loss for Dense Object Detection",
ICCV, eq. 5) scales the cross-entropy of each example by ``(1 - p_t)^gamma``, where ``p_t`` is the
probability the model gives the true class: easy, confidently right examples count less, hard
ones keep their weight. ``gamma`` = 0 gives the plain cross-entropy back; ``alpha`` weights
the terms.

- ``focal``: logits of C classes, class-index targets (softmax), ``alpha`` a scalar weight
  (1.0 = off). With gamma = 0 and alpha = 1 it is lossbench's ``cross_entropy`` exactly.
- ``binary_focal``: one logit column, 0/1 targets (sigmoid), ``alpha`` the weight of positives
  and ``1 - alpha`` that of negatives, as ``torchvision.ops.sigmoid_focal_loss`` (whose
  ``alpha=-1`` is ``loss.alpha=null`` here). With gamma = 0 and alpha null it is ``bce`` exactly.

Both take the mean over the batch, return it as float64 and write its gradient (already divided
by the batch size) into ``grad``, as every lossbench loss kernel does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lossbench
import numpy as np
from lossbench.errors import ConfigError
from numba import njit


@dataclass
class FocalOptions:
    gamma: float = 2.0  # focusing parameter, >= 0 (0: cross-entropy)
    alpha: float = 1.0  # a scalar weight of every term, > 0 (1.0: off)


@dataclass
class BinaryFocalOptions:
    gamma: float = 2.0  # focusing parameter, >= 0 (0: binary cross-entropy)
    alpha: float | None = 0.25  # weight of positives in [0, 1], negatives get 1 - alpha; null: off


def _check_gamma(options) -> None:
    if not options.gamma >= 0:
        raise ConfigError(
            f"loss.gamma={options.gamma} is not allowed: the focusing parameter must be >= 0. Fix: "
            "pass e.g. loss.gamma=2 (0 gives the plain cross-entropy)."
        )


def _check_focal(options: FocalOptions) -> None:
    _check_gamma(options)
    if not options.alpha > 0:
        raise ConfigError(
            f"loss.alpha={options.alpha} is not allowed: focal's alpha scales the loss and must be "
            "> 0. Fix: pass loss.alpha=1.0 (no weighting) or another positive weight."
        )


def _check_binary_focal(options: BinaryFocalOptions) -> None:
    _check_gamma(options)
    if options.alpha is not None and not 0.0 <= options.alpha <= 1.0:
        raise ConfigError(
            f"loss.alpha={options.alpha} is not allowed: the weight of positive examples must lie "
            "in [0, 1]. Fix: pass e.g. loss.alpha=0.25, or loss.alpha=null for no weighting."
        )


# ---------------------------------------------------------------------------------------------
# focal: multi-class, class-index targets


@njit(cache=True, nogil=True)
def focal_kernel(pred, target, hp, grad):
    """Multi-class focal loss on logits with class-index targets; hp = [gamma, alpha].

    For a row of logits x (C classes), target class k and p = softmax(x):
        l = -alpha (1 - p_k)^gamma log p_k,        L = mean over rows;
        dl/dx_c = alpha w (p_c - [c == k]),
        w = (1 - p_k)^gamma - gamma p_k (1 - p_k)^(gamma - 1) log p_k
    (chain rule through p_k, with dp_k/dx_c = p_k ([c == k] - p_c); w >= 0 as log p_k <= 0).
    log p_k = x_k - lse(x) uses the stable log-sum-exp, and q = 1 - p_k is summed as
    sum_{c != k} p_c so that it does not cancel when p_k -> 1; the second term of w tends to 0
    there and is 0 when q underflows. gamma = 0, alpha = 1 gives w = 1: cross_entropy, with the
    same operations in the same order, so the same bits.
    """
    gamma, alpha = hp[0], hp[1]
    rows, cols = pred.shape
    scale = 1.0 / rows
    total = 0.0
    e = np.empty(cols, np.float64)  # exp(x_c - m), once per element: p_c = e_c / s
    for i in range(rows):
        m = -np.inf
        for j in range(cols):
            if pred[i, j] > m:
                m = float(pred[i, j])
        s = 0.0
        for j in range(cols):
            ej = math.exp(pred[i, j] - m)
            e[j] = ej
            s += ej
        lse = m + math.log(s)
        inv_s = 1.0 / s
        k = int(target[i, 0])
        log_pk = pred[i, k] - lse
        q = 0.0
        for j in range(cols):
            if j != k:
                q += e[j] * inv_s
        qg = q**gamma
        total += alpha * qg * (lse - pred[i, k])
        w = qg
        if gamma != 0 and q > 0:
            w -= gamma * (e[k] * inv_s) * q ** (gamma - 1.0) * log_pk
        for j in range(cols):
            g = e[j] * inv_s
            if j == k:
                g -= 1.0
            grad[i, j] = scale * (alpha * w * g)
    return total * scale


def focal_reference(pred, target, hp):
    """The multi-class focal loss and its gradient in NumPy (same formulas, vectorised)."""
    gamma, alpha = float(hp[0]), float(hp[1])
    x = pred.astype(np.float64)
    rows = len(x)
    k = target[:, 0].astype(np.int64)
    m = x.max(axis=1, keepdims=True)
    log_p = x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))
    p = np.exp(log_p)
    onehot = np.zeros_like(x)
    onehot[np.arange(rows), k] = 1.0
    log_pk = log_p[np.arange(rows), k]
    q = np.where(onehot == 1, 0.0, p).sum(axis=1)
    loss = np.mean(alpha * q**gamma * -log_pk)
    with np.errstate(divide="ignore", invalid="ignore"):
        second = np.where(q > 0, gamma * np.exp(log_pk) * q ** (gamma - 1) * log_pk, 0.0)
    w = q**gamma - (second if gamma != 0 else 0.0)
    return float(loss), alpha * w[:, None] * (p - onehot) / rows


# ---------------------------------------------------------------------------------------------
# binary_focal: one logit column, 0/1 targets


@njit(cache=True, nogil=True)
def binary_focal_kernel(pred, target, hp, grad):
    """Binary focal loss on logits (torchvision.ops.sigmoid_focal_loss, reduction="mean");
    hp = [gamma, alpha], alpha < 0 meaning no weighting.

    For a logit x and a label y in {0, 1}, with s = sigmoid(x):
        ce  = max(x, 0) - x y + log(1 + exp(-|x|))       (binary cross-entropy, stable)
        q   = 1 - p_t = y (1 - s) + (1 - y) s             (probability of the wrong class)
        a_t = alpha y + (1 - alpha)(1 - y), or 1 when alpha < 0
        l   = a_t q^gamma ce,                             L = mean l;
        dl/dx = a_t [q^gamma (s - y) + gamma q^gamma (1 - q)(1 - 2y) ce]
    from dq/dx = s (1 - s)(1 - 2y) and s (1 - s) = q (1 - q) for y in {0, 1}, which keeps the
    derivative finite for gamma < 1 as q -> 0. s and 1 - s are both computed without
    cancellation. gamma = 0 with alpha off is bce, the same operations giving the same bits.
    """
    gamma, alpha = hp[0], hp[1]
    rows, cols = pred.shape
    scale = 1.0 / (rows * cols)
    total = 0.0
    for i in range(rows):
        for j in range(cols):
            x = float(pred[i, j])
            y = float(target[i, j])
            ce = max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))
            if x >= 0:
                e = math.exp(-x)
                s = 1.0 / (1.0 + e)
                one_minus_s = e / (1.0 + e)
            else:
                e = math.exp(x)
                s = e / (1.0 + e)
                one_minus_s = 1.0 / (1.0 + e)
            q = y * one_minus_s + (1.0 - y) * s
            a_t = 1.0 if alpha < 0 else alpha * y + (1.0 - alpha) * (1.0 - y)
            qg = q**gamma
            total += a_t * qg * ce
            focus = gamma * qg * (1.0 - q) * (1.0 - 2.0 * y) * ce
            grad[i, j] = scale * (a_t * (qg * (s - y) + focus))
    return total * scale


def binary_focal_reference(pred, target, hp):
    """The binary focal loss and its gradient in NumPy (same formulas, vectorised)."""
    gamma, alpha = float(hp[0]), float(hp[1])
    x = pred.astype(np.float64)
    y = target.astype(np.float64)
    ce = np.logaddexp(0.0, x) - x * y
    s = np.exp(-np.logaddexp(0.0, -x))  # sigmoid(x)
    one_minus_s = np.exp(-np.logaddexp(0.0, x))  # sigmoid(-x)
    q = y * one_minus_s + (1 - y) * s
    a_t = np.ones_like(x) if alpha < 0 else alpha * y + (1 - alpha) * (1 - y)
    loss = a_t * q**gamma * ce
    grad = a_t * (q**gamma * (s - y) + gamma * q**gamma * (1 - q) * (1 - 2 * y) * ce)
    return float(np.mean(loss)), grad / x.size


# ---------------------------------------------------------------------------------------------
# registration

LOSSES = [
    lossbench.LossSpec(
        name="focal",
        options=FocalOptions,
        description="focal loss on logits, class targets (Lin et al. 2017); gamma=0: cross_entropy",
        kernel=focal_kernel,
        reference=focal_reference,
        target="class_index",
        pack=lambda options: [options.gamma, options.alpha],
        check=_check_focal,
    ),
    lossbench.LossSpec(
        name="binary_focal",
        options=BinaryFocalOptions,
        description="binary focal loss on logits (torchvision sigmoid_focal_loss); gamma=0: bce",
        kernel=binary_focal_kernel,
        reference=binary_focal_reference,
        target="binary",
        pack=lambda options: [options.gamma, -1.0 if options.alpha is None else options.alpha],
        check=_check_binary_focal,
    ),
]


@lossbench.hookimpl
def register_losses(register):
    for spec in LOSSES:
        register(spec)
