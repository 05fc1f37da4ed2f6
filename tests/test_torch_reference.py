"""lossbench's kernels and NumPy references against values computed by PyTorch 2.13 (float64,
and float32 for the loss and optimizer kernels).

The numbers come from tests/data/torch_reference.json, written by
benchmarks/make_torch_reference.py; this test does not import torch.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from lossbench.builtin.losses import LOSSES
from lossbench.builtin.models import MODELS, build_mlp_layout, mlp_backward, mlp_forward
from lossbench.builtin.optimizers import OPTIMIZERS
from lossbench.testing import golden

DATA = json.loads((Path(__file__).parent / "data" / "torch_reference.json").read_text())
LOSS_SPECS = {s.name: s for s in LOSSES}
OPT_SPECS = {s.name: s for s in OPTIMIZERS}
MLP = next(s for s in MODELS if s.name == "mlp")
DTYPES = ("float64", "float32")

# Relative tolerances only (no absolute floor): tiny entries such as sigmoid(-40) / 15 must
# come out tiny, not zero.
LOSS_RTOL, MODEL_RTOL, OPT_RTOL = 1e-10, 1e-10, 1e-9
ATOL = 0.0


def _ids(cases, key="name"):
    return [c[key] for c in cases]


def test_reference_file_is_from_torch_2_13():
    assert DATA["torch_version"].startswith("2.13")
    assert DATA["dtype"] == "float64"  # all but the "float32" section


def test_every_builtin_component_is_covered():
    assert {c["loss"] for c in DATA["losses"]} == set(LOSS_SPECS)
    assert {c["optimizer"] for c in DATA["optimizers"]} == set(OPT_SPECS)
    assert {s.name for s in MODELS} == {"mlp", "linear"}  # both held to torch below
    assert {c["activation"] for c in DATA["models"]["cases"]} == {
        "relu", "tanh", "sigmoid", "gelu", "leaky_relu",
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# losses


def _loss_inputs(case):
    spec = LOSS_SPECS[case["loss"]]
    hp = np.asarray(spec.pack(spec.options(**case["options"])), dtype=np.float64)
    pred = np.array(case["pred"], dtype=np.float64)
    target = np.array(case["target"], dtype=np.float64)
    return spec, hp, pred, target


@pytest.mark.parametrize("case", DATA["losses"], ids=_ids(DATA["losses"]))
def test_loss_kernel_matches_torch(case):
    spec, hp, pred, target = _loss_inputs(case)
    grad = np.full_like(pred, np.nan)
    value = spec.kernel(pred, target, hp, grad)
    np.testing.assert_allclose(value, case["value"], rtol=LOSS_RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, case["grad"], rtol=LOSS_RTOL, atol=ATOL)


@pytest.mark.parametrize("case", DATA["losses"], ids=_ids(DATA["losses"]))
def test_loss_reference_matches_torch(case):
    spec, hp, pred, target = _loss_inputs(case)
    value, grad = spec.reference(pred, target, hp)
    np.testing.assert_allclose(value, case["value"], rtol=LOSS_RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, case["grad"], rtol=LOSS_RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# optimizers


def _opt_setup(case):
    spec = OPT_SPECS[case["optimizer"]]
    options = spec.options(**case["options"])
    if spec.check is not None:
        spec.check(options)
    packed = np.asarray(spec.pack(options), dtype=np.float64)
    p = np.array(case["params0"], dtype=np.float64)
    state = np.zeros((spec.state_rows, p.size), dtype=np.float64)  # as lossbench.engine.train
    if spec.init_state is not None:
        spec.init_state(state, options)
    return spec, options, packed, p, state


NO_SCALARS = np.zeros(0)  # no built-in optimizer keeps scalar state


@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("case", DATA["optimizers"], ids=_ids(DATA["optimizers"]))
def test_optimizer_matches_torch(case, impl):
    spec, options, packed, p, state = _opt_setup(case)
    step = spec.kernel if impl == "kernel" else spec.reference
    for t, (g, expected) in enumerate(zip(case["grads"], case["params"], strict=True), start=1):
        step(p, np.array(g, dtype=np.float64), state, NO_SCALARS, packed, t, float(options.lr))
        np.testing.assert_allclose(
            p, expected, rtol=OPT_RTOL, atol=ATOL, err_msg=f"{case['torch']}, after step {t}"
        )


# ---------------------------------------------------------------------------------------------
# float32: the same loss and optimizer cases, computed by torch in float32, against lossbench's
# kernels called as a float32 run calls them (inputs, state, packed hyperparameters and lr in
# float32)

F32 = DATA["float32"]
# Losses: relative tolerances just above the worst relative error measured (in the comments: over
# the value and every gradient entry), never below 1.2e-7 (one float32 ulp). lossbench
# accumulates in float64, so the gaps are torch's own float32 rounding (lossbench is within 3e-8
# of torch's float64 values).
F32_LOSS_RTOL = {
    "mse": 1.2e-07,  # 7.5e-08
    "l1": 1.2e-07,  # 1.6e-08
    "huber_delta0.5": 1.2e-07,  # 1.4e-08
    "huber_delta1.5": 1.2e-07,  # 7.5e-08
    "bce_with_logits": 1.2e-07,  # 6.1e-08
    "bce_with_logits_multilabel": 1.5e-07,  # 1.1e-07
    "cross_entropy_ls0.0": 2.1e-06,  # 1.7e-06 (a softmax entry of 2e-36)
    "cross_entropy_ls0.1": 1.3e-06,  # 9.8e-07
}
# Optimizers: one float32 tolerance for every case, 1e-6 relative after every step (worst
# measured with hyperparameters and lr in float64, interface version 2: 4.2e-7, adam_weight_decay;
# Adam 2.1e-7 where version 1, with them in the run's dtype, missed by 8.4e-6). rmsprop_centered
# is measured against |torch| + the largest parameter movement so far instead (1.5e-7 there):
# a parameter passes near 0 after a cancelling sqrt(s - g_avg^2), where torch float32 is itself
# 9e-5 from torch float64, so |torch| alone says nothing about float32 rounding.
F32_OPT_RTOL = 1e-6
F32_MOVEMENT_SCALED = {"rmsprop_centered"}


def test_float32_cases_mirror_the_float64_ones_and_have_tolerances():
    assert _ids(F32["optimizers"]) == _ids(DATA["optimizers"])
    names = _ids(F32["losses"])
    assert names == _ids(DATA["losses"]), "float32 loss cases differ from the float64 ones"
    assert set(F32_LOSS_RTOL) == set(names), "float32 loss cases without a tolerance (or extra)"


@pytest.mark.parametrize("case", F32["losses"], ids=_ids(F32["losses"]))
def test_loss_kernel_float32_matches_torch_float32(case):
    spec = LOSS_SPECS[case["loss"]]
    hp = np.asarray(spec.pack(spec.options(**case["options"])), dtype=np.float64)  # as runs
    pred = np.array(case["pred"], dtype=np.float32)
    target = np.array(case["target"], dtype=np.float32)
    grad = np.full_like(pred, np.nan)
    value = spec.kernel(pred, target, hp, grad)
    rtol = F32_LOSS_RTOL[case["name"]]
    np.testing.assert_allclose(value, case["value"], rtol=rtol, atol=ATOL, err_msg="value")
    np.testing.assert_allclose(grad, case["grad"], rtol=rtol, atol=ATOL, err_msg="gradient")


def float32_drift(case) -> float:
    """The worst relative miss of lossbench's float32 kernel against torch float32 over the
    case's steps (relative to |torch| + the largest parameter movement so far for the cases in
    ``F32_MOVEMENT_SCALED``)."""
    spec = OPT_SPECS[case["optimizer"]]
    options = spec.options(**case["options"])
    packed = np.asarray(spec.pack(options), dtype=np.float64)  # float64 in every run
    p = np.array(case["params0"], dtype=np.float32)
    p0 = p.astype(np.float64)
    state = np.zeros((spec.state_rows, p.size), dtype=np.float32)
    if spec.init_state is not None:
        spec.init_state(state, options)
    lr = float(options.lr)  # the fit loop passes lr in float64
    worst = 0.0
    for t, (g, expected) in enumerate(zip(case["grads"], case["params"], strict=True), start=1):
        spec.kernel(p, np.array(g, dtype=np.float32), state, NO_SCALARS, packed, t, lr)
        assert p.dtype == np.float32
        expected = np.array(expected)
        scale = np.abs(expected)
        if case["name"] in F32_MOVEMENT_SCALED:
            scale = scale + np.max(np.abs(expected - p0))
        worst = max(worst, float(np.max(np.abs(p - expected) / scale)))
    return worst


@pytest.mark.parametrize("case", F32["optimizers"], ids=_ids(F32["optimizers"]))
def test_optimizer_kernel_float32_matches_torch_float32(case):
    drift = float32_drift(case)
    assert drift <= F32_OPT_RTOL, f"float32 {case['torch']}: drift {drift:.2e} from torch float32"


# ---------------------------------------------------------------------------------------------
# models

MODEL = DATA["models"]
# (data set id, its data): a 3-5-2 MLP and a 3-5-4-2 MLP (two hidden layers), every activation
MLP_SETS = {"one_hidden": DATA["models"], "two_hidden": DATA["models_two_hidden"]}
MLP_CASES = [
    pytest.param(data, case, id=f"{set_id}-{case['activation']}")
    for set_id, data in MLP_SETS.items()
    for case in data["cases"]
]
LINEAR = DATA["linear"]
LINEAR_SPEC = next(s for s in MODELS if s.name == "linear")


def test_model_sets_have_the_expected_shapes():
    assert MLP_SETS["one_hidden"]["widths"] == [3, 5, 2]
    assert MLP_SETS["two_hidden"]["widths"] == [3, 5, 4, 2]
    assert LINEAR["widths"] == [3, 2]


def _layout_of(data, activation):
    """The layout as a run builds it: the ``mlp`` spec with the data's hidden widths."""
    widths = data["widths"]
    hp = MLP.options(hidden=widths[1:-1], activation=activation)
    layout = MLP.build(hp, widths[0], widths[-1])
    assert layout.layout.tolist() == build_mlp_layout(widths, activation).layout.tolist()
    return layout


