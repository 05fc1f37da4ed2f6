"""The conformance kit (lossbench.testing): every built-in passes it, and every check fails, with
the component, the property and the amount, on a component built to miss that property."""

import dataclasses
import importlib
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numba import njit

import lossbench
from lossbench.builtin.datasets import DATASETS
from lossbench.builtin.losses import LOSSES, huber_kernel, huber_reference, mse_kernel
from lossbench.builtin.models import MODELS, mlp_backward
from lossbench.builtin.optimizers import OPTIMIZERS
from lossbench.builtin.schedules import SCHEDULES
from lossbench.data import Dataset
from lossbench.plugins import DEFAULT_PLUGINS
from lossbench.testing import CHECKS, ConformanceError, check_plugin, checks_for
from lossbench.testing import parametrize_with_checks as with_checks

DATA = Path(__file__).resolve().parent / "data"
BUILTINS = [importlib.import_module(name) for name in DEFAULT_PLUGINS]
BUILTIN_CASES = {
    "huber": [{}, {"delta": 0.3}],
    "cross_entropy": [{}, {"label_smoothing": 0.2}],
    "sgd": [{}, {"momentum": 0.9, "nesterov": True}, {"momentum": 0.5, "weight_decay": 0.1}],
    "adam": [{}, {"amsgrad": True, "weight_decay": 0.05}],
    "rmsprop": [{}, {"centered": True, "momentum": 0.5}],
    "adagrad": [{}, {"lr_decay": 0.1, "initial_accumulator_value": 0.5}],
    "mlp": [{}, {"hidden": [5, 4], "activation": "gelu"}, {"activation": "tanh"},
            {"hidden": [5, 4], "dropout": 0.3, "decay_biases": False}],
    "csv": {"path": str(DATA / "blobs.csv"), "target": "label"},
    "npz": {"path": str(DATA / "blobs.npz")},
    "step": [{}, {"step_size": 3, "gamma": 0.5}],
    "cosine": [{}, {"min_lr": 0.01}],
}


@with_checks(*BUILTINS, options=BUILTIN_CASES)
def test_builtin_conformance(check):
    check()


def test_every_builtin_component_is_checked_for_every_property_that_applies():
    ids = {c.id for c in checks_for(*BUILTINS, options=BUILTIN_CASES)}
    for group, specs in (
        ("loss", LOSSES), ("optimizer", OPTIMIZERS), ("model", MODELS), ("data", DATASETS),
        ("schedule", SCHEDULES),
    ):  # fmt: skip
        for spec in specs:
            for name in CHECKS[group]:
                if name.startswith("hyperparameter") and spec.name in ("mse", "mae", "bce"):
                    continue  # no hyperparameters
                if name.startswith("hyperparameter") and spec.name == "linear":
                    continue  # only init_from, a file name
                assert f"{group}-{spec.name}-{name}" in ids
    assert {f"plugin-{name}-registers" for name in DEFAULT_PLUGINS} <= ids


# ---------------------------------------------------------------------------------------------
# components that each miss one property


@njit
def steep_mse(pred, target, hp, grad):
    value = mse_kernel(pred, target, hp, grad)
    grad *= 1.5  # a wrong gradient
    return value


@njit
def scribbling_mse(pred, target, hp, grad):
    value = mse_kernel(pred, target, hp, grad)
    pred[0, 0] = 0.0  # modifies an input
    return value


HUBER_DELTA = 1.0


@njit
def frozen_huber(pred, target, hp, grad):
    # reads a global instead of hp[0]: frozen at compile time, loss.delta has no effect
    hp2 = np.full(1, HUBER_DELTA, pred.dtype)
    return huber_kernel(pred, target, hp2, grad)


@njit
def uncompilable(pred, target, hp, grad):
    return pred.no_such_attribute


@njit
def ascent(p, g, state, scalars, hp, t, lr):
    for i in range(p.shape[0]):
        p[i] += lr * g[i]


def ascent_reference(p, g, state, scalars, hp, t, lr):
    p += lr * g


@njit
def unscaled_decay(p, g, state, scalars, hp, t, lr):
    for i in range(p.shape[0]):
        p[i] -= 0.01 * p[i] + lr * g[i]  # weight decay not scaled by lr


