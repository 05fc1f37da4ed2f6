"""Datasets, splitting, scaling and loss targets."""

import numpy as np
import pytest

import lossbench
from conftest import TINY
from lossbench.builtin.datasets import DATASETS, read_bundled
from lossbench.data import DataOptions, Dataset
from lossbench.errors import ConfigError
from lossbench.training.prepare import loss_targets, prepare, split_indices

SPECS = {s.name: s for s in DATASETS}


@pytest.mark.parametrize("name", ["digits", "iris", "wine", "breast_cancer", "diabetes"])
def test_bundled_readers_match_sklearn(name):
    from sklearn import datasets

    loader = {
        "digits": datasets.load_digits,
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "diabetes": lambda: datasets.load_diabetes(scaled=False),
    }[name]
    bunch = loader()
    X, y, names = read_bundled(name)
    np.testing.assert_allclose(X, bunch.data)
    np.testing.assert_allclose(y, bunch.target)
    if name != "diabetes":
        assert names == [str(n) for n in bunch.target_names]


@pytest.mark.parametrize("name", [n for n in SPECS if n not in ("csv", "npz")])
def test_every_builtin_dataset_loads(name):
    spec = SPECS[name]
    ds = spec.load(spec.options(), 0)
    assert ds.X.ndim == 2 and len(ds.X) == len(ds.y)
    assert ds.task in ("classification", "regression")
    if ds.task == "classification":
        assert ds.y.dtype == np.int64 and ds.n_classes == len(np.unique(ds.y))


def test_synthetic_sets_are_seeded():
    moons = SPECS["moons"]
    a, b, c = (moons.load(moons.options(), s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.array_equal(a.X, c.X)


def test_stratified_split_keeps_class_proportions(rng):
    y = np.array([0] * 80 + [1] * 20)
    tr, va = split_indices(y, "classification", 0.25, rng)
    assert len(va) == 25 and np.sum(y[va] == 1) == 5
    assert not set(tr) & set(va) and len(tr) + len(va) == 100


def test_standardize_uses_training_statistics_only(rng):
    X = np.concatenate([rng.normal(size=(80, 2)), rng.normal(size=(20, 2)) + 100])
    X_val = rng.normal(size=(10, 2)) + 50
    ds = Dataset(X=X, y=np.zeros(100), task="regression", X_val=X_val, y_val=np.zeros(10))
    prep = prepare(ds, DataOptions(), "values", "mse", np.float64, rng)
    np.testing.assert_allclose(prep.X_train.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(prep.X_train.std(axis=0), 1)
    # the validation rows are scaled with the training part's statistics, not their own
    np.testing.assert_allclose(prep.X_val, (X_val - X.mean(axis=0)) / X.std(axis=0))
    # a constant feature stays finite
    ds2 = Dataset(X=np.ones((10, 1)), y=np.arange(10.0), task="regression")
    assert np.all(
        np.isfinite(prepare(ds2, DataOptions(), "values", "mse", np.float64, rng).X_train)
    )


def test_loss_targets_one_hot_for_value_losses_on_classes():
    y = np.array([2, 0, 1])
    Y, _, n_out = loss_targets("classification", 3, "values", "mse", y, y)
    np.testing.assert_array_equal(Y, np.eye(3)[y])
    assert n_out == 3
    with pytest.raises(ConfigError):
        loss_targets("regression", 0, "class_index", "cross_entropy", y, y)


def test_npz_dataset(pm, tmp_path, rng):
    X = rng.normal(size=(50, 3))
    np.savez(tmp_path / "d.npz", X=X, y=X[:, 0] * 2)
    run = lossbench.train(
        overrides=[
            *TINY,
            "data=npz",
            f"data.path={tmp_path}/d.npz",
            "loss=mse",
            "model=linear",
            "optimizer.lr=0.05",
        ]
    )
    assert run.dataset.task == "regression"
    np.savez(tmp_path / "bad.npz", features=X)
    with pytest.raises(lossbench.errors.DataError, match="lacks the arrays X, y"):
        lossbench.train(overrides=[*TINY, "data=npz", f"data.path={tmp_path}/bad.npz"])


def test_csv_string_labels_become_classes(pm, tmp_path):
    lines = ["x1,x2,species"] + [f"{i % 7},{i % 3},{'cat' if i % 2 else 'dog'}" for i in range(40)]
    (tmp_path / "pets.csv").write_text("\n".join(lines))
    run = lossbench.train(
        overrides=[*TINY, "data=csv", f"data.path={tmp_path}/pets.csv", "data.target=species"]
    )
    assert run.dataset.task == "classification" and run.dataset.n_classes == 2