def _model_setup(data, layout):
    params = np.zeros(layout.n_params, dtype=np.float64)
    views = layout.views(params)
    assert set(views) == set(data["params"])
    for name, value in data["params"].items():
        views[name][...] = value
    x = np.array(data["x"], dtype=np.float64)
    dout = np.array(data["dout"], dtype=np.float64)
    return params, x, dout


def _check_grads(layout, grads, expected):
    views = layout.views(grads)
    assert set(views) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(views[name], value, rtol=MODEL_RTOL, atol=ATOL, err_msg=name)


def _check_kernels(spec, layout, data, case):
    params, x, dout = _model_setup(data, layout)
    hp = layout.kernel_hp()
    work = np.full(layout.workspace(len(x)), np.nan)
    out = np.full((len(x), data["widths"][-1]), np.nan)
    spec.forward(params, layout.layout, hp, x, work, out)
    np.testing.assert_allclose(out, case["out"], rtol=MODEL_RTOL, atol=ATOL, err_msg="output")
    grads = np.full(layout.n_params, np.nan)
    spec.backward(params, layout.layout, hp, x, work, dout, grads)
    _check_grads(layout, grads, case["grads"])


def _check_reference(spec, layout, data, case):
    params, x, dout = _model_setup(data, layout)
    hp = layout.kernel_hp()
    out = spec.reference_forward(params, layout.layout, hp, x)
    np.testing.assert_allclose(out, case["out"], rtol=MODEL_RTOL, atol=ATOL, err_msg="output")
    grads = spec.reference_backward(params, layout.layout, hp, x, dout)
    _check_grads(layout, grads, case["grads"])


