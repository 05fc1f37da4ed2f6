"""lossbench/files.py: every file is complete or absent, flushed to disk before it replaces the
old one, private when it holds credentials."""

import os
import stat

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
