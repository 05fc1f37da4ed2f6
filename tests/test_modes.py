"""Models with modes and parameter groups: the per-step random stream, the MLP's dropout (held to
torch.nn.Dropout's values stored in tests/data/torch_reference.json), training and evaluation
modes in runs and predictions, and parameter groups held to torch.optim's param groups."""

import json
from pathlib import Path

import numpy as np
import pytest
from numba import njit

import lossbench
from lossbench.builtin.losses import LOSSES
from lossbench.builtin.models import MODELS, build_mlp_layout, mlp_backward, mlp_forward
from lossbench.builtin.optimizers import OPTIMIZERS
from lossbench.errors import ConfigError, PluginError
from lossbench.kernels import kernel_ref
from lossbench.specs import ModelLayout, ParamGroup
from lossbench.streams import stream_key, stream_key_np, uniform, uniform_np
from lossbench.training.fused import KERNEL_ORDER, scratch, train_epoch
from lossbench.training.groups import make_segments
from lossbench.training.predict import Predictor
from lossbench.training.slow import PythonParts, python_epoch

DATA = json.loads((Path(__file__).parent / "data" / "torch_reference.json").read_text())
MLP = {s.name: s for s in MODELS}["mlp"]
OPT = {s.name: s for s in OPTIMIZERS}
BASE = ["tracking=none", "trainer.progress=false", "data=iris", "trainer.epochs=3"]


@njit(cache=True)
def _draw(seed, step, n):
    key = stream_key(seed, step)
    out = np.empty(n)
    for i in range(n):
        out[i] = uniform(key, i)
    return out


def test_stream_is_the_same_in_numba_and_numpy_and_depends_on_seed_and_step():
    a = _draw(12345.0, 7.0, 50_000)
    assert np.array_equal(a, uniform_np(stream_key_np(12345.0, 7.0), np.arange(50_000)))
    assert stream_key(12345.0, 7.0) == stream_key_np(12345.0, 7.0)
    assert 0.0 <= a.min() and a.max() < 1.0 and abs(a.mean() - 0.5) < 0.005
    for other in (_draw(12345.0, 8.0, 1000), _draw(12346.0, 7.0, 1000)):
        assert np.mean(other == a[:1000]) < 0.01  # another step or seed: another stream


def _identity_mlp(width, p, dtype):
    """A width-width-width relu MLP whose weights are identities: out = dropout(relu(x))."""
    layout = build_mlp_layout([width, width, width], "relu", p)
    params = np.zeros(layout.n_params, dtype=dtype)
    views = layout.views(params)
    views["W0"][...] = np.eye(width)
    views["W1"][...] = np.eye(width)
    return layout, params


def _forward(layout, params, x, hp):
    out = np.empty((len(x), int(layout.layout[-1, 1])), dtype=x.dtype)
    mlp_forward(params, layout.layout, hp, x, np.empty(layout.workspace(len(x)), x.dtype), out)
    return out


@pytest.mark.parametrize(
    "case", DATA["dropout"]["cases"], ids=lambda c: f"{c['dtype']}-{c['p']:.3g}"
)
def test_dropout_scales_kept_units_as_torch_and_drops_the_fraction_p(case):
    dtype, p = np.dtype(case["dtype"]), case["p"]
    layout, params = _identity_mlp(8, p, dtype)
    x = np.abs(np.tile(np.asarray(DATA["dropout"]["x"], dtype=dtype), (2000, 1)))
    out = _forward(layout, params, x, layout.kernel_hp(training=True, seed=11, step=3))
    kept = out != 0
    # torch's kept value of 1.0 is its 1 / (1 - p) in this dtype; kept units are x times it
    scale = dtype.type(case["kept_value"])
    assert np.array_equal(out[kept], x[kept] * scale)
    torch_out = np.asarray(case["out"], dtype=dtype)
    torch_x = np.asarray(DATA["dropout"]["x"], dtype=dtype)
    assert np.array_equal(torch_out[torch_out != 0], (torch_x * scale)[torch_out != 0])
    # the fraction dropped is p (binomial over 16,000 units: within 5 standard deviations)
    dropped = 1.0 - kept.mean()
    assert abs(dropped - p) < 5 * np.sqrt(p * (1 - p) / kept.size), dropped
    # reproducible bit for bit with the same (seed, step); another step draws another mask
    again = _forward(layout, params, x, layout.kernel_hp(training=True, seed=11, step=3))
    assert np.array_equal(out, again)
    other = _forward(layout, params, x, layout.kernel_hp(training=True, seed=11, step=4))
    assert not np.array_equal(other != 0, kept)


