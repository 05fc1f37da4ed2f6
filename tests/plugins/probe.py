"""A single-file plugin for tests that interrupt runs: it marks when a run reaches a phase,
so a test waits for that (not for a fixed time), and it can hold a run in a phase.

``LOSSBENCH_PROBE_DIR``: where the marks go (a file per event: ``registered``, ``loading``,
``run_start``, ``epoch_0``, ``epoch_1``, ..., ``run_end``). ``LOSSBENCH_PROBE_HOLD``:
``register`` holds the command while plugins register (before any run folder); ``load`` keeps the
``probe`` dataset loading until interrupted; ``epoch_1`` holds every run after its second epoch
until interrupted (or killed), or until a file named ``release`` appears in the marks folder;
``run_end`` makes on_run_end take two seconds.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lossbench import DatasetSpec, hookimpl
from lossbench.data import DataOptions, Dataset


def _mark(event: str) -> None:
    folder = os.environ.get("LOSSBENCH_PROBE_DIR")
    if folder:
        Path(folder, event).write_text(str(time.time()))


@dataclass
class ProbeOptions(DataOptions):
    n_samples: int = 400


def _load(options, seed):
    _mark("loading")
    while os.environ.get("LOSSBENCH_PROBE_HOLD") == "load":
        time.sleep(0.05)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(options.n_samples, 4))
    return Dataset(X=X, y=(X[:, 0] > 0).astype(np.int64), task="classification")


@hookimpl
def register_datasets(register):
    _mark("registered")  # plugins load before Hydra composes: no run folder yet
    while os.environ.get("LOSSBENCH_PROBE_HOLD") == "register":
        time.sleep(0.05)
    register(DatasetSpec("probe", ProbeOptions, "two classes; marks when it loads", load=_load))


@hookimpl(trylast=True)  # after every other on_run_start: the next phase is compiling
def on_run_start(run):
    _mark("run_start")


@hookimpl
def on_epoch_end(run, epoch, metrics):
    _mark(f"epoch_{epoch}")
    release = Path(os.environ.get("LOSSBENCH_PROBE_DIR") or ".", "release")
    while os.environ.get("LOSSBENCH_PROBE_HOLD") == f"epoch_{epoch}" and not release.exists():
        time.sleep(0.05)


@hookimpl
def on_run_end(run, status):
    _mark("run_end")
    if os.environ.get("LOSSBENCH_PROBE_HOLD") == "run_end":
        time.sleep(2)
