"""Per-trial overhead of a sweep beyond training: what a trial costs besides its epochs
(asking Optuna, composing the config, loading data, writing outputs, telling Optuna, MLflow),
with the local launcher (worker processes) and with Ray (tasks on a local Ray instance).

    python benchmarks/sweep_overhead.py [--trials 20] [--epochs 5] [--launchers local,ray]

Runs `python -m lossbench --multirun` on iris in a temporary directory, one worker, with
tracking=none and tracking=mlflow (sqlite), and prints, per variant, the median over trials
(the first trial of each worker excluded: it pays for process start-up) of: trial wall time
(Optuna's start to complete), time in the training epochs, the difference, and the time
between a worker's trials (tell to the next ask: budget lock, recovery, counting, asking); for
Ray also the one-time cost of starting the local Ray instance and connecting to it.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(work: Path, name: str, trials: int, epochs: int, extra: list[str]) -> dict:
    import optuna

    from lossbench.sweep.study import open_storage

    cmd = [
        sys.executable, "-m", "lossbench", "--multirun",
        "optimizer.lr=tag(log, interval(1e-3, 0.1))", "data=iris", f"trainer.epochs={epochs}",
        f"sweep.n_trials={trials}", "sweep.pruner=none", "sweep.n_jobs=1",
        f"sweep.study_name={name}", *extra,
    ]  # fmt: skip
    env = {**os.environ, "LOSSBENCH_LOAD_PLUGINS": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stdout + r.stderr)
    ray_start = re.search(r"connected in ([0-9.]+) s", r.stderr)
    storage = open_storage(f"journal:{work}/multirun/{name}/journal.log")
    study = optuna.load_study(study_name=name, storage=storage)
    rows, last_end = [], {}
    for t in sorted(study.trials, key=lambda t: t.number):
        pid = t.user_attrs["pid"]
        if pid not in last_end:  # a worker's first trial pays its start-up
            last_end[pid] = t.datetime_complete
            continue
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        # between one trial's tell and the next one's ask: the budget lock, lost-trial
        # recovery, counting and asking (task scheduling is paid once, not per trial)
        gap = (t.datetime_start - last_end[pid]).total_seconds()
        last_end[pid] = t.datetime_complete
        lines = (Path(t.user_attrs["output_dir"]) / "history.csv").read_text().splitlines()[1:]
        epochs_s = sum(float(line.rsplit(",", 1)[1]) for line in lines)
        rows.append({"wall": wall, "epochs": epochs_s, "gap": gap})
    return {"rows": rows, "total": total, "ray_start": float(ray_start[1]) if ray_start else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--launchers", default="local,ray")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lossbench-sweep-bench-") as tmp:
        work = Path(tmp)
        tracking = {
            "tracking=none": ["tracking=none"],
            "tracking=mlflow": ["tracking=mlflow", f"tracking.uri=sqlite:///{work}/mlflow.db"],
        }
        print(f"per-trial overhead, iris, {args.epochs} epochs, {args.trials} trials, 1 worker, "
              f"{os.cpu_count()} cores (medians over each worker's trials 2..N)")
        print(f"{'variant':30}{'trial wall (ms)':>17}{'epochs (ms)':>13}{'overhead (ms)':>15}"
              f"{'between (ms)':>14}{'sweep (s)':>11}{'ray start (s)':>15}")
        i = 0
        for launcher in args.launchers.split(","):
            for label, extra in tracking.items():
                i += 1
                out = run(work, f"bench{i}", args.trials, args.epochs,
                          [*extra, f"sweep.launcher={launcher}"])  # fmt: skip
                rows = out["rows"]
                wall = statistics.median(r["wall"] for r in rows) * 1e3
                ep = statistics.median(r["epochs"] for r in rows) * 1e3
                over = statistics.median(r["wall"] - r["epochs"] for r in rows) * 1e3
                gap = statistics.median(r["gap"] for r in rows) * 1e3
                start = f"{out['ray_start']:.1f}" if out["ray_start"] is not None else "-"
                print(f"{'launcher=' + launcher + ' ' + label:30}{wall:17.1f}{ep:13.1f}"
                      f"{over:15.1f}{gap:14.1f}{out['total']:11.1f}{start:>15}", flush=True)
        print("goal: overhead < 50 ms per trial locally, < 100 ms with Ray once its workers run")


if __name__ == "__main__":
    main()
