"""Every benchmark in one report: start-up (benchmarks/startup.py), the sweep against Hydra +
hydra-optuna-sweeper + PyTorch (benchmarks/sweep_vs_hydra.py), throughput against PyTorch and
JAX (benchmarks/throughput.py), each run as a subprocess; their tables are printed as they
are, then one table of the fixed-cost goals (issue 10) with the measured value and met / not
met.

    python benchmarks/report.py [--quick] [--skip throughput,sweep,startup]

``--quick`` passes ``--quick`` to every script (few repetitions: a smoke run, not a result).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "startup": HERE / "startup.py",
    "sweep": HERE / "sweep_vs_hydra.py",
    "throughput": HERE / "throughput.py",
}
ANCHOR = "hydra-optuna-sweeper + torch"


def run(name: str, quick: bool, json_path: Path | None) -> str:
    """The script's printed output (its tables), or why it failed."""
    cmd = [sys.executable, str(SCRIPTS[name]), *(["--quick"] if quick else [])]
    if json_path is not None:
        cmd += ["--json", str(json_path)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return f"{name}: failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-2000:]}"
    return r.stdout.rstrip()


def goals(startup: dict | None, sweep: dict | None) -> list[tuple[str, str, float | None, bool]]:
    """(goal, target, measured, met) for the fixed-cost goals the measurements cover."""
    rows = []
    if startup:
        m = startup["medians"]
        warm = m.get("epochs=1, tracking=none", {}).get("wall")
        default = m.get("default run (50 epochs, MLflow on)", {}).get("wall")
        cold = m.get("cold: epochs=1, tracking=none, float32", {}).get("wall")
        rows += [("warm `trainer.epochs=1` (tracking=none), wall s", "<= 1.5", warm, 1.5),
                 ("default run (50 epochs, MLflow on), wall s", "<= 2.5", default, 2.5),
                 ("first run, empty numba cache, one dtype, wall s", "<= 6", cold, 6.0)]
    if sweep:
        m = sweep["medians"]
        lb = next((v for k, v in m.items() if k.startswith("lossbench")), {})
        anchor = m.get(ANCHOR)
        ratio = anchor["wall"] / lb["wall"] if anchor and lb.get("wall") else None
        overhead = lb.get("per_trial_overhead")
        rows += [("sweep end to end vs Hydra + sweeper + torch", ">= 4x", ratio, None),
                 ("per-trial overhead beyond training, ms", "<= 50",
                  overhead * 1000 if overhead is not None else None, 50.0),
                 ("before the first trial, s", "<= 1", lb.get("before_first"), 1.0),
                 ("after the last trial, s", "<= 1", lb.get("after_last"), 1.0)]
    out = []
    for goal, target, value, limit in rows:
        if value is None:
            out.append((goal, target, None, False))
        elif limit is None:  # a ratio: higher is better
            out.append((goal, target, value, value >= 4.0))
        else:
            out.append((goal, target, value, value <= limit))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip", default="", help="comma-separated: startup, sweep, throughput")
    args = ap.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    data: dict[str, dict | None] = {}
    with tempfile.TemporaryDirectory(prefix="lossbench-report-") as tmp:
        for name in SCRIPTS:
            if name in skip:
                continue
            path = Path(tmp) / f"{name}.json"
            print(f"## {name} ({SCRIPTS[name].name}{' --quick' if args.quick else ''})")
            print(run(name, args.quick, path if name != "throughput" else None), flush=True)
            print()
            data[name] = json.loads(path.read_text()) if path.is_file() else None
    load = os.getloadavg()
    print(f"## fixed-cost goals ({os.cpu_count()} cores, load average {load[0]:.1f} at the end"
          f"{'; --quick: a smoke run, not a result' if args.quick else ''})")  # fmt: skip
    print(f"{'goal':52}{'target':>10}{'measured':>12}  met")
    for goal, target, value, met in goals(data.get("startup"), data.get("sweep")):
        shown = "-" if value is None else f"{value:.2f}"
        print(f"{goal:52}{target:>10}{shown:>12}  {'yes' if met else 'no'}")


if __name__ == "__main__":
    main()
