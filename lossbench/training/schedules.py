"""Learning-rate schedules, evaluated once per epoch in Python (kernels get the value).

With W = trainer.warmup_epochs, epoch e (0-based) and base rate lr0:

- warm-up (e < W): lr = lr0 (e + 1) / (W + 1), rising linearly towards lr0;
- then, with s = e - W and T = epochs - W:
  - constant: lr = lr0
  - step:     lr = lr0 gamma^floor(s / step_size)               (torch StepLR)
  - cosine:   lr = min_lr + (lr0 - min_lr)(1 + cos(pi s / T)) / 2  (torch CosineAnnealingLR,
    closed form, T_max = T)
"""

from __future__ import annotations

import math


def lr_at(epoch: int, base_lr: float, trainer) -> float:
    """The learning rate of ``epoch`` under the trainer config ``trainer``."""
    warmup = int(trainer.warmup_epochs)
    if epoch < warmup:
        return base_lr * (epoch + 1) / (warmup + 1)
    s = epoch - warmup
    if trainer.lr_schedule == "step":
        return base_lr * float(trainer.gamma) ** (s // int(trainer.step_size))
    if trainer.lr_schedule == "cosine":
        span = max(int(trainer.epochs) - warmup, 1)
        lo = float(trainer.min_lr)
        return lo + (base_lr - lo) * (1 + math.cos(math.pi * s / span)) / 2
    return base_lr