@pytest.mark.parametrize("data,case", MLP_CASES)
def test_mlp_kernels_match_torch(data, case):
    assert MLP.forward is mlp_forward and MLP.backward is mlp_backward
    _check_kernels(MLP, _layout_of(data, case["activation"]), data, case)


@pytest.mark.parametrize("data,case", MLP_CASES)
def test_mlp_reference_matches_torch(data, case):
    _check_reference(MLP, _layout_of(data, case["activation"]), data, case)


def _linear_layout():
    widths = LINEAR["widths"]
    return LINEAR_SPEC.build(LINEAR_SPEC.options(), widths[0], widths[-1])


def test_linear_kernels_match_torch():
    _check_kernels(LINEAR_SPEC, _linear_layout(), LINEAR, LINEAR)


def test_linear_reference_matches_torch():
    _check_reference(LINEAR_SPEC, _linear_layout(), LINEAR, LINEAR)


# ---------------------------------------------------------------------------------------------
# the example plugin with scalar state (plugins/lossbench-nadam) is held to torch.optim.NAdam by
# its own suite, which runs outside the repository, through lossbench.testing.golden: its golden
# file is written by its tests/make_golden.py with torch 2.13


def test_nadam_plugin_golden_values_are_torch_2_13_over_30_steps():
    repo = Path(__file__).resolve().parents[1]
    data = golden.load(repo / "plugins" / "lossbench-nadam" / "tests" / "golden_nadam.json")
    assert data["source"].startswith("torch 2.13") and data["component"] == "optimizer.nadam"
    by_dtype = {d: [c["name"] for c in data["cases"] if c["dtype"] == d] for d in DTYPES}
    assert by_dtype["float32"] == by_dtype["float64"] and len(by_dtype["float64"]) == 5
    assert all(len(c["expected"]["params"]) == 30 for c in data["cases"])
