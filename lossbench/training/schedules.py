"""Each epoch's learning rate, evaluated once per epoch in Python (kernels get the value).

With W = ``trainer.warmup_epochs``, epoch e (0-based), N = ``trainer.epochs`` and base rate lr0
(``optimizer.lr``):

- warm-up (e < W): lr = lr0 (e + 1) / (W + 1), rising linearly towards lr0 (as torch's LinearLR
  from 1/(W+1) chained before the schedule by SequentialLR);
- then the chosen schedule (group ``schedule``, ``lossbench.builtin.schedules`` and plugins):
  ``rate(e - W, max(N - W, 1), lr0, options)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lossbench.specs import ScheduleSpec


@dataclass(frozen=True)
class Schedule:
    """A run's learning rate per epoch: its warm-up, then its schedule spec with options."""

    spec: ScheduleSpec
    options: Any
    epochs: int
    warmup: int = 0

    def lr(self, epoch: int, base_lr: float) -> float:
        """The learning rate of ``epoch`` (0-based)."""
        if epoch < self.warmup:
            return base_lr * (epoch + 1) / (self.warmup + 1)
        span = max(self.epochs - self.warmup, 1)
        return float(self.spec.rate(epoch - self.warmup, span, base_lr, self.options))


def schedule_of(specs: dict, options: dict, trainer) -> Schedule:
    """The schedule a run's resolved specs, options and trainer config give."""
    return Schedule(specs["schedule"], options["schedule"], int(trainer.epochs),
                    int(trainer.warmup_epochs))  # fmt: skip
