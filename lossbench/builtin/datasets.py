"""Built-in datasets: scikit-learn's bundled sets (no download), seeded synthetic sets, and the
user's own CSV and NPZ files."""

from __future__ import annotations

import csv
import importlib.util
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from lossbench.data import DataOptions, Dataset
from lossbench.errors import ConfigError, DataError, require
from lossbench.hookspecs import hookimpl
from lossbench.specs import DatasetSpec
from lossbench.training.arrays import check_real, read_npz

# scikit-learn's bundled files, read directly: importing sklearn costs about 0.8 s per process,
# more than a whole default training run. tests/test_datasets.py holds these readers to
# sklearn's own loaders; if the files ever move, the loader falls back to sklearn.
_BUNDLED = {
    # name: (sklearn loader, file, format, task)
    "digits": ("load_digits", "digits.csv.gz", "digits", "classification"),
    "iris": ("load_iris", "iris.csv", "header", "classification"),
    "wine": ("load_wine", "wine_data.csv", "header", "classification"),
    "breast_cancer": ("load_breast_cancer", "breast_cancer.csv", "header", "classification"),
    "diabetes": ("load_diabetes", "diabetes_data_raw.csv.gz", "diabetes", "regression"),
}
_DIGIT_NAMES = [str(i) for i in range(10)]


def _sklearn_data_dir():
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def read_bundled(name: str):
    """(X, y, class names) of a scikit-learn bundled dataset, or None if its file is missing."""
    _, file, fmt, task = _BUNDLED[name]
    folder = _sklearn_data_dir()
    if folder is None or not (folder / file).is_file():
        return None
    path = folder / file
    if fmt == "digits":
        data = np.loadtxt(path, delimiter=",")
        return data[:, :-1], data[:, -1].astype(np.int64), _DIGIT_NAMES
    if fmt == "diabetes":
        X = np.loadtxt(path)
        y = np.loadtxt(folder / "diabetes_target.csv.gz")
        return X, y, None
    with open(path) as f:
        header = f.readline().strip().split(",")
        data = np.loadtxt(f, delimiter=",")
    names = header[2:]
    return data[:, :-1], data[:, -1].astype(np.int64), names


def _sklearn(name: str):
    loader_name, _, _, task = _BUNDLED[name]

    def load(options, seed):
        found = read_bundled(name)
        if found is None:
            from sklearn import datasets  # start-up: see _BUNDLED

            bunch = getattr(datasets, loader_name)()
            names = [str(n) for n in getattr(bunch, "target_names", [])] or None
            found = bunch.data, bunch.target, names
        X, y, names = found
        y = y.astype(np.int64 if task == "classification" else np.float64)
        return Dataset(X=X, y=y, task=task, class_names=names)

    return load


@dataclass
class MoonsOptions(DataOptions):
    n_samples: int = 1000
    noise: float = 0.2


@dataclass
class BlobsOptions(DataOptions):
    n_samples: int = 1000
    n_features: int = 2
    centers: int = 3
    cluster_std: float = 1.0


@dataclass
class RegressionOptions(DataOptions):
    n_samples: int = 1000
    n_features: int = 10
    n_informative: int = 5
    n_targets: int = 1
    noise: float = 10.0


def _positive(key, value, example):
    require(value > 0, f"data.{key}", value, "it must be > 0", example)


def _load_moons(options: MoonsOptions, seed):
    from sklearn.datasets import make_moons  # start-up: sklearn costs 0.8 s

    _positive("n_samples", options.n_samples, 1000)
    X, y = make_moons(n_samples=options.n_samples, noise=options.noise, random_state=seed)
    return Dataset(X=X, y=y.astype(np.int64), task="classification", class_names=["0", "1"])


def _load_blobs(options: BlobsOptions, seed):
    from sklearn.datasets import make_blobs  # start-up: sklearn costs 0.8 s

    for key, ex in (("n_samples", 1000), ("n_features", 2), ("centers", 3)):
        _positive(key, getattr(options, key), ex)
    X, y = make_blobs(
        n_samples=options.n_samples,
        n_features=options.n_features,
        centers=options.centers,
        cluster_std=options.cluster_std,
        random_state=seed,
    )
    names = [str(i) for i in range(options.centers)]
    return Dataset(X=X, y=y.astype(np.int64), task="classification", class_names=names)


def _load_regression(options: RegressionOptions, seed):
    from sklearn.datasets import make_regression  # start-up: sklearn costs 0.8 s

    for key, ex in (("n_samples", 1000), ("n_features", 10), ("n_targets", 1)):
        _positive(key, getattr(options, key), ex)
    X, y = make_regression(
        n_samples=options.n_samples,
        n_features=options.n_features,
        n_informative=min(options.n_informative, options.n_features),
        n_targets=options.n_targets,
        noise=options.noise,
        random_state=seed,
    )
    return Dataset(X=X, y=y, task="regression")


# ---------------------------------------------------------------------------------------------
# user files

