"""The 20-trial TPE learning-rate sweep, end to end, against Hydra + hydra-optuna-sweeper +
PyTorch (+ MLflow) doing the same (benchmarks/anchors/hydra_torch), in alternating rounds.

    python benchmarks/sweep_vs_hydra.py [--rounds 3] [--trials 20] [--epochs 30]
        [--anchor-python .venv-anchor/bin/python] [--source DIR] [--quick]

Both: digits, MLP 64-128-10, Adam, batch 64, float32, 30 epochs, TPE (seed 0), one worker,
no pruning (hydra-optuna-sweeper has none), MLflow on an existing sqlite store (created before
the rounds). The anchor needs its own venv: hydra-optuna-sweeper 1.3 requires optuna<3
(``python -m venv .venv-anchor && .venv-anchor/bin/pip install -r
benchmarks/anchors/hydra_torch/requirements.txt``); without it only lossbench is measured.

Per variant, medians over rounds: the command's wall time; before the first trial (process
start to the first trial's start); the first trial; the per-trial overhead beyond training
(trials 2..N: (last end - second start - their epochs) / (N - 1)); after the last trial (its end
to the command's end); and for lossbench the background summary process (figures and the
parent run's end), which the command does not wait for. ``--source DIR`` runs the lossbench of
another checkout (e.g. ``git archive`` of an older commit) for a before/after.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANCHOR = ROOT / "benchmarks" / "anchors" / "hydra_torch"


def _env(source: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["LOSSBENCH_LOAD_PLUGINS"] = ""
    if source:
        env["PYTHONPATH"] = source
    return env


def lossbench_round(work: Path, name: str, args, source: str | None) -> dict:
    """One lossbench sweep; its timeline from the study (trial starts/ends, epoch seconds)."""
    import optuna

    from lossbench.sweep.study import open_storage

    cmd = [
        sys.executable, "-m", "lossbench", "--multirun",
        "optimizer.lr=tag(log, interval(1e-4, 1))", "data=digits", "model.hidden=[128]",
        "optimizer=adam", "trainer.batch_size=64", f"trainer.epochs={args.epochs}",
        "trainer.dtype=float32", f"sweep.n_trials={args.trials}", "sweep.n_jobs=1",
        "sweep.pruner=none", "sweep.sampler=tpe", "sweep.seed=0", f"sweep.study_name={name}",
        "tracking=mlflow", f"tracking.uri=sqlite:///{work}/lossbench.db",
    ]  # fmt: skip
    t0 = time.time()
    r = subprocess.run(cmd, cwd=work, env=_env(source), capture_output=True, text=True)
    t_end = time.time()
    if r.returncode != 0:
        raise SystemExit(r.stdout[-3000:] + r.stderr[-3000:])
    lock = work / "multirun" / name / ".summary.lock"
    summary = None
    if lock.exists():  # the background summary process holds it until it is done
        with open(lock) as f:
            fcntl.flock(f, fcntl.LOCK_EX)
        summary = time.time() - t_end
    storage = open_storage(f"journal:{work}/multirun/{name}/journal.log")
    study = optuna.load_study(study_name=name, storage=storage)
    trials = []
    for t in sorted(study.trials, key=lambda t: t.number):
        hist = (Path(t.user_attrs["output_dir"]) / "history.csv").read_text().splitlines()[1:]
        trials.append({
            "start": _ts(t.datetime_start), "end": _ts(t.datetime_complete),
            "epochs": sum(float(line.rsplit(",", 1)[1]) for line in hist),
        })  # fmt: skip
    return {**timeline(t0, t_end, trials), "summary": summary}


def _ts(d: datetime) -> float:
    return d.timestamp()


def anchor_round(work: Path, name: str, args) -> dict:
    """One Hydra + hydra-optuna-sweeper + PyTorch sweep; its timeline from the trials' own
    records (timeline.jsonl)."""
    line = work / f"{name}.jsonl"
    cmd = [
        args.anchor_python, str(ANCHOR / "train.py"), "--multirun",
        f"hydra.sweep.dir={work}/anchor/{name}", f"hydra.sweeper.n_trials={args.trials}",
        f"epochs={args.epochs}", f"timeline={line}", f"mlflow_uri=sqlite:///{work}/anchor.db",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    t0 = time.time()
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    t_end = time.time()
    if r.returncode != 0:
        raise SystemExit(r.stdout[-3000:] + r.stderr[-3000:])
    trials = [json.loads(x) for x in line.read_text().splitlines()]
    return {**timeline(t0, t_end, trials), "summary": None}


def timeline(t0: float, t_end: float, trials: list[dict]) -> dict:
    """Wall, before the first trial, the first trial, per-trial overhead of trials 2..N, after
    the last trial."""
    first, last = trials[0], trials[-1]
    rest = trials[1:]
    per_trial = None
    if rest:
        span = last["end"] - rest[0]["start"]
        per_trial = (span - sum(t["epochs"] for t in rest)) / len(rest)
    return {
        "wall": t_end - t0,
        "before_first": first["start"] - t0,
        "first_trial": first["end"] - first["start"],
        "per_trial_overhead": per_trial,
        "per_trial_epochs": statistics.median(t["epochs"] for t in trials),
        "after_last": t_end - last["end"],
    }


def create_store(uri: str, python: str) -> None:
    """An existing store for every round (creating and migrating one costs about 1.3 s)."""
    code = "import sys; from mlflow.tracking import MlflowClient; MlflowClient(sys.argv[1])" \
           ".search_experiments()"  # fmt: skip
    subprocess.run([python, "-c", code, uri], check=True, capture_output=True)


def _med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def table(results: dict[str, list[dict]]) -> list[str]:
    """The printed table, one line per variant, and the ratio line."""
    cols = [("wall", "wall s", 1), ("before_first", "before 1st s", 1),
            ("first_trial", "1st trial s", 1), ("per_trial_overhead", "overhead/trial ms", 1000),
            ("per_trial_epochs", "epochs/trial ms", 1000), ("after_last", "after last s", 1),
            ("summary", "background s", 1)]  # fmt: skip
    lines = [f"{'variant':34}" + "".join(f"{h:>19}" for _, h, _ in cols)]
    for name, rows in results.items():
        cells = []
        for key, _, scale in cols:
            v = _med(rows, key)
            cells.append(f"{'-' if v is None else f'{v * scale:.2f}':>19}")
        lines.append(f"{name:34}" + "".join(cells))
    if len(results) == 2:
        (a, ra), (b, rb) = results.items()
        ratios = [y["wall"] / x["wall"] for x, y in zip(ra, rb, strict=False)]
        lines.append(f"{b} / {a} wall, per round: " + ", ".join(f"{x:.2f}x" for x in ratios)
                     + f"; median {statistics.median(ratios):.2f}x")  # fmt: skip
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--anchor-python", default=str(ROOT / ".venv-anchor" / "bin" / "python"))
    ap.add_argument("--source", default=None, help="run the lossbench of this checkout")
    ap.add_argument("--quick", action="store_true", help="1 round, 5 trials")
    ap.add_argument("--json", help="also write the medians to this file (benchmarks/report.py)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.trials = 1, 5
    anchor = Path(args.anchor_python).is_file()
    label = "lossbench" + (f" ({args.source})" if args.source else "")
    results: dict[str, list[dict]] = {label: []}
    if anchor:
        results["hydra-optuna-sweeper + torch"] = []
    with tempfile.TemporaryDirectory(prefix="lossbench-sweep-vs-hydra-") as tmp:
        work = Path(tmp)
        create_store(f"sqlite:///{work}/lossbench.db", sys.executable)
        if anchor:
            create_store(f"sqlite:///{work}/anchor.db", args.anchor_python)
        for i in range(args.rounds):
            order = [label, *(["hydra-optuna-sweeper + torch"] if anchor else [])]
            for variant in order if i % 2 == 0 else order[::-1]:  # alternate who goes first
                if variant == label:
                    row = lossbench_round(work, f"lr{i}", args, args.source)
                else:
                    row = anchor_round(work, f"lr{i}", args)
                results[variant].append(row)
    load = os.getloadavg()
    print(f"sweep: {args.trials} trials TPE, digits 64-128-10 Adam batch 64, {args.epochs} "
          f"epochs, float32, MLflow on (existing sqlite store), 1 worker; {args.rounds} "
          f"alternating rounds, medians; {os.cpu_count()} cores, load average "
          f"{load[0]:.1f}/{load[1]:.1f}")  # fmt: skip
    if not anchor:
        print(f"(no anchor: {args.anchor_python} missing; see the module docstring)")
    print("\n".join(table(results)))
    if args.json:
        keys = ("wall", "before_first", "first_trial", "per_trial_overhead", "per_trial_epochs",
                "after_last", "summary")  # fmt: skip
        medians = {name: {k: _med(rows, k) for k in keys} for name, rows in results.items()}
        Path(args.json).write_text(json.dumps({"load": load, "medians": medians,
                                               "trials": args.trials}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
