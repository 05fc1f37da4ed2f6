"""Behaviours of the training loop that decide what a run answers, each held by a test that
fails when the behaviour is planted wrong: rows reshuffled every epoch, early stopping's
min_delta in both directions, the best epoch's weights kept, the metrics every loss shares
(against scikit-learn), and the two seeds (data vs training)."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, mean_absolute_error, mean_squared_error, r2_score

import lossbench
from conftest import TINY
from lossbench.builtin import early_stopping
from lossbench.hookspecs import hookimpl
from lossbench.plugins import build_plugin_manager
from lossbench.training.predict import Predictor


class OrderProbe:
    """Records the training rows' order of every epoch (``run.train_order``)."""

    def __init__(self):
        self.orders = []

    @hookimpl
    def on_epoch_end(self, run, epoch, metrics):
        self.orders.append(run.train_order.copy())


def _probed(overrides):
    probe = OrderProbe()
    pm = build_plugin_manager(entry_points=False, extra=[probe])
    run = lossbench.train(overrides=[*TINY, *overrides], plugin_manager=pm)
    return run, probe.orders


def test_rows_are_reshuffled_every_epoch_and_the_order_is_seeded():
    run, orders = _probed(["data=iris", "trainer.epochs=4"])
    n = len(run.dataset.X_train)
    for order in orders:
        assert sorted(order) == list(range(n))  # a permutation of the training rows
    assert len({tuple(o) for o in orders}) == 4  # a new one every epoch, not one reused
    _, again = _probed(["data=iris", "trainer.epochs=4"])
    assert all(np.array_equal(a, b) for a, b in zip(orders, again, strict=True))
    _, other = _probed(["data=iris", "trainer.epochs=4", "seed=1"])
    assert not np.array_equal(orders[0], other[0])  # the training seed drives the shuffle
    _, fixed = _probed(["data=iris", "trainer.epochs=2", "trainer.shuffle=false"])
    assert all(np.array_equal(o, np.arange(n)) for o in fixed)


def _early_stopping_run(monitor, min_delta, patience=2):
    es = {"enabled": True, "monitor": monitor, "min_delta": min_delta, "patience": patience}
    config = type("C", (), {"trainer": type("T", (), {"early_stopping": type("E", (), es)})})
    return type("R", (), {"config": config, "plugin_state": {}})()


@pytest.mark.parametrize(
    "monitor,values,min_delta,stops_after",
    [
        # val_loss: 1.0, then improvements of 0.05 each: smaller than min_delta=0.1, so none
        # counts and patience 2 stops it at the third epoch; with min_delta=0.01 each counts
        ("val_loss", [1.0, 0.95, 0.90, 0.85, 0.80], 0.1, 2),
        ("val_loss", [1.0, 0.95, 0.90, 0.85, 0.80], 0.01, None),
        # an increase is never an improvement, whatever min_delta
        ("val_loss", [1.0, 1.2, 1.4, 1.6], 0.0, 2),
        # val_accuracy is maximised: rises of 0.05 count with min_delta 0.01, not with 0.1
        ("val_accuracy", [0.5, 0.55, 0.60, 0.65, 0.70], 0.01, None),
        ("val_accuracy", [0.5, 0.55, 0.60, 0.65, 0.70], 0.1, 2),
        ("val_accuracy", [0.5, 0.4, 0.3], 0.0, 2),
        ("val_r2", [0.1, 0.3, 0.5, 0.7], 0.1, None),
    ],
)
def test_early_stopping_min_delta_counts_only_larger_improvements_both_ways(
    monitor, values, min_delta, stops_after
):
    run = _early_stopping_run(monitor, min_delta)
    stopped = None
    for epoch, value in enumerate(values):
        if early_stopping.on_epoch_end(run, epoch, {monitor: value}):
            stopped = epoch
            break
    assert stopped == stops_after


def test_the_best_epochs_weights_are_kept_and_equal_a_run_that_ended_there(tmp_path):
    overrides = ["data=wine", "trainer.epochs=40", "optimizer.lr=0.05"]  # overfits: val rises
    run = lossbench.train(overrides=[*TINY, *overrides], output_dir=tmp_path)
    best = run.best_epoch
    vals = [h["val_loss"] for h in run.history]
    assert best == int(np.argmin(vals)) and best < len(vals) - 1
    assert run.weights_epoch == best
    # a run of best + 1 epochs ends with exactly the weights the long run kept
    short = lossbench.train(overrides=[*TINY, *overrides, f"trainer.epochs={best + 1}",
                                       "trainer.keep_weights=last"])  # fmt: skip
    np.testing.assert_array_equal(run.flat_params, short.flat_params)
    with np.load(tmp_path / "model.npz") as f:
        np.testing.assert_array_equal(f["W0"], run.params["W0"])
    last = lossbench.train(overrides=[*TINY, *overrides, "trainer.keep_weights=last"])
    assert last.weights_epoch == len(vals) - 1
    assert not np.array_equal(last.flat_params, run.flat_params)
    # the kept weights are those the summary names, and they predict the best epoch's val_loss
    loss = lossbench.train(overrides=[*TINY, *overrides, "trainer.epochs=1", "optimizer.lr=1e-300",
                                      f"model.init_from={tmp_path / 'model.npz'}"])  # fmt: skip
    assert loss.history[0]["val_loss"] == pytest.approx(vals[best], rel=1e-5)


