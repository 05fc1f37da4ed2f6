"""The per-batch random stream a model draws from while training (dropout), in numba and NumPy.

A training step's stream is SplitMix64 (Steele, Lea & Flood 2014) seeded with that step's key:

    key(seed, step) = mix(mix(seed) ^ step)          mix(z) = SplitMix64's output of z
    u(key, i)       = (mix(key + i * GOLDEN) >> 11) * 2**-53     (uniform in [0, 1))

``seed`` is the run's stream seed (``training.setup.run_seeds``: a child of ``seed``), ``step``
the 1-based optimizer step the batch belongs to, ``i`` the index a model gives each number it
draws. The model kernels find seed and step in their ``hp`` (``specs.CONTEXT``), so the same seed
gives the same bits in every run, in the fused epoch, on the slow path and in the references,
and a number depends only on (seed, step, i): never on what was drawn before (a counter-based
stream, so forward and backward can draw the same mask twice without storing it).

``uniform`` and ``stream_key`` are jitted for kernels (``from lossbench.streams import
uniform``); ``uniform_np`` and ``stream_key_np`` are their NumPy twins for references, equal bit
for bit (tests/test_streams.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_UNIT = 1.0 / 9007199254740992.0  # 2**-53


@njit(cache=True, nogil=True, inline="always")
def _mix(z):
    """SplitMix64's output function of the state ``z + GOLDEN`` (uint64 arithmetic wraps)."""
    z = z + GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, nogil=True)
def stream_key(seed, step):
    """The key of step ``step``'s stream for the stream seed ``seed`` (both float64 holding
    integers, as ``hp`` carries them)."""
    return _mix(_mix(np.uint64(seed)) ^ np.uint64(step))


@njit(cache=True, nogil=True, inline="always")
def uniform(key, i):
    """Number ``i`` (an int) of the stream with ``key``: a float64 in [0, 1)."""
    return float(_mix(key + np.uint64(i) * GOLDEN) >> _S11) * _UNIT


def _mix_np(z: np.ndarray) -> np.ndarray:
    z = z + GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def stream_key_np(seed: float, step: float) -> np.uint64:
    """``stream_key`` in NumPy."""
    with np.errstate(over="ignore"):
        inner = _mix_np(np.array([int(seed)], dtype=np.uint64))
        return _mix_np(inner ^ np.uint64(int(step)))[0]


def uniform_np(key, i: np.ndarray) -> np.ndarray:
    """``uniform`` in NumPy over an integer array of indices ``i`` (any shape)."""
    idx = np.asarray(i).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = _mix_np(np.uint64(key) + idx * GOLDEN)
    return (z >> _S11).astype(np.float64) * _UNIT