def unscaled_decay_reference(p, g, state, scalars, hp, t, lr):
    p -= 0.01 * p + lr * g


@njit
def noisy_sgd(p, g, state, scalars, hp, t, lr):
    for i in range(p.shape[0]):
        p[i] -= lr * g[i] * np.random.random()


def noisy_sgd_reference(p, g, state, scalars, hp, t, lr):
    p -= lr * g * np.random.random(len(p))


@njit
def grad_eating_sgd(p, g, state, scalars, hp, t, lr):
    for i in range(p.shape[0]):
        p[i] -= lr * g[i]
        g[i] = 0.0  # modifies an input


def grad_eating_reference(p, g, state, scalars, hp, t, lr):
    p -= lr * g
    g[:] = 0.0


@njit
def recomputing_sgd(p, g, state, scalars, hp, t, lr):
    product = 1.0
    for k in range(1, t + 1):  # NAdam's running product recomputed every step: O(t) per step
        product *= 0.9 * (1.0 - 0.5 * 0.96 ** (k * 0.004))
    for i in range(p.shape[0]):
        p[i] -= lr * g[i] * (1.0 + 0.0 * product)


def plain_sgd_reference(p, g, state, scalars, hp, t, lr):
    p -= lr * g


@njit
def decay_eating_sgd(p, g, state, scalars, hp, t, lr):
    for i in range(p.shape[0]):
        if hp[3] != 0:
            g[i] += hp[3] * p[i]  # modifies an input, only when weight_decay > 0
        p[i] -= lr * g[i]


def decay_reference(p, g, state, scalars, hp, t, lr):
    p -= lr * (g + hp[3] * p)


