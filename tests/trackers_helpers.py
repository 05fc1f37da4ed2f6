"""A tracker that records what the protocol hands it, for tests/test_trackers.py and the
register_trackers hook's test."""

from dataclasses import dataclass

import lossbench
from lossbench.tracking.base import Tracker


@dataclass
class RecordingOptions:
    label: str = "run"
    fail_at_end: bool = False


class Recording(Tracker):
    """Every call, in order: ("start",), ("epoch", epoch, train_loss), ("artifacts", names),
    ("model", folder exists), ("end", status)."""

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

    def log_artifacts(self, paths):
        self.calls.append(("artifacts", sorted(p.name for p in paths)))

    def log_model(self, folder):
        self.calls.append(("model", folder.is_dir()))

    def end(self, status):
        self.calls.append(("end", status))
        if self.config.fail_at_end:
            raise RuntimeError("the tracker's store is gone")


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
