"""The work epoch trajectories save: ``sweep=lr_epochs`` as a user types it, with every epoch
count answered from one run per learning rate (the default), against the same sweep with each
trial training its own epochs (``sweep.epochs_from_one_run=false``), side by side in one run.

Prints, for each: trials, runs trained, epochs trained, wall time of the whole command, and
the best trial found. Each sweep runs in its own empty folder, as a fresh command.

    python benchmarks/epoch_trajectories.py [--trials 240] [--tracking] [--data digits]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def run(folder: Path, args: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lossbench", "--multirun", *args], cwd=folder,
                       env=env, capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"sweep failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    (root,) = (folder / "multirun").iterdir()
    results = yaml.safe_load((root / "optimization_results.yaml").read_text())
    return {"seconds": seconds, "results": results, "epochs": epochs_trained(root, results)}


def epochs_trained(root: Path, results: dict) -> tuple[int, int, int]:
    """(runs trained, epochs trained, epochs the same trials would need trained one by one):
    a trained trial's curve is its epochs; an answer read from a run would train its own
    trainer.epochs, or as far as the run it is read from got when that run was pruned."""
    import optuna

    from lossbench.sweep.study import open_storage

    study = optuna.load_study(study_name=results["name"],
                              storage=open_storage(f"journal:{root}/journal.log"))  # fmt: skip
    trials = [t for t in study.trials if not t.user_attrs.get("lossbench_lost")]
    runs = [t for t in trials if "read_from" not in t.user_attrs and t.user_attrs.get("val_loss")]
    trained = sum(len(t.user_attrs["val_loss"]) for t in runs)
    alone = trained
    for t in trials:
        if "read_from" in t.user_attrs:
            ran = len(study.trials[t.user_attrs["read_from"]].user_attrs.get("val_loss", []))
            alone += min(int(t.params["trainer.epochs"]), ran)
    return len(runs), trained, alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=240)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--tracking", action="store_true", help="MLflow on (a fresh sqlite store)")
    opts = parser.parse_args()
    common = ["sweep=lr_epochs", f"data={opts.data}", f"sweep.n_trials={opts.trials}"]
    if not opts.tracking:
        common.append("tracking=none")
    rows = []
    for label, extra in (
        ("one run per learning rate (default)", []),
        ("each trial its own run", ["sweep.epochs_from_one_run=false"]),
    ):
        with tempfile.TemporaryDirectory(prefix="lossbench-traj-") as tmp:
            rows.append((label, run(Path(tmp), [*common, *extra])))
    print(
        f"sweep=lr_epochs on {opts.data}, {opts.trials} trials, "
        f"MLflow {'on' if opts.tracking else 'off'} (python {sys.version.split()[0]})"
    )
    print(f"{'':38} {'trials':>7} {'runs':>6} {'epochs':>8} {'alone':>8} {'seconds':>8}  best")
    for label, r in rows:
        res = r["results"]
        best = f"{res['best_value']:.4f} at {res['best_params']}"
        runs, trained, alone = r["epochs"]
        print(
            f"{label:38} {res['trials']['done']:>7} {runs:>6} {trained:>8} {alone:>8} "
            f"{r['seconds']:>8.1f}  {best}"
        )
    (a, b) = (rows[0][1], rows[1][1])
    same = a["epochs"][2] / a["epochs"][1]
    epochs, wall = b["epochs"][1] / a["epochs"][1], b["seconds"] / a["seconds"]
    print(
        f"the same {a['results']['trials']['done']} answers trained one by one would take "
        f"{same:.1f}x the epochs (column 'alone'); as a user runs both (the sampler then "
        f"spends its trials differently): {epochs:.1f}x the epochs, {wall:.2f}x the wall time"
    )


if __name__ == "__main__":
    main()
