"""Model buffers and the MLP's batch norm: held to torch.nn.BatchNorm1d's values stored in
tests/data/torch_batchnorm.json (benchmarks/make_torch_batchnorm.py) on the fused and the slow
path in both dtypes; the running statistics left alone by every optimizer, weight decay on, and
by evaluation; kept with the best epoch, saved with the model, read by predictions, restored by
lr_find."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import lossbench
from lossbench.builtin.losses import LOSSES
from lossbench.builtin.models import MODELS, build_mlp_layout, mlp_backward, mlp_forward
from lossbench.builtin.optimizers import OPTIMIZERS
from lossbench.config import compose
from lossbench.errors import ConfigError, PluginError
from lossbench.kernels import kernel_ref
from lossbench.plugins import build_plugin_manager
from lossbench.specs import ParamGroup
from lossbench.training.fused import KERNEL_ORDER, fused_runner, scratch, train_epoch
from lossbench.training.groups import make_segments
from lossbench.training.lr_find import LRFindOptions, run_ramp
from lossbench.training.predict import Predictor
from lossbench.training.run import Run
from lossbench.training.setup import resolve, set_up
from lossbench.training.slow import PythonParts, python_epoch, python_parts, slow_runner

DATA = json.loads((Path(__file__).parent / "data" / "torch_batchnorm.json").read_text())
MLP = {s.name: s for s in MODELS}["mlp"]
OPT = {s.name: s for s in OPTIMIZERS}
MSE = {s.name: s for s in LOSSES}["mse"]
BN = ["tracking=none", "trainer.progress=false", "data=iris", "model.batch_norm=true",
      "model.hidden=[16,8]"]  # fmt: skip
RTOL = {"float64": 1e-12, "float32": 2e-6}  # of each tensor's largest |torch value|


def _case(case):
    """The case's layout, its initial parameters and buffers (torch's), data and optimizer."""
    dtype = np.dtype(case["dtype"])
    layout = build_mlp_layout(DATA["widths"], case["activation"], 0.0, case["decay_biases"],
                              True, case["bn_momentum"], case["bn_eps"])  # fmt: skip
    params = np.zeros(layout.n_params, dtype=dtype)
    for name, view in layout.views(params).items():
        view[...] = np.asarray(DATA["params"][name])
    x, y = np.asarray(DATA["x"], dtype), np.asarray(DATA["y"], dtype)
    spec = OPT[case["optimizer"]]
    options = spec.options(**case["options"])
    return layout, params, x, y, spec, options


def _batches():
    """(step, rows) of the two epochs: 20 rows in order, minibatches of 8, 8 and 4."""
    n, batch = len(DATA["x"]), DATA["batch"]
    starts = [s for _ in range(DATA["epochs"]) for s in range(0, n, batch)]
    return [np.arange(s, min(s + batch, n), dtype=np.int64) for s in starts]


def _assert_tensors(layout, params, expected, case, what):
    for name, view in layout.views(params).items():
        want = np.asarray(expected[name])
        scale = max(float(np.max(np.abs(want))), 1e-300)
        np.testing.assert_allclose(view, want, rtol=0, atol=RTOL[case["dtype"]] * scale,
                                   err_msg=f"{name} {what}")  # fmt: skip


def _assert_eval(layout, params, case):
    x = np.asarray(DATA["x_eval"], params.dtype)
    out = np.empty((len(x), DATA["widths"][-1]), params.dtype)
    before = params.copy()
    mlp_forward(params, layout.layout, layout.kernel_hp(training=False), x,
                np.empty(layout.workspace(len(x)), params.dtype), out)  # fmt: skip
    assert np.array_equal(params, before)  # evaluation writes no buffer
    want = np.asarray(case["eval_out"])
    np.testing.assert_allclose(out, want, rtol=0, atol=RTOL[case["dtype"]] * np.abs(want).max())


def _id(case):
    return f"{case['name']}-{case['dtype']}"


@pytest.mark.parametrize("case", DATA["cases"], ids=_id)
def test_batch_norm_trains_as_torch_on_the_fused_path(case):
    layout, params, x, y, spec, options = _case(case)
    dtype = params.dtype
    seg = make_segments(layout, spec, options, dtype)
    k = {r: kernel_ref(f, r, case["dtype"], owner="test") for r, f in (
        ("forward", MLP.forward), ("backward", MLP.backward), ("loss", MSE.kernel),
        ("optimizer", spec.kernel))}  # fmt: skip
    model = (params, layout.layout, layout.kernel_hp(training=True))
    optimizer = (np.zeros(layout.n_params, dtype), seg.state, seg.scalars, seg.hp, seg.bounds)
    buffers = scratch(DATA["batch"], x.shape[1], y.shape[1], y.shape[1],
                      layout.workspace(DATA["batch"]), dtype)  # fmt: skip
    t = 0
    for step, rows in enumerate(_batches()):
        data = (x, y, np.empty(0, np.int64))
        total, seen, _, t = train_epoch(*[k[r] for r in KERNEL_ORDER], model, np.zeros(0),
                                        optimizer, data, buffers, rows, DATA["batch"],
                                        np.zeros(2, np.int64), t, options.lr)  # fmt: skip
        assert total / seen == pytest.approx(case["losses"][step], rel=RTOL[case["dtype"]] * 4)
        _assert_tensors(layout, params, case["after"][step], case, f"after step {step + 1}")
    _assert_eval(layout, params, case)


@pytest.mark.parametrize("references", [False, True], ids=["kernels", "references"])
@pytest.mark.parametrize("case", DATA["cases"], ids=_id)
def test_batch_norm_trains_as_torch_on_the_slow_path(case, references):
    """The slow path calls forward twice per minibatch with the kernels (backward needs its
    workspace): the statistics are still updated once, as torch's."""
    layout, params, x, y, spec, options = _case(case)
    seg = make_segments(layout, spec, options, params.dtype)
    if references:
        parts = PythonParts(MLP.reference_forward, MLP.reference_backward, MSE.reference,
                            spec.reference)  # fmt: skip
    else:
        parts = python_parts({"model": MLP, "loss": MSE, "optimizer": spec}, layout, y.shape[1])
    t, hp = 0, layout.kernel_hp(training=True)
    for step, rows in enumerate(_batches()):
        total, seen, _, t = python_epoch(
            parts, params, layout.layout, hp, np.zeros(0), seg.hp, seg.state, seg.scalars, x, y,
            np.empty(0, np.int64), rows, DATA["batch"], t, options.lr, seg.bounds)  # fmt: skip
        assert total / seen == pytest.approx(case["losses"][step], rel=RTOL[case["dtype"]] * 4)
        _assert_tensors(layout, params, case["after"][step], case, f"after step {step + 1}")
    _assert_eval(layout, params, case)


