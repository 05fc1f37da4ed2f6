"""Sweeps under faults and bad input, run as users run them: a torn journal, a killed
coordinator, a concurrent invocation, a full disk, trials that all fail, a study name reused
for another question or naming a path (credentials and the summary process:
test_sweep_parent_faults.py)."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_sweep import BASE, PROBE, load, mlflow_runs, states, sweep

from conftest import wait_for_summaries

pytestmark = pytest.mark.slow

LR = "optimizer.lr=tag(log, interval(1e-3, 0.1))"


def start(args, cwd, marks=None, hold=None, **popen):
    """A sweep in the background; with ``hold``, its trials wait after their second epoch until
    ``marks/release`` exists (tests/plugins/probe.py)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["LOSSBENCH_LOAD_PLUGINS"] = ""
    if marks is not None:
        marks.mkdir(exist_ok=True)
        env["LOSSBENCH_PROBE_DIR"] = str(marks)
    if hold:
        env["LOSSBENCH_PROBE_HOLD"] = hold
    return subprocess.Popen(
        [sys.executable, "-m", "lossbench", "--multirun", *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,
    )  # fmt: skip


def wait_for(condition, what, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError):  # a zombie is not alive
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


# ---------------------------------------------------------------------------------------------
# a torn journal


def test_resume_repairs_a_torn_journal_tail_and_keeps_a_backup(tmp_path):
    args = [LR, *BASE, "sweep.study_name=torn", "sweep.pruner=none"]
    sweep(*args, "sweep.n_trials=1", cwd=tmp_path)
    journal = tmp_path / "multirun/torn/journal.log"
    torn = b'{"op_code":5,"worker_id":"w","trial_id":0,"user_attr":{"x"'
    with open(journal, "ab") as f:  # the last record cut short, as a kill mid-write leaves it
        f.write(torn)
    before = journal.read_bytes()
    r = sweep(*args, "sweep.n_trials=2", cwd=tmp_path)
    assert "torn" in r.stderr and "backup" in r.stderr
    (backup,) = journal.parent.glob("journal.log.torn-*")
    assert backup.read_bytes() == before  # the journal as it was, kept
    assert before.startswith(journal.read_bytes()[: len(before) - len(torn)])
    assert states(load(tmp_path, "torn")) == ["COMPLETE"] * 2  # the finished trial kept


def test_a_journal_damaged_inside_is_refused_and_left_as_it_is(tmp_path):
    args = [LR, *BASE, "sweep.study_name=broken", "sweep.pruner=none"]
    sweep(*args, "sweep.n_trials=1", cwd=tmp_path)
    journal = tmp_path / "multirun/broken/journal.log"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines.insert(2, b'{"op_code":5,"worker_id"\n')  # a torn record with more written after it
    journal.write_bytes(b"".join(lines))
    before = journal.read_bytes()
    r = sweep(*args, "sweep.n_trials=2", cwd=tmp_path, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "line 3" in r.stderr and "Traceback" not in r.stderr
    assert journal.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# the coordinator dies; another invocation runs at the same time


def test_workers_stop_when_their_coordinator_is_killed(tmp_path):
    marks = tmp_path / "marks"
    args = ["--plugins-dir", PROBE, LR, "data=probe", "trainer.epochs=4", "tracking=none",
            "sweep.n_trials=2", "sweep.pruner=none", "sweep.study_name=orphans"]  # fmt: skip
    proc = start(args, tmp_path, marks, hold="epoch_1")
    wait_for(lambda: (marks / "epoch_1").exists(), "a trial mid-training")
    (trial,) = [t for t in load(tmp_path, "orphans").trials if t.state.name == "RUNNING"]
    worker = trial.user_attrs["pid"]
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        wait_for(lambda: not pid_alive(worker), "the worker to stop", timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
    study = load(tmp_path, "orphans")
    assert not [t for t in study.trials if t.state.name == "RUNNING"]  # marked by the worker
    r = sweep(*args, cwd=tmp_path)
    assert "trials 2/2 done" in r.stdout
    study = load(tmp_path, "orphans")
    counted = [t for t in study.trials if not t.user_attrs.get("lossbench_lost")]
    assert sorted(t.state.name for t in counted) == ["COMPLETE"] * 2
    (lost,) = [t for t in study.trials if t.user_attrs.get("lossbench_lost")]
    assert any(t.user_attrs.get("retry_of") == lost.number for t in counted)
    assert [t.params for t in counted if t.user_attrs.get("retry_of") == lost.number] == [
        lost.params
    ]


def test_a_sweep_is_finished_only_when_no_trial_still_runs(tmp_path):
    marks = tmp_path / "marks"
    args = ["--plugins-dir", PROBE, LR, "data=probe", "trainer.epochs=3", "tracking=none",
            "sweep.n_trials=2", "sweep.pruner=none", "sweep.study_name=together"]  # fmt: skip
    first = start(args, tmp_path, marks, hold="epoch_1")
    wait_for(lambda: (marks / "epoch_1").exists(), "the first invocation's trial")
    second = start(args, tmp_path)  # the same command elsewhere, while the first one trains
    log = tmp_path / "multirun/together/worker-0.log"  # both invocations' worker 0 log here
    wait_for(
        lambda: second.poll() is not None or "still running elsewhere" in log.read_text(),
        "the second invocation to end its trial and wait for the first one's",
    )
    (marks / "release").touch()
    out, err = second.communicate(timeout=300)
    first.communicate(timeout=300)
    assert second.returncode == 0, out + err
    progress = [line for line in out.splitlines() if line.startswith("trials ")]
    assert progress[-1].startswith("trials 2/2 done (0 pruned, 0 failed), 0 running"), progress
    results = yaml.safe_load((tmp_path / "multirun/together/optimization_results.yaml").read_text())
    assert results["status"] == "finished" and results["trials"]["done"] == 2
    assert states(load(tmp_path, "together")) == ["COMPLETE"] * 2


def test_two_sweeps_started_at_once_with_one_study_name_run_exactly_n_trials(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [LR, "data=iris", "trainer.epochs=3", f"tracking.uri={uri}", "sweep.n_trials=4",
            "sweep.pruner=none", "sweep.study_name=twins"]  # fmt: skip
    mlflow_runs(uri)  # the store exists (a fresh one is created under a lock: no race there)
    both = [start(args, tmp_path), start(args, tmp_path)]  # two terminals, one command
    ended = [(p, *p.communicate(timeout=300)) for p in both]
    wait_for_summaries(tmp_path)
    for p, out, err in ended:
        assert p.returncode == 0, out + err
        assert "Traceback" not in err
    assert states(load(tmp_path, "twins")) == ["COMPLETE"] * 4  # exactly n_trials, none RUNNING
    client, runs = mlflow_runs(uri)
    (parent,) = [r for r in runs if r.data.tags.get("lossbench.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("lossbench.role") == "trial"]
    assert sorted(int(c.data.tags["lossbench.trial"]) for c in children) == [0, 1, 2, 3]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert parent.data.metrics["trials_complete"] == 4


def test_a_resume_beside_a_coordinator_that_still_runs_joins_it_and_says_so(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    marks = tmp_path / "marks"
    args = ["--plugins-dir", PROBE, LR, "data=probe", "trainer.epochs=3", f"tracking.uri={uri}",
            "sweep.n_trials=3", "sweep.pruner=none", "sweep.study_name=beside"]  # fmt: skip
    first = start(args, tmp_path, marks, hold="epoch_1")
    wait_for(lambda: (marks / "epoch_1").exists(), "the first invocation's trial")
    (held,) = [t for t in load(tmp_path, "beside").trials if t.state.name == "RUNNING"]
    second = start(args, tmp_path)  # "resume" typed in another terminal while it trains
    log = tmp_path / "multirun/beside/worker-0.log"
    wait_for(
        lambda: second.poll() is not None or "still running elsewhere" in log.read_text(),
        "the second invocation to run its trials and wait for the first one's",
    )
    (marks / "release").touch()
    out, err = second.communicate(timeout=300)
    first_out, first_err = first.communicate(timeout=300)
    wait_for_summaries(tmp_path)
    assert second.returncode == 0 and first.returncode == 0, out + err + first_err
    joined = [line for line in out.splitlines() if "another invocation" in line]
    assert joined and f"trial {held.number} (pid {held.user_attrs['pid']}" in joined[0], out
    assert "joins it" in joined[0] and "3 trials" in joined[0]
    assert states(load(tmp_path, "beside")) == ["COMPLETE"] * 3
    _, runs = mlflow_runs(uri)
    assert len([r for r in runs if r.data.tags.get("lossbench.role") == "parent"]) == 1
    assert len([r for r in runs if r.data.tags.get("lossbench.role") == "trial"]) == 3
    assert {r.info.status for r in runs} == {"FINISHED"}


# ---------------------------------------------------------------------------------------------
# a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB filesystem (tmpfs), mounted for the test and unmounted after it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        reason = f"cannot mount a small tmpfs to fill (needs root): {r.stderr.strip()}"
        if os.environ.get("LOSSBENCH_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a ballast file until not even one more byte fits."""
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return ballast


def test_a_full_disk_fails_the_sweep_cleanly_and_a_rerun_resumes(tmp_path, small_disk):
    marks = tmp_path / "marks"
    args = ["--plugins-dir", PROBE, LR, "data=probe", "trainer.epochs=3", "tracking=none",
            "sweep.n_trials=3", "sweep.pruner=none", "sweep.study_name=full"]  # fmt: skip
    proc = start(args, small_disk, marks, hold="epoch_1")
    wait_for(lambda: (marks / "epoch_1").exists(), "a trial mid-training")
    ballast = fill(small_disk)
    (marks / "release").touch()  # the trial ends and writes its outputs onto the full disk
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, out + err
    assert "No space left on device" in err and "resume" in err and "Traceback" not in err
    leftovers = [p for p in small_disk.rglob("*") if "tmp" in p.name.lower()]
    assert not leftovers
    ballast.unlink()
    study = load(small_disk, "full")
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    r = sweep(*args, cwd=small_disk)
    assert "trials 3/3 done" in r.stdout
    counted = [t for t in load(small_disk, "full").trials if not t.user_attrs.get("lossbench_lost")]
    assert sorted(t.state.name for t in counted) == ["COMPLETE"] * 3


# ---------------------------------------------------------------------------------------------
# bad input


def test_a_sweep_where_every_trial_fails_says_why(tmp_path):
    r = sweep("optimizer.lr=interval(1e6, 1e7)", "optimizer=sgd", "loss=mse", *BASE,
              "sweep.n_trials=2", "sweep.study_name=allfail", cwd=tmp_path,
              check=False)  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert "every trial failed" in r.stderr and "trial 0" in r.stderr
    assert "diverged" in r.stderr and "Traceback" not in r.stderr


def test_reusing_a_study_name_for_another_question_is_refused(tmp_path):
    common = ["data=iris", "tracking=none", "sweep.study_name=question", "sweep.n_trials=1"]
    sweep("optimizer.lr=interval(0.001, 0.1)", "trainer.epochs=3", *common, cwd=tmp_path)
    folder = tmp_path / "multirun/question"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    for change in (["optimizer.lr=interval(0.01, 0.5)", "trainer.epochs=3"],  # another space
                   ["optimizer.lr=interval(0.001, 0.1)", "trainer.epochs=4"]):  # other fixed
        r = sweep(*change, *common, cwd=tmp_path, check=False)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "sweep.study_name=question" in r.stderr and "another question" in r.stderr
        assert "Fix:" in r.stderr and "Traceback" not in r.stderr
        assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden"])
def test_a_study_name_that_is_a_path_is_refused(tmp_path, name):
    r = sweep(LR, *BASE, f"sweep.study_name={name}", cwd=tmp_path, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "sweep.study_name" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.rglob("*"))
