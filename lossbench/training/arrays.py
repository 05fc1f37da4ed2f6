"""Every array that enters the engine is checked here, before compiled code sees it: compiled
code has no bounds checks, so a short array is read past its end and a NaN trains nonsense.

``check_dataset`` holds what any dataset's ``load`` returns (built-in or plugin) to the
``Dataset`` contract: real-valued 2-D features, one target per row, labels within the classes,
an explicit validation set complete and of the same width, no missing or infinite values.
``check_split`` refuses an empty training or validation part, ``check_converted`` a value the
run's dtype cannot hold (naming the column), ``check_weights`` the ``model.init_from`` weights,
``check_memory`` a model too large for this machine (before allocating it), and ``read_npz``
reads an .npz file with one clear error for each way it can be wrong.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from lossbench.errors import ConfigError, DataError

REAL_KINDS = "biuf"  # bool, signed and unsigned integers, floats
KIND_NAMES = {"O": "object (Python objects)", "U": "string", "S": "bytes", "c": "complex",
              "V": "structured", "M": "datetime", "m": "timedelta"}  # fmt: skip


def _kind(a: np.ndarray) -> str:
    return KIND_NAMES.get(a.dtype.kind, str(a.dtype))


def as_array(value, what: str, source: str) -> np.ndarray:
    """``value`` as an ndarray; a value that is none (a list of mixed objects, say) is refused."""
    try:
        return value if isinstance(value, np.ndarray) else np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise DataError(f"{source}: {what} is not an array ({exc}).") from None


def check_real(a: np.ndarray, what: str, source: str) -> None:
    """Refuse an array that does not hold real numbers (object, string, complex, ...)."""
    if a.dtype.kind not in REAL_KINDS:
        raise DataError(
            f"{source}: {what} is a {_kind(a)} array ({a.dtype}, shape {a.shape}); lossbench "
            "trains on real numbers (bool, integer or float). Fix: convert it before saving, "
            "e.g. X.astype(np.float64), and encode categories as numbers."
        )


def _column_names(ds, n: int) -> list[str]:
    names = getattr(ds, "feature_names", None)
    if names and len(names) == n:
        return [f"column {name!r}" for name in names]
    return [f"feature {j}" for j in range(n)]


def _check_finite(a: np.ndarray, what: str, source: str, columns: list[str] | None) -> None:
    bad = ~np.isfinite(a.reshape(len(a), -1))
    if not bad.any():
        return
    rows = np.flatnonzero(bad.any(axis=1))
    where = ""
    if columns is not None:
        cols = np.flatnonzero(bad.any(axis=0))
        where = f" in {', '.join(columns[j] for j in cols[:5])}"
    raise DataError(
        f"{source}: {what} has missing or infinite values{where}, in {len(rows)} rows (first "
        f"rows: {rows[:5].tolist()}). Fix: fill or drop those rows before training."
    )


def check_dataset(ds, source: str) -> None:
    """Hold a loaded ``Dataset`` to its contract (see ``lossbench.data.Dataset``); ``source``
    names it in messages, e.g. ``data=npz (data.path='d.npz')``. Converts ``X``, ``y``,
    ``X_val``, ``y_val`` to ndarrays in place (labels to int64)."""
    if ds.task not in ("classification", "regression"):
        raise DataError(
            f"{source}: the dataset's task is {ds.task!r}; expected 'classification' or "
            "'regression'. Fix: set Dataset.task in the dataset's load()."
        )
    if (ds.X_val is None) != (ds.y_val is None):
        have, lack = ("X_val", "y_val") if ds.y_val is None else ("y_val", "X_val")
        raise DataError(
            f"{source}: the validation set has {have} but no {lack}. Fix: give both X_val and "
            "y_val (one target per validation row), or neither (the split then uses "
            "data.val_fraction)."
        )
    parts = [("X", "y", "")] + ([("X_val", "y_val", "validation ")] if ds.X_val is not None else [])
    width = None
    for xs, ys, label in parts:
        X = as_array(getattr(ds, xs), f"the {label}features {xs}", source)
        y = as_array(getattr(ds, ys), f"the {label}targets {ys}", source)
        check_real(X, f"the {label}features {xs}", source)
        if X.ndim != 2:
            raise DataError(
                f"{source}: the {label}features {xs} have shape {X.shape}; expected 2-D (rows, "
                f"features). Fix: reshape them, e.g. {xs}.reshape(len({xs}), -1)."
            )
        if len(X) == 0 or X.shape[1] == 0:
            what = "no rows" if len(X) == 0 else "no feature columns"
            raise DataError(
                f"{source}: the {label}features {xs} have {what} (shape {X.shape}). Fix: give "
                "at least one row and one feature column."
            )
        if width is not None and X.shape[1] != width:
            raise DataError(
                f"{source}: the validation data has {X.shape[1]} feature columns but the "
                f"training data has {width}. Fix: give both the same columns."
            )
        width = X.shape[1]
        if y.ndim not in (1, 2) or len(y) != len(X):
            raise DataError(
                f"{source}: {ys} has shape {y.shape} but {xs} has {len(X)} rows; expected one "
                f"target per row ({len(X)},) (or ({len(X)}, k) for k regression targets). Fix: "
                f"give {xs} and {ys} the same number of rows."
            )
        _check_finite(X, f"the {label}features", source, _column_names(ds, X.shape[1]))
        if ds.task == "regression":
            check_real(y, f"the {label}targets {ys}", source)
            _check_finite(y, f"the {label}targets", source, None)
        setattr(ds, xs, X)
        setattr(ds, ys, y)
    if ds.task == "classification":
        _check_labels(ds, source)


def _check_labels(ds, source: str) -> None:
    ys = [ds.y] + ([ds.y_val] if ds.y_val is not None else [])
    for y in ys:
        if y.ndim != 1 or y.dtype.kind not in REAL_KINDS or not np.all(np.isfinite(y)) or (
            y.dtype.kind == "f" and np.any(np.mod(y, 1) != 0)
        ):
            raise DataError(
                f"{source}: a classification target must be one integer class label per row "
                f"(0, 1, 2, ...), but it is a {y.dtype} array of shape {y.shape}. Fix: encode "
                "the classes as 0..C-1, or pass data.task=regression for a continuous target."
            )
    n_classes = len(ds.class_names) if ds.class_names else int(max(y.max() for y in ys)) + 1
    low, high = min(int(y.min()) for y in ys), max(int(y.max()) for y in ys)
    if low < 0 or high >= n_classes:
        raise DataError(
            f"{source}: class labels run from {low} to {high}, but the dataset names "
            f"{n_classes} classes. Fix: labels must lie in 0..{n_classes - 1}."
        )
    present = np.unique(np.concatenate(ys))
    if len(present) < 2:
        name = ds.class_names[int(present[0])] if ds.class_names else int(present[0])
        raise DataError(
            f"{source}: every row has the same class ({name!r}): there is nothing to tell "
            "apart. Fix: use data with at least two classes, or pass data.task=regression if "
            "the target is a continuous value."
        )
    if ds.y_val is not None:
        _check_val_classes(ds, source)
    ds.y = ds.y.astype(np.int64)
    if ds.y_val is not None:
        ds.y_val = ds.y_val.astype(np.int64)


def _check_val_classes(ds, source: str) -> None:
    """An explicit validation set has only classes the training set has."""
    unseen = np.setdiff1d(np.unique(ds.y_val), np.unique(ds.y))
    if not len(unseen):
        return
    names = [str(ds.class_names[int(c)]) if ds.class_names else str(int(c)) for c in unseen]
    rows = int(np.isin(ds.y_val, unseen).sum())
    which = f"class {names[0]!r}" if len(names) == 1 else "classes " + ", ".join(map(repr, names))
    raise DataError(
        f"{source}: the validation set has {which} ({rows} rows), which the training set never "
        "has: a model cannot learn a class it never sees, and every such row would count as a "
        "wrong answer. Fix: move some rows of it into the training set, or drop them from the "
        "validation set."
    )


def check_split(ds, n_train: int, n_val: int, source: str, explicit_val: bool) -> None:
    """Refuse an empty training or validation part (a mean over no rows is no loss)."""
    if n_train and n_val:
        return
    part = "training" if not n_train else "validation"
    rows = len(ds.y) + (len(ds.y_val) if explicit_val else 0)
    why = f"the data has {rows} rows"
    if ds.task == "classification" and not explicit_val:
        counts = np.bincount(ds.y)
        why += (
            f" and {int(np.sum(counts == 1))} of its {int(np.sum(counts > 0))} classes have only "
            "one row (a class with one row goes to training)"
        )
    raise DataError(
        f"{source}: the {part} set is empty: {why}. Fix: give more rows (at least two per "
        "class for a split), or an explicit validation set (data.val_path=FILE for csv, "
        "X_val and y_val for npz)."
    )


def check_converted(a: np.ndarray, what: str, source: str, dtype, ds=None,
                    standardising: bool = False) -> None:
    """Refuse values the run's dtype cannot hold (they became inf): name the columns."""
    finite = np.isfinite(a.reshape(len(a), -1))
    if finite.all():
        return
    cols = np.flatnonzero(~finite.all(axis=0))
    names = _column_names(ds, a.shape[1]) if ds is not None and a.ndim == 2 else None
    where = ", ".join((names[j] if names else f"column {j}") for j in cols[:5])
    name = np.dtype(dtype).name
    if standardising:
        problem = f"hold values too large to standardise (their squares exceed {name}'s range)"
        fix = "rescale those columns (e.g. divide by a power of ten)"
    else:
        problem = f"hold values too large for {name} (at most {np.finfo(dtype).max:.3g})"
        fix = "rescale those columns (e.g. divide by a power of ten)" + (
            ", or pass trainer.dtype=float64" if name != "float64" else ""
        )
    raise DataError(
        f"{source}: {what} in {where} {problem}; this is the data, not the learning rate. "
        f"Fix: {fix}."
    )


