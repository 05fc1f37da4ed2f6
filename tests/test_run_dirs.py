"""Run directories are never shared, with real processes: runs started in the same second get
a folder each, and a folder that already holds another run's files is refused (exit 2, one
paragraph) with nothing of it overwritten."""

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

# each process imports lossbench first, then waits for one shared instant and runs: so all of
# them compose their config (and read the clock) within a few milliseconds of each other
AT_ONCE = """
import sys, time
from lossbench.cli import entry
start = float(sys.argv[1])
time.sleep(max(0.0, start - time.time()))
sys.argv = ["lossbench", *sys.argv[2:]]
entry()
"""


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["LOSSBENCH_LOAD_PLUGINS"] = ""
    return env


def _lossbench(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "lossbench", "trainer.progress=false", *args],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_runs_started_in_the_same_second_never_share_a_run_directory(tmp_path):
    lrs = [f"0.00{i}" for i in range(1, 9)]
    start = time.time() + 10  # the imports of 8 processes on 2 cores take a few seconds
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", AT_ONCE, str(start), "trainer.progress=false", "data=iris",
             "trainer.epochs=2", "tracking=none", "trainer.plots=false", f"optimizer.lr={lr}"],
            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for lr in lrs
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-2000:]
    folders = sorted(p.parent for p in tmp_path.glob("outputs/*/*/summary.json"))
    assert len(folders) == 8, [str(f.relative_to(tmp_path)) for f in folders]
    # the premise held: several of them did start within one clock second (a loaded machine
    # spreads the 8 over two or three seconds; the folder names still collide)
    seconds = Counter(f.name.rsplit("-", 1)[0] for f in folders)
    assert max(seconds.values()) >= 3, [f.name for f in folders]
    found = set()
    for folder in folders:  # each folder is one run's, whole: its config and its files agree
        overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
        (lr,) = [o.split("=", 1)[1] for o in overrides if o.startswith("optimizer.lr=")]
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        assert config["optimizer"]["lr"] == float(lr)
        assert (folder / "history.csv").is_file() and (folder / "model.npz").is_file()
        found.add(lr)
    assert found == set(lrs)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_run_directory_holding_another_runs_files_is_refused_not_overwritten(tmp_path):
    first = _lossbench("hydra.run.dir=run", "data=iris", "trainer.epochs=2", "tracking=none",
                       cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr
    before = _files(tmp_path / "run")
    assert {"summary.json", "history.csv", "model.npz", ".hydra/config.yaml"} <= set(before)
    second = _lossbench("hydra.run.dir=run", "data=wine", "trainer.epochs=3", "tracking=none",
                        cwd=tmp_path)  # fmt: skip
    assert second.returncode == 2, (second.stdout, second.stderr)
    err = second.stderr.strip()
    assert err.startswith("lossbench: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    assert "already holds another run" in err and "Fix:" in err and "hydra.run.dir" in err
    assert str(tmp_path / "run") in err
    assert _files(tmp_path / "run") == before  # nothing of the first run was touched
    # any one of a run's files is enough to refuse the folder
    for name in ("summary.json", "history.csv", "model.npz", ".hydra"):
        folder = tmp_path / f"only-{name.strip('.')}"
        folder.mkdir()
        target = folder / name
        target.mkdir() if name == ".hydra" else target.write_text("another run's\n")
        r = _lossbench(f"hydra.run.dir={folder}", "data=iris", "trainer.epochs=1",
                       "tracking=none", cwd=tmp_path)  # fmt: skip
        assert r.returncode == 2 and "already holds another run" in r.stderr, (name, r.stderr)
        assert sorted(p.name for p in folder.iterdir()) == [name]