def test_the_layout_starts_as_torch_and_keeps_the_linear_offsets():
    plain = build_mlp_layout([4, 6, 5, 3], "relu")
    bn = build_mlp_layout([4, 6, 5, 3], "relu", batch_norm=True)
    assert plain.layout.shape == (3, 5) and not plain.buffers and plain.min_batch == 1
    assert np.array_equal(bn.layout[:, :5], plain.layout)  # W, b where they were
    assert bn.buffers == ("running_mean0", "running_var0", "running_mean1", "running_var1")
    assert bn.min_batch == 2 and bn.hp[2:] == [0.1, 1e-5]
    params = np.full(bn.n_params, np.nan)
    bn.init(np.random.default_rng(0), params)
    ref = np.empty(plain.n_params)
    plain.init(np.random.default_rng(0), ref)
    views = bn.views(params)
    for l in (0, 1):  # torch's BatchNorm1d: weight 1, bias 0, running_mean 0, running_var 1
        assert (views[f"gamma{l}"] == 1).all() and (views[f"beta{l}"] == 0).all()
        assert (views[f"running_mean{l}"] == 0).all() and (views[f"running_var{l}"] == 1).all()
    assert np.array_equal(params[: plain.n_params], ref)  # the same Linear draws
    # the buffers come after every parameter: without groups, one segment, the parameters
    seg = make_segments(bn, OPT["adam"], OPT["adam"].options(), np.float64)
    assert seg.bounds[:, :2].tolist() == [[0, bn.tensors["running_mean0"][0]]]


def test_decay_biases_false_keeps_every_1d_parameter_and_no_buffer_in_the_group():
    layout = build_mlp_layout([4, 6, 5, 3], "relu", decay_biases=False, batch_norm=True)
    (group,) = layout.groups
    assert set(group.tensors) == {"b0", "b1", "b2", "gamma0", "beta0", "gamma1", "beta1"}
    with pytest.raises(PluginError, match="a buffer .*Fix:"):
        bad = dataclasses.replace(
            layout, groups=(ParamGroup(("running_var0",), {"weight_decay": 0.0}, "oops"),))
        make_segments(bad, OPT["sgd"], OPT["sgd"].options(), np.float64)
    with pytest.raises(PluginError, match="names tensor 'running_mean9'"):
        make_segments(dataclasses.replace(layout, buffers=("running_mean9",)), OPT["sgd"],
                      OPT["sgd"].options(), np.float64)  # fmt: skip


