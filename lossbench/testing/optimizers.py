"""The checks of an optimizer: kernel against its reference over many steps (inputs checked
unchanged after every step, state slots named), a convex quadratic decreases, a zero learning
rate changes nothing, deterministic, inputs left alone, a step's cost does not grow with the step
count."""

from __future__ import annotations

import math
import time

import numpy as np

from lossbench.testing._base import (
    _compare,
    _each_case,
    _fail,
    _Miss,
    _packed,
    _unchanged,
    dtypes,
    index_slot,
    not_applicable,
    state_slot,
)
from lossbench.testing._harness import Arg, call

STEPS = 25  # the steps the reference comparison (and the input check) runs


def lr_at(t: int) -> float:
    """The learning rate of step ``t`` in the kit's sequences: it changes, as schedules make it."""
    return 0.01 * (0.9 ** (t // 5))


class _State:
    """An optimizer's state rows and scalar state, as a run allocates them."""

    def __init__(self, spec, options, n, dtype=np.float64):
        self.rows = np.zeros((spec.state_rows, n), dtype=dtype)
        if spec.init_state is not None:
            spec.init_state(self.rows, options)
        self.scalars = np.zeros(spec.scalar_slots, dtype=np.float64)
        if spec.init_scalars is not None:
            spec.init_scalars(self.scalars, options)

    def copy(self):
        new = object.__new__(_State)
        new.rows, new.scalars = self.rows.copy(), self.scalars.copy()
        return new

    def values(self) -> np.ndarray:
        return np.concatenate([self.rows.astype(np.float64).ravel(), self.scalars])


def _opt_setup(spec, options, n, dtype=np.float64):
    return _State(spec, options, n, dtype), _packed(spec, options)


def _step_fn(spec):
    """``step(p, g, s, hp, t, lr)`` with ``s`` a ``_State``, in place: the kernel through the
    harness (a miss names the step), or the reference if there is no kernel."""
    fn = spec.reference if spec.numpy_only else spec.kernel

    def step(p, g, s, hp, t, lr):
        args = [Arg("params", p, "inout"), Arg("grads", g), Arg("state", s.rows, "inout"),
                Arg("scalars", s.scalars, "inout"), Arg("hp", hp), Arg("t", int(t)),
                Arg("lr", float(lr))]  # fmt: skip
        _, arrays = call(fn, "optimizer", args, f" at step {t}")
        p[...], s.rows[...], s.scalars[...] = (arrays[k] for k in ("params", "state", "scalars"))

    return step


def _compare_state(t: int, before: _State, kernel: _State, reference: _State) -> None:
    """State rows and scalar state after step ``t``, each slot named; a slot the kernel left as
    it was while the reference changed it is called stale."""
    parts = (
        ("state", before.rows, kernel.rows, reference.rows, state_slot),
        ("scalar state", before.scalars, kernel.scalars, reference.scalars,
         index_slot("scalars")),
    )  # fmt: skip
    for what, was, got, expected, slot in parts:
        try:
            _compare(f"{what} after step {t} (kernel vs reference)", got, expected, 1e-9, 1e-12,
                     slot=slot)  # fmt: skip
        except _Miss as miss:
            stale = (got == was) & (expected != was)
            if not stale.any():
                raise
            i = tuple(int(k) for k in np.argwhere(stale)[0])
            _fail(
                f"{miss}; {slot(i)} still holds its value from before step {t} while the "
                "reference updated it: a stale slot (does the kernel write it back?)"
            )


def _opt_matches_reference(pm, group, spec, cases):
    if spec.numpy_only:
        return not_applicable("it has no kernel (numpy only): its reference is what is checked")

    def body(options):
        if spec.reference is None:
            _fail("it has no NumPy reference. Fix: pass reference=FUNCTION(params, grads, ...)")
        rng = np.random.default_rng(0)
        n = 37
        state_k, hp64 = _opt_setup(spec, options, n)
        state_r = state_k.copy()
        p_k = rng.normal(size=n)
        p_r = p_k.copy()
        step = _step_fn(spec)
        for t in range(1, STEPS + 1):
            g = rng.normal(size=n)
            before = state_k.copy()
            step(p_k, g, state_k, hp64, t, lr_at(t))  # inputs checked after every step
            spec.reference(p_r, g.copy(), state_r.rows, state_r.scalars, hp64.copy(), t, lr_at(t))
            _compare(f"parameters after step {t} (kernel vs reference)", p_k, p_r, 1e-9, 1e-12,
                     slot=index_slot("params"))  # fmt: skip
            _compare_state(t, before, state_k, state_r)

    return lambda: _each_case(cases, body)


def _opt_quadratic(pm, group, spec, cases):
    def body(options):
        state, hp64 = _opt_setup(spec, options, 5)
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
    def body(options):
        rng = np.random.default_rng(3)
        state, hp64 = _opt_setup(spec, options, 11)
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
    def body(options):
        results = []
        for _ in range(2):
            rng = np.random.default_rng(4)
            state, hp64 = _opt_setup(spec, options, 13)
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
    def body(options):
        for dtype in dtypes() if not spec.numpy_only else ("float64",):
            rng = np.random.default_rng(5)
            state, hp_arr = _opt_setup(spec, options, 9, np.dtype(dtype))
            p = rng.normal(size=9).astype(dtype)
            step = _step_fn(spec)
            for t in range(1, STEPS + 1):  # every step: a branch on t may come late
                step(p, rng.normal(size=9).astype(dtype), state, hp_arr, t, lr_at(t))
        if spec.numpy_only or spec.reference is None:
            return
        state, hp_arr = _opt_setup(spec, options, 9)
        rng = np.random.default_rng(5)
        p = rng.normal(size=9)
        for t in range(1, STEPS + 1):
            g = rng.normal(size=9)
            g0, hp0 = g.copy(), hp_arr.copy()
            spec.reference(p, g, state.rows, state.scalars, hp_arr, t, lr_at(t))
            _unchanged("grads in the reference", g0, g, f" at step {t}")
            _unchanged("hp in the reference", hp0, hp_arr, f" at step {t}")

    return lambda: _each_case(cases, body)


# a step's cost at a late t against T_EARLY: the minimum over REPEATS blocks of BLOCK calls
# each, interleaved, so a busy machine slows both alike. A step that recomputes a running
# product from t with a pow per factor costs ~1,000x at t = 10,000; one multiply per past step
# costs only 2-4x there (a 1,000-parameter step takes microseconds), so t = 100,000 is tried next
# (a single step first: one that already takes milliseconds is not run in blocks)
_T_EARLY, _T_LATE, _COST_N, _BLOCK, _REPEATS = 10, (10_000, 100_000), 1000, 20, 15
_COST_FACTOR, _SLOW_STEP = 5.0, 2e-3  # seconds


def _block_seconds(step, p, g, state, hp, t, calls=_BLOCK) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        step(p, g, state, hp, t, 1e-3)
    return time.perf_counter() - start


def _late_cost(step, p, g, state, hp64, t_late, best_early: list) -> tuple[float, str]:
    """The cost of one step at ``t_late`` and how it was measured (best_early: the fastest
    early block, kept up)."""
    single = _block_seconds(step, p, g, state, hp64, t_late, calls=1)
    if single > _SLOW_STEP:
        return single, f"one step at t={t_late:,}"
    late = math.inf
    for _ in range(_REPEATS):
        best_early[0] = min(best_early[0], _block_seconds(step, p, g, state, hp64, _T_EARLY))
        late = min(late, _block_seconds(step, p, g, state, hp64, t_late))
    return late / _BLOCK, f"the fastest of {_REPEATS} blocks of {_BLOCK}"


def _raw_step_fn(spec):
    """``step(p, g, s, hp, t, lr)`` (``s`` a ``_State``) calling the kernel (or reference)
    itself: for timing."""
    fn = spec.reference if spec.numpy_only else spec.kernel
    return lambda p, g, s, hp, t, lr: fn(p, g, s.rows, s.scalars, hp, t, float(lr))


def _opt_step_cost(pm, group, spec, cases):
    def body(options):
        rng = np.random.default_rng(6)
        step = _raw_step_fn(spec)
        state, hp64 = _opt_setup(spec, options, _COST_N)
        p, g = rng.normal(size=_COST_N), rng.normal(size=_COST_N)
        for t in range(1, _T_EARLY):  # warm: a realistic state, compiled code and caches
            step(p, g, state, hp64, t, 1e-3)
        best_early = [math.inf]
        for t_late in _T_LATE:
            late, how = _late_cost(step, p, g, state, hp64, t_late, best_early)
            early = best_early[0] / _BLOCK
            if late > _COST_FACTOR * early:
                _fail(
                    f"a step costs {late * 1e6:.1f} us at t={t_late:,} against "
                    f"{early * 1e6:.1f} us at t={_T_EARLY} ({late / early:.0f}x, {_COST_N} "
                    f"parameters, {how}): the cost grows "
                    "with t. Fix: keep running quantities (a product over past steps) as scalar "
                    "state, updated once per step: OptimizerSpec(scalar_slots=..., "
                    "init_scalars=...) and the kernel's scalars argument (docs/plugins.md, "
                    "'An optimizer with scalar state')"
                )

    return lambda: _each_case(cases, body)