def test_the_best_epoch_follows_the_monitored_metric():
    overrides = ["data=wine", "trainer.epochs=30", "optimizer.lr=0.05"]
    run = lossbench.train(overrides=[*TINY, *overrides,
                                     "trainer.early_stopping.monitor=val_macro_f1"])  # fmt: skip
    f1 = [h["val_macro_f1"] for h in run.history]
    assert run.best_epoch == int(np.argmax(f1))  # highest, first of equals
    with pytest.raises(lossbench.errors.ConfigError, match="val_accuracy.*regression"):
        lossbench.train(overrides=[*TINY, "data=diabetes", "loss=mse",
                                   "trainer.early_stopping.monitor=val_accuracy"])  # fmt: skip


def _validation_outputs(run):
    return run.predict(run.dataset.X_val).astype(np.float64)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "huber"])
def test_classification_metrics_match_scikit_learn_whatever_the_loss(loss):
    run = lossbench.train(overrides=[*TINY, "data=wine", f"loss={loss}", "trainer.epochs=2",
                                     "trainer.keep_weights=last"])  # fmt: skip
    pred = _validation_outputs(run).argmax(axis=1)
    true = run.dataset.labels_val
    last = run.history[-1]
    assert last["val_accuracy"] == pytest.approx(np.mean(pred == true), abs=1e-12)
    assert last["val_macro_f1"] == pytest.approx(f1_score(true, pred, average="macro"), abs=1e-12)


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
def test_regression_metrics_are_in_the_targets_units_whatever_the_loss(loss, standardize):
    over = [*TINY, "data=diabetes", f"loss={loss}", "trainer.epochs=3", "trainer.dtype=float64",
            "trainer.keep_weights=last", f"data.standardize_target={str(standardize).lower()}"]
    run = lossbench.train(overrides=over)
    prep = run.dataset
    pred = _validation_outputs(run)[:, 0]
    y = prep.Y_val[:, 0]
    if standardize:  # back to the original units
        pred = pred * prep.target_scale[0] + prep.target_mean[0]
        y = y * prep.target_scale[0] + prep.target_mean[0]
        assert abs(prep.Y_train.mean()) < 1e-9 and prep.Y_train.std() == pytest.approx(1.0)
    assert y.mean() > 100  # diabetes progression scores, in their own units
    last = run.history[-1]
    assert last["val_mse"] == pytest.approx(mean_squared_error(y, pred), rel=1e-9)
    assert last["val_mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-9)
    assert last["val_r2"] == pytest.approx(r2_score(y, pred), rel=1e-9)
    # the MLflow model's prediction from raw rows is in the target's units too
    predictor = Predictor.from_run(run)
    raw = prep.X_val * prep.scale + prep.mean
    values = predictor.predict(raw, run.specs["model"].reference_forward)["values"][:, 0]
    np.testing.assert_allclose(values, pred, rtol=1e-9)


def test_the_data_seed_makes_the_split_and_the_training_seed_the_rest():
    # lr 1e-300: the weights stay as initialised, so they show the initialisation
    frozen = [*TINY, "data=moons", "trainer.epochs=1", "optimizer=sgd", "optimizer.lr=1e-300"]
    a = lossbench.train(overrides=frozen)
    b = lossbench.train(overrides=[*frozen, "seed=7"])
    c = lossbench.train(overrides=[*frozen, "data_seed=7"])
    assert a.dataset.digests == b.dataset.digests  # same generated data, same split
    assert not np.array_equal(a.flat_params, b.flat_params)  # another initialisation
    assert a.dataset.digests["training"] != c.dataset.digests["training"]  # other data
    np.testing.assert_array_equal(a.flat_params, c.flat_params)  # the same initialisation
    d = lossbench.train(overrides=[*TINY, "data=iris", "trainer.epochs=1", "data_seed=3"])
    e = lossbench.train(overrides=[*TINY, "data=iris", "trainer.epochs=1", "data_seed=3",
                                   "seed=9"])  # fmt: skip
    assert d.dataset.digests == e.dataset.digests  # bundled data: data_seed is the split
