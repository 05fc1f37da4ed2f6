"""The price of catching a kernel that raises (``lossbench.kernels.KernelWatch``): the fused
epoch as ``train`` calls it now (a flag read after every kernel call, the unraisable hook set
around the call) against the fused epoch before that change (``fused.py`` at commit
``BEFORE``, loaded from git), on the same run's arrays, in one process, interleaved.

    python benchmarks/kernel_watch.py                 # 20-32-3 and 64-128-10, float32
    python benchmarks/kernel_watch.py --dtype float64 --rounds 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _before import old_module  # noqa: E402
from throughput import CASES, COMMON  # noqa: E402

BEFORE = "3453d2f"  # main before the fused epoch checked for kernel exceptions


def runners(overrides: list[str]):
    """The new and the old fused runner of one set-up run (they share its arrays)."""
    import lossbench
    from lossbench.plugins import get_plugin_manager
    from lossbench.training import fused
    from lossbench.training.fused import ROLES
    from lossbench.training.run import Run
    from lossbench.training.setup import resolve, set_up

    pm = get_plugin_manager()
    cfg = lossbench.compose(overrides)
    specs, hp = resolve(cfg, pm.registry)
    run = Run(config=cfg, output_dir=None, specs=specs, options=hp,
              sources={g: pm.source_of(specs[g].plugin) for g in specs},
              path="numpy" if any(specs[g].numpy_only for g in ROLES) else "fused")  # fmt: skip
    s = set_up(run)
    old = old_module("lossbench/training/fused.py", BEFORE)
    return fused.fused_runner(run, s), old.fused_runner(run, s), float(s.base_lr)


def median_epoch(runner, lr: float, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        runner.epoch(1, lr)
    return (time.perf_counter() - t0) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; fused epoch, median of {args.rounds} "
          f"interleaved rounds, {args.dtype}")  # fmt: skip
    print(f"{'case':<20} {'before (ms)':>12} {'now (ms)':>10} {'now / before':>13}")
    for case in CASES[:2]:
        new, old, lr = runners([*COMMON, *case.overrides, f"trainer.dtype={args.dtype}",
                                f"trainer.batch_size={case.batch}", "optimizer=adam",
                                "optimizer.lr=1e-4"])  # fmt: skip
        for runner in (new, old):  # warm: compiled, caches hot
            median_epoch(runner, lr, 3)
        rounds = {"old": [], "new": []}
        for _ in range(args.rounds):
            rounds["old"].append(median_epoch(old, lr, case.reps))
            rounds["new"].append(median_epoch(new, lr, case.reps))
        before, now = (statistics.median(rounds[k]) for k in ("old", "new"))
        print(f"{case.label:<20} {before * 1e3:>12.3f} {now * 1e3:>10.3f} {now / before:>13.3f}")


if __name__ == "__main__":
    main()
