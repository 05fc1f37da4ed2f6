"""The fused epoch against the NumPy reference epoch and against an independent naive epoch
written here, and whole runs through lossbench.train."""

import math

import numpy as np
import pytest

import lossbench
from conftest import TINY
from lossbench.builtin.losses import LOSSES
from lossbench.builtin.models import MODELS
from lossbench.builtin.optimizers import OPTIMIZERS
from lossbench.errors import ConfigError
from lossbench.kernels import kernel_ref
from lossbench.training import evaluate, train_epoch
from lossbench.training.fused import KERNEL_ORDER, scratch
from lossbench.training.slow import reference_epoch

LOSS = {s.name: s for s in LOSSES}
OPT = {s.name: s for s in OPTIMIZERS}
MLP = MODELS[0]


def epoch_inputs(loss, rng, n=53, d=5, c=3, dtype=np.float64):
    X = rng.normal(size=(n, d)).astype(dtype)
    labels = rng.integers(0, c, size=n)
    if loss.target == "class_index":
        Y, n_out = labels[:, None].astype(dtype), c
    elif loss.target == "binary":
        labels = labels % 2
        Y, n_out = labels[:, None].astype(dtype), 1
    else:
        Y, n_out = np.eye(c, dtype=dtype)[labels], c
    return X, Y, labels.astype(np.int64), n_out


@pytest.mark.parametrize("loss_name", list(LOSS))
@pytest.mark.parametrize("opt_name", list(OPT))
def test_fused_epoch_matches_numpy_reference(loss_name, opt_name, rng):
    loss, opt = LOSS[loss_name], OPT[opt_name]
    X, Y, labels, n_out = epoch_inputs(loss, rng)
    ml = MLP.build(MLP.options(hidden=[7, 4], activation="tanh"), X.shape[1], n_out)
    params = np.empty(ml.n_params)
    ml.init(rng, params)
    hp_opt = opt.options()
    state = np.zeros((opt.state_rows, ml.n_params))
    if opt.init_state:
        opt.init_state(state, hp_opt)
    model_hp = ml.kernel_hp(training=True)
    loss_hp = np.asarray(loss.pack(loss.options()), float)
    opt_hp = np.asarray(opt.pack(hp_opt), float)
    p_ref, s_ref = params.copy(), state.copy()
    batch = 8  # 53 rows: six full batches and a partial one
    k = {
        r: kernel_ref(f, r, "float64", owner="test")
        for r, f in (
            ("forward", MLP.forward),
            ("backward", MLP.backward),
            ("loss", loss.kernel),
            ("optimizer", opt.kernel),
        )
    }
    t = t_ref = 0
    for epoch in range(3):
        order = rng.permutation(len(X)).astype(np.int64)
        lr = 0.01 * (epoch + 1)
        total, seen, correct, t = train_epoch(
            *[k[r] for r in KERNEL_ORDER],
            (params, ml.layout, model_hp),
            loss_hp,
            (np.empty(ml.n_params), state, np.zeros(opt.scalar_slots), opt_hp,
             np.array([[0, ml.n_params, 0, len(opt_hp)]], dtype=np.int64)),  # one segment
            (X, Y, labels),
            scratch(batch, X.shape[1], Y.shape[1], n_out, ml.workspace(batch), np.float64),
            order,
            batch,
            np.zeros(2, np.int64),  # no kernel raised
            t,
            lr,
        )
        r_total, r_seen, t_ref = reference_epoch(
            MLP,
            loss,
            opt,
            p_ref,
            ml.layout,
            model_hp,
            loss_hp,
            opt_hp,
            s_ref,
            np.zeros(opt.scalar_slots),
            X,
            Y,
            order,
            batch,
            t_ref,
            lr,
        )
        assert seen == r_seen == len(X) and t == t_ref
        assert total / seen == pytest.approx(r_total / r_seen, rel=1e-10)
        np.testing.assert_allclose(params, p_ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(state, s_ref, rtol=1e-9, atol=1e-12)
        assert 0 <= correct <= seen
    # validation pass agrees with the reference loss on the whole set, and counts the confusion
    # matrix of the common metrics (filled with garbage first: evaluate zeroes it)
    out = np.empty((len(X), n_out))
    confusion = np.full((max(n_out, 2), max(n_out, 2)), 7, dtype=np.int64)
    v_total, v_correct = evaluate(
        k["forward"],
        k["loss"],
        (params, ml.layout, model_hp),
        loss_hp,
        (X, Y, labels),
        1000,
        (np.empty(ml.workspace(len(X))), out, np.empty_like(out)),
        (confusion, np.empty(0), np.empty(0), np.empty(0)),
        np.zeros(2, np.int64),
    )
    ref_out = MLP.reference_forward(params, ml.layout, model_hp, X)
    assert v_total / len(X) == pytest.approx(loss.reference(ref_out, Y, loss_hp)[0], rel=1e-10)
    pred = (ref_out[:, 0] > 0).astype(int) if n_out == 1 else ref_out.argmax(axis=1)
    assert v_correct == int(np.sum(pred == labels))
    expected = np.zeros_like(confusion)
    np.add.at(expected, (labels, pred), 1)  # rows: true class, columns: predicted
    np.testing.assert_array_equal(confusion, expected)


# ---------------------------------------------------------------------------------------------
# An independent reference written here, deliberately naive: plain NumPy on per-tensor arrays
# (W0, b0, ...), none of lossbench's reference code, so that a mistake shared by the fused epoch
# and lossbench's slow path (lossbench.training.slow) cannot pass.

NAIVE_ACT = {  # activation, and its derivative from z and a = act(z)
    "tanh": (np.tanh, lambda z, a: 1.0 - a * a),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z, a: (z > 0).astype(z.dtype)),
}


