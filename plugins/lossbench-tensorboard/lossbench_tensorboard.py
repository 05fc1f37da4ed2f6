"""TensorBoard event files for lossbench runs, written with tensorboardX: a tracker plugin.

``tracking=[mlflow,tensorboard]`` records each run in MLflow and in TensorBoard at once
(``tracking=tensorboard`` alone: TensorBoard only). Per run: every per-epoch metric as a
scalar at step = epoch (``train_loss``, ``val_loss``, ``lr``, ...; the same names and steps as
MLflow's), the resolved config as text (a URL's password masked), and at the end the status
and the best epoch. Open them with ``tensorboard --logdir outputs`` (each run folder is a run)
or ``--logdir`` the folder given as ``tracking.tensorboard.logdir``.

TensorBoard has no parent runs: a sweep's trials are simply runs of their own
(``tensorboard --logdir multirun/STUDY``), and so are the epoch counts answered from a longer
run (``RUN/epochs-E/tensorboard``: the protocol's default ``record_ended``). The lr range test
(``python -m lossbench lr_find``) writes its curves by step (``lr_find_loss``,
``lr_find_smoothed_loss``, ``lr_find_lr``) and ``suggested_lr``.
"""

from __future__ import annotations

import datetime
import math
import secrets
from dataclasses import dataclass
from pathlib import Path

import lossbench
from lossbench.errors import ConfigError
from lossbench.tracking.base import Tracker
from lossbench.urls import mask_text
from omegaconf import OmegaConf


@dataclass
class TensorBoardOptions:
    # None: the run's own folder, RUN_DIR/tensorboard; a folder: LOGDIR/NAME-STAMP for each run
    # (NAME: model-loss-optimizer-lr)
    logdir: str | None = None
    flush_seconds: float = 2.0  # how often tensorboardX writes queued events to the file


class TensorBoardTracker(Tracker):
    """One run as one TensorBoard event file (``events.out.tfevents.*``)."""

    name = "tensorboard"
    options = TensorBoardOptions

    def __init__(self, run, options):
        super().__init__(run, options)
        self.writer = None
        self.folder: Path | None = None

    def _folder(self) -> Path:
        if self.config.logdir:  # one folder per run, named so TensorBoard's legend says which
            cfg = self.run.config
            lr = cfg.optimizer.get("lr")
            name = "-".join([cfg.model.name, cfg.loss.name, cfg.optimizer.name]
                            + ([f"lr{lr:g}"] if lr is not None else []))  # fmt: skip
            stamp = f"{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}-{secrets.token_hex(2)}"
            return Path(self.config.logdir) / f"{name}-{stamp}"
        if self.run.output_dir is None:
            raise ConfigError(
                "tracking.tensorboard.logdir is not set and this run has no folder to write "
                "its event file into (lossbench.train without output_dir). Fix: pass "
                "tracking.tensorboard.logdir=DIR, or give the run an output_dir."
            )
        return Path(self.run.output_dir) / "tensorboard"

    def start(self) -> None:
        # start-up: tensorboardX (and protobuf) load only for runs that write event files
        from tensorboardX import SummaryWriter

        self.folder = self._folder()
        flush = max(1, round(self.config.flush_seconds))
        self.writer = SummaryWriter(logdir=str(self.folder), flush_secs=flush)
        config = mask_text(OmegaConf.to_yaml(self.run.config, resolve=True))
        self.writer.add_text("config", "```\n" + config + "\n```", 0)

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        for key, value in metrics.items():
            if key != "epoch":
                self.writer.add_scalar(key, float(value), epoch)

    def log_steps(self, series: dict, summary: dict) -> None:
        for key, values in series.items():
            for step, value in enumerate(values):
                if math.isfinite(value):  # the step that diverged: not a point of the curve
                    self.writer.add_scalar(key, float(value), step)
        for key, value in summary.items():
            self.writer.add_scalar(key, float(value), 0)

    def end(self, status: str) -> None:
        if self.writer is None:
            return
        run = self.run
        if run.history and status == "diverged":  # on_epoch_end did not see the last epoch
            last = run.history[-1]
            self.log_epoch(last["epoch"], last)
        note = f"status: {status}" + (f" ({run.error})" if run.error else "")
        if run.best_epoch is not None:
            note += f"; best epoch {run.best_epoch}"
        self.writer.add_text("status", note, len(run.history))
        self.writer.close()


@lossbench.hookimpl
def register_trackers(register):
    register(TensorBoardTracker)