def test_dropout_is_off_in_evaluation_mode_and_p_one_gives_zeros():
    layout, params = _identity_mlp(8, 0.5, np.float64)
    x = np.abs(np.random.default_rng(0).normal(size=(64, 8)))
    assert np.array_equal(_forward(layout, params, x, layout.kernel_hp(training=False)), x)
    ones, params1 = _identity_mlp(8, 1.0, np.float64)
    assert not _forward(ones, params1, x, ones.kernel_hp(training=True, seed=1, step=1)).any()


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu", "leaky_relu"])
def test_dropout_backward_draws_the_mask_forward_drew(activation):
    rng = np.random.default_rng(3)
    layout = build_mlp_layout([4, 6, 5, 3], activation, 0.4)
    params = np.empty(layout.n_params)
    layout.init(rng, params)
    x, dout = rng.normal(size=(9, 4)), rng.normal(size=(9, 3))
    hp = layout.kernel_hp(training=True, seed=5, step=2)
    work, out = np.empty(layout.workspace(9)), np.empty((9, 3))
    mlp_forward(params, layout.layout, hp, x, work, out)
    grads = np.empty_like(params)
    mlp_backward(params, layout.layout, hp, x, work, dout, grads)
    eps, numeric = 1e-6, np.empty_like(params)
    for i in range(len(params)):  # the mask is fixed by (seed, step): forward is differentiable
        up, down = params.copy(), params.copy()
        up[i] += eps
        down[i] -= eps
        numeric[i] = np.sum((_forward(layout, up, x, hp) - _forward(layout, down, x, hp)) * dout)
    np.testing.assert_allclose(grads, numeric / (2 * eps), rtol=1e-5, atol=1e-7)


def test_bad_dropout_is_refused_naming_the_value_and_the_fix():
    for p, words in ((1.5, "in [0, 1]"), (-0.1, "in [0, 1]")):
        with pytest.raises(ConfigError, match="Fix:") as e:
            MLP.build(MLP.options(dropout=p), 4, 3)
        assert f"model.dropout={p}" in str(e.value) and words in str(e.value)
    with pytest.raises(ConfigError, match="needs a hidden layer"):
        MLP.build(MLP.options(hidden=[], dropout=0.2), 4, 3)


def _run(*overrides):
    return lossbench.train(overrides=[*BASE, *overrides])


def test_dropout_runs_are_reproducible_bit_for_bit_and_differ_with_another_seed():
    a, b = _run("model.dropout=0.3", "seed=4"), _run("model.dropout=0.3", "seed=4")
    assert np.array_equal(a.flat_params, b.flat_params)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    c = _run("model.dropout=0.3", "seed=5")
    assert not np.array_equal(a.flat_params, c.flat_params)
    off = _run("model.dropout=0.0", "seed=4")
    # dropout changes training, not the initial weights: the first loss differs only by it
    assert a.history[0]["train_loss"] != off.history[0]["train_loss"]


def test_evaluation_and_prediction_run_without_dropout(tmp_path):
    run = _run("model.dropout=0.5", "model.hidden=[16]")
    X = run.dataset.X_val
    plain = build_mlp_layout([X.shape[1], 16, run.dataset.n_outputs], "relu")  # no dropout
    expected = _forward(plain, run.flat_params, np.ascontiguousarray(X), plain.kernel_hp())
    assert np.array_equal(run.predict(X), expected)
    predictor = Predictor.from_run(run)
    assert predictor.hp[-3] == 0.0  # the saved model predicts in evaluation mode
    outputs = predictor.outputs(X * run.dataset.scale + run.dataset.mean, MLP.reference_forward)
    np.testing.assert_allclose(outputs, expected, rtol=1e-9, atol=1e-12)
    # saved and loaded, as the MLflow model is; a model saved before the context existed
    # (hp without it) predicts the same, in evaluation mode
    folder = predictor.save(tmp_path / "model")
    loaded = Predictor.load(folder)
    raw = X * run.dataset.scale + run.dataset.mean
    assert np.array_equal(loaded.outputs(raw, MLP.reference_forward), outputs)
    loaded.hp = loaded.hp[:-3]
    assert np.array_equal(loaded.outputs(raw, MLP.reference_forward), outputs)
    # the validation loss is the evaluation-mode loss of the weights
    loss = run.specs["loss"]
    loss_hp = np.asarray(loss.pack(run.options["loss"]), dtype=np.float64)
    value = loss.reference(expected, run.dataset.Y_val, loss_hp)[0]
    assert value == pytest.approx(run.history[-1]["val_loss"], rel=1e-9)


def _group_case(case):
    data = DATA["param_groups"]
    widths = data["widths"]
    layout = build_mlp_layout(widths, "relu", decay_biases=False)
    params = np.zeros(layout.n_params)
    for name, view in layout.views(params).items():
        view[...] = np.asarray(data["params"][name])
    x, y = np.asarray(data["x"]), np.asarray(data["target"])
    spec = OPT[case["optimizer"]]
    options = spec.options(**case["options"])
    return layout, params, x, y, spec, options


def _assert_after(layout, params, expected, step):
    for name, view in layout.views(params).items():
        np.testing.assert_allclose(view, np.asarray(expected[name]), rtol=1e-10, atol=1e-12,
                                   err_msg=f"{name} after step {step}")  # fmt: skip


