"""Built-in models: ``linear`` and ``mlp`` over one flat parameter vector.

Layer l computes z_l = a_{l-1} W_l + b_l (a_{-1} = x, W_l of shape (in, out), as stored in weight
files) and a_l = act(z_l) for hidden layers; the last layer is linear (its z is the output).
Backward is the chain rule, layer by layer from the output:

    dW_l = a_{l-1}^T dz_l,   db_l = sum_rows dz_l,   da_{l-1} = dz_l W_l^T,
    dz_{l-1} = da_{l-1} * act'(z_{l-1})

Initialisation is PyTorch's default for torch.nn.Linear: W and b drawn from U(-k, k) with
k = 1 / sqrt(fan_in) (kaiming_uniform with a = sqrt(5); PyTorch docs of torch.nn.Linear).

Activations (PyTorch definitions): relu, tanh, sigmoid, gelu (exact, with erf; Hendrycks &
Gimpel 2016) and leaky_relu (negative slope 0.01).

Dropout (``model.dropout=p``, torch.nn.Dropout after each hidden activation, Srivastava et al.
2014): while training, a_l = act(z_l) * mask / (1 - p), mask_ij = 0 with probability p (number
``m * (h_0 + ... + h_{l-1}) + i * h_l + j`` of the step's stream, ``lossbench.streams``, below
p), so backward is da_l * mask / (1 - p) before act'; evaluating, a_l = act(z_l). The mask is
drawn again in backward from the same (seed, step), never stored. ``model.decay_biases=false``
puts every 1-D parameter (the biases, and batch norm's weight and bias) in a parameter group
with ``weight_decay = 0`` (torch's param groups, the rule ``p.ndim == 1`` torch users write).

Batch norm (``model.batch_norm=true``, torch.nn.BatchNorm1d after each hidden Linear, before
the activation; Ioffe & Szegedy 2015; PyTorch docs of torch.nn.BatchNorm1d), over the rows of
the batch, per unit j of z_l = a_{l-1} W_l + b_l:

    training:   mu_j = mean_i z_ij,  v_j = mean_i (z_ij - mu_j)^2   (biased, for normalising)
                xhat_ij = (z_ij - mu_j) / sqrt(v_j + eps),  y_ij = gamma_j xhat_ij + beta_j
                running_mean_j <- (1 - momentum) running_mean_j + momentum mu_j
                running_var_j  <- (1 - momentum) running_var_j + momentum v_j m / (m - 1)
                                                                    (unbiased, m rows)
    evaluating: xhat_ij = (z_ij - running_mean_j) / sqrt(running_var_j + eps)

and a_l = act(y_l). ``model.bn_momentum`` (0.1) and ``model.bn_eps`` (1e-5) are torch's
defaults; gamma (``gamma{l}``, init 1) and beta (``beta{l}``, init 0) are parameters,
``running_mean{l}`` (init 0) and ``running_var{l}`` (init 1) buffers (``ModelLayout.buffers``),
kept after every parameter in the flat vector. Backward, with dy = dL/dy:

    dbeta_j = sum_i dy_ij,  dgamma_j = sum_i dy_ij xhat_ij
    training:   dz_ij = gamma_j / sqrt(v_j + eps) (dy_ij - dbeta_j / m - xhat_ij dgamma_j / m)
    evaluating: dz_ij = gamma_j / sqrt(running_var_j + eps) dy_ij

While training, the Linear bias b_l before a batch norm has db_l = sum_i dz_ij = 0 exactly (the
batch mean is subtracted: sum_i xhat_ij = 0), and the kernels write that 0 rather than the sum's
rounding noise, which Adam's division by sqrt(v) would turn into steps of size lr (torch's
autograd gives the noise; tests/test_buffers.py holds the rest to torch with those biases
frozen, their exact gradient).

A training batch of one row has no unbiased variance: the kernel raises, as torch does, and
``min_batch = 2`` lets the set-up refuse it first. The sums over rows are taken in float64 and
rounded once, as torch's CPU kernels accumulate float32 in double.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from numba import njit

from lossbench.errors import ConfigError
from lossbench.hookspecs import hookimpl
from lossbench.specs import CONTEXT, ModelLayout, ModelSpec, ParamGroup
from lossbench.streams import stream_key, stream_key_np, uniform, uniform_np

ACTIVATIONS = {"identity": 0, "relu": 1, "tanh": 2, "sigmoid": 3, "gelu": 4, "leaky_relu": 5}
LEAKY_SLOPE = 0.01
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_WITH_CONTEXT = 2 + len(CONTEXT)  # hp: slope, dropout, then the engine's context
# layout columns: n_in, n_out, W offset, b offset, activation code; with batch norm also the
# offsets of gamma, beta, running_mean and running_var (-1 on the output layer)
_BN_COLUMNS = 9


class Activation(StrEnum):
    relu = "relu"
    tanh = "tanh"
    sigmoid = "sigmoid"
    gelu = "gelu"
    leaky_relu = "leaky_relu"


@dataclass
class MLPOptions:
    hidden: list[int] = field(default_factory=lambda: [64])
    activation: Activation = Activation.relu
    dropout: float = 0.0
    decay_biases: bool = True
    batch_norm: bool = False
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    init_from: str | None = None


@dataclass
class LinearOptions:
    init_from: str | None = None


# ---------------------------------------------------------------------------------------------
# activations


@njit(cache=True, nogil=True, inline="always")
def _act(z, code, slope):
    """act(z) for the activations other than relu (relu has its own pass in _bias_act)."""
    if code == 2:
        return math.tanh(z)
    if code == 3:
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)
    if code == 4:
        return 0.5 * z * (1.0 + math.erf(z * _SQRT1_2))
    if code == 5:
        return z if z > 0 else slope * z
    return z


@njit(cache=True, nogil=True, inline="always")
def _act_grad(z, a, code, slope):
    """d act / dz at z, given a = act(z), for the activations other than relu (relu has its own
    pass in _act_backward)."""
    if code == 2:
        return 1.0 - a * a
    if code == 3:
        return a * (1.0 - a)
    if code == 4:
        return 0.5 * (1.0 + math.erf(z * _SQRT1_2)) + z * _INV_SQRT_2PI * math.exp(-0.5 * z * z)
    if code == 5:
        return 1.0 if z > 0 else slope
    return 1.0


# The activation code is tested once per layer, outside the element loops: a branch on it inside
# them kept LLVM from vectorising and cost 1.3-1.9x per SGD epoch (measured in the benchmark).


@njit(cache=True, nogil=True, error_model="numpy")
def _bias_act(z, b, a, code, slope):
    """z += b (row-wise), a = act(z)."""
    m, n = z.shape
    zero = z.dtype.type(0)
    if code == 1:  # relu, the common case, in one vectorisable pass
        for i in range(m):
            for j in range(n):
                zz = z[i, j] + b[j]
                z[i, j] = zz
                a[i, j] = zz if zz > zero else zero
    else:
        for i in range(m):
            for j in range(n):
                zz = z[i, j] + b[j]
                z[i, j] = zz
                a[i, j] = _act(zz, code, slope)


@njit(cache=True, nogil=True, error_model="numpy")
def _act_backward(da, z, a, code, slope):
    """da *= act'(z) in place (a = act(z))."""
    m, n = da.shape
    zero = da.dtype.type(0)
    if code == 1:
        for i in range(m):
            for j in range(n):
                da[i, j] = da[i, j] if z[i, j] > zero else zero
    else:
        for i in range(m):
            for j in range(n):
                da[i, j] *= _act_grad(z[i, j], a[i, j], code, slope)