def test_bad_batch_norm_options_are_refused_naming_the_value_and_the_fix():
    for options, words in (({"bn_momentum": 1.5}, "model.bn_momentum=1.5"),
                           ({"bn_eps": 0.0}, "model.bn_eps=0.0"),
                           ({"batch_norm": True, "hidden": []}, "needs a hidden layer")):
        with pytest.raises(ConfigError, match="Fix:") as e:
            MLP.build(MLP.options(**options), 4, 3)
        assert words in str(e.value)


def _train(*overrides, **kwargs):
    return lossbench.train(overrides=[*BN, *overrides], **kwargs)


def test_a_batch_of_one_row_is_refused_and_a_short_last_batch_sits_out():
    with pytest.raises(ConfigError, match=r"trainer.batch_size=1 .*Fix: pass trainer.batch_size=2"):
        _train("trainer.batch_size=1")
    # iris: 120 training rows; batches of 17 leave one row, which sits out each epoch
    run = _train("trainer.batch_size=17", "trainer.epochs=2")
    assert run.status == "finished"
    layout = build_mlp_layout([4, 6, 3], "relu", batch_norm=True)
    params = np.zeros(layout.n_params)
    layout.init(np.random.default_rng(0), params)
    with pytest.raises(ValueError, match="at least 2 rows"):  # the kernel itself, as torch
        mlp_forward(params, layout.layout, layout.kernel_hp(training=True), np.ones((1, 4)),
                    np.empty(layout.workspace(1)), np.empty((1, 3)))  # fmt: skip


def _buffers(run):
    return {k: v.copy() for k, v in run.params.items() if k.startswith("running_")}


@pytest.mark.parametrize("name", sorted(OPT))
def test_no_optimizer_touches_the_buffers_even_with_weight_decay(name):
    """bn_momentum=0 keeps forward's update at running * 1 + batch * 0: only a step could move
    them, and none does (torch never decays a buffer)."""
    options = {f.name for f in dataclasses.fields(OPT[name].options)}
    extra = [f"optimizer.{k}={v}" for k, v in (("weight_decay", 0.5), ("momentum", 0.9))
             if k in options]  # fmt: skip
    run = _train(f"optimizer={name}", "model.bn_momentum=0.0", *extra, "trainer.epochs=2")
    assert run.status == "finished"
    for key, value in _buffers(run).items():
        assert (value == (1.0 if "var" in key else 0.0)).all(), key
    moved = _train(f"optimizer={name}", *extra, "trainer.epochs=2")
    assert not (_buffers(moved)["running_var0"] == 1.0).all()  # with momentum they do move


def _set_up(overrides):
    pm = build_plugin_manager(entry_points=False)
    cfg = compose(["tracking=none", *overrides], registry=pm.registry)
    specs, options = resolve(cfg, pm.registry)
    run = Run(config=cfg, output_dir=None, specs=specs, options=options)
    return run, set_up(run)


@pytest.mark.parametrize("runner", [fused_runner, slow_runner], ids=["fused", "slow"])
def test_an_epoch_writes_the_buffers_and_the_validation_pass_does_not(runner):
    run, s = _set_up(BN)
    r = runner(run, s)
    before = run.flat_params.copy()
    r.epoch(0, 0.001)
    trained = run.flat_params.copy()
    mask = run.layout.buffer_mask()
    assert not np.array_equal(trained[mask], before[mask])
    r.evaluate()
    assert np.array_equal(run.flat_params, trained)  # evaluation mode writes nothing


