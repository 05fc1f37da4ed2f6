"""K models of one shape trained on the same minibatches with different learning rates, as a
sweep's population would train them: how much faster than one after another, with the fused
epoch as it is, and whether the members' parameters stay bit-identical.

    python benchmarks/population.py                       # 20-32-3 and digits, K = 8 and 32
    python benchmarks/population.py --cases 20-32-3 --members 8 --epochs 2

The members are real runs' arrays: each is set up by ``lossbench.train`` (Adam, float32, its
own ``optimizer.lr``, the same seed and data), the arguments of its fused epoch recorded, then
every variant starts from copies of the same state and trains ``--epochs`` epochs over one
fixed minibatch order. Variants, in model-samples per second (members x rows x epochs / s):

- ``alone, 1 BLAS thread``: the members one after another, each ``fused.train_epoch`` as a run
  calls it: a sweep in one worker today;
- ``alone, 2 BLAS threads``: the same with OpenBLAS on two threads;
- ``threads x2, 1 BLAS thread``: the members split over two Python threads, each calling
  ``train_epoch`` per member (the compiled epoch releases the GIL): members spread over the
  cores with no new kernel.

Every variant's final parameters are compared with the first one's, bit for bit. The ratio to
``alone, 1 BLAS thread`` is the speed-up a population gets from spreading its members over
the cores; the issue's goal for the fused population epoch is >= 3x.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import CASES, COMMON  # noqa: E402


def copied(value):
    """``value`` with every array in it (nested tuples) copied."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, tuple):
        return tuple(copied(v) for v in value)
    return value


def member_args(overrides: list[str], lr: float) -> tuple:
    """The arguments of a run's fused epoch (its state after one epoch), for ``lr``."""
    import lossbench
    from lossbench.training import fused

    seen = {}
    real = fused.train_epoch

    class Record:  # the compiled epoch, its last arguments kept
        def __call__(self, *args):
            seen["args"] = args
            return real(*args)

        def __getattr__(self, name):
            return getattr(real, name)

    fused.train_epoch = Record()
    try:
        lossbench.train(overrides=[*overrides, "trainer.epochs=1", f"optimizer.lr={lr}"])
    finally:
        fused.train_epoch = real
    return seen["args"]


def train_members(members: list[tuple], epochs: int, threads: int) -> float:
    """Train ``members`` (train_epoch arguments, trained in place) ``epochs`` epochs, split
    over ``threads`` Python threads; returns the seconds."""
    from lossbench.training.fused import train_epoch

    def some(part):
        for _ in range(epochs):
            for args in part:
                train_epoch(*args)

    parts = [members[i::threads] for i in range(threads)]
    t0 = time.perf_counter()
    if threads == 1:
        some(members)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(some, parts))
    return time.perf_counter() - t0


def measure(case, k: int, epochs: int, rounds: int) -> list[dict]:
    from threadpoolctl import threadpool_limits

    overrides = [*COMMON, *case.overrides, f"trainer.batch_size={case.batch}", "optimizer=adam",
                 "trainer.dtype=float32"]  # fmt: skip
    lrs = np.geomspace(1e-4, 1e-2, k)  # none diverges: a diverged epoch stops early
    base = [member_args(overrides, float(lr)) for lr in lrs]
    n_rows = base[0][9].shape[0]  # the order: the training rows
    variants = [("alone, 1 BLAS thread", 1, 1), ("alone, 2 BLAS threads", 1, 2),
                ("threads x2, 1 BLAS thread", 2, 1)]  # fmt: skip
    seconds = {name: [] for name, _, _ in variants}
    finals = {}
    for r in range(rounds + 1):  # a warm-up round, then interleaved rounds: the best of each
        for name, threads, blas in variants:
            members = [copied(a) for a in base]
            with threadpool_limits(limits=blas, user_api="blas"):
                took = train_members(members, epochs, threads)
            if r > 0:
                seconds[name].append(took)
            finals[name] = [m[4][0] for m in members]  # model = (params, layout, hp)
    first = finals[variants[0][0]]
    rows = []
    for name, _, _ in variants:
        best = min(seconds[name])
        same = all(np.array_equal(a, b) for a, b in zip(finals[name], first, strict=True))
        rate = k * n_rows * epochs / best
        rows.append({"case": case.label, "K": k, "variant": name, "seconds": best,
                     "samples_per_s": rate, "bit_identical": same})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="20-32-3,digits", help="case names (prefixes)")
    ap.add_argument("--members", default="8,32", help="population sizes K")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    wanted = args.cases.split(",")
    cases = [c for c in CASES if any(c.label.startswith(w) or w in c.label for w in wanted)]
    print(f"population of K members, Adam float32, {args.epochs} epochs, best of "
          f"{args.rounds} interleaved rounds after a warm-up; {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{'case':18s} {'K':>3s}  {'variant':28s} {'s':>8s} {'model-samples/s':>16s} "
          f"{'x alone':>8s}  bit-identical")  # fmt: skip
    for case in cases:
        for k in (int(x) for x in args.members.split(",")):
            rows = measure(case, k, args.epochs, args.rounds)
            for r in rows:
                ratio = r["samples_per_s"] / rows[0]["samples_per_s"]
                print(f"{r['case']:18s} {r['K']:3d}  {r['variant']:28s} {r['seconds']:8.3f} "
                      f"{r['samples_per_s']:16,.0f} {ratio:8.2f}  "
                      f"{'yes' if r['bit_identical'] else 'NO'}")  # fmt: skip
    print(f"load after: {os.getloadavg()[0]:.1f}; goal for the fused population epoch: >= 3x")


if __name__ == "__main__":
    main()