@njit(cache=True, nogil=True, inline="always")
def _dropout_of(hp, params):
    """(p, 1 / (1 - p) in the run's dtype, the step's stream key): p is 0 while evaluating
    (hp's context, ``lossbench.specs.CONTEXT``), and 1 / (1 - p) is 0 for p = 1 (torch gives
    zeros). 1 / (1 - p) is formed in the run's dtype, as torch.nn.Dropout forms it. An ``hp``
    without the context (a model saved before it existed) is evaluation mode."""
    n = hp.shape[0]
    p = hp[1] if n >= _WITH_CONTEXT and hp[n - 3] > 0.5 else 0.0
    one = params.dtype.type(1.0)
    if p <= 0.0:  # evaluating, or no dropout: nothing to draw
        return p, one, np.uint64(0)
    scale = one / params.dtype.type(1.0 - p) if p < 1.0 else one - one
    return p, scale, stream_key(hp[n - 2], hp[n - 1])


@njit(cache=True, nogil=True, error_model="numpy")
def _drop(a, key, base, p, scale):
    """a *= mask / (1 - p): a_ij dropped when number base + i * n + j of the stream is < p."""
    m, n = a.shape
    zero = a.dtype.type(0)
    for i in range(m):
        for j in range(n):
            if uniform(key, base + i * n + j) < p:
                a[i, j] = zero
            else:
                a[i, j] = a[i, j] * scale