def test_the_kept_best_epoch_brings_its_buffers_and_predictions_read_them(tmp_path):
    """A learning rate that overshoots after a few epochs: the kept weights are an earlier
    epoch's, buffers included, and model.npz and the predictor hold them."""
    seen = {}

    class Record:
        @lossbench.hookimpl
        def on_epoch_end(self, run, epoch, metrics):
            seen[epoch] = run.flat_params.copy()

    pm = build_plugin_manager(entry_points=False, extra=[Record()])
    run = _train("optimizer=sgd", "optimizer.lr=2.0", "trainer.epochs=8",
                 "trainer.keep_weights=best", plugin_manager=pm, output_dir=tmp_path)  # fmt: skip
    best = run.weights_epoch
    assert best is not None and best < 7, run.history
    assert np.array_equal(run.flat_params, seen[best])
    mask = run.layout.buffer_mask()
    assert not np.array_equal(seen[best][mask], seen[7][mask])  # the buffers are the best's
    with np.load(tmp_path / "model.npz") as saved:
        for name in run.layout.buffers:
            assert np.array_equal(saved[name], run.params[name]), name
    X = run.dataset.X_val
    expected = run.predict(X)
    predictor = Predictor.from_run(run)
    raw = X * run.dataset.scale + run.dataset.mean
    np.testing.assert_allclose(predictor.outputs(raw, MLP.reference_forward), expected,
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    loaded = Predictor.load(predictor.save(tmp_path / "model"))
    assert np.array_equal(loaded.params, run.flat_params)  # the MLflow model's weights.npz
    assert np.array_equal(loaded.outputs(raw, MLP.reference_forward),
                          predictor.outputs(raw, MLP.reference_forward))  # fmt: skip
    # predictions read the running statistics: other statistics, other outputs
    run.params["running_mean0"][...] += 1.0
    assert not np.allclose(run.predict(X), expected)


def test_predicting_in_training_mode_leaves_the_run_alone():
    run = _train("trainer.epochs=1")
    before = run.flat_params.copy()
    train_hp = run.layout.kernel_hp(training=True, seed=1, step=1)
    batch_stats = run.predict(run.dataset.X_val, train_hp)
    assert np.array_equal(run.flat_params, before)
    assert not np.allclose(batch_stats, run.predict(run.dataset.X_val))


def test_init_from_a_model_npz_restores_the_buffers(tmp_path):
    first = _train("trainer.epochs=2", output_dir=tmp_path / "a")
    again = _train(f"model.init_from={tmp_path / 'a' / 'model.npz'}", "optimizer.lr=1e-300",
                   "trainer.epochs=1", "model.bn_momentum=0.0")  # fmt: skip
    for name in first.layout.buffers:
        assert np.array_equal(again.params[name], first.params[name]), name


def test_lr_find_restores_the_parameters_and_the_buffers():
    options = LRFindOptions(start_lr=1e-5, end_lr=1.0, steps=30)
    run, s = _set_up(BN)
    before = run.flat_params.copy()
    run_ramp(run, s, options)
    assert np.array_equal(run.flat_params, before)
    run, s = _set_up(BN)
    run_ramp(run, s, options, restore=False)  # the ramp itself trains them
    mask = run.layout.buffer_mask()
    assert not np.array_equal(run.flat_params[mask], before[mask])


def test_the_slow_path_trains_a_batch_norm_run_as_the_fused_path():
    numpy_only = dataclasses.replace(MLP, name="mlp_np", forward=None, backward=None)

    class NumpyMLP:
        @lossbench.hookimpl
        def register_models(self, register):
            register(numpy_only)

    pm = build_plugin_manager(entry_points=False, extra=[NumpyMLP()])
    common = ["trainer.epochs=3", "trainer.dtype=float64", "model.dropout=0.2",
              "model.decay_biases=false", "optimizer=adamw"]  # fmt: skip
    fused = _train(*common, plugin_manager=pm)
    slow = _train(*common, "model=mlp_np", "model.batch_norm=true", "model.hidden=[16,8]",
                  plugin_manager=pm)  # fmt: skip
    assert slow.path == "numpy" and fused.path == "fused"
    np.testing.assert_allclose(slow.flat_params, fused.flat_params, rtol=1e-9, atol=1e-12)


def test_backward_gives_the_buffers_no_gradient_and_writes_no_parameter():
    rng = np.random.default_rng(4)
    layout = build_mlp_layout([4, 6, 5, 3], "gelu", 0.3, batch_norm=True)
    params = np.empty(layout.n_params)
    layout.init(rng, params)
    x, dout = rng.normal(size=(9, 4)), rng.normal(size=(9, 3))
    for training in (True, False):
        hp = layout.kernel_hp(training=training, seed=5, step=2)
        work, out = np.empty(layout.workspace(9)), np.empty((9, 3))
        p = params.copy()
        mlp_forward(p, layout.layout, hp, x, work, out)
        grads = np.full_like(params, np.nan)
        after_forward = p.copy()
        mlp_backward(p, layout.layout, hp, x, work, dout, grads)
        assert np.array_equal(p, after_forward)
        assert (grads[layout.buffer_mask()] == 0).all()
        assert np.isfinite(grads).all()
