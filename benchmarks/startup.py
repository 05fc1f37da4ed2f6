"""Start-up: whole ``python -m lossbench`` processes, warm and cold, median of N (hyperfine
style: each variant run N times, the variants alternating).

    python benchmarks/startup.py [--runs 5] [--cold-runs 3] [--source DIR] [--quick]

Warm: numba's cache already holds the epoch and the kernels (a first run fills it, not
timed). Cold: an empty ``NUMBA_CACHE_DIR`` for every run, the first run after an install, one
dtype. The default run is ``python -m lossbench`` as a user types it (50 epochs on digits,
MLflow on, the store already existing: a first run creates it, not timed). Per variant: median
wall seconds, median CPU seconds of the process (user + sys; MLflow's side process runs in
its own session and is not counted), and from the run's summary.json the seconds inside
``train`` (set-up, compile or cache load, epochs); wall minus ``train`` is the interpreter,
imports, composing and the exit. ``--source DIR`` times the lossbench of another checkout
(``git archive`` of an older commit) for a before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARM = {
    "epochs=1, tracking=none": ["trainer.epochs=1", "tracking=none"],
    "epochs=1, tracking=none, plots=false": ["trainer.epochs=1", "tracking=none",
                                             "trainer.plots=false"],
    "default run (50 epochs, MLflow on)": [],
}  # fmt: skip
COLD = {"cold: epochs=1, tracking=none, float32": ["trainer.epochs=1", "tracking=none"]}


def once(args: list[str], work: Path, env: dict, n: int) -> dict:
    """One whole process: wall and CPU seconds, and the run's own timings."""
    out = work / f"run{n}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "lossbench", "trainer.progress=false", *args,
         f"hydra.run.dir={out}"],
        cwd=work, env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"lossbench {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    timings = json.loads((out / "summary.json").read_text())["timings"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, **timings}


def measure(variants: dict, runs: int, work: Path, env: dict, cold: bool) -> dict:
    rows: dict[str, list[dict]] = {name: [] for name in variants}
    n = 0
    for i in range(runs):
        for name, args in variants.items() if i % 2 == 0 else list(variants.items())[::-1]:
            run_env = dict(env)
            if cold:
                cache = work / f"numba-cache-{n}"
                shutil.rmtree(cache, ignore_errors=True)
                run_env["NUMBA_CACHE_DIR"] = str(cache)
            n += 1
            rows[name].append(once(args, work, run_env, n))
            shutil.rmtree(work / f"run{n}", ignore_errors=True)
    return rows


def table(rows: dict[str, list[dict]]) -> list[str]:
    cols = [("wall", "wall s"), ("cpu", "CPU s"), ("total_seconds", "in train s"),
            ("compile_seconds", "compile/load s"), ("train_seconds", "epochs s")]  # fmt: skip
    lines = [f"{'variant':42}{'runs':>5}" + "".join(f"{h:>16}" for _, h in cols)]
    for name, rs in rows.items():
        cells = "".join(f"{statistics.median(r.get(k, 0.0) for r in rs):>16.2f}" for k, _ in cols)
        lines.append(f"{name:42}{len(rs):>5}{cells}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--source", default=None, help="time the lossbench of this checkout")
    ap.add_argument("--quick", action="store_true", help="3 warm runs, 1 cold run")
    ap.add_argument("--json", help="also write the medians to this file (benchmarks/report.py)")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.cold_runs = 3, 1
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["LOSSBENCH_LOAD_PLUGINS"] = ""
    if args.source:
        env["PYTHONPATH"] = args.source
    with tempfile.TemporaryDirectory(prefix="lossbench-startup-") as tmp:
        work = Path(tmp)
        for a in WARM.values():  # fill numba's cache and create the MLflow store
            once(a, work, env, 0)
            shutil.rmtree(work / "run0", ignore_errors=True)
        rows = measure(WARM, args.runs, work, env, cold=False)
        if args.cold_runs:
            rows.update(measure(COLD, args.cold_runs, work, env, cold=True))
    load = os.getloadavg()
    print(f"start-up, whole processes{' of ' + args.source if args.source else ''}: medians; "
          f"{os.cpu_count()} cores, load average {load[0]:.1f}/{load[1]:.1f}")  # fmt: skip
    print("\n".join(table(rows)))
    if args.json:
        medians = {name: {k: statistics.median(r.get(k, 0.0) for r in rs) for k in rs[0]}
                   for name, rs in rows.items()}  # fmt: skip
        Path(args.json).write_text(json.dumps({"load": load, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