@njit(cache=True, nogil=True, error_model="numpy")
def _drop_backward(da, z, code, slope, key, base, p, scale):
    """da = da * mask / (1 - p) * act'(z), the mask drawn as ``_drop`` drew it."""
    m, n = da.shape
    zero = da.dtype.type(0)
    for i in range(m):
        for j in range(n):
            if uniform(key, base + i * n + j) < p:
                da[i, j] = zero
            elif code == 1:
                da[i, j] = da[i, j] * scale if z[i, j] > zero else zero
            else:
                zz = z[i, j]
                da[i, j] = da[i, j] * scale * _act_grad(zz, _act(zz, code, slope), code, slope)


# ---------------------------------------------------------------------------------------------
# batch norm (module docstring): xhat and 1 / sqrt(var + eps) of each hidden layer are kept in
# work after the scratch blocks, gamma * xhat is left in z for _bias_act to add beta


@njit(cache=True, nogil=True, error_model="numpy")
def _add_bias(z, b):
    """z += b (row-wise)."""
    m, n = z.shape
    for i in range(m):
        for j in range(n):
            z[i, j] += b[j]


@njit(cache=True, nogil=True, error_model="numpy")
def _batch_norm(z, xhat, istd, gamma, rmean, rvar, training, momentum, eps):
    """z = gamma * xhat with the batch's statistics (training: the running ones updated) or the
    running ones (evaluating); xhat and 1 / sqrt(var + eps) kept for backward."""
    m, n = z.shape
    f = z.dtype.type
    if training and m < 2:
        raise ValueError("batch norm needs at least 2 rows in a training batch (torch's "
                         "BatchNorm1d raises the same)")  # fmt: skip
    mom = f(momentum)
    keep = f(1.0) - mom  # formed in the parameters' dtype, as torch's batch norm forms it
    for j in range(n):
        if training:
            total = 0.0
            for i in range(m):
                total += float(z[i, j])
            mean = total / m
            sq = 0.0
            for i in range(m):
                d = float(z[i, j]) - mean
                sq += d * d
            mu, inv = f(mean), f(1.0 / math.sqrt(sq / m + eps))
            rmean[j] = keep * rmean[j] + mom * mu
            rvar[j] = f(float(keep) * float(rvar[j]) + float(mom) * (sq / (m - 1)))
        else:
            mu, inv = rmean[j], f(1.0 / math.sqrt(float(rvar[j]) + eps))
        istd[j] = inv
        g = gamma[j]
        for i in range(m):
            xh = (z[i, j] - mu) * inv
            xhat[i, j] = xh
            z[i, j] = g * xh


@njit(cache=True, nogil=True, error_model="numpy")
def _batch_norm_backward(dy, xhat, istd, gamma, dgamma, dbeta, training):
    """dgamma, dbeta from dy = dL/dy; dy overwritten with dL/dz (module docstring)."""
    m, n = dy.shape
    f = dy.dtype.type
    for j in range(n):
        s_dy = 0.0
        s_dyx = 0.0
        for i in range(m):
            s_dy += float(dy[i, j])
            s_dyx += float(dy[i, j]) * float(xhat[i, j])
        dbeta[j] = f(s_dy)
        dgamma[j] = f(s_dyx)
        k = gamma[j] * istd[j]
        if training:
            mean_dy, mean_dyx = f(s_dy / m), f(s_dyx / m)
            for i in range(m):
                dy[i, j] = k * (dy[i, j] - mean_dy - xhat[i, j] * mean_dyx)
        else:
            for i in range(m):
                dy[i, j] = k * dy[i, j]