@pytest.mark.parametrize("case", DATA["param_groups"]["cases"], ids=lambda c: c["optimizer"])
def test_no_decay_on_biases_matches_torch_param_groups_fused(case):
    layout, params, x, y, spec, options = _group_case(case)
    seg = make_segments(layout, spec, options, np.float64)
    assert len(seg.bounds) == 4  # W0 | b0 | W1 | b1
    mse = _mse()
    k = {r: kernel_ref(f, r, "float64", owner="test") for r, f in (
        ("forward", MLP.forward), ("backward", MLP.backward), ("loss", mse.kernel),
        ("optimizer", spec.kernel))}  # fmt: skip
    model = (params, layout.layout, layout.kernel_hp(training=True))
    optimizer = (np.empty(layout.n_params), seg.state, seg.scalars, seg.hp, seg.bounds)
    buffers = scratch(len(x), x.shape[1], y.shape[1], y.shape[1], layout.workspace(len(x)),
                      np.float64)  # fmt: skip
    order, t = np.arange(len(x), dtype=np.int64), 0
    for i, expected in enumerate(case["after"]):
        _, _, _, t = train_epoch(*[k[r] for r in KERNEL_ORDER], model, np.zeros(0), optimizer,
                                 (x, y, np.empty(0, np.int64)), buffers, order, len(x),
                                 np.zeros(2, np.int64), t, options.lr)  # fmt: skip
        _assert_after(layout, params, expected, i + 1)


@pytest.mark.parametrize("case", DATA["param_groups"]["cases"], ids=lambda c: c["optimizer"])
def test_no_decay_on_biases_matches_torch_param_groups_on_the_slow_path(case):
    layout, params, x, y, spec, options = _group_case(case)
    seg = make_segments(layout, spec, options, np.float64)
    mse = _mse()
    parts = PythonParts(MLP.reference_forward, MLP.reference_backward, mse.reference,
                        spec.reference)  # fmt: skip
    order, t = np.arange(len(x), dtype=np.int64), 0
    for i, expected in enumerate(case["after"]):
        _, _, _, t = python_epoch(parts, params, layout.layout, layout.kernel_hp(True), np.zeros(0),
                                  seg.hp, seg.state, seg.scalars, x, y, np.empty(0, np.int64),
                                  order, len(x), t, options.lr, seg.bounds)  # fmt: skip
        _assert_after(layout, params, expected, i + 1)


def _mse():
    return {s.name: s for s in LOSSES}["mse"]


def test_decay_biases_false_keeps_biases_out_of_weight_decay_in_a_run():
    """With lr tiny and decay large, a run's weights shrink and its biases stay put."""
    base = [*BASE, "optimizer=sgd", "optimizer.lr=1e-3", "optimizer.weight_decay=100",
            "trainer.epochs=1", "loss=mse"]  # fmt: skip
    init = lossbench.train(overrides=[*base, "optimizer.lr=1e-300"]).params
    off = lossbench.train(overrides=[*base, "model.decay_biases=false"]).params
    on = lossbench.train(overrides=base).params
    for name in init:
        moved_on = np.abs(on[name] - init[name]).max()
        moved_off = np.abs(off[name] - init[name]).max()
        if name.startswith("b"):
            assert moved_off < 0.5 * moved_on  # only the loss's gradient moves them
        else:
            assert moved_off == pytest.approx(moved_on, rel=0.2)


def test_a_model_without_groups_is_one_segment():
    layout = build_mlp_layout([4, 6, 3], "relu")
    seg = make_segments(layout, OPT["adam"], OPT["adam"].options(), np.float64)
    assert seg.bounds.tolist() == [[0, layout.n_params, 0, len(seg.hp)]]
    assert seg.state.shape == (3, layout.n_params)


def _layout_with(groups):
    base = build_mlp_layout([4, 6, 3], "relu")
    return ModelLayout(base.n_params, base.tensors, base.layout, base.hp, base.init,
                       base.workspace, groups=groups)  # fmt: skip


@pytest.mark.parametrize(
    ("group", "words"),
    [
        (ParamGroup(("b9",), {"weight_decay": 0.0}, "nd"), "names tensor 'b9'"),
        (ParamGroup(("b0",), {"lr": 0.0}, "nd"), "overrides lr"),
    ],
)
def test_bad_groups_are_refused_naming_the_tensor_or_key(group, words):
    with pytest.raises(PluginError, match="Fix:") as e:
        make_segments(_layout_with((group,)), OPT["sgd"], OPT["sgd"].options(), np.float64)
    assert words in str(e.value)
    twice = (ParamGroup(("b0",), {}, "a"), ParamGroup(("b0",), {}, "b"))
    with pytest.raises(PluginError, match="in parameter groups a and b"):
        make_segments(_layout_with(twice), OPT["sgd"], OPT["sgd"].options(), np.float64)
