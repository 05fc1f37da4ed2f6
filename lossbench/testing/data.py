"""The checks of a dataset: it loads a consistent ``Dataset``, the same for the same seed."""

from __future__ import annotations

import numpy as np

from lossbench.data import Dataset
from lossbench.testing._base import (
    _each_case,
    _fail,
)


def _data_loads(pm, group, spec, cases):
    def body(options):
        first, again = spec.load(options, 7), spec.load(options, 7)
        if not isinstance(first, Dataset):
            _fail(f"load() returns {type(first).__name__}, not a lossbench.data.Dataset")
        X, y = np.asarray(first.X), np.asarray(first.y)
        if X.ndim != 2 or len(X) != len(y) or len(X) == 0:
            _fail(f"X has shape {X.shape} and y {y.shape}: expected (n, d) and n targets, n > 0")
        if not np.all(np.isfinite(X.astype(np.float64))):
            _fail(f"X has {int(np.sum(~np.isfinite(X)))} non-finite values")
        if first.task not in ("classification", "regression"):
            _fail(f"task is {first.task!r}: expected 'classification' or 'regression'")
        if first.task == "classification" and (y.min() < 0 or y.max() >= first.n_classes):
            _fail(f"class labels run from {y.min()} to {y.max()} with {first.n_classes} classes")
        for name in ("X", "y", "X_val", "y_val"):
            a, b = getattr(first, name), getattr(again, name)
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
                _fail(f"two loads with the same seed give different {name}: seed it")

    return lambda: _each_case(cases, body)