def check_weights(arrays: dict, expected: dict, path: str) -> None:
    """``model.init_from`` weights: the tensors the model has, each real, of its shape, finite."""
    key = f"model.init_from={path!r}"
    if set(arrays) != set(expected):
        raise ConfigError(
            f"{key} holds {sorted(arrays)}, but this model needs {sorted(expected)}. Fix: use "
            "weights saved from a model with the same layers."
        )
    for name, a in arrays.items():
        if a.dtype.kind not in REAL_KINDS:
            raise ConfigError(
                f"{key}: {name} is a {_kind(a)} array ({a.dtype}); weights are real numbers. "
                "Fix: pass the model.npz of an earlier run, or save float arrays."
            )
    bad = [
        f"{k}: file {arrays[k].shape}, model {tuple(shape)}"
        for k, shape in expected.items()
        if tuple(arrays[k].shape) != tuple(shape)
    ]
    if bad:
        raise ConfigError(
            f"{key} has the wrong shapes ({'; '.join(bad)}). Fix: match model.hidden and the "
            "dataset's features/classes to the saved model."
        )
    for name, a in arrays.items():
        n_bad = int(np.sum(~np.isfinite(a)))
        if n_bad:
            raise ConfigError(
                f"{key}: {name} has {n_bad} NaN or infinite values (the weights of a run that "
                "diverged?). Fix: pass weights saved from a run that finished."
            )


