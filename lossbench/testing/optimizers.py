"""The checks of an optimizer: kernel against its reference over many steps, a convex quadratic
decreases, a zero learning rate changes nothing, deterministic, inputs left alone, a step's cost
does not grow with the step count."""

from __future__ import annotations

import math
import time

import numpy as np

from lossbench.testing._base import (
    DTYPES,
    _compare,
    _each_case,
    _fail,
    _packed,
    _unchanged,
)


class _State:
    """An optimizer's state rows and scalar state, as a run allocates them."""

    def __init__(self, spec, hp, n, dtype=np.float64):
        self.rows = np.zeros((spec.state_rows, n), dtype=dtype)
        if spec.init_state is not None:
            spec.init_state(self.rows, hp)
        self.scalars = np.zeros(spec.scalar_slots, dtype=np.float64)
        if spec.init_scalars is not None:
            spec.init_scalars(self.scalars, hp)

    def copy(self):
        new = object.__new__(_State)
        new.rows, new.scalars = self.rows.copy(), self.scalars.copy()
        return new

    def values(self) -> np.ndarray:
        return np.concatenate([self.rows.astype(np.float64).ravel(), self.scalars])


def _opt_setup(spec, hp, n, dtype=np.float64):
    return _State(spec, hp, n, dtype), _packed(spec, hp)


def _step_fn(spec):
    """``step(p, g, state, hp, t, lr)`` with a ``_State``: the kernel, or the reference."""
    fn = spec.reference if spec.numpy_only else spec.kernel
    return lambda p, g, s, hp, t, lr: fn(p, g, s.rows, s.scalars, hp, t, float(lr))


