"""A residual MLP for lossbench: ``model=residual_mlp``, the worked example of the model contract.

An input layer to ``width`` units, ``blocks`` residual blocks, a linear output layer (He et al.
2016, "Deep Residual Learning", with one dense layer per block):

    h_0 = x W_0 + b_0
    h_k = h_{k-1} + s tanh(h_{k-1} W_k + b_k)        k = 1 .. blocks   (s = residual_scale)
    out = h_B W_out + b_out

Backward, from the output (a_k = tanh(...) of block k, kept by forward in ``work``):

    dh_B = dout W_out^T;   dW_out = h_B^T dout;   db_out = sum_rows dout
    dz_k = dh_k * s (1 - a_k^2);   dW_k = h_{k-1}^T dz_k;   db_k = sum_rows dz_k
    dh_{k-1} = dh_k + dz_k W_k^T;   dW_0 = x^T dh_0;   db_0 = sum_rows dh_0
"""

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

import lossbench
from lossbench.errors import ConfigError


@dataclass
class ResidualOptions:
    width: int = 16  # units of every hidden layer
    blocks: int = 2  # residual blocks
    residual_scale: float = 1.0  # s: reaches the kernels as hp[0] (ModelLayout.hp)


# layout row l: [n_in, n_out, W offset, b offset]: row 0 the input layer, rows 1..B the blocks,
# the last row the output layer. work: h_0 .. h_B, then a_1 .. a_B, then three scratch blocks
# for backward, each rows x width (no allocation per batch).


@njit(cache=True)
def _block(work, k, m, w):
    """The k-th rows x width block of work."""
    return work[k * m * w : (k + 1) * m * w].reshape(m, w)


@njit(cache=True)
def _dense(params, layout, l, a, out):
    """out = a W_l + b_l."""
    n_in, n_out, wo, bo = layout[l, 0], layout[l, 1], layout[l, 2], layout[l, 3]
    np.dot(a, params[wo : wo + n_in * n_out].reshape(n_in, n_out), out)
    for i in range(out.shape[0]):
        for j in range(n_out):
            out[i, j] += params[bo + j]


@njit(cache=True)
def forward(params, layout, hp, x, work, out):
    """out for the batch x; h_k and a_k stay in work for backward."""
    m, w, blocks = x.shape[0], layout[0, 1], layout.shape[0] - 2
    s = hp[0]
    _dense(params, layout, 0, x, _block(work, 0, m, w))
    for k in range(1, blocks + 1):
        h_prev, h = _block(work, k - 1, m, w), _block(work, k, m, w)
        a = _block(work, blocks + k, m, w)
        _dense(params, layout, k, h_prev, a)
        for i in range(m):
            for j in range(w):
                a[i, j] = math.tanh(a[i, j])
                h[i, j] = h_prev[i, j] + s * a[i, j]
    _dense(params, layout, blocks + 1, _block(work, blocks, m, w), out)


@njit(cache=True)
def _dense_grads(params, layout, l, a, dz, grads):
    """dW_l = a^T dz, db_l = sum_rows dz (overwritten)."""
    n_in, n_out, wo, bo = layout[l, 0], layout[l, 1], layout[l, 2], layout[l, 3]
    np.dot(a.T, dz, grads[wo : wo + n_in * n_out].reshape(n_in, n_out))
    for j in range(n_out):
        grads[bo + j] = 0.0
    for i in range(dz.shape[0]):
        for j in range(n_out):
            grads[bo + j] += dz[i, j]


