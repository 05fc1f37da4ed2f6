"""Trackers that record what the protocol hands them, for tests/test_trackers.py and the
register_trackers hook's test: ``Recording`` (in this process), ``RecordingParent`` (a parent
run's calls), and ``FILE_TRACKER``, a ``--plugins-dir`` file whose tracker and parent run
append every call to the JSON-lines file ``tracking.filerec.log`` (for sweeps: workers, the
coordinator and the summary process are processes of their own)."""

from dataclasses import dataclass

import lossbench
from lossbench.tracking.base import ParentRun, Tracker


@dataclass
class RecordingOptions:
    label: str = "run"
    fail_at_end: bool = False


class Recording(Tracker):
    """Every call, in order: ("start",), ("epoch", epoch, train_loss), ("steps", keys, number
    of steps, summary), ("artifacts", names), ("model", folder exists), ("end", status)."""

    name = "recording"
    options = RecordingOptions
    made: list = []

    def __init__(self, run, options):
        super().__init__(run, options)
        self.calls = []
        type(self).made.append(self)

    def start(self):
        self.calls.append(("start",))

    def log_epoch(self, epoch, metrics):
        self.calls.append(("epoch", epoch, metrics["train_loss"]))

    def log_steps(self, series, summary):
        lengths = {len(v) for v in series.values()}
        self.calls.append(("steps", sorted(series), *lengths, summary))

    def log_artifacts(self, paths):
        self.calls.append(("artifacts", sorted(p.name for p in paths)))

    def log_model(self, folder):
        self.calls.append(("model", folder.is_dir()))

    def end(self, status):
        self.calls.append(("end", status))
        if self.config.fail_at_end:
            raise RuntimeError("the tracker's store is gone")


class RecordingParent(ParentRun):
    """A parent run that records the calls a sweep's coordinator makes after a fault."""

    def __init__(self, children=None):
        self.calls, self.children = [], children or {}

    def settle(self, study, trials):
        read = trials()
        self.calls.append(("settle", study, read))
        return {"ended": len(read), "lost": sum(t.lost for t in read.values()), "replayed": 0}

    def end_children(self, study, reason):
        self.calls.append(("end_children", study, reason))
        return 1


def recording_plugin(*trackers):
    """A plugin registering ``trackers`` (each one's ``made`` list emptied)."""
    for tracker in trackers:
        tracker.made = []

    class Plugin:
        @lossbench.hookimpl
        def register_trackers(self, register):
            for tracker in trackers:
                register(tracker)

    return Plugin()


FILE_TRACKER = '''
"""A tracker (and its parent run) appending every call to the file tracking.filerec.log."""
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import lossbench
from lossbench.tracking.base import ParentRun, Replayed, Tracker


def _log(path, *call):
    with open(path, "a") as f:
        f.write(json.dumps([os.getpid(), *call], default=str) + "\\n")


@dataclass
class FileRecOptions:
    log: str = "calls.jsonl"


class FileRecParent(ParentRun):
    def __init__(self, log, run_id="parent-1"):
        self.log, self.run_id = log, run_id

    @classmethod
    def open(cls, options, sweep, study, lock):
        _log(options.log, None, "parent.open", sweep.study)
        return cls(options.log)

    @classmethod
    def connect(cls, address):
        return cls(address["log"], address["run_id"])

    def address(self):
        return {"log": self.log, "run_id": self.run_id}

    def end(self, status, record, files):
        _log(self.log, None, "parent.end", status)

    def settle(self, study, trials):
        read = {n: dataclasses.asdict(t) for n, t in trials().items()}
        _log(self.log, None, "parent.settle", study, read)
        return {"ended": 0, "lost": 0, "replayed": 0}

    def end_children(self, study, reason):
        _log(self.log, None, "parent.end_children", study, reason)
        return 0


class FileRec(Tracker):
    name = "filerec"
    options = FileRecOptions
    parent = FileRecParent
    replays = True  # python -m lossbench replay sends RUN_DIR/filerec-spool/*

    @classmethod
    def replay(cls, target, uri):
        spools = sorted(Path(target).glob("filerec-spool/*"))
        for spool in spools:
            print(f"filerec: {spool.name} sent to {uri}")
        return Replayed(found=len(spools))

    def _log(self, *call):
        _log(self.config.log, str(self.run.output_dir), *call)

    @classmethod
    def as_probe(cls, options, cfg, probe):
        _log(options.log, None, "as_probe", probe)

    def start(self):
        self._log("start", self.run.read_from)

    def log_epoch(self, epoch, metrics):
        self._log("epoch", epoch, metrics["val_loss"])

    def log_steps(self, series, summary):
        self._log("steps", {k: len(v) for k, v in series.items()}, summary)

    def log_artifacts(self, paths):
        self._log("artifacts", sorted(os.path.basename(p) for p in paths))

    def log_model(self, folder):
        self._log("model")

    def end(self, status):
        self._log("end", status)


@lossbench.hookimpl
def register_trackers(register):
    register(FileRec)
'''


def file_calls(path):
    """The calls FILE_TRACKER's tracker logged: [pid, output_dir or None, call, *args]."""
    import json

    return [json.loads(line) for line in open(path).read().splitlines()]
