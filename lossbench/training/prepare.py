"""A dataset made ready for one run: validation split (stratified for classes), standardisation
fitted on the training part only (of the features, and of a regression target when
``data.standardize_target``), and the targets in the layout the run's loss expects, all in
the run's dtype. ``Prepared`` keeps what was fitted (the standardisation's mean and scale, the
class and feature names) for the run's MLflow model (``lossbench.training.predict``), and a
digest of the training and validation rows for its dataset inputs."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from lossbench.data import DataOptions, Dataset
from lossbench.errors import ConfigError
from lossbench.training.arrays import check_converted, check_dataset, check_split


@dataclass
class Prepared:
    """A dataset split, scaled and converted for one loss, in the run's dtype."""

    X_train: np.ndarray
    Y_train: np.ndarray  # (n, t) targets in the loss's layout
    labels_train: np.ndarray  # (n,) int64 class labels, or empty for regression
    X_val: np.ndarray
    Y_val: np.ndarray
    labels_val: np.ndarray
    task: str
    n_classes: int
    n_outputs: int
    # fitted on the training part: model inputs are (x - mean) / scale (float64, per feature)
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    # regression with data.standardize_target: the model learns (y - target_mean) /
    # target_scale (float64, per target); None when the target is used as it is
    target_mean: np.ndarray | None = None
    target_scale: np.ndarray | None = None
    # regression: each target's sum of squares about its validation mean, original units (R^2)
    target_sst: np.ndarray | None = None
    class_names: list[str] | None = None  # by label, for classification
    feature_names: list[str] | None = None
    # sha256 of the training and of the validation rows as the dataset gave them (features and
    # targets, float64, before scaling): the run's dataset inputs in MLflow
    digests: dict[str, str] = dataclasses.field(default_factory=dict)


def rows_digest(X: np.ndarray, y: np.ndarray) -> str:
    """sha256 over the shapes and the float64 bytes of ``X`` and ``y``: the same rows give the
    same digest whatever the run's dtype."""
    h = hashlib.sha256()
    for a in (X, y):
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def split_indices(y: np.ndarray, task: str, val_fraction: float, rng: np.random.Generator):
    """Random train/validation split; stratified by class for classification."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(
            f"data.val_fraction={val_fraction} is not allowed: it must lie strictly between 0 "
            "and 1. Fix: pass e.g. data.val_fraction=0.2 (with data=csv, or data.val_path=FILE)."
        )
    n = len(y)
    if task != "classification":
        perm = rng.permutation(n)
        n_val = max(1, round(n * val_fraction))
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = round(len(idx) * val_fraction)
        if len(idx) > 1:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def prepare(ds: Dataset, opts: DataOptions, loss_target: str, loss_name: str, dtype, rng,
            source: str = "the dataset"):
    """Check (``lossbench.training.arrays``), split, standardise (statistics from the training
    part only) and build loss targets. ``source`` names the data in error messages."""
    check_dataset(ds, source)
    explicit_val = ds.X_val is not None
    if explicit_val:
        X_tr, y_tr, X_va, y_va = ds.X, ds.y, ds.X_val, ds.y_val
    else:
        tr, va = split_indices(ds.y, ds.task, opts.val_fraction, rng)
        X_tr, y_tr, X_va, y_va = ds.X[tr], ds.y[tr], ds.X[va], ds.y[va]
    check_split(ds, len(X_tr), len(X_va), source, explicit_val)
    digests = {"training": rows_digest(X_tr, y_tr), "validation": rows_digest(X_va, y_va)}
    X_tr, X_va, mean, scale = _scale_features(X_tr, X_va, opts.standardize, ds, source)
    n_classes = ds.n_classes
    Y_tr, Y_va, n_out = loss_targets(
        ds.task, n_classes, loss_target, loss_name, y_tr, y_va, getattr(ds, "task_note", None)
    )
    target = {}
    if ds.task == "classification":
        lab_tr, lab_va = y_tr.astype(np.int64), y_va.astype(np.int64)
        if opts.standardize_target:
            raise ConfigError(
                f"data.standardize_target=true scales a regression target, but {source} has "
                "class labels. Fix: drop data.standardize_target (or pass false)."
            )
    else:
        lab_tr = lab_va = np.zeros(0, np.int64)
        Y_tr, Y_va, target = _scale_target(Y_tr, Y_va, opts.standardize_target)
    with np.errstate(over="ignore"):  # a value the dtype cannot hold becomes inf: refused next
        out = {k: np.ascontiguousarray(v, dtype=dtype)
               for k, v in (("X_train", X_tr), ("Y_train", Y_tr), ("X_val", X_va), ("Y_val", Y_va))}
    for key, what in (("X_train", "the features"), ("X_val", "the validation features"),
                      ("Y_train", "the targets"), ("Y_val", "the validation targets")):
        check_converted(out[key], what, source, dtype, ds if key.startswith("X") else None)
    return Prepared(
        **out,
        labels_train=lab_tr,
        labels_val=lab_va,
        task=ds.task,
        n_classes=n_classes,
        n_outputs=n_out,
        mean=mean,
        scale=scale,
        **target,
        class_names=_class_names(ds) if ds.task == "classification" else None,
        feature_names=list(ds.feature_names) if ds.feature_names else None,
        digests=digests,
    )


def _scale_features(X_tr, X_va, standardize: bool, ds, source: str):
    """The features in float64, standardised with the training part's statistics if asked;
    returns them with the mean and scale (zeros and ones when not standardised)."""
    X_tr, X_va = X_tr.astype(np.float64), X_va.astype(np.float64)
    if standardize:
        with np.errstate(over="ignore", invalid="ignore"):
            mean = X_tr.mean(axis=0)
            scale = X_tr.std(axis=0)
        check_converted(np.stack([mean, scale]), "the features", source, np.float64, ds, True)
        scale[scale == 0] = 1.0  # constant features stay constant (as sklearn's StandardScaler)
    else:
        mean, scale = np.zeros(X_tr.shape[1]), np.ones(X_tr.shape[1])
    return (X_tr - mean) / scale, (X_va - mean) / scale, mean, scale


def _scale_target(Y_tr, Y_va, standardize: bool):
    """A regression target, standardised with the training part's statistics if asked; and
    what the metrics need to report in the original units (``target_sst``, and the mean and
    scale when standardised)."""
    Y_tr, Y_va = np.asarray(Y_tr, np.float64), np.asarray(Y_va, np.float64)
    out = {"target_sst": ((Y_va - Y_va.mean(axis=0)) ** 2).sum(axis=0)}
    if standardize:
        mean, scale = Y_tr.mean(axis=0), Y_tr.std(axis=0)
        scale[scale == 0] = 1.0  # a constant target stays constant
        Y_tr, Y_va = (Y_tr - mean) / scale, (Y_va - mean) / scale
        out.update(target_mean=mean, target_scale=scale)
    return Y_tr, Y_va, out


def _class_names(ds: Dataset) -> list[str]:
    """The classes by label: the dataset's names, else the labels as text."""
    if ds.class_names:
        return [str(c) for c in ds.class_names]
    return [str(c) for c in range(ds.n_classes)]