@njit
def half_backward(params, layout, hp, x, work, dout, grads):
    mlp_backward(params, layout, hp, x, work, dout, grads)
    for i in range(grads.shape[0] // 2):
        grads[i] *= 0.5  # a wrong gradient for half the parameters


def init_with_fresh_closure(state, options):
    value = options.initial_accumulator_value

    @njit
    def fill(s):  # a new jitted function per call: compiled again for every run
        s[:] = value

    fill(state)


def unseeded_load(hp, seed):
    X = np.random.default_rng().normal(size=(60, 2))  # ignores the seed
    return Dataset(X=X, y=(X[:, 0] > 0).astype(np.int64), task="classification")


def wrong_numpy_gradient(pred, target, hp):
    d = pred - target
    return float(np.mean(d * d)), d / d.size  # should be 2 d / N


MSE, HUBER, SGD, ADAGRAD, MLP = LOSSES[0], LOSSES[2], OPTIMIZERS[0], OPTIMIZERS[4], MODELS[0]


class Broken:
    """One component per property the kit checks, each missing it."""

    @lossbench.hookimpl
    def register_losses(self, register):
        replace = dataclasses.replace
        register(replace(MSE, name="steep", kernel=steep_mse))
        register(replace(MSE, name="scribbling", kernel=scribbling_mse))
        register(replace(HUBER, name="frozen", kernel=frozen_huber, reference=huber_reference))
        register(replace(MSE, name="uncompilable", kernel=uncompilable))
        register(replace(MSE, name="numpy_wrong", kernel=None, reference=wrong_numpy_gradient))

    @lossbench.hookimpl
    def register_optimizers(self, register):
        replace = dataclasses.replace
        register(replace(SGD, name="ascent", kernel=ascent, reference=ascent_reference))
        register(
            replace(SGD, name="decaying", kernel=unscaled_decay, reference=unscaled_decay_reference)
        )
        register(replace(SGD, name="noisy", kernel=noisy_sgd, reference=noisy_sgd_reference))
        register(
            replace(SGD, name="eating", kernel=grad_eating_sgd, reference=grad_eating_reference)
        )
        register(replace(ADAGRAD, name="closure", init_state=init_with_fresh_closure))
        register(
            replace(SGD, name="recomputing", kernel=recomputing_sgd, reference=plain_sgd_reference)
        )
        register(replace(SGD, name="branchy", kernel=decay_eating_sgd, reference=decay_reference))

    @lossbench.hookimpl
    def register_models(self, register):
        register(dataclasses.replace(MLP, name="half", backward=half_backward))

    @lossbench.hookimpl
    def register_datasets(self, register):
        register(lossbench.DatasetSpec(name="unseeded", options=DATASETS[0].options,
                                       load=unseeded_load))  # fmt: skip


@pytest.fixture(scope="module")
def broken():
    return {c.id: c for c in checks_for(Broken(), options={"closure": {"lr_decay": 0.1}})}


MISSES = {  # check id -> what its message must say
    "loss-steep-gradient_matches_finite_differences": r"gradients \(analytic vs central "
    r"differences, eps 1e-6\) differ by up to 0\.\d+ in 24 of 24 values at grad\[0, 3\]: .*"
    r"everywhere 1\.5 x the expected values: a constant factor is off",
    "loss-steep-kernel_matches_reference": r"float64 gradients \(kernel vs reference\) differ by",
    "loss-scribbling-inputs_unchanged": r"it modifies its input pred \(float64\) \(1 of 24 "
    r"values, by up to",
    "loss-frozen-hyperparameter_change_takes_effect_without_recompiling": r"changing \{'delta': "
    r"0\.5\} leaves the training bit-identical",
    "loss-uncompilable-kernel_compiles": r"does not compile in nopython mode.*Unknown attribute "
    r"'no_such_attribute'",
    "loss-numpy_wrong-gradient_matches_finite_differences": r"differ by up to",
    "optimizer-ascent-decreases_convex_quadratic": r"take f from 16 to [\d.e+]+; expected a "
    r"decrease below 0\.9 f0 = 14\.4",
    "optimizer-ascent-trains_small_mlp": r"val_loss is [\d.]+ at initialisation and [\d.]+ after "
    r"two epochs \(\+",
    "optimizer-decaying-zero_lr_changes_nothing": r"five steps with lr=0 change the parameters "
    r"by up to 0\.\d+",
    "optimizer-noisy-deterministic": r"two identical sequences of 10 steps give different",
    "optimizer-eating-inputs_unchanged": r"it modifies its input grads \(float64\) at step 1 "
    r"\(9 of 9 values",
    "optimizer-closure-hyperparameter_change_takes_effect_without_recompiling": r"changing "
    r"\{'lr_decay': 0\.05, .*\} compiled init_with_fresh_closure\.<locals>\.fill again",
    "optimizer-recomputing-step_cost_does_not_grow_with_t": r"a step costs [\d.]+ us at "
    r"t=10,000 against [\d.]+ us at t=10 \(\d+x, 1000 parameters.*the cost grows with t\. Fix: "
    r"keep running quantities",
    "optimizer-branchy-inputs_unchanged": r"with SGDOptions\(lr=0\.01, momentum=0\.0, "
    r"dampening=0\.0, nesterov=False, weight_decay=0\.1\): it modifies its input grads",
    "model-half-gradient_matches_finite_differences": r"d sum\(forward \* dout\) / d params",
    "model-half-kernel_matches_reference": r"float64 gradients \(kernel vs reference\) differ",
    "data-unseeded-loads": r"two loads with the same seed give different X: seed it",
}


@pytest.mark.parametrize("check_id", list(MISSES))
def test_each_check_fails_naming_component_property_and_amount(broken, check_id):
    group, name, prop = check_id.split("-")
    with pytest.raises(ConformanceError) as info:
        broken[check_id]()
    text = str(info.value)
    assert text.startswith(f"{group} {name!r} from plugin 'Broken' fails {prop}: "), text
    assert re.search(MISSES[check_id], text), text


def test_broken_components_pass_what_they_do_not_break(broken):
    for check_id in (
        "loss-steep-inputs_unchanged",
        "loss-steep-kernel_compiles",
        "optimizer-ascent-zero_lr_changes_nothing",
        "optimizer-noisy-zero_lr_changes_nothing",
        "model-half-inputs_unchanged",
        "loss-numpy_wrong-trains_small_mlp",  # a wrong gradient can still descend
        "optimizer-recomputing-kernel_matches_reference",
        "optimizer-eating-step_cost_does_not_grow_with_t",
    ):
        broken[check_id]()


def test_options_are_checked_each_on_its_own_by_default():
    # SGD: momentum, dampening, weight_decay default to 0 and nesterov to False; nesterov=True
    # alone is refused by SGD's check (it needs momentum), so it is left out
    (check,) = [c for c in checks_for(Broken()) if c.id == "optimizer-branchy-inputs_unchanged"]
    with pytest.raises(ConformanceError, match="weight_decay=0.1"):
        check()
    cases = lossbench.testing.option_cases(SGD)
    assert [(c.momentum, c.dampening, c.nesterov, c.weight_decay) for c in cases] == [
        (0.1, 0.0, False, 0.0), (0.0, 0.1, False, 0.0), (0.0, 0.0, False, 0.1),
    ]  # fmt: skip


def test_an_uncompilable_kernel_is_one_failure_and_its_other_checks_are_skipped(broken):
    skipped = [
        c for c in broken.values() if c.component == "uncompilable" and c.requires is not None
    ]
    assert {c.name for c in skipped} >= {"kernel_matches_reference", "trains_small_mlp"}
    for check in skipped:
        with pytest.raises(pytest.skip.Exception, match="kernel_compiles fails and says why"):
            check()

    class Uncompilable:
        @lossbench.hookimpl
        def register_losses(self, register):
            register(dataclasses.replace(MSE, name="uncompilable", kernel=uncompilable))

    with pytest.raises(ConformanceError) as info:
        check_plugin(Uncompilable())
    text = str(info.value)
    assert text.startswith("1 of 9 checks fail (6 more skipped):"), text
    assert "skipped: loss 'uncompilable' from plugin 'Uncompilable': trains_small_mlp skipped: " \
        "its kernels do not compile" in text
    assert text.count("Traceback") == 0 and text.count("no_such_attribute") == 1, text


def test_the_kit_names_an_installed_plugin_by_its_entry_point(tmp_path, monkeypatch):
    # a distribution whose entry point `sq` loads the module kit_ep_probe, as pip installs it
    (tmp_path / "kit_ep_probe.py").write_text(
        "import dataclasses, lossbench\n"
        "from lossbench.builtin.losses import LOSSES\n"
        "@lossbench.hookimpl\n"
        "def register_losses(register):\n"
        "    register(dataclasses.replace(LOSSES[0], name='sq'))\n"
    )
    info = tmp_path / "kit_ep_probe-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kit-ep-probe\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[lossbench]\nsq = kit_ep_probe\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("kit_ep_probe")
    checks = checks_for(module)
    assert {c.plugin for c in checks} == {"sq"}
    assert checks[0].subject == "plugin 'sq'" and checks[1].subject == "loss 'sq' from plugin 'sq'"


def test_numpy_only_components_skip_the_kernel_checks_with_the_reason(broken):
    for name in ("kernel_compiles", "kernel_matches_reference"):
        with pytest.raises(pytest.skip.Exception, match=r"numpy only"):
            broken[f"loss-numpy_wrong-{name}"]()
    assert "loss-numpy_wrong-inputs_unchanged" in broken


def test_a_plugin_that_does_not_register_is_one_failing_check(tmp_path):
    (tmp_path / "clash.py").write_text(
        textwrap.dedent("""
        import lossbench
        from lossbench.builtin.losses import LOSSES

        @lossbench.hookimpl
        def register_losses(register):
            register(LOSSES[0])
        """)
    )
    (check,) = checks_for(tmp_path / "clash.py")
    assert check.id.startswith("plugin-") and check.name == "registers"
    with pytest.raises(ConformanceError, match="two plugins register a loss named 'mse'"):
        check()


def test_check_plugin_lists_every_failure():
    class Steep:
        @lossbench.hookimpl
        def register_losses(self, register):
            register(dataclasses.replace(MSE, name="steep", kernel=steep_mse))

    with pytest.raises(ConformanceError) as info:
        check_plugin(Steep())
    text = str(info.value)
    assert text.startswith("2 of 9 checks fail (2 more skipped):")  # mse: no hyperparameters
    assert text.endswith("hyperparameter_change_takes_effect_without_recompiling skipped: it has "
                         "no hyperparameters")
    assert "fails kernel_matches_reference" in text and "fails gradient_matches" in text
    assert check_plugin(importlib.import_module("lossbench.builtin.progress")) == 1