class Task(StrEnum):
    auto = "auto"
    classification = "classification"
    regression = "regression"


@dataclass
class CSVOptions(DataOptions):
    path: str = "???"
    target: str = "target"
    task: Task = Task.auto
    val_path: str | None = None


@dataclass
class NPZOptions(DataOptions):
    path: str = "???"
    task: Task = Task.auto


MAX_AUTO_CLASSES = 50  # data.task=auto: integer targets with more distinct values are regression


def _labels_in_2d(y: np.ndarray):
    """(what it looks like, the 1-D labels) for a 2-D ``y`` that holds class labels: one
    column of few distinct integers, or one-hot rows; None otherwise."""
    if y.ndim != 2 or not len(y) or not np.all(np.isfinite(y)):
        return None
    if y.shape[1] == 1 and np.all(np.mod(y, 1) == 0):
        distinct = len(np.unique(y))
        if distinct <= MAX_AUTO_CLASSES:
            return (f"one column of {distinct} distinct integers (class labels saved as a "
                    "column; they are one per row, shape (rows,))", y[:, 0])  # fmt: skip
    if y.shape[1] > 1 and np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1):
        return ("one-hot rows (class labels saved one-hot; they are one per row, shape "
                "(rows,))", y.argmax(axis=1))  # fmt: skip
    return None


def _infer_task(y: np.ndarray, task: str, where: str):
    """Decide classification vs regression and encode class labels as 0..C-1; returns
    (y, task, class names, a note saying how an inferred task was chosen)."""
    if y.dtype.kind not in "biufUSO":
        raise DataError(
            f"{where} is a {y.dtype} array; a target is numbers (regression or integer classes) "
            "or class names. Fix: convert it before saving, e.g. y.real or y.astype(str)."
        )
    numeric = y.dtype.kind in "biuf"
    note, labels = None, _labels_in_2d(y) if numeric else None
    if labels is not None:  # class labels saved as a column, or one-hot
        if task == "classification":
            y = labels[1]
        elif task == "auto":
            note = (f"{where} has shape {y.shape}: {labels[0]}, and data.task=auto takes a 2-D "
                    f"{where} as regression targets")  # fmt: skip
    if task == "auto":
        if not numeric:
            task = "classification"
        else:
            integers = y.ndim == 1 and np.all(np.isfinite(y)) and np.all(np.mod(y, 1) == 0)
            distinct = len(np.unique(y)) if integers else 0
            task = "classification" if integers and distinct <= MAX_AUTO_CLASSES else "regression"
            if integers and task == "regression":
                note = (
                    f"{where} holds {distinct} distinct integer values, more than "
                    f"{MAX_AUTO_CLASSES}, so data.task=auto took it as a regression target"
                )
    if task == "regression":
        if not numeric:
            raise DataError(
                f"{where} is not numeric, so it cannot be a regression target. Fix: pass "
                "data.task=classification to train on its values as classes."
            )
        return y.astype(np.float64), task, None, note
    if y.ndim != 1:
        raise DataError(
            f"{where} has shape {y.shape}: class labels are one per row. Fix: pass "
            "data.task=regression for several continuous targets."
        )
    if numeric and not np.all(np.isfinite(y)):
        raise DataError(f"{where} has missing or infinite values. Fix: fill or drop those rows.")
    classes, codes = np.unique(y, return_inverse=True)
    return codes.astype(np.int64), task, [str(c) for c in classes], note


def check_data_file(path: str, key: str, kind: str) -> None:
    """Refuse a path that is not a regular file, saying what it is instead."""
    if os.path.isfile(path):
        return
    if os.path.isdir(path):
        what = "is a directory, not a file"
    elif os.path.exists(path):
        what = "is not a regular file (a device, a pipe or a socket)"
    else:
        what = f"no such file (looked in {os.getcwd()})"
    sep = ": " if what.startswith("no such") else " "
    raise DataError(
        f"{key}={path!r}{sep}{what}. Fix: pass an existing {kind}; relative paths are taken from "
        "the directory you start lossbench in."
    )


