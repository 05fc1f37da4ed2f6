"""Per-trial overhead of a sweep beyond training: what a trial costs besides its epochs
(asking Optuna, composing the config, loading data, writing outputs, telling Optuna, MLflow).

    python benchmarks/sweep_overhead.py [--trials 30] [--epochs 5]

Runs `python -m lossbench --multirun` on iris in a temporary directory, with tracking=none and
with tracking=mlflow (sqlite), and prints, per variant, the median over trials (the first trial
of each worker excluded: it pays for process start-up) of: trial wall time (Optuna's start to
complete), time in the training epochs, and the difference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(work: Path, name: str, trials: int, epochs: int, extra: list[str]) -> list[dict]:
    import optuna

    from lossbench.sweep.study import open_storage

    cmd = [
        sys.executable, "-m", "lossbench", "--multirun",
        "optimizer.lr=tag(log, interval(1e-3, 0.1))", "data=iris", f"trainer.epochs={epochs}",
        f"sweep.n_trials={trials}", "sweep.pruner=none",
        f"sweep.study_name={name}", *extra,
    ]  # fmt: skip
    env = {**os.environ, "LOSSBENCH_LOAD_PLUGINS": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stdout + r.stderr)
    storage = open_storage(f"journal:{work}/multirun/{name}/journal.log")
    study = optuna.load_study(study_name=name, storage=storage)
    rows = []
    for t in sorted(study.trials, key=lambda t: t.number)[1:]:
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        history = Path(t.user_attrs["output_dir"]) / "history.csv"
        lines = history.read_text().splitlines()[1:]
        epochs_s = sum(float(line.rsplit(",", 1)[1]) for line in lines)
        rows.append({"wall": wall, "epochs": epochs_s, "train": t.user_attrs["train_seconds"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lossbench-sweep-bench-") as tmp:
        work = Path(tmp)
        variants = {
            "tracking=none": ["tracking=none"],
            "tracking=mlflow": ["tracking=mlflow", f"tracking.uri=sqlite:///{work}/mlflow.db"],
        }
        print(f"per-trial overhead, iris, {args.epochs} epochs, {args.trials} trials, 1 worker, "
              f"{os.cpu_count()} cores (medians over trials 1..N-1)")
        print(f"{'variant':18}{'trial wall (ms)':>17}{'epochs (ms)':>13}{'overhead (ms)':>15}")
        for i, (label, extra) in enumerate(variants.items()):
            rows = run(work, f"bench{i}", args.trials, args.epochs, extra)
            wall = statistics.median(r["wall"] for r in rows) * 1e3
            ep = statistics.median(r["epochs"] for r in rows) * 1e3
            over = statistics.median(r["wall"] - r["epochs"] for r in rows) * 1e3
            print(f"{label:18}{wall:17.1f}{ep:13.1f}{over:15.1f}")
        print("target: overhead < 50 ms per trial")


if __name__ == "__main__":
    main()