def target_problem(task, n_classes, target_kind, loss_name, task_note=None) -> str | None:
    """Why a loss with targets of ``target_kind`` cannot train on this data, with the fix; None
    when it can. ``task_note`` says how the dataset chose its task (e.g. ``data.task=auto``
    reading many integers as a regression target)."""
    if target_kind == "class_index" and task != "classification":
        target = f"a regression target ({task_note})" if task_note else (
            "a continuous (regression) target")  # fmt: skip
        return (
            f"loss={loss_name} needs class labels, but this dataset has {target}. Fix: use "
            "loss=mse, loss=mae or loss=huber, or a classification dataset"
            f"{', or pass data.task=classification' if task_note else ''}."
        )
    if target_kind == "binary" and (task != "classification" or n_classes != 2):
        what = f"{n_classes} classes" if task == "classification" else "a continuous target"
        return (
            f"loss={loss_name} is for two-class data, but this dataset has {what}. Fix: "
            "use loss=cross_entropy for several classes (or loss=mse for regression)."
        )
    if target_kind not in ("class_index", "binary", "values"):
        return f"loss={loss_name} declares an unknown target kind {target_kind!r}."
    return None


def loss_targets(task, n_classes, target_kind, loss_name, y_tr, y_va, task_note=None):
    """Targets in the layout a loss expects, and the number of model outputs (a ConfigError
    when the loss cannot train on this data: ``target_problem``)."""
    problem = target_problem(task, n_classes, target_kind, loss_name, task_note)
    if problem:
        raise ConfigError(problem)
    if target_kind in ("class_index", "binary"):
        return y_tr[:, None], y_va[:, None], n_classes if target_kind == "class_index" else 1
    if task == "classification":
        eye = np.eye(n_classes)
        return eye[y_tr], eye[y_va], n_classes  # one-hot, so losses compare on one task
    y_tr = y_tr.reshape(len(y_tr), -1)
    y_va = y_va.reshape(len(y_va), -1)
    return y_tr, y_va, y_tr.shape[1]


def options_from(hp) -> DataOptions:
    """The common data options from a dataset's options (any dataclass or config)."""
    names = [f.name for f in dataclasses.fields(DataOptions)]
    return DataOptions(**{k: getattr(hp, k) for k in names if hasattr(hp, k)})