def _read_csv(path: str, target: str, role: str):
    import pandas as pd  # start-up: pandas for CSV files only

    if path in ("???", "", None):
        raise ConfigError(
            f"data.{role} is not set. Fix: pass data.{role}=FILE.csv "
            "(a CSV with a header row and one target column)."
        )
    check_data_file(path, f"data.{role}", "CSV file")
    try:
        frame = pd.read_csv(path)
    except Exception as exc:  # parser errors carry the line number
        raise DataError(f"data.{role}={path!r} could not be read as CSV: {exc}") from None
    with open(path, newline="") as f:  # pandas renames a repeated column (label, label.1)
        header = next(csv.reader(f), [])
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(
            f"{path}: the header names {', '.join(map(repr, repeated))} more than once, so it "
            "is unclear which column is meant (a repeated target would also train on itself). "
            "Fix: rename or drop the repeated columns."
        )
    if frame.empty:
        raise DataError(
            f"{path} has a header ({', '.join(map(str, frame.columns))}) but no data rows. Fix: "
            "pass a file with rows of data."
        )
    if target not in frame.columns:
        raise DataError(
            f"data.target={target!r} is not a column of {path}. Columns: "
            f"{', '.join(map(str, frame.columns))}. Fix: pass data.target=COLUMN."
        )
    features = frame.drop(columns=[target])
    bad = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise DataError(
            f"{path}: feature columns {', '.join(bad)} are not numeric. Fix: encode them as "
            "numbers or drop them from the file."
        )
    missing = features.columns[features.isna().any()].tolist() + (
        [target] if frame[target].isna().any() else []
    )
    if missing:
        raise DataError(
            f"{path}: columns {', '.join(map(str, missing))} have missing values. Fix: fill or "
            "drop those rows."
        )
    if features.shape[1] == 0:
        raise DataError(f"{path} has no feature columns besides the target {target!r}.")
    names = [str(c) for c in features.columns]
    return features.to_numpy(dtype=np.float64), frame[target].to_numpy(), names


def _load_csv(options: CSVOptions, seed):
    X, y_raw, features = _read_csv(options.path, options.target, "path")
    X_val = y_val = None
    where = f"column {options.target!r}"
    if options.val_path:
        X_val, y_val_raw, _ = _read_csv(options.val_path, options.target, "val_path")
        both, task, names, note = _infer_task(
            np.concatenate([y_raw, y_val_raw]), options.task, where
        )
        y, y_val = both[: len(y_raw)], both[len(y_raw) :]
    else:
        y, task, names, note = _infer_task(y_raw, options.task, where)
    return Dataset(X=X, y=y, task=task, class_names=names, X_val=X_val, y_val=y_val,
                   feature_names=features, task_note=note)  # fmt: skip


def _load_npz(options: NPZOptions, seed):
    if options.path in ("???", "", None):
        raise ConfigError(
            "data.path is not set. Fix: pass data.path=FILE.npz (arrays X and y, optionally "
            "X_val and y_val)."
        )
    check_data_file(options.path, "data.path", ".npz file")
    arrays = read_npz(options.path, "data.path")
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise DataError(
            f"{options.path} lacks the arrays {', '.join(missing)} (it has: "
            f"{', '.join(arrays) or 'none'}). Fix: save with np.savez(path, X=..., y=...)."
        )
    X, y, X_val, y_val = (arrays.get(k) for k in ("X", "y", "X_val", "y_val"))
    for name, a in (("X", X), ("X_val", X_val)):
        if a is not None:  # before anything converts them: a string or complex X is refused
            check_real(a, f"the array {name}", f"data.path={options.path!r}")
    if y_val is not None:  # one encoding of the classes for both parts
        if y.ndim != y_val.ndim or y.shape[1:] != y_val.shape[1:]:
            raise DataError(
                f"{options.path}: y has shape {y.shape} but y_val {y_val.shape}. Fix: give "
                "them the same layout (one target, or k targets, per row)."
            )
        both, task, names, note = _infer_task(np.concatenate([y, y_val]), options.task, "y")
        y, y_val = both[: len(y)], both[len(y) :]
    else:
        y, task, names, note = _infer_task(y, options.task, "y")
    return Dataset(X=X, y=y, task=task, class_names=names, X_val=X_val, y_val=y_val,
                   task_note=note)  # fmt: skip


DATASETS = [
    DatasetSpec(
        "digits",
        DataOptions,
        "8x8 handwritten digits, 10 classes (scikit-learn)",
        load=_sklearn("digits"),
    ),
    DatasetSpec(
        "iris", DataOptions, "iris flowers, 3 classes (scikit-learn)", load=_sklearn("iris")
    ),
    DatasetSpec(
        "wine", DataOptions, "wine cultivars, 3 classes (scikit-learn)", load=_sklearn("wine")
    ),
    DatasetSpec(
        "breast_cancer",
        DataOptions,
        "breast cancer, 2 classes (scikit-learn)",
        load=_sklearn("breast_cancer"),
    ),
    DatasetSpec(
        "diabetes",
        DataOptions,
        "diabetes progression, regression (scikit-learn)",
        load=_sklearn("diabetes"),
    ),
    DatasetSpec(
        "moons", MoonsOptions, "two interleaving half-moons, seeded (synthetic)", load=_load_moons
    ),
    DatasetSpec("blobs", BlobsOptions, "Gaussian blobs, seeded (synthetic)", load=_load_blobs),
    DatasetSpec(
        "regression",
        RegressionOptions,
        "random linear regression, seeded (synthetic)",
        load=_load_regression,
    ),
    DatasetSpec("csv", CSVOptions, "your CSV file: data.path, data.target", load=_load_csv),
    DatasetSpec("npz", NPZOptions, "your NPZ file with arrays X, y", load=_load_npz),
]


@hookimpl
def register_datasets(register):
    for spec in DATASETS:
        register(spec)