def naive_layers(tensors):
    """[(W0, b0), (W1, b1), ...] from a dict of named tensors."""
    return [(tensors[f"W{l}"], tensors[f"b{l}"]) for l in range(len(tensors) // 2)]


def naive_forward(tensors, x, activation):
    """Output of the MLP, and each layer's input and each hidden layer's pre-activation."""
    act = NAIVE_ACT[activation][0]
    layers = naive_layers(tensors)
    inputs, zs, a = [], [], x
    for l, (W, b) in enumerate(layers):
        inputs.append(a)
        z = a @ W + b
        if l == len(layers) - 1:
            return z, inputs, zs
        zs.append(z)
        a = act(z)


def naive_backward(tensors, inputs, zs, dout, activation):
    """d loss / d tensors by the chain rule, from the loss gradient ``dout`` of the output."""
    act_grad = NAIVE_ACT[activation][1]
    layers = naive_layers(tensors)
    grads, dz = {}, dout
    for l in range(len(layers) - 1, -1, -1):
        grads[f"W{l}"] = inputs[l].T @ dz
        grads[f"b{l}"] = dz.sum(axis=0)
        if l > 0:
            dz = (dz @ layers[l][0].T) * act_grad(zs[l - 1], inputs[l])
    return grads


def naive_loss(name, out, Y):
    """Batch-mean loss and its gradient with respect to ``out`` (torch's definitions)."""
    if name == "cross_entropy":  # Y: class index column
        k = Y[:, 0].astype(int)
        shifted = out - out.max(axis=1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        rows = np.arange(len(out))
        grad = np.exp(log_softmax)
        grad[rows, k] -= 1.0
        return -log_softmax[rows, k].mean(), grad / len(out)
    if name == "mse":
        d = out - Y
        return (d * d).mean(), 2.0 * d / d.size
    if name == "bce":  # logits, 0/1 targets
        loss = np.maximum(out, 0) - out * Y + np.log1p(np.exp(-np.abs(out)))
        return loss.mean(), (1.0 / (1.0 + np.exp(-out)) - Y) / out.size
    raise AssertionError(f"no naive loss {name!r}")


def naive_correct(out, labels):
    """Rows whose prediction is their label: the first largest output, or logit > 0 for one
    output column; counted row by row."""
    correct = 0
    for row, label in zip(out, labels, strict=True):
        if len(row) == 1:
            pred = 1 if row[0] > 0 else 0
        else:
            pred = 0
            for j in range(1, len(row)):
                if row[j] > row[pred]:
                    pred = j
        correct += int(pred == label)
    return correct


class NaiveSGD:
    """torch.optim.SGD, tensor by tensor; ``state`` names the buffers as lossbench's rows."""

    def __init__(self, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        self.mu, self.tau, self.nesterov, self.wd = momentum, dampening, nesterov, weight_decay
        self.buf = {}

    def step(self, tensors, grads, t, lr):
        for name, p in tensors.items():
            g = grads[name] + self.wd * p
            if self.mu:
                if name not in self.buf:  # torch: the first step starts the buffer
                    self.buf[name] = g.copy()
                else:
                    self.buf[name] = self.mu * self.buf[name] + (1 - self.tau) * g
                g = g + self.mu * self.buf[name] if self.nesterov else self.buf[name]
            tensors[name] = p - lr * g

    def state(self):
        return [self.buf] if self.mu else []  # without momentum the buffer row is unused


class NaiveAdam:
    """torch.optim.Adam with L2 weight decay, tensor by tensor."""

    def __init__(self, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        self.b1, self.b2, self.eps, self.wd = beta1, beta2, eps, weight_decay
        self.m, self.v = {}, {}

    def step(self, tensors, grads, t, lr):
        for name, p in tensors.items():
            g = grads[name] + self.wd * p
            m = self.b1 * self.m.get(name, 0.0) + (1 - self.b1) * g
            v = self.b2 * self.v.get(name, 0.0) + (1 - self.b2) * g * g
            self.m[name], self.v[name] = m, v
            m_hat, v_hat = m / (1 - self.b1**t), v / (1 - self.b2**t)
            tensors[name] = p - lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def state(self):
        return [self.m, self.v]


NAIVE_OPT = {"sgd": NaiveSGD, "adam": NaiveAdam}


def naive_epoch(tensors, opt, loss_name, activation, X, Y, labels, order, batch_size, t, lr):
    """One epoch, minibatch by minibatch in ``order``: (loss sum weighted by batch size,
    samples seen, correct predictions before each step, step count)."""
    total, seen, correct = 0.0, 0, 0
    for start in range(0, len(order), batch_size):
        rows = [order[i] for i in range(start, min(start + batch_size, len(order)))]
        xb = np.array([X[r] for r in rows])
        yb = np.array([Y[r] for r in rows])
        out, inputs, zs = naive_forward(tensors, xb, activation)
        value, dout = naive_loss(loss_name, out, yb)
        total += value * len(rows)
        seen += len(rows)
        correct += naive_correct(out, [labels[r] for r in rows])
        grads = naive_backward(tensors, inputs, zs, dout, activation)
        t += 1
        opt.step(tensors, grads, t, lr)
    return total, seen, correct, t


def fused_epoch_fn(loss, opt, layout, n_out, batch, n_in, n_targets):
    """``epoch(params, state, opt_hp, X, Y, labels, order, t, lr)``: the fused train_epoch with
    the built-in kernels and fresh buffers."""
    k = [
        kernel_ref(f, r, "float64", owner="test")
        for r, f in (
            ("forward", MLP.forward),
            ("backward", MLP.backward),
            ("loss", loss.kernel),
            ("optimizer", opt.kernel),
        )
    ]
    model_hp = layout.kernel_hp(training=True)
    loss_hp = np.asarray(loss.pack(loss.options()), float)

    def epoch(params, state, opt_hp, X, Y, labels, order, t, lr):
        return train_epoch(
            *k,
            (params, layout.layout, model_hp),
            loss_hp,
            (np.empty(layout.n_params), state, np.zeros(opt.scalar_slots), opt_hp,
             np.array([[0, layout.n_params, 0, len(opt_hp)]], dtype=np.int64)),  # one segment
            (X, Y, labels),
            scratch(batch, n_in, n_targets, n_out, layout.workspace(batch), np.float64),
            order,
            batch,
            np.zeros(2, np.int64),
            t,
            lr,
        )

    return epoch


NAIVE_PAIRS = [
    pytest.param("cross_entropy", "adam", {"weight_decay": 0.01}, "tanh", id="cross_entropy-adam"),
    pytest.param(
        "mse", "sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.05}, "relu",
        id="mse-sgd_nesterov_wd",
    ),
    pytest.param("bce", "sgd", {"momentum": 0.5, "dampening": 0.2}, "tanh", id="bce-sgd_dampening"),
    pytest.param("cross_entropy", "sgd", {}, "relu", id="cross_entropy-sgd"),
]  # fmt: skip


@pytest.mark.parametrize("loss_name,opt_name,opt_options,activation", NAIVE_PAIRS)
def test_fused_epoch_matches_an_independent_naive_epoch(
    loss_name, opt_name, opt_options, activation, rng
):
    loss, opt = LOSS[loss_name], OPT[opt_name]
    X, Y, labels, n_out = epoch_inputs(loss, rng)
    ml = MLP.build(MLP.options(hidden=[6, 4], activation=activation), X.shape[1], n_out)
    params = np.empty(ml.n_params)
    ml.init(rng, params)
    hp = opt.options(**opt_options)
    state = np.zeros((opt.state_rows, ml.n_params))
    opt_hp = np.asarray(opt.pack(hp), float)
    tensors = {name: v.copy() for name, v in ml.views(params).items()}
    naive_opt = NAIVE_OPT[opt_name](**opt_options)
    batch = 8  # 53 rows: six full batches and a partial one
    epoch = fused_epoch_fn(loss, opt, ml, n_out, batch, X.shape[1], Y.shape[1])
    t = t_naive = 0
    for e in range(3):
        order = rng.permutation(len(X)).astype(np.int64)
        lr = hp.lr * (3 - e)
        total, seen, correct, t = epoch(params, state, opt_hp, X, Y, labels, order, t, lr)
        n_total, n_seen, n_correct, t_naive = naive_epoch(
            tensors, naive_opt, loss_name, activation, X, Y, labels, order, batch, t_naive, lr
        )
        assert (seen, correct, t) == (n_seen, n_correct, t_naive), (
            f"epoch {e}: fused (seen, correct, steps) = {(seen, correct, t)}, "
            f"naive {(n_seen, n_correct, t_naive)}"
        )
        assert total == pytest.approx(n_total, rel=1e-10), f"epoch {e}: train loss sum"
        for name, v in ml.views(params).items():
            np.testing.assert_allclose(v, tensors[name], rtol=1e-9, atol=1e-12, err_msg=name)
        for row, naive_row in zip(state, naive_opt.state(), strict=False):
            for name, v in ml.views(row).items():
                np.testing.assert_allclose(
                    v, naive_row[name], rtol=1e-9, atol=1e-12, err_msg=f"state of {name}"
                )
    assert t == 3 * 7


@pytest.mark.parametrize("outputs", ["random", "ties"])
@pytest.mark.parametrize("loss_name", list(LOSS))
def test_fused_epoch_counts_correct_predictions(loss_name, outputs, rng):
    # lr = 0: the weights stay put, so every row's prediction is known before the epoch
    loss, opt = LOSS[loss_name], OPT["sgd"]
    X, Y, labels, n_out = epoch_inputs(loss, rng)
    ml = MLP.build(MLP.options(hidden=[6], activation="tanh"), X.shape[1], n_out)
    params = np.empty(ml.n_params)
    ml.init(rng, params)
    if outputs == "ties":  # every output equal (0 for one column): the first class wins
        ml.views(params)["W1"][...] = 0.0
        ml.views(params)["b1"][...] = 0.0
    tensors = {name: v.copy() for name, v in ml.views(params).items()}
    out, _, _ = naive_forward(tensors, X, "tanh")
    order = rng.permutation(len(X)).astype(np.int64)
    expected = naive_correct(out[order], labels[order])
    assert 0 < expected < len(X)  # a count that a wrong rule or a wrong label would change
    batch = 8
    epoch = fused_epoch_fn(loss, opt, ml, n_out, batch, X.shape[1], Y.shape[1])
    state = np.zeros((opt.state_rows, ml.n_params))
    opt_hp = np.asarray(opt.pack(opt.options()), float)
    total, seen, correct, t = epoch(params, state, opt_hp, X, Y, labels, order, 0, 0.0)
    assert (seen, t) == (len(X), 7)
    assert correct == expected, f"fused epoch counted {correct} correct predictions, not {expected}"


def history_without_times(run):
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in run.history]


def test_default_run_learns_digits(pm):
    run = lossbench.train(overrides=["trainer.progress=false", "tracking=none"])
    assert run.status == "finished"
    assert run.config.data.name == "digits" and run.config.loss.name == "cross_entropy"
    assert run.config.optimizer.name == "adam" and run.config.model.name == "mlp"
    assert run.history[-1]["val_accuracy"] >= 0.95
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]


def test_same_seed_same_bits_other_seed_other_bits(pm):
    args = [*TINY, "data=moons", "trainer.dtype=float64"]
    a = lossbench.train(overrides=args)
    b = lossbench.train(overrides=args)
    c = lossbench.train(overrides=[*args, "seed=1"])
    assert history_without_times(a) == history_without_times(b)
    assert a.flat_params.tobytes() == b.flat_params.tobytes()
    assert history_without_times(a) != history_without_times(c)


@pytest.mark.parametrize("loss", ["mse", "mae", "huber", "cross_entropy"])
def test_every_loss_trains_on_the_same_classification_data(pm, loss):
    run = lossbench.train(
        overrides=[
            "trainer.progress=false",
            "tracking=none",
            "trainer.epochs=15",
            "data=iris",
            f"loss={loss}",
            "optimizer.lr=0.01",
        ]
    )
    assert run.status == "finished"
    assert run.history[-1]["val_accuracy"] > 0.8
    assert run.dataset.n_outputs == 3


def test_bce_trains_on_two_classes(pm):
    run = lossbench.train(overrides=[*TINY, "data=breast_cancer", "loss=bce"])
    assert run.dataset.n_outputs == 1
    assert run.history[-1]["val_accuracy"] > 0.85


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
def test_regression_losses(pm, loss):
    run = lossbench.train(
        overrides=[
            *TINY,
            "data=regression",
            f"loss={loss}",
            "model=linear",
            "optimizer.lr=0.1",
            "trainer.epochs=20",
        ]
    )
    assert "val_accuracy" not in run.history[-1]
    assert run.history[-1]["val_loss"] < run.history[0]["val_loss"] / 2


def test_train_loss_is_the_sample_weighted_mean_of_batch_losses(pm):
    # batch 100 on 160 training rows: batches of 100 and 60; the epoch's train_loss is
    # (100 l1 + 60 l2) / 160. Recompute it from the same initial weights with the references.
    run = lossbench.train(
        overrides=[
            "trainer.progress=false",
            "tracking=none",
            "trainer.epochs=1",
            "data=iris",
            "data.val_fraction=0.2",
            "trainer.batch_size=100",
            "trainer.shuffle=false",
            "trainer.dtype=float64",
            "optimizer=sgd",
            "optimizer.lr=1e-300",
        ]
    )
    prep, ml, loss = run.dataset, run.layout, run.specs["loss"]
    assert len(prep.X_train) == 120
    batches = [(0, 100), (100, 120)]
    hp = ml.kernel_hp()
    losses = [
        loss.reference(
            MLP.reference_forward(run.flat_params, ml.layout, hp, prep.X_train[a:b]),
            prep.Y_train[a:b],
            np.zeros(1),
        )[0]
        for a, b in batches
    ]
    expected = (100 * losses[0] + 20 * losses[1]) / 120
    assert run.history[0]["train_loss"] == pytest.approx(expected, rel=1e-9)


VALIDATION_RUNS = [  # (dataset, loss, model overrides, activation of the hidden layers)
    pytest.param("iris", "cross_entropy", ["model.hidden=[8,5]", "model.activation=tanh"], "tanh",
                 id="iris-cross_entropy-mlp"),
    pytest.param("breast_cancer", "bce", ["model.hidden=[6]"], "relu",
                 id="breast_cancer-bce-mlp"),
    pytest.param("regression", "mse", ["model=linear"], "relu", id="regression-mse-linear"),
]  # fmt: skip


@pytest.mark.parametrize("data,loss,model,activation", VALIDATION_RUNS)
def test_validation_metrics_are_those_of_the_saved_weights_on_the_validation_set(
    pm, tmp_path, data, loss, model, activation
):
    # recomputed here from model.npz with the naive forward and losses above, on X_val/Y_val
    run = lossbench.train(
        overrides=[
            *TINY, f"data={data}", f"loss={loss}", *model, "trainer.dtype=float64",
            "trainer.batch_size=16", "optimizer.lr=0.01", "trainer.plots=false",
        ],
        output_dir=tmp_path,
    )  # fmt: skip
    assert run.status == "finished"
    with np.load(tmp_path / "model.npz") as f:
        saved = {k: f[k] for k in f.files}
    assert set(saved) == set(run.params)
    for name, value in run.params.items():
        np.testing.assert_array_equal(saved[name], value, err_msg=f"model.npz {name}")
    prep, last = run.dataset, run.history[-1]
    out, _, _ = naive_forward(saved, prep.X_val, activation)
    val_loss, _ = naive_loss(loss, out, prep.Y_val)
    train_out, _, _ = naive_forward(saved, prep.X_train, activation)  # a different number
    assert naive_loss(loss, train_out, prep.Y_train)[0] != pytest.approx(val_loss, rel=1e-6)
    assert last["val_loss"] == pytest.approx(val_loss, rel=1e-10), (
        f"val_loss {last['val_loss']!r} is not the loss of the final weights on the validation "
        f"set ({val_loss!r})"
    )
    if prep.task == "classification":
        labels = prep.Y_val[:, 0].astype(int)  # class index (cross_entropy) or 0/1 (bce)
        accuracy = naive_correct(out, labels) / len(labels)
        assert last["val_accuracy"] == accuracy, (
            f"val_accuracy {last['val_accuracy']!r} is not the accuracy of the final weights "
            f"on the validation set ({accuracy!r})"
        )
    else:
        assert "val_accuracy" not in last


def test_divergence_stops_the_run_with_a_status(pm):
    run = lossbench.train(
        overrides=[
            *TINY,
            "trainer.epochs=30",
            "data=regression",
            "loss=mse",
            "optimizer=sgd",
            "optimizer.lr=1e6",
        ]
    )
    assert run.status == "diverged"
    assert len(run.history) < 30
    assert not math.isfinite(run.history[-1]["train_loss"])
    assert "non-finite" in run.error and "optimizer.lr" in run.error


def test_lr_schedules_reach_the_history(pm):
    run = lossbench.train(
        overrides=[
            *TINY,
            "data=iris",
            "trainer.epochs=6",
            "schedule=step",
            "schedule.step_size=2",
            "schedule.gamma=0.5",
            "optimizer.lr=0.1",
        ]
    )
    assert [h["lr"] for h in run.history] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_early_stopping(pm):
    run = lossbench.train(
        overrides=[
            *TINY,
            "data=iris",
            "trainer.epochs=200",
            "optimizer.lr=0.05",
            "trainer.early_stopping.enabled=true",
            "trainer.early_stopping.patience=3",
        ]
    )
    assert run.status == "stopped" and len(run.history) < 200
    assert "early stopping" in run.stop_reason
    best = run.best_epoch
    assert len(run.history) - 1 - best >= 3


def test_outputs_and_init_from(pm, tmp_path):
    a = lossbench.train(
        overrides=[*TINY, "data=wine", "trainer.dtype=float64"], output_dir=tmp_path / "a"
    )
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert files == {"history.csv", "model.npz", "loss_curve.png", "summary.json"}
    header = (tmp_path / "a" / "history.csv").read_text().splitlines()[0]
    assert header == (
        "epoch,train_loss,val_loss,train_accuracy,val_accuracy,val_macro_f1,lr,epoch_seconds"
    )
    with np.load(tmp_path / "a" / "model.npz") as f:
        assert sorted(f.files) == ["W0", "W1", "b0", "b1"]
        assert f["W0"].shape == (13, 64)
    b = lossbench.train(
        overrides=[
            *TINY,
            "data=wine",
            "trainer.dtype=float64",
            "trainer.epochs=1",
            "optimizer=sgd",
            "optimizer.lr=1e-300",
            f"model.init_from={tmp_path / 'a' / 'model.npz'}",
        ]
    )
    np.testing.assert_array_equal(b.flat_params, a.flat_params)


def test_init_from_with_wrong_shapes_is_a_clear_error(pm, tmp_path):
    np.savez(
        tmp_path / "w.npz", W0=np.zeros((3, 3)), b0=np.zeros(3), W1=np.zeros((3, 3)), b1=np.zeros(3)
    )
    with pytest.raises(ConfigError, match=r"wrong shapes \(W0: file \(3, 3\), model \(4, 64\)"):
        lossbench.train(overrides=[*TINY, "data=iris", f"model.init_from={tmp_path}/w.npz"])
    np.savez(tmp_path / "k.npz", weights=np.zeros(3))
    with pytest.raises(ConfigError, match=r"holds \['weights'\], but this model needs"):
        lossbench.train(overrides=[*TINY, "data=iris", f"model.init_from={tmp_path}/k.npz"])
