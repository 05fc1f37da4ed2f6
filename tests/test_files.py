"""lossbench/files.py: every file is complete or absent, flushed to disk before it replaces the
old one, private when it holds credentials."""

import os
import stat
import threading
from pathlib import Path

import pytest

from lossbench import files


def test_every_file_is_flushed_to_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1]
    )
    path = tmp_path / "summary.json"
    files.atomic_write(path, "{}\n")
    assert path.read_text() == "{}\n"
    assert events[:2] == ["fsync", "replace"], events  # the data first, then the rename
    assert events[2:] == ["fsync"]  # and the folder's entry


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "history.csv"
    files.atomic_write(path, "old\n")

    def fails(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        files.atomic_save(path, fails)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]


def test_a_file_holding_credentials_is_private(tmp_path):
    secret = files.atomic_write(tmp_path / "plan.json", "postgresql://u:pw@db/x")
    plain = files.atomic_write(tmp_path / "other.json", "postgresql://db/x")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_files_saved_together_are_flushed_at_once_then_renamed_in_order(tmp_path, monkeypatch):
    """save_together issues the flushes of several files at once (the filesystem commits them
    together): every flush of the data waits here until all three are in flight, which
    flushes one after another never reach; only then is any file renamed, in the order given."""
    gate, events = threading.Barrier(3, timeout=20), []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            gate.wait()  # BrokenBarrierError when the flushes come one at a time
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(Path(b).name),
                                                     real_replace(a, b))[1])  # fmt: skip
    names = ["history.csv", "model.npz", "summary.json"]
    errors = files.save_together([files.text_file(tmp_path / n, n) for n in names])
    assert errors == [None, None, None]
    assert events == names
    assert [(tmp_path / n).read_text() for n in names] == names


def test_a_file_that_fails_among_files_saved_together_leaves_the_others_written(tmp_path):
    def fails(tmp):
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device")

    items = [files.text_file(tmp_path / "a.txt", "a"), (tmp_path / "b.txt", fails, False),
             files.text_file(tmp_path / "c.txt", "c")]  # fmt: skip
    errors = files.save_together(items)
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], OSError) and errors[1].errno == 28
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.txt"]  # no temporary


def test_a_bug_in_a_writer_among_files_saved_together_keeps_the_ones_before(tmp_path):
    def bug(tmp):
        raise ValueError("a plotting bug")

    items = [files.text_file(tmp_path / "a.txt", "a"), (tmp_path / "b.png", bug, False),
             files.text_file(tmp_path / "c.txt", "c")]  # fmt: skip
    with pytest.raises(ValueError):
        files.save_together(items)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # as one by one
