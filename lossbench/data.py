"""What a dataset plugin gives: the ``Dataset`` its ``load`` returns, and ``DataOptions``, the
options every dataset has (its options dataclass derives from it). Splitting, scaling and
loss targets are the engine's (``lossbench.training.prepare``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DataOptions:
    """Options every dataset has. Dataset options dataclasses derive from this."""

    val_fraction: float = 0.2
    standardize: bool = True
    # regression: train on targets scaled to mean 0, std 1 (the training part's statistics);
    # predictions and the val_mse/val_mae/val_r2 metrics are in the original units either way
    standardize_target: bool = False


@dataclass
class Dataset:
    """What a dataset's ``load`` returns.

    ``X``: (n, d) features; ``y``: (n,) integer class labels for classification, (n,) or (n, k)
    real targets for regression; ``task``: "classification" or "regression"; ``X_val``/``y_val``:
    an explicit validation set (else the split uses ``val_fraction``); ``feature_names``: the
    columns' names, for messages; ``task_note``: how the task was chosen, when it was inferred
    (shown if the loss wants the other task). The engine checks every array before training
    (``lossbench.training.arrays``)."""

    X: np.ndarray
    y: np.ndarray
    task: str
    class_names: list[str] | None = None
    X_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    feature_names: list[str] | None = None
    task_note: str | None = None

    @property
    def n_classes(self) -> int:
        if self.task != "classification":
            return 0
        return len(self.class_names) if self.class_names else int(self.y.max()) + 1