def read_npz(path: str, key: str, error=DataError) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, or ``error`` naming ``key=path`` and what is wrong with it
    (a .npy file, a broken or non-zip file, pickled objects). Never unpickles."""
    what = f"{key}={path!r}"
    fix = "Fix: save the arrays with np.savez(path, NAME=array, ...)."
    try:
        loaded = np.load(path, allow_pickle=False)
    except zipfile.BadZipFile as exc:
        raise error(
            f"{what} is not a valid .npz file (a zip archive of arrays): {exc}. {fix}"
        ) from None
    except ValueError:  # np.load's answer to anything that is neither .npy nor a zip
        raise error(
            f"{what} is not an .npz file: it holds text or pickled Python objects, which "
            f"lossbench does not load. {fix}"
        ) from None
    except (OSError, EOFError) as exc:
        raise error(f"{what} could not be read: {exc}. {fix}") from None
    if isinstance(loaded, np.ndarray):
        raise error(
            f"{what} is a .npy file (one array of shape {loaded.shape}), not an .npz archive of "
            f"named arrays. {fix}"
        )
    with loaded as f:
        arrays = {}
        for name in f.files:
            try:
                arrays[name] = f[name]
            except ValueError:
                raise error(
                    f"{what}: the array {name} holds Python objects (pickled), which lossbench "
                    f"does not load. Fix: save numeric arrays, e.g. {name}.astype(np.float64)."
                ) from None
            except Exception as exc:  # a damaged member: zlib, CRC, truncated data
                raise error(f"{what}: the array {name} is damaged ({exc}). {fix}") from None
    return arrays


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(n_bytes: int, what: str, fix: str) -> None:
    """Refuse, before allocating, what needs more memory than the machine has available."""
    free = available_memory()
    if free is not None and n_bytes > free:
        raise ConfigError(
            f"{what} needs about {n_bytes / 2**30:.1f} GiB of memory, but this machine has "
            f"{free / 2**30:.1f} GiB available. Fix: {fix}"
        )