@njit(cache=True, nogil=True, inline="always")
def _bn_base(layout, m):
    """Where the batch-norm blocks start in work: after z, a of every hidden layer and the
    two scratch blocks."""
    total = 0
    widest = 0
    for l in range(layout.shape[0] - 1):
        total += layout[l, 1]
        widest = max(widest, layout[l, 1])
    return 2 * m * total + 2 * m * widest


@njit(cache=True, nogil=True, inline="always")
def _bn_blocks(work, base, before, m, n):
    """The (xhat, istd) blocks of the hidden layer with ``before`` hidden units below it."""
    o = base + (m + 1) * before
    return work[o : o + m * n].reshape(m, n), work[o + m * n : o + m * n + n]


# ---------------------------------------------------------------------------------------------
# kernels. layout row l: [n_in, n_out, W offset, b offset, activation code]. work holds, for each
# hidden layer, z (m x out) then a (m x out), followed by two scratch blocks for backward.


@njit(cache=True, nogil=True, error_model="numpy")
def mlp_forward(params, layout, hp, x, work, out):
    """Forward pass: z_l = a_{l-1} W_l + b_l, a_l = act(z_l) (batch-normalised first with
    ``model.batch_norm``, dropped out while training); out = z of the last layer."""
    m = x.shape[0]
    n_layers = layout.shape[0]
    slope = params.dtype.type(hp[0])  # hp is float64; the loops stay in the run's dtype
    p, scale, key = _dropout_of(hp, params)
    bn = layout.shape[1] >= _BN_COLUMNS
    n_hp = hp.shape[0]
    training = n_hp >= _WITH_CONTEXT and hp[n_hp - 3] > 0.5
    bn_base = _bn_base(layout, m) if bn else 0
    off = 0
    a_prev = x
    for l in range(n_layers):
        n_in, n_out, wo, bo, code = (
            layout[l, 0],
            layout[l, 1],
            layout[l, 2],
            layout[l, 3],
            layout[l, 4],
        )
        W = params[wo : wo + n_in * n_out].reshape(n_in, n_out)
        b = params[bo : bo + n_out]
        if l == n_layers - 1:
            z = out
        else:
            z = work[off : off + m * n_out].reshape(m, n_out)
            off += m * n_out
        np.dot(a_prev, W, z)
        if l == n_layers - 1:
            for i in range(m):
                for j in range(n_out):
                    z[i, j] += b[j]
        else:
            a = work[off : off + m * n_out].reshape(m, n_out)
            off += m * n_out
            if bn:
                go, beo, rmo, rvo = layout[l, 5], layout[l, 6], layout[l, 7], layout[l, 8]
                xhat, istd = _bn_blocks(work, bn_base, (off - 2 * m * n_out) // (2 * m), m,
                                        n_out)  # fmt: skip
                _add_bias(z, b)
                _batch_norm(z, xhat, istd, params[go : go + n_out], params[rmo : rmo + n_out],
                            params[rvo : rvo + n_out], training, hp[2], hp[3])  # fmt: skip
                _bias_act(z, params[beo : beo + n_out], a, code, slope)
            else:
                _bias_act(z, b, a, code, slope)
            if p > 0.0:
                _drop(a, key, (off - 2 * m * n_out) // 2, p, scale)
            a_prev = a


@njit(cache=True, nogil=True, error_model="numpy")
def mlp_backward(params, layout, hp, x, work, dout, grads):
    """Backward pass (chain rule above); overwrites grads with dLoss/dparams."""
    m = x.shape[0]
    n_layers = layout.shape[0]
    slope = params.dtype.type(hp[0])  # hp is float64; the loops stay in the run's dtype
    p, scale, key = _dropout_of(hp, params)
    bn = layout.shape[1] >= _BN_COLUMNS
    n_hp = hp.shape[0]
    training = n_hp >= _WITH_CONTEXT and hp[n_hp - 3] > 0.5
    # where the scratch blocks start: after z_l and a_l of every hidden layer. Going down,
    # ``top`` is where the block of layer l - 1 ends (no offsets array: no allocation per batch)
    top = 0
    max_w = 0
    for l in range(n_layers - 1):
        top += 2 * m * layout[l, 1]
        max_w = max(max_w, layout[l, 1])
        if bn:  # buffers get no gradient
            n = layout[l, 1]
            grads[layout[l, 7] : layout[l, 7] + n] = 0.0
            grads[layout[l, 8] : layout[l, 8] + n] = 0.0
    scratch = (top, top + m * max_w)
    bn_base = top + 2 * m * max_w
    dz = dout
    for l in range(n_layers - 1, -1, -1):
        n_in, n_out, wo, bo = layout[l, 0], layout[l, 1], layout[l, 2], layout[l, 3]
        if l == 0:
            a_prev = x
        else:
            zo = top - 2 * m * n_in  # z_{l-1}, then a_{l-1}
            ao = zo + m * n_in
            a_prev = work[ao : ao + m * n_in].reshape(m, n_in)
        dW = grads[wo : wo + n_in * n_out].reshape(n_in, n_out)
        np.dot(a_prev.T, dz, dW)
        db = grads[bo : bo + n_out]
        db[:] = 0.0
        if not (bn and training and l < n_layers - 1):  # under batch norm: exactly 0
            for i in range(m):
                for j in range(n_out):
                    db[j] += dz[i, j]
        if l > 0:
            W = params[wo : wo + n_in * n_out].reshape(n_in, n_out)
            so = scratch[(n_layers - 1 - l) % 2]
            da = work[so : so + m * n_in].reshape(m, n_in)
            np.dot(dz, W.T, da)
            top = zo
            code = layout[l - 1, 4]
            z_prev = work[zo : zo + m * n_in].reshape(m, n_in)
            if p > 0.0:  # a_prev was dropped out: act' from z, then the mask
                _drop_backward(da, z_prev, code, slope, key, zo // 2, p, scale)
            else:
                _act_backward(da, z_prev, a_prev, code, slope)
            if bn:  # da is dL/dy of layer l - 1's batch norm: make it dL/dz
                go, beo = layout[l - 1, 5], layout[l - 1, 6]
                xhat, istd = _bn_blocks(work, bn_base, zo // (2 * m), m, n_in)
                _batch_norm_backward(da, xhat, istd, params[go : go + n_in],
                                     grads[go : go + n_in], grads[beo : beo + n_in],
                                     training)  # fmt: skip
            dz = da


# ---------------------------------------------------------------------------------------------
# NumPy reference


def _act_np(z, code, slope):
    from scipy.special import erf  # start-up: scipy for the NumPy reference only

    return {
        0: lambda: z,
        1: lambda: np.maximum(z, 0),
        2: lambda: np.tanh(z),
        3: lambda: 1 / (1 + np.exp(-z)),
        4: lambda: 0.5 * z * (1 + erf(z / np.sqrt(2))),
        5: lambda: np.where(z > 0, z, slope * z),
    }[code]()


def _act_grad_np(z, code, slope):
    from scipy.special import erf  # start-up: scipy for the NumPy reference only

    s = 1 / (1 + np.exp(-z))
    return {
        0: lambda: np.ones_like(z),
        1: lambda: (z > 0).astype(z.dtype),
        2: lambda: 1 - np.tanh(z) ** 2,
        3: lambda: s * (1 - s),
        4: lambda: 0.5 * (1 + erf(z / np.sqrt(2))) + z * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi),
        5: lambda: np.where(z > 0, 1.0, slope),
    }[code]()


def _layers(params, layout):
    for n_in, n_out, wo, bo, code in layout[:, :5]:
        yield params[wo : wo + n_in * n_out].reshape(n_in, n_out), params[bo : bo + n_out], code


def _masks_np(hp, layout, m, dtype):
    """Per hidden layer, mask / (1 - p) as ``_drop`` draws it (None when nothing is dropped)."""
    training = len(hp) >= _WITH_CONTEXT and hp[-3] > 0.5
    if not training or float(hp[1]) <= 0.0:
        return [None] * (len(layout) - 1)
    p, key, one = float(hp[1]), stream_key_np(hp[-2], hp[-1]), dtype.type(1)
    scale = one / dtype.type(1.0 - p) if p < 1.0 else dtype.type(0)
    masks, base = [], 0
    for row in layout[:-1]:
        n = int(row[1])
        u = uniform_np(key, base + np.arange(m * n).reshape(m, n))
        masks.append(np.where(u < p, dtype.type(0), scale).astype(dtype))
        base += m * n
    return masks


def _batch_norm_np(z, params, row, hp, write):
    """(gamma * xhat + beta, xhat, istd) of a hidden layer's z (module docstring); while
    training the running statistics in ``params`` are updated when ``write``."""
    f, n = z.dtype.type, int(row[1])
    gamma, beta, rmean, rvar = (params[o : o + n] for o in row[5:9])
    training = len(hp) >= _WITH_CONTEXT and hp[-3] > 0.5
    if training:
        m = len(z)
        if m < 2:
            raise ValueError("batch norm needs at least 2 rows in a training batch")
        mean = z.astype(np.float64).mean(axis=0)
        sq = ((z.astype(np.float64) - mean) ** 2).sum(axis=0)
        mu, istd = mean.astype(z.dtype), (1.0 / np.sqrt(sq / m + hp[3])).astype(z.dtype)
        if write:
            mom = f(hp[2])
            keep = f(1.0) - mom
            rmean[...] = keep * rmean + mom * mu
            rvar[...] = (float(keep) * rvar.astype(np.float64) + float(mom) * (sq / (m - 1)))
    else:
        mu, istd = rmean.copy(), (1.0 / np.sqrt(rvar.astype(np.float64) + hp[3])).astype(z.dtype)
    xhat = (z - mu) * istd
    return gamma * xhat + beta, xhat, istd


def _forward_np(params, layout, hp, x, write=False):
    """(zs, activations after dropout, masks, batch norm's (xhat, istd) or None) of every
    layer; zs of a batch-normalised layer are its y (the activation's input)."""
    layers = list(_layers(params, layout))
    masks = _masks_np(hp, layout, len(x), params.dtype)
    bn = layout.shape[1] >= _BN_COLUMNS
    zs, acts, norms = [], [x], []
    for l, (W, b, code) in enumerate(layers):
        z = acts[-1] @ W + b
        hidden = l < len(layers) - 1
        norm = None
        if bn and hidden:
            z, *norm = _batch_norm_np(z, params, layout[l], hp, write)
        zs.append(z)
        norms.append(norm)
        if hidden:
            a = _act_np(z, code, hp[0])
            acts.append(a if masks[l] is None else a * masks[l])
    return zs, acts, masks, norms


def mlp_reference_forward(params, layout, hp, x):
    """The outputs; while training with batch norm, the running statistics in ``params`` are
    updated (the buffers forward writes, as the kernel does)."""
    zs, _, _, _ = _forward_np(params, layout, hp, x, write=True)
    return zs[-1]


def mlp_reference_backward(params, layout, hp, x, dout):
    """The gradients (0 for the buffers); ``params`` are left unchanged."""
    layers = list(_layers(params, layout))
    zs, acts, masks, norms = _forward_np(params, layout, hp, x)
    training = len(hp) >= _WITH_CONTEXT and hp[-3] > 0.5
    grads = np.zeros_like(params)
    dz = dout
    for l in range(len(layers) - 1, -1, -1):
        W, _, _ = layers[l]
        n_in, n_out, wo, bo, _ = layout[l, :5]
        grads[wo : wo + n_in * n_out] = (acts[l].T @ dz).ravel()
        if norms[l] is None or not training:  # under batch norm while training: exactly 0
            grads[bo : bo + n_out] = dz.sum(axis=0)
        if l > 0:
            da = dz @ W.T
            if masks[l - 1] is not None:
                da = da * masks[l - 1]
            dz = da * _act_grad_np(zs[l - 1], layout[l - 1][4], hp[0])
            if norms[l - 1] is not None:
                dz = _batch_norm_backward_np(dz, *norms[l - 1], params, grads, layout[l - 1],
                                             training)  # fmt: skip
    return grads


def _batch_norm_backward_np(dy, xhat, istd, params, grads, row, training):
    """dL/dz from dL/dy = ``dy``; dgamma and dbeta into ``grads`` (module docstring)."""
    n, (go, beo) = int(row[1]), row[5:7]
    f = dy.dtype.type
    s_dy = dy.astype(np.float64).sum(axis=0)
    s_dyx = (dy.astype(np.float64) * xhat.astype(np.float64)).sum(axis=0)
    grads[beo : beo + n], grads[go : go + n] = s_dy, s_dyx
    k = params[go : go + n] * istd
    if not training:
        return k * dy
    m = len(dy)
    return k * (dy - (s_dy / m).astype(f) - xhat * (s_dyx / m).astype(f))


# ---------------------------------------------------------------------------------------------
# building a layout


def build_mlp_layout(
    widths: list[int], activation: str, dropout: float = 0.0, decay_biases: bool = True,
    batch_norm: bool = False, bn_momentum: float = 0.1, bn_eps: float = 1e-5,
) -> ModelLayout:  # fmt: skip
    """Layout of an MLP with layer widths ``[n_in, h1, ..., n_out]``, dropout ``dropout`` after
    each hidden activation, its 1-D parameters in a ``weight_decay = 0`` group unless
    ``decay_biases``, batch norm after each hidden Linear when ``batch_norm``. The flat vector
    holds W0, b0, W1, b1, ... (the same offsets with and without batch norm), then gamma0,
    beta0, gamma1, ..., then the buffers running_mean0, running_var0, ..."""
    if activation not in ACTIVATIONS or activation == "identity":
        choices = ", ".join(a for a in ACTIVATIONS if a != "identity")
        raise ConfigError(
            f"model.activation={activation!r} is not a known activation. Choices: {choices}. "
            "Fix: pass e.g. model.activation=relu."
        )
    code = ACTIVATIONS[activation]
    rows, tensors, off = [], {}, 0
    for l, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        wo, bo = off, off + n_in * n_out
        off = bo + n_out
        last = l == len(widths) - 2
        rows.append([n_in, n_out, wo, bo, 0 if last else code])
        tensors[f"W{l}"] = (wo, (n_in, n_out))
        tensors[f"b{l}"] = (bo, (n_out,))
    hidden = widths[1:-1]
    max_hidden = max(hidden, default=0)
    linear_rows = [list(r) for r in rows]
    buffers: tuple[str, ...] = ()
    if batch_norm:
        off, buffers = _add_batch_norm(rows, tensors, off)

    def init(rng: np.random.Generator, params: np.ndarray) -> None:
        for n_in, _n_out, wo, bo, _ in linear_rows:
            k = 1.0 / math.sqrt(n_in)
            params[wo:bo] = rng.uniform(-k, k, size=bo - wo)
            params[bo : bo + _n_out] = rng.uniform(-k, k, size=_n_out)
        for row in rows[:-1] if batch_norm else ():  # torch's BatchNorm1d: weight 1, bias 0,
            n, (go, beo, rmo, rvo) = row[1], row[5:9]  # running_mean 0, running_var 1
            params[go : go + n], params[beo : beo + n] = 1.0, 0.0
            params[rmo : rmo + n], params[rvo : rvo + n] = 0.0, 1.0

    one_d = tuple(t for t, (_, shape) in tensors.items() if len(shape) == 1 and t not in buffers)
    no_decay = () if decay_biases else (ParamGroup(one_d, {"weight_decay": 0.0}, "no_decay"),)
    norm_work = (lambda m: (m + 1) * sum(hidden)) if batch_norm else (lambda m: 0)
    return ModelLayout(
        n_params=off,
        tensors=tensors,
        layout=np.array(rows, dtype=np.int64),
        hp=[LEAKY_SLOPE, float(dropout)] + ([float(bn_momentum), float(bn_eps)] if batch_norm
                                            else []),  # fmt: skip
        init=init,
        workspace=lambda m: m * (2 * sum(hidden) + 2 * max_hidden) + norm_work(m),
        groups=no_decay,
        buffers=buffers,
        min_batch=2 if batch_norm else 1,
    )


def _add_batch_norm(rows: list, tensors: dict, off: int) -> tuple[int, tuple[str, ...]]:
    """Batch norm's tensors after the Linear layers' (gamma, beta of every hidden layer, then
    the buffers), their offsets as columns 5-8 of ``rows`` (-1 on the output layer): (the
    vector's new length, the buffers' names)."""
    hidden = [(l, row[1]) for l, row in enumerate(rows[:-1])]
    for l, n in hidden:
        tensors[f"gamma{l}"], tensors[f"beta{l}"] = (off, (n,)), (off + n, (n,))
        rows[l] += [off, off + n]
        off += 2 * n
    buffers = []
    for l, n in hidden:
        tensors[f"running_mean{l}"], tensors[f"running_var{l}"] = (off, (n,)), (off + n, (n,))
        rows[l] += [off, off + n]
        buffers += [f"running_mean{l}", f"running_var{l}"]
        off += 2 * n
    rows[-1] += [-1] * (_BN_COLUMNS - len(rows[-1]))
    return off, tuple(buffers)


def _build_mlp(options: MLPOptions, n_in: int, n_out: int) -> ModelLayout:
    hidden = list(options.hidden)
    bad = [h for h in hidden if not isinstance(h, int) or h <= 0]
    if bad:
        raise ConfigError(
            f"model.hidden={hidden} is not allowed: every width must be a positive integer. "
            "Fix: pass e.g. model.hidden=[64,32] (or model=linear for no hidden layer)."
        )
    p = options.dropout
    if not (isinstance(p, int | float) and 0.0 <= p <= 1.0):
        raise ConfigError(
            f"model.dropout={p!r} is not allowed: it is the probability of zeroing a hidden "
            "unit while training, in [0, 1] (torch.nn.Dropout's p). "
            "Fix: pass e.g. model.dropout=0.1 (0 turns dropout off)."
        )
    if p > 0 and not hidden:
        raise ConfigError(
            f"model.dropout={p} needs a hidden layer (dropout follows each hidden activation), "
            "but model.hidden=[]. Fix: pass e.g. model.hidden=[64], or model.dropout=0."
        )
    _check_batch_norm(options, hidden)
    widths = [n_in, *hidden, n_out]
    return build_mlp_layout(widths, options.activation, float(p), bool(options.decay_biases),
                            bool(options.batch_norm), float(options.bn_momentum),
                            float(options.bn_eps))  # fmt: skip


def _check_batch_norm(options: MLPOptions, hidden: list[int]) -> None:
    """Refuse batch-norm options torch's BatchNorm1d would not take (or that do nothing)."""
    mom, eps = options.bn_momentum, options.bn_eps
    if not (isinstance(mom, int | float) and 0.0 <= mom <= 1.0):
        raise ConfigError(
            f"model.bn_momentum={mom!r} is not allowed: it is the weight of the batch's "
            "statistics in the running ones, in [0, 1] (torch.nn.BatchNorm1d's momentum). "
            "Fix: pass e.g. model.bn_momentum=0.1."
        )
    if not (isinstance(eps, int | float) and eps > 0.0 and math.isfinite(eps)):
        raise ConfigError(
            f"model.bn_eps={eps!r} is not allowed: it is added to the variance before the "
            "square root and must be > 0 (torch.nn.BatchNorm1d's eps). "
            "Fix: pass e.g. model.bn_eps=1e-5."
        )
    if options.batch_norm and not hidden:
        raise ConfigError(
            "model.batch_norm=true needs a hidden layer (batch norm follows each hidden "
            "Linear), but model.hidden=[]. Fix: pass e.g. model.hidden=[64], or "
            "model.batch_norm=false."
        )


def _build_linear(options: LinearOptions, n_in: int, n_out: int) -> ModelLayout:
    return build_mlp_layout([n_in, n_out], "relu")


def _spec(name, options, build, description):
    return ModelSpec(
        name=name,
        options=options,
        description=description,
        build=build,
        forward=mlp_forward,
        backward=mlp_backward,
        reference_forward=mlp_reference_forward,
        reference_backward=mlp_reference_backward,
    )


MODELS = [
    _spec("mlp", MLPOptions, _build_mlp, "multi-layer perceptron (hidden widths, activation)"),
    _spec("linear", LinearOptions, _build_linear, "one linear layer x W + b"),
]


@hookimpl
def register_models(register):
    for spec in MODELS:
        register(spec)
