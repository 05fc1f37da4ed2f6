"""What MLflow tracking costs a run: time added to the training epochs, and the one-time cost per
process, on the default config (digits, MLP, cross-entropy, Adam) with 200 epochs.

Runs `python -m lossbench` in fresh processes, alternating tracking=none and tracking=mlflow
(an existing sqlite store, as after the first run of the day), and prints medians:

    python benchmarks/tracking_overhead.py [--repeats 7] [--epochs 200]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(workdir: Path, tracking: list[str], epochs: int, tag: str) -> dict:
    out = workdir / f"run-{tag}"
    cmd = [
        sys.executable, "-m", "lossbench", f"trainer.epochs={epochs}", "trainer.progress=false",
        f"hydra.run.dir={out}", *tracking,
    ]  # fmt: skip
    env = {**os.environ, "LOSSBENCH_LOAD_PLUGINS": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{r.stderr}")
    with open(out / "history.csv") as f:
        epochs_s = sum(float(row["epoch_seconds"]) for row in csv.DictReader(f))
    summary = json.loads((out / "summary.json").read_text())
    return {"wall": wall, "epochs": epochs_s, "total": summary["timings"]["total_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lossbench-tracking-bench-") as tmp:
        work = Path(tmp)
        store = f"tracking.uri=sqlite:///{work}/mlflow.db"
        variants = {"none": ["tracking=none"], "mlflow": ["tracking=mlflow", store]}
        for name, extra in variants.items():  # warm numba's cache and create the store
            one_run(work, extra, 2, f"warm-{name}")
        results = {name: [] for name in variants}
        for i in range(args.repeats):
            for name, extra in variants.items():
                results[name].append(one_run(work, extra, args.epochs, f"{name}-{i}"))
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in results.items()}
    none, ml = med["none"], med["mlflow"]
    print(f"tracking overhead, default config, {args.epochs} epochs, median of {args.repeats} "
          f"runs per variant (alternating), {os.cpu_count()} cores")
    print(f"{'':24}{'tracking=none':>16}{'tracking=mlflow':>18}{'added':>12}")
    rows = [
        ("training epochs (s)", none["epochs"], ml["epochs"]),
        ("train() total (s)", none["total"], ml["total"]),
        ("process wall time (s)", none["wall"], ml["wall"]),
    ]
    for label, a, b in rows:
        print(f"{label:24}{a:16.3f}{b:18.3f}{b - a:+12.3f}")
    pct = 100 * (ml["epochs"] / none["epochs"] - 1)
    print(f"time added to the training epochs: {pct:+.1f}% (target < 5%)")
    print(f"one-time cost per process with an existing store: {ml['wall'] - none['wall']:.2f} s "
          "(target < 1.5 s)")


if __name__ == "__main__":
    main()