def _opt_matches_reference(pm, group, spec, cases):
    if spec.numpy_only:
        return None

    def body(hp):
        if spec.reference is None:
            _fail("it has no NumPy reference. Fix: pass reference=FUNCTION(params, grads, ...)")
        rng = np.random.default_rng(0)
        n = 37
        state_k, hp64 = _opt_setup(spec, hp, n)
        state_r = state_k.copy()
        p_k = rng.normal(size=n)
        p_r = p_k.copy()
        for t in range(1, 26):
            g = rng.normal(size=n)
            lr = 0.01 * (0.9 ** (t // 5))  # a changing lr, as schedules make it
            spec.kernel(p_k, g, state_k.rows, state_k.scalars, hp64, t, lr)
            spec.reference(p_r, g.copy(), state_r.rows, state_r.scalars, hp64.copy(), t, lr)
            _compare(f"parameters after step {t} (kernel vs reference)", p_k, p_r, 1e-9, 1e-12)
            _compare(
                f"state after step {t} (kernel vs reference)",
                state_k.values(), state_r.values(), 1e-9, 1e-12,
            )  # fmt: skip

    return lambda: _each_case(cases, body)


def _opt_quadratic(pm, group, spec, cases):
    def body(hp):
        state, hp64 = _opt_setup(spec, hp, 5)
        a = np.array([1.0, 2.0, 0.5, 3.0, 1.5])
        p = np.full(5, 2.0)
        f0 = 0.5 * np.sum(a * p * p)
        step = _step_fn(spec)
        for t in range(1, 201):
            step(p, a * p, state, hp64, t, 0.05)
        f = 0.5 * np.sum(a * p * p)
        if not f < 0.9 * f0:  # a clear decrease, whatever schedule the hyperparameters imply
            _fail(
                f"200 steps with lr=0.05 on f(p) = sum(a p^2)/2 (p0 = 2, a = {a.tolist()}) take "
                f"f from {f0:.4g} to {f:.4g}; expected a decrease below 0.9 f0 = {0.9 * f0:.4g}"
            )

    return lambda: _each_case(cases, body)


def _opt_zero_lr(pm, group, spec, cases):
    def body(hp):
        rng = np.random.default_rng(3)
        state, hp64 = _opt_setup(spec, hp, 11)
        p = rng.normal(size=11)
        p0 = p.copy()
        step = _step_fn(spec)
        for t in range(1, 6):
            step(p, rng.normal(size=11), state, hp64, t, 0.0)
        if not np.array_equal(p, p0):
            _fail(
                f"five steps with lr=0 change the parameters by up to {np.max(np.abs(p - p0)):.3g}"
                " (a learning rate of 0 must leave them as they are: scale every change, weight "
                "decay included, by lr)"
            )

    return lambda: _each_case(cases, body)


def _opt_deterministic(pm, group, spec, cases):
    def body(hp):
        results = []
        for _ in range(2):
            rng = np.random.default_rng(4)
            state, hp64 = _opt_setup(spec, hp, 13)
            p = rng.normal(size=13)
            step = _step_fn(spec)
            for t in range(1, 11):
                step(p, rng.normal(size=13), state, hp64, t, 0.01)
            results.append((p, state.values()))
        (p1, s1), (p2, s2) = results
        if not (np.array_equal(p1, p2) and np.array_equal(s1, s2)):
            _fail(
                "two identical sequences of 10 steps give different parameters (max difference "
                f"{np.max(np.abs(p1 - p2)):.3g}): the same inputs must give the same bits"
            )

    return lambda: _each_case(cases, body)


def _opt_inputs_unchanged(pm, group, spec, cases):
    def body(hp):
        rng = np.random.default_rng(5)
        for dtype in DTYPES if not spec.numpy_only else ("float64",):
            state, hp_arr = _opt_setup(spec, hp, 9, np.dtype(dtype))
            p = rng.normal(size=9).astype(dtype)
            g = rng.normal(size=9).astype(dtype)
            g0, hp0 = g.copy(), hp_arr.copy()
            _step_fn(spec)(p, g, state, hp_arr, 1, 0.01)
            _unchanged(f"grads ({dtype})", g0, g)
            _unchanged(f"hp ({dtype})", hp0, hp_arr)

    return lambda: _each_case(cases, body)


# a step's cost at step T_LATE against T_EARLY: the minimum over REPEATS blocks of BLOCK calls
# each, interleaved, so a busy machine slows both alike; a step whose cost is O(t) (a running
# product recomputed from t) costs ~1,000x at t = 10,000 against t = 10, far beyond the factor
_T_EARLY, _T_LATE, _COST_N, _BLOCK, _REPEATS, _COST_FACTOR = 10, 10_000, 1000, 20, 15, 5.0


def _block_seconds(step, p, g, state, hp, t) -> float:
    start = time.perf_counter()
    for _ in range(_BLOCK):
        step(p, g, state, hp, t, 1e-3)
    return time.perf_counter() - start


def _opt_step_cost(pm, group, spec, cases):
    def body(hp):
        rng = np.random.default_rng(6)
        step = _step_fn(spec)
        state, hp64 = _opt_setup(spec, hp, _COST_N)
        p, g = rng.normal(size=_COST_N), rng.normal(size=_COST_N)
        for t in range(1, _T_EARLY):  # warm: a realistic state, compiled code and caches
            step(p, g, state, hp64, t, 1e-3)
        best = {_T_EARLY: math.inf, _T_LATE: math.inf}
        for _ in range(_REPEATS):
            for t in best:
                best[t] = min(best[t], _block_seconds(step, p, g, state, hp64, t))
        early, late = best[_T_EARLY] / _BLOCK, best[_T_LATE] / _BLOCK
        if late > _COST_FACTOR * early:
            _fail(
                f"a step costs {late * 1e6:.1f} us at t={_T_LATE:,} against {early * 1e6:.1f} us "
                f"at t={_T_EARLY} ({late / early:.0f}x, {_COST_N} parameters, the fastest of "
                f"{_REPEATS} blocks of {_BLOCK}): the cost grows with t. Fix: keep running "
                "quantities (a product over past steps) as scalar state, updated once per "
                "step: OptimizerSpec(scalar_slots=..., init_scalars=...) and the kernel's "
                "scalars argument (docs/plugins.md, 'Scalar state')"
            )

    return lambda: _each_case(cases, body)
