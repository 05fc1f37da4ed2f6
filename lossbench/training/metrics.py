"""The metrics every run records whatever loss trains it, so runs of different losses compare
on one scale: accuracy and macro F1 for classification; MSE, MAE and R^2 in the target's
original units for regression (also when the run trains on standardised targets).

The validation pass (``lossbench.training.fused.evaluate``, or ``python_evaluate`` on the slow
path) fills a ``Tally``: the confusion matrix, or per target the sums of squared and absolute
errors. ``common_metrics`` turns it into the numbers, with the definitions scikit-learn uses:

- macro F1 = mean over the classes present (as true or predicted labels) of
  F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)  (``sklearn.metrics.f1_score(average="macro")``);
- MSE = (1/(n t)) sum_i sum_j e_ij^2,  MAE = (1/(n t)) sum_i sum_j |e_ij|,  with e = prediction
  - target in original units, n rows, t targets (``mean_squared_error``,
  ``mean_absolute_error``);
- R^2 = mean over targets j of 1 - sum_i e_ij^2 / sum_i (y_ij - mean_i y_ij)^2, over the targets
  whose validation values are not all equal (``r2_score``, uniform average).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def predicted_classes(out: np.ndarray) -> np.ndarray:
    """The class a model's outputs predict: argmax over columns (the first maximum wins), or
    logit > 0 for one output column; the rule the fused epoch compiles."""
    return (out[:, 0] > 0).astype(np.int64) if out.shape[1] == 1 else np.argmax(out, axis=1)


@dataclass
class Tally:
    """The sums a validation pass fills: ``confusion`` (classes x classes, int64; 0 x 0 for
    regression), and for regression per target ``sq_err``/``abs_err`` (float64; empty for
    classification). ``err_scale`` turns an error in the model's target units into the
    original units (the target's standard deviation when it was standardised, else 1);
    ``sst`` is each target's sum of squares about its validation mean, in original units."""

    confusion: np.ndarray
    err_scale: np.ndarray
    sq_err: np.ndarray
    abs_err: np.ndarray
    sst: np.ndarray

    @classmethod
    def for_data(cls, prep) -> Tally:
        """Empty sums for the validation set of a ``Prepared`` dataset."""
        if prep.task == "classification":
            k = max(prep.n_classes, 2)
            empty = np.zeros(0, np.float64)
            return cls(np.zeros((k, k), np.int64), empty, empty.copy(), empty.copy(), empty.copy())
        t = prep.Y_val.shape[1]
        scale = prep.target_scale if prep.target_scale is not None else np.ones(t)
        return cls(
            np.zeros((0, 0), np.int64),
            np.ascontiguousarray(scale, dtype=np.float64),
            np.zeros(t, np.float64),
            np.zeros(t, np.float64),
            np.asarray(prep.target_sst, dtype=np.float64),
        )


def _macro_f1(confusion: np.ndarray) -> float:
    # plain Python over a small matrix: a jitted version costs ~50 ms to load in every
    # process, more than the whole run spends here (a few microseconds per epoch)
    rows, cols, diag = confusion.sum(axis=1).tolist(), confusion.sum(axis=0).tolist(), (
        confusion.diagonal().tolist())  # fmt: skip
    scores = [2.0 * tp / (t + p) for tp, t, p in zip(diag, rows, cols, strict=True) if t + p]
    return sum(scores) / len(scores) if scores else 0.0  # classes neither true nor predicted: out


def common_metrics(tally: Tally, n_rows: int) -> dict[str, float]:
    """The metrics of a filled ``tally`` over ``n_rows`` validation rows (see the module)."""
    if tally.confusion.shape[0]:
        return {"val_macro_f1": _macro_f1(tally.confusion)}
    mse, mae, r2 = _regression(tally.sq_err, tally.abs_err, tally.sst, n_rows)
    return {"val_mse": mse, "val_mae": mae, "val_r2": r2}


def _regression(sq_err, abs_err, sst, n_rows: int) -> tuple[float, float, float]:
    """(MSE, MAE, R^2 averaged over the targets whose sum of squares is not 0; NaN if none),
    in plain Python (see ``_macro_f1``)."""
    sq, ab, ss = sq_err.tolist(), abs_err.tolist(), sst.tolist()
    r2 = [1.0 - e / s for e, s in zip(sq, ss, strict=True) if s > 0]
    t = len(sq)
    return sum(sq) / (n_rows * t), sum(ab) / (n_rows * t), sum(r2) / len(r2) if r2 else math.nan


def tally_outputs(tally: Tally, out: np.ndarray, Y: np.ndarray, labels: np.ndarray) -> None:
    """Add validation rows to ``tally`` in NumPy: the slow path's version of the fused
    validation pass's sums (``lossbench.training.fused._tally``)."""
    if tally.confusion.shape[0]:
        np.add.at(tally.confusion, (labels, predicted_classes(out)), 1)
        return
    e = (out.astype(np.float64) - Y.astype(np.float64)) * tally.err_scale
    tally.sq_err += (e * e).sum(axis=0)
    tally.abs_err += np.abs(e).sum(axis=0)


def reset(tally: Tally) -> None:
    """Zero the sums before a validation pass."""
    tally.confusion[:] = 0
    tally.sq_err[:] = 0.0
    tally.abs_err[:] = 0.0
