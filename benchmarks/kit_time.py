"""The conformance kit's wall time on the example plugins, before and after this round's work,
side by side in one run: the kit of git revision --before against the working tree's (and the
working tree's in fast mode, LOSSBENCH_KIT_FAST=1), each running every check of the same
example plugins (lossbench-focal, -lion, -nadam, single-file's pseudo_huber and poly1, with the
cases their own tests give) in a fresh process, as ``python -m pytest`` on their kit tests does
(the process's whole wall time, pytest's own start-up aside).

Two situations: "warm" (nothing changed since the last run: every kernel loads from numba's
cache) and "after an edit" (each plugin's kernel file edited: its kernels compile again, the
edit-run loop). Each copy lives in its own folder (its own numba cache); rounds alternate
between the variants, and the table gives the median and the fastest of --rounds rounds:

    python benchmarks/kit_time.py [--before 3453d2f] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "3453d2f"  # main before the kit's round of issue 21
SUITES = ["lossbench-focal", "lossbench-lion", "lossbench-nadam", "single-file"]
# every check of the same components, with the cases the plugins' tests give (the same in both)
PROBE = """
import sys
from pathlib import Path
import lossbench_focal, lossbench_lion, lossbench_nadam
from lossbench.testing import checks_for
single = Path(sys.argv[1]) / "plugins" / "single-file"
cases = {"focal": [{}, {"gamma": 0.0}, {"gamma": 0.5, "alpha": 0.25}],
         "binary_focal": [{}, {"gamma": 0.0, "alpha": None}, {"gamma": 0.5, "alpha": 0.75}],
         "lion": [{}, {"weight_decay": 0.1}, {"beta1": 0.5, "beta2": 0.9}],
         "nadam": [{}, {"momentum_decay": 0.05, "beta1": 0.8}],
         "pseudo_huber": [{}, {"delta": 0.3}], "poly1": [{}, {"epsilon": -0.5}]}
checks = []
for plugin in (lossbench_focal, lossbench_lion, lossbench_nadam, single / "pseudo_huber.py",
               single / "poly1.py"):
    checks += checks_for(plugin, hparams=cases)  # hparams=: the spelling both commits take
for check in checks:
    try:
        check.run()
    except Exception as exc:
        if type(exc).__name__ != "CheckSkipped":
            raise
print(len(checks))
"""
KERNEL_FILES = ["lossbench-focal/lossbench_focal.py", "lossbench-lion/lossbench_lion.py",
                "lossbench-nadam/lossbench_nadam.py", "single-file/pseudo_huber.py"]  # fmt: skip


def export(rev: str | None, into: Path) -> Path:
    """lossbench, conf/ and plugins/ at ``rev`` (None: the working tree) in a folder of their
    own."""
    into.mkdir(parents=True, exist_ok=True)
    if rev is None:
        paths = ["lossbench", "conf", "sweeps", "plugins"]
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", *paths],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
        for name in files.split():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / name).is_file():
                target.write_bytes((ROOT / name).read_bytes())
        return into
    archive = subprocess.run(["git", "archive", rev, "lossbench", "conf", "sweeps", "plugins"],
                             cwd=ROOT, capture_output=True, check=True).stdout  # fmt: skip
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_kit(copy: Path, fast: bool) -> float:
    """Seconds for one process running the example plugins' kit tests with ``copy``'s kit."""
    plugins = copy / "plugins"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSSBENCH_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(copy)] + [str(plugins / s) for s in SUITES if s.startswith("lossbench-")]
    )
    env["LOSSBENCH_LOAD_PLUGINS"] = ""
    if fast:
        env["LOSSBENCH_KIT_FAST"] = "1"
    cmd = [sys.executable, "-c", PROBE, str(copy)]
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"the kit failed in {copy}:\n{r.stdout[-3000:]}{r.stderr[-2000:]}")
    return seconds


def edit(copy: Path, round_no: int) -> None:
    """Change each plugin's kernel file (a comment), as an author editing a kernel does."""
    for name in KERNEL_FILES:
        path = copy / "plugins" / name
        path.write_text(path.read_text() + f"# edit {round_no}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE, help="git revision of the kit before")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="the working tree's fast mode only")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lossbench-kit-time-"))
    copies = {"after, fast mode": (export(None, tmp / "after-fast"), True)}
    if not args.quick:
        copies = {
            f"before ({args.before})": (export(args.before, tmp / "before"), False),
            "after": (export(None, tmp / "after"), False),
            **copies,
        }
    for copy, fast in copies.values():  # fill each copy's numba cache first
        run_kit(copy, fast)
    times = {(name, s): [] for name in copies for s in ("warm", "edited")}
    for k in range(args.rounds):
        for name, (copy, fast) in copies.items():
            times[name, "warm"].append(run_kit(copy, fast))
            edit(copy, k)
            times[name, "edited"].append(run_kit(copy, fast))
    print(f"kit on the example plugins ({', '.join(SUITES)}), one process, "
          f"{args.rounds} rounds, {os.cpu_count()} cores (median / fastest, seconds)")
    print(f"{'variant':24s} {'warm cache':>18s} {'after an edit':>18s}")
    for name in copies:
        cells = [f"{statistics.median(times[name, s]):7.1f} / {min(times[name, s]):5.1f}"
                 for s in ("warm", "edited")]  # fmt: skip
        print(f"{name:24s} {cells[0]:>18s} {cells[1]:>18s}")


if __name__ == "__main__":
    main()
