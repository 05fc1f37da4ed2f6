"""Every benchmark run once on a tiny size, so none rots: `make bench-smoke` (CI runs it).

Each script is started as a user starts it, with the smallest arguments that still go through
all of its code, and must exit 0. The numbers it prints mean nothing at these sizes; the table
says which scripts ran, how long each took, and which were skipped and why (PyTorch or JAX not
installed, no PostgreSQL, a git revision it compares against missing from a shallow clone).

    python benchmarks/smoke.py            # all
    python benchmarks/smoke.py kit_time   # the named ones
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# script, tiny arguments, what it needs beyond the test install
SCRIPTS: list[tuple[str, list[str], list[str]]] = [
    ("epoch_breakdown", ["--cases", "20-32-3", "--optimizers", "sgd", "--rounds", "1"], []),
    ("epoch_trajectories", ["--trials", "8", "--data", "moons"], []),
    ("float32_drift", [], ["git:8b3091a"]),
    ("kernel_cache", [], []),
    ("kernel_watch", ["--rounds", "1"], ["git:3453d2f"]),
    ("kit_time", ["--rounds", "1", "--quick"], []),
    ("make_torch_batchnorm", ["--out", "{tmp}/torch_batchnorm.json"], ["torch"]),
    ("make_torch_reference", ["--out", "{tmp}/torch_reference.json"], ["torch"]),
    ("population", ["--cases", "20-32-3", "--members", "2", "--epochs", "1", "--rounds", "1"], []),
    ("optimizer_step", ["--params", "1000", "--big", "4000", "--block", "5", "--repeats", "1"],
     ["git:8b3091a"]),
    ("startup", ["--runs", "1", "--cold-runs", "0"], []),
    ("storage_load", ["--workers", "2", "--trials-per-worker", "1", "--epochs", "1"],
     ["postgres"]),
    ("sweep_overhead", ["--trials", "2", "--epochs", "1", "--launchers", "local"], []),
    ("sweep_vs_hydra", ["--rounds", "1", "--trials", "2", "--epochs", "2"], []),
    ("throughput", ["--quick", "--cases", "20"], ["torch", "jax"]),
    ("tracking_overhead", ["--repeats", "1", "--epochs", "5"], []),
]
# report.py runs startup, sweep_vs_hydra and throughput together: covered by those three
COVERED = {"report", "smoke", "_before"}


def missing(needs: list[str]) -> str | None:
    """Why a script cannot run here, or None."""
    for need in needs:
        if need in ("torch", "jax") and importlib.util.find_spec(need) is None:
            return f"{need} is not installed (pip install -e '.[bench]')"
        if need == "postgres" and not _listening("127.0.0.1", 5432):
            return "no PostgreSQL on 127.0.0.1:5432"
        if need.startswith("git:"):
            rev = need[4:]
            found = subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], cwd=ROOT,
                                   capture_output=True).returncode == 0  # fmt: skip
            if not found:
                return f"git revision {rev} is not in this clone (a shallow clone?)"
    return None


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def run(name: str, args: list[str], tmp: Path) -> tuple[bool, float, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [PYTHON, str(ROOT / "benchmarks" / f"{name}.py"),
               *(a.format(tmp=tmp) for a in args)]  # fmt: skip
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - start, "timed out after 300 s"
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    return done.returncode == 0, time.perf_counter() - start, tail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="only these scripts")
    opts = ap.parse_args()
    listed = {name for name, _, _ in SCRIPTS}
    unlisted = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - listed - COVERED
    if unlisted:  # a new benchmark must be added here, so it is run too
        print(f"benchmarks/smoke.py: add these to SCRIPTS: {', '.join(sorted(unlisted))}")
        return 1
    failed = []
    print(f"{'benchmark':22}{'seconds':>9}  result")
    with tempfile.TemporaryDirectory(prefix="lossbench-smoke-") as tmp:
        for name, args, needs in SCRIPTS:
            if opts.names and name not in opts.names:
                continue
            reason = missing(needs)
            if reason:
                print(f"{name:22}{'':>9}  skipped: {reason}", flush=True)
                continue
            ok, seconds, tail = run(name, args, Path(tmp))
            print(f"{name:22}{seconds:9.1f}  {'ok' if ok else 'FAILED'}", flush=True)
            if not ok:
                failed.append(name)
                print("    " + tail.replace("\n", "\n    "))
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
