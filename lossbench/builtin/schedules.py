"""Built-in learning-rate schedules (group ``schedule``): constant, step and cosine.

Each gives the learning rate of epoch ``s`` (0-based, counted after the warm-up) of a schedule
``T`` epochs long (``trainer.epochs - trainer.warmup_epochs``) starting at ``lr0``
(``optimizer.lr``):

- constant: ``lr = lr0``
- step:     ``lr = lr0 gamma^floor(s / step_size)`` (torch.optim.lr_scheduler.StepLR)
- cosine:   ``lr = min_lr + (lr0 - min_lr)(1 + cos(pi s / T)) / 2`` (CosineAnnealingLR with
  T_max = T and eta_min = min_lr, in its closed form)

Each ``reference`` is the same schedule written as PyTorch updates it, epoch after epoch from the
previous rate (StepLR multiplies by gamma every step_size epochs; CosineAnnealingLR's recursive
form), so the kit holds one form against the other; tests/test_schedules.py holds both to the
rates torch printed (tests/data/torch_reference.json).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lossbench.errors import positive_int, require
from lossbench.hookspecs import hookimpl
from lossbench.specs import ScheduleSpec


@dataclass
class ConstantOptions:
    pass


@dataclass
class StepOptions:
    step_size: int = 10  # epochs between two decays
    gamma: float = 0.1  # factor of each decay


@dataclass
class CosineOptions:
    min_lr: float = 0.0  # the rate it ends at


def constant_rate(epoch: int, epochs: int, base_lr: float, options) -> float:
    """``lr = lr0``."""
    return base_lr


def step_rate(epoch: int, epochs: int, base_lr: float, options) -> float:
    """``lr = lr0 gamma^floor(s / step_size)`` (StepLR)."""
    return base_lr * float(options.gamma) ** (epoch // int(options.step_size))


def step_reference(epoch: int, epochs: int, base_lr: float, options) -> float:
    """StepLR's update: the previous rate, times gamma at every multiple of step_size."""
    lr = base_lr
    for e in range(1, epoch + 1):
        if e % int(options.step_size) == 0:
            lr *= float(options.gamma)
    return lr


def check_step(options) -> None:
    positive_int(options.step_size, "schedule.step_size", 10)
    require(math.isfinite(options.gamma) and options.gamma > 0, "schedule.gamma", options.gamma,
            "it must be a positive number (the factor of each decay)", 0.1)  # fmt: skip


def cosine_rate(epoch: int, epochs: int, base_lr: float, options) -> float:
    """``lr = min_lr + (lr0 - min_lr)(1 + cos(pi s / T)) / 2`` (CosineAnnealingLR)."""
    lo = float(options.min_lr)
    return lo + (base_lr - lo) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def cosine_reference(epoch: int, epochs: int, base_lr: float, options) -> float:
    """CosineAnnealingLR's recursive form: each rate from the previous one,
    ``lr_e = lo + (lr_{e-1} - lo)(1 + cos(pi e / T)) / (1 + cos(pi (e - 1) / T))``."""
    lo, lr = float(options.min_lr), base_lr
    for e in range(1, epoch + 1):
        if (e - 1 - epochs) % (2 * epochs) == 0:
            lr += (base_lr - lo) * (1 - math.cos(math.pi / epochs)) / 2
        else:
            now, before = math.cos(math.pi * e / epochs), math.cos(math.pi * (e - 1) / epochs)
            lr = lo + (lr - lo) * (1 + now) / (1 + before)
    return lr


def check_cosine(options) -> None:
    require(math.isfinite(options.min_lr) and options.min_lr >= 0, "schedule.min_lr",
            options.min_lr, "it must be >= 0 (the rate the schedule ends at)", 0.0)  # fmt: skip


SCHEDULES = [
    ScheduleSpec(name="constant", options=ConstantOptions, rate=constant_rate,
                 reference=constant_rate, uses_epochs=False,
                 description="the same rate every epoch"),
    ScheduleSpec(name="step", options=StepOptions, rate=step_rate, reference=step_reference,
                 uses_epochs=False, check=check_step,
                 description="times gamma every step_size epochs (StepLR)"),
    ScheduleSpec(name="cosine", options=CosineOptions, rate=cosine_rate,
                 reference=cosine_reference, check=check_cosine,
                 description="half a cosine from lr to min_lr (CosineAnnealingLR)"),
]  # fmt: skip


@hookimpl
def register_schedules(register):
    for spec in SCHEDULES:
        register(spec)
