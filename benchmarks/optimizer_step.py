"""What one optimizer step costs as the step count t grows, and Adam's step before and after
plugin interface version 2 (hyperparameters and lr in float64).

Part 1: per step at t = 10, 100, 1,000, 10,000 for Adam, NAdam with its product of momentum
factors as scalar state (plugins/lossbench-nadam), and NAdam recomputing that product from t
(the O(t) mistake the kit's step_cost_does_not_grow_with_t catches). Part 2: Adam's step in the
version-1 kernel (git revision --before, hp and lr in the run's dtype) against today's, float32
and float64, in alternating rounds. Each number is the fastest of --repeats blocks of --block
calls (microseconds per step), the blocks alternating between what is compared, calling the
kernels from Python as the kit does:

    python benchmarks/optimizer_step.py [--params 10000] [--big 535000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import sys
import time

import numpy as np
from _before import BEFORE, ROOT, old_optimizers
from numba import njit

from lossbench.builtin.optimizers import OPTIMIZERS


def load_nadam():
    path = ROOT / "plugins" / "lossbench-nadam" / "lossbench_nadam.py"
    spec = importlib.util.spec_from_file_location("lossbench_nadam", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@njit(cache=True, nogil=True, error_model="numpy")
def nadam_recomputing(p, g, state, scalars, hp, t, lr):
    """NAdam with prod_{k<=t} mu_k recomputed every step (O(t)), otherwise as the plugin's."""
    b1, b2, psi = hp[0], hp[1], hp[4]
    product = 1.0
    for k in range(1, t + 1):
        product *= b1 * (1.0 - 0.5 * 0.96 ** (k * psi))
    mu = b1 * (1.0 - 0.5 * 0.96 ** (t * psi))
    mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * psi))
    f = p.dtype.type
    c_grad = f(lr * (1.0 - mu) / (1.0 - product))
    c_mom = f(lr * mu_next / (1.0 - product * mu_next))
    bc2, eps = f(1.0 - b2**t), f(hp[2])
    b1f, b2f, one_b1, one_b2 = f(b1), f(b2), f(1.0 - b1), f(1.0 - b2)
    m, v = state[0], state[1]
    for i in range(p.shape[0]):
        gi = g[i]
        mi = b1f * m[i] + one_b1 * gi
        vi = b2f * v[i] + one_b2 * gi * gi
        m[i] = mi
        v[i] = vi
        d = math.sqrt(vi / bc2) + eps
        p[i] = (p[i] - c_grad * gi / d) - c_mom * mi / d


def interleaved_best_us(calls: dict, block: int, repeats: int) -> dict:
    """For each of ``calls`` the fastest block of ``block`` calls, in us per call; the blocks
    alternate between the calls, so a busy machine slows all of them alike."""
    best = {k: math.inf for k in calls}
    for _ in range(repeats):
        for k, call in calls.items():
            t0 = time.perf_counter()
            for _ in range(block):
                call()
            best[k] = min(best[k], time.perf_counter() - t0)
    return {k: v / block * 1e6 for k, v in best.items()}


def part1(n: int, block: int, repeats: int) -> None:
    nadam = load_nadam()
    adam = next(s for s in OPTIMIZERS if s.name == "adam")
    rng = np.random.default_rng(0)
    steps = {
        "adam": (adam.kernel, adam.pack(adam.options()), 3, 0),
        "nadam (scalar state)": (nadam.kernel, nadam.pack(nadam.NAdamOptions()), 2, 1),
        "nadam (recomputed, O(t))": (nadam_recomputing, nadam.pack(nadam.NAdamOptions()), 2, 1),
    }
    ts = (10, 100, 1_000, 10_000)
    print(f"step cost vs t: {n:,} float32 parameters, us per step (fastest of {repeats} blocks "
          f"of {block}, alternating between the t)")  # fmt: skip
    print(f"{'optimizer':26s}" + "".join(f"{'t=' + format(t, ','):>12s}" for t in ts)
          + f"{'t=10,000 / t=10':>17s}")  # fmt: skip
    for name, (kernel, hp, rows, slots) in steps.items():
        p, g = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
        state, scalars = np.zeros((rows, n), np.float32), np.ones(slots)
        hp = np.asarray(hp, dtype=np.float64)
        kernel(p, g, state, scalars, hp, 1, 1e-3)  # compile or load
        calls = {t: functools.partial(kernel, p, g, state, scalars, hp, t, 1e-3) for t in ts}
        costs = interleaved_best_us(calls, block, repeats)
        print(f"{name:26s}" + "".join(f"{costs[t]:12.1f}" for t in ts)
              + f"{costs[10_000] / costs[10]:16.1f}x")  # fmt: skip


def part2(n: int, block: int, repeats: int, before: str) -> None:
    old = next(s for s in old_optimizers(before).OPTIMIZERS if s.name == "adam")
    new = next(s for s in OPTIMIZERS if s.name == "adam")
    rng = np.random.default_rng(1)
    print(f"\nAdam step, {n:,} parameters, us per step: version 1 ({before}) vs version 2, "
          f"alternating blocks (fastest of {3 * repeats} blocks of {block} each)")
    print(f"{'dtype':8s} {'version 1':>10s} {'version 2':>10s} {'v2 / v1':>8s}")
    for dtype in (np.float32, np.float64):
        p, g = rng.normal(size=n).astype(dtype), rng.normal(size=n).astype(dtype)
        state = np.zeros((3, n), dtype)
        hp_old = np.asarray(old.pack(old.options()), dtype=dtype)
        hp_new = np.asarray(new.pack(new.options()), dtype=np.float64)
        no_scalars = np.zeros(0)
        calls = {
            "v1": functools.partial(old.kernel, p, g, state, hp_old, 100, dtype(1e-3)),
            "v2": functools.partial(new.kernel, p, g, state, no_scalars, hp_new, 100, 1e-3),
        }
        for call in calls.values():
            call()  # compile or load
        best = interleaved_best_us(calls, block, 3 * repeats)
        print(f"{np.dtype(dtype).name:8s} {best['v1']:10.1f} {best['v2']:10.1f} "
              f"{best['v2'] / best['v1']:8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=10_000, help="parameters (part 1 and 2)")
    ap.add_argument("--big", type=int, default=535_000, help="the larger size of part 2")
    ap.add_argument("--block", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--before", default=BEFORE, help="git revision of the version-1 kernels")
    args = ap.parse_args()
    part1(args.params, args.block, args.repeats)
    for n in (args.params, args.big):
        part2(n, args.block, args.repeats, args.before)


if __name__ == "__main__":
    main()
