"""Prediction outside training: a run's model with the preprocessing it fitted, as plain NumPy.

A ``Predictor`` holds the flat weights, the model's layout, the standardisation fitted on the
training part (``x -> (x - mean) / scale``), the task, how the loss read the outputs and the
class names. ``predict`` runs the model spec's NumPy ``reference_forward`` (no numba compile,
so a loaded model answers at once) and turns the outputs into what a user wants:

- classification, loss on logits of several classes (``target == "class_index"``, e.g.
  cross_entropy): ``probabilities = softmax(outputs)`` (rows sum to 1), ``labels`` the class
  name of the argmax;
- classification, one logit (``target == "binary"``, bce): ``probabilities = [1 - s, s]`` with
  ``s = sigmoid(logit)``, ``labels`` class 1 where the logit is > 0;
- classification trained on one-hot values (mse, mae, huber): the outputs are scores, not
  probabilities: ``scores`` and the argmax's ``labels``;
- regression: ``values`` (one column per target), in the target's original units (a model
  trained with ``data.standardize_target`` predicts ``out * target_scale + target_mean``).

The labels follow ``lossbench.training.metrics.predicted_classes``, the rule accuracy is counted
with. ``save``/``load`` write and read it as a folder (``weights.npz``, read without
unpickling, and ``model.json``), the data of the run's MLflow model
(``lossbench.tracking.pyfunc``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lossbench._version import __version__
from lossbench.errors import ConfigError
from lossbench.training.arrays import read_npz
from lossbench.training.metrics import predicted_classes

WEIGHTS, META = "weights.npz", "model.json"


@dataclass
class Predictor:
    """A run's model and preprocessing, ready to predict raw feature rows (see the module)."""

    model: str  # the model spec's name (its plugin must be installed to load it)
    params: np.ndarray  # the flat weight vector, in the run's dtype
    layout: np.ndarray  # the model's integer layout (ModelLayout.layout)
    hp: np.ndarray  # the model's packed options, evaluation mode (ModelLayout.kernel_hp)
    mean: np.ndarray
    scale: np.ndarray
    task: str
    target: str  # the loss's target kind: class_index, binary or values
    class_names: list[str] | None
    feature_names: list[str]
    n_outputs: int
    target_mean: np.ndarray | None = None  # regression with data.standardize_target
    target_scale: np.ndarray | None = None

    @classmethod
    def from_run(cls, run) -> Predictor:
        """The predictor of a run that has trained (``run.flat_params`` are its weights)."""
        prep = run.dataset
        n_features = prep.X_train.shape[1]
        return cls(
            model=run.specs["model"].name,
            params=np.array(run.flat_params),
            layout=np.asarray(run.layout.layout, dtype=np.int64),
            hp=run.layout.kernel_hp(training=False).astype(run.flat_params.dtype),
            mean=np.asarray(prep.mean, dtype=np.float64),
            scale=np.asarray(prep.scale, dtype=np.float64),
            task=prep.task,
            target=run.specs["loss"].target,
            class_names=prep.class_names,
            feature_names=prep.feature_names or [f"x{i}" for i in range(n_features)],
            n_outputs=prep.n_outputs,
            target_mean=prep.target_mean,
            target_scale=prep.target_scale,
        )

    @property
    def columns(self) -> list[str]:
        """The columns ``predict`` returns, in order (the last is ``label`` for classes)."""
        if self.task != "classification":
            n = self.n_outputs
            return ["value"] if n == 1 else [f"value_{i}" for i in range(n)]
        kind = "score" if self.target == "values" else "prob"
        return [f"{kind}_{c}" for c in self.class_names] + ["label"]

    def outputs(self, X, forward) -> np.ndarray:
        """The model's raw outputs (logits or values) for raw feature rows ``X`` (n, d):
        standardised as in training, then ``forward`` (the spec's ``reference_forward``)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.mean):
            raise ConfigError(
                f"the model expects rows of {len(self.mean)} features "
                f"({', '.join(self.feature_names[:5])}{', ...' if len(self.mean) > 5 else ''}), "
                f"got an array of shape {X.shape}. Fix: pass a (rows, {len(self.mean)}) array "
                "or a DataFrame with those columns."
            )
        Xs = np.ascontiguousarray((X - self.mean) / self.scale, dtype=self.params.dtype)
        return np.asarray(forward(self.params, self.layout, self.hp, Xs))

    def predict(self, X, forward) -> dict[str, np.ndarray]:
        """``probabilities`` (or ``scores``) and ``labels`` for classification, ``values`` for
        regression (see the module for the rule of each loss)."""
        out = self.outputs(X, forward).astype(np.float64)
        if self.task != "classification":
            if self.target_scale is not None:
                out = out * self.target_scale + self.target_mean
            return {"values": out}
        labels = np.asarray(self.class_names, dtype=object)[predicted_classes(out)]
        if self.target == "binary":
            p = 1.0 / (1.0 + np.exp(-out[:, 0]))
            return {"probabilities": np.stack([1.0 - p, p], axis=1), "labels": labels}
        if self.target == "values":
            return {"scores": out, "labels": labels}
        z = np.exp(out - out.max(axis=1, keepdims=True))
        return {"probabilities": z / z.sum(axis=1, keepdims=True), "labels": labels}

    def save(self, folder: Path) -> Path:
        """Write ``weights.npz`` and ``model.json`` into ``folder`` (created)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        target = {} if self.target_scale is None else {
            "target_mean": self.target_mean, "target_scale": self.target_scale}
        np.savez(folder / WEIGHTS, params=self.params, layout=self.layout, hp=self.hp,
                 mean=self.mean, scale=self.scale, **target)  # fmt: skip
        meta = {k: getattr(self, k) for k in ("model", "task", "target", "class_names",
                                              "feature_names", "n_outputs")}  # fmt: skip
        meta["lossbench_version"] = __version__
        (folder / META).write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: Path) -> Predictor:
        """Read a folder written by ``save``."""
        folder = Path(folder)
        meta = json.loads((folder / META).read_text())
        meta.pop("lossbench_version", None)
        arrays = read_npz(str(folder / WEIGHTS), "the model's weights")
        names = ("params", "layout", "hp", "mean", "scale", "target_mean", "target_scale")
        return cls(**meta, **{k: arrays[k] for k in names if k in arrays})
