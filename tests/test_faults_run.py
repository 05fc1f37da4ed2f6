"""Faults of a single run, injected for real: a pre-existing run directory, a plugin dataset
whose arrays would make compiled code read past their end, a full filesystem."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

import lossbench
from conftest import TINY
from lossbench.data import DataOptions, Dataset
from lossbench.errors import DataError
from lossbench.specs import DatasetSpec

pytestmark = pytest.mark.slow


def lossbench_cli(*args, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["LOSSBENCH_LOAD_PLUGINS"] = ""
    return subprocess.run(
        [sys.executable, "-m", "lossbench", "trainer.progress=false", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# a run never removes a path it did not create


def test_bad_input_never_removes_a_pre_existing_run_directory(tmp_path):
    logs = tmp_path / "mylogs"
    logs.mkdir()
    (logs / "app.log").write_text("the user's own log\n")
    r = lossbench_cli("hydra.run.dir=mylogs", "data=csv", "data.path=missing.csv", cwd=tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr, r.stderr
    assert (logs / "app.log").read_text() == "the user's own log\n"
    assert sorted(p.name for p in logs.iterdir()) == ["app.log"]  # only what the run added went


def test_bad_input_removes_only_the_folders_it_created(tmp_path):
    (tmp_path / "runs").mkdir()  # exists before: stays, the folders below it go
    r = lossbench_cli("hydra.run.dir=runs/a/b", "seed=-1", "tracking=none", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert list((tmp_path / "runs").iterdir()) == []
    # the default outputs/DATE/TIME: outputs/ existed, so only DATE/TIME go
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "keep.txt").write_text("mine")
    r = lossbench_cli("seed=-1", "tracking=none", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["keep.txt"]


# ---------------------------------------------------------------------------------------------
# arrays are checked before compiled code sees them, for a plugin's dataset too


def _plugin_dataset(**arrays):
    class Plugin:
        @lossbench.hookimpl
        def register_datasets(self, register):
            def load(options, seed):
                return Dataset(task="classification", **arrays)

            register(DatasetSpec("faulty", DataOptions, "arrays that do not fit", load=load))

    from lossbench.plugins import build_plugin_manager

    return build_plugin_manager(entry_points=False, extra=[Plugin()])


X = np.random.default_rng(0).normal(size=(40, 3))
Y = (X[:, 0] > 0).astype(np.int64)


@pytest.mark.parametrize(
    "arrays,message",
    [
        ({"X": X, "y": Y[:30]}, "y has shape (30,) but X has 40 rows"),
        ({"X": X, "y": Y, "X_val": X[:5], "y_val": Y[:3]}, "y_val has shape (3,) but X_val"),
        ({"X": X, "y": Y, "X_val": X[:5]}, "has X_val but no y_val"),
        ({"X": X, "y": Y, "X_val": X[:5, :2], "y_val": Y[:5]}, "2 feature columns but the"),
        ({"X": X, "y": Y * 7, "class_names": ["a", "b"]}, "class labels run from 0 to 7"),
        ({"X": X, "y": Y - 1}, "class labels run from -1 to 0"),
        ({"X": X[:, 0], "y": Y}, "expected 2-D (rows, features)"),
        ({"X": np.where(X > 1, np.nan, X), "y": Y}, "missing or infinite values in feature"),
        ({"X": X.astype(complex), "y": Y}, "is a complex array"),
        ({"X": X, "y": Y + 0.5}, "one integer class label per row"),
    ],
    ids=["short_y", "short_y_val", "no_y_val", "narrow_X_val", "label_past_the_classes",
         "negative_label", "1d_X", "nan", "complex", "fractional_labels"],
)  # fmt: skip
def test_arrays_from_a_plugin_dataset_are_checked_before_compiled_code(arrays, message):
    pm = _plugin_dataset(**arrays)
    with pytest.raises(DataError) as info:
        lossbench.train(overrides=[*TINY, "data=faulty"], plugin_manager=pm)
    assert message in str(info.value)
    assert "data=faulty" in str(info.value)


# ---------------------------------------------------------------------------------------------
# a full disk


def _small_filesystem(path: Path, size: str):
    """Mount a tmpfs of ``size`` at ``path`` (root and a mount namespace that allows it), or
    skip saying why."""
    path.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")


@pytest.fixture
def full_disk(tmp_path):
    """A 512 KiB filesystem: room for Hydra's files, not for a big model's weights."""
    mount = tmp_path / "small"
    _small_filesystem(mount, "512k")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_a_failed_run_with_a_clear_error_and_no_temporary_files(
    tmp_path, full_disk
):
    run_dir = full_disk / "run"
    # model.npz of 64 -> 2048 -> 10 in float32 is 550 KB: more than the filesystem holds
    r = lossbench_cli(
        f"hydra.run.dir={run_dir}", "tracking=none", "trainer.epochs=2", "data=digits",
        "model.hidden=[2048]", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    assert "No space left on device" in r.stdout and str(run_dir) in r.stdout
    assert r.stdout.startswith("failed after 2 epochs")
    names = sorted(p.name for p in run_dir.iterdir())
    assert not [n for n in names if n.startswith(".") and n != ".hydra"], names
    assert "model.npz" not in names  # complete or absent
    if "summary.json" in names:  # written when there was room left for it
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "failed" and "No space left" in summary["error"]


def test_full_disk_before_anything_fits_fails_with_exit_1(tmp_path, full_disk):
    filler = full_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    run_dir = full_disk / f"run-{uuid.uuid4().hex[:6]}"
    r = lossbench_cli(f"hydra.run.dir={run_dir}", "tracking=none", "trainer.epochs=2",
                      "data=iris", cwd=tmp_path)  # fmt: skip
    assert r.returncode in (1, 2) and "Traceback" not in r.stdout + r.stderr, r.stderr
    assert "No space left on device" in r.stderr