@njit(cache=True)
def backward(params, layout, hp, x, work, dout, grads):
    """Every entry of grads, from dout and what forward left in work."""
    m, w, blocks = x.shape[0], layout[0, 1], layout.shape[0] - 2
    s = hp[0]
    dh, dz = _block(work, 2 * blocks + 1, m, w), _block(work, 2 * blocks + 2, m, w)
    tmp = _block(work, 2 * blocks + 3, m, w)
    last = blocks + 1
    n_out, wo = layout[last, 1], layout[last, 2]
    np.dot(dout, params[wo : wo + w * n_out].reshape(w, n_out).T, dh)
    _dense_grads(params, layout, last, _block(work, blocks, m, w), dout, grads)
    for k in range(blocks, 0, -1):
        a = _block(work, blocks + k, m, w)
        for i in range(m):
            for j in range(w):
                dz[i, j] = dh[i, j] * s * (1.0 - a[i, j] * a[i, j])
        _dense_grads(params, layout, k, _block(work, k - 1, m, w), dz, grads)
        wk = layout[k, 2]
        np.dot(dz, params[wk : wk + w * w].reshape(w, w).T, tmp)
        dh += tmp
    _dense_grads(params, layout, 0, x, dh, grads)


def _layers(params, layout):
    for n_in, n_out, wo, bo in layout:
        yield params[wo : wo + n_in * n_out].reshape(n_in, n_out), params[bo : bo + n_out]


def reference_forward(params, layout, hp, x):
    """The same model in NumPy."""
    (W0, b0), *blocks, (Wo, bo) = _layers(params, layout)
    h = x @ W0 + b0
    for W, b in blocks:
        h = h + hp[0] * np.tanh(h @ W + b)
    return h @ Wo + bo


def reference_backward(params, layout, hp, x, dout):
    """d sum(out * dout) / d params in NumPy."""
    (W0, b0), *blocks, (Wo, bo) = _layers(params, layout)
    hs, acts = [x @ W0 + b0], []
    for W, b in blocks:
        acts.append(np.tanh(hs[-1] @ W + b))
        hs.append(hs[-1] + hp[0] * acts[-1])
    grads = [(hs[-1].T @ dout, dout.sum(0))]
    dh = dout @ Wo.T
    for (W, _), h, a in zip(blocks[::-1], hs[-2::-1], acts[::-1], strict=True):
        dz = dh * hp[0] * (1 - a * a)
        grads.append((h.T @ dz, dz.sum(0)))
        dh = dh + dz @ W.T
    grads.append((x.T @ dh, dh.sum(0)))
    return np.concatenate([g.ravel() for pair in grads[::-1] for g in pair])


def build(options, n_in, n_out):
    """The layout (input layer, blocks, output layer); refuses what it cannot build."""
    if options.width < 1 or options.blocks < 0:
        raise ConfigError(
            f"model.width={options.width} model.blocks={options.blocks} is not allowed: width "
            "must be >= 1 and blocks >= 0. Fix: pass e.g. model.width=16 model.blocks=2."
        )
    w = options.width
    shapes = [(n_in, w), *[(w, w)] * options.blocks, (w, n_out)]
    rows, tensors, off = [], {}, 0
    for l, (a, b) in enumerate(shapes):
        name = "in" if l == 0 else ("out" if l == len(shapes) - 1 else f"block{l}")
        rows.append([a, b, off, off + a * b])
        tensors[f"W_{name}"], tensors[f"b_{name}"] = (off, (a, b)), (off + a * b, (b,))
        off += a * b + b

    def init(rng, params):  # torch.nn.Linear's default: U(-k, k), k = 1 / sqrt(fan_in)
        for a, b, wo, bo in rows:
            params[wo : bo + b] = rng.uniform(-1, 1, bo + b - wo) / math.sqrt(a)

    return lossbench.ModelLayout(
        n_params=off,
        tensors=tensors,  # names in weight files and messages: W_in, b_in, W_block1, ...
        layout=np.array(rows, dtype=np.int64),  # what the kernels read to find each tensor
        hp=[options.residual_scale],  # the kernels' hp
        init=init,
        workspace=lambda m: m * w * (2 * options.blocks + 4),  # h_0..h_B, a_1..a_B, 3 scratch
    )


RESIDUAL_MLP = lossbench.ModelSpec(
    name="residual_mlp",
    options=ResidualOptions,
    description="MLP with residual tanh blocks",
    build=build,
    forward=forward,
    backward=backward,
    reference_forward=reference_forward,
    reference_backward=reference_backward,
    api=2,
)


@lossbench.hookimpl
def register_models(register):
    register(RESIDUAL_MLP)
