"""``python -m lossbench explain``: the value by hand, by the reference and by the kernel agree;
the batch is the first minibatch training's first step sees (a probe optimizer records that
step's gradient inside the fused epoch); the mse-on-one-hot factor is said with the batch's
numbers; plugin losses are explained from their reference and docstring; the LossSpec fields
explain reads register (and old specs still do); bad input through the command line; and
docs/losses.md names every built-in loss and its PyTorch class."""

import dataclasses
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from numba import njit

import lossbench
from lossbench.config import compose
from lossbench.errors import PluginError
from lossbench.plugins import build_plugin_manager, load_plugin_file
from lossbench.training.explain import MAX_COLUMNS, by_hand, explain, render
from lossbench.training.setup import stream_seed

ROOT = Path(__file__).resolve().parents[1]
FOCAL_FILE = ROOT / "plugins" / "lossbench-focal" / "lossbench_focal.py"
BUILTIN_TORCH = {"mse": "MSELoss", "mae": "L1Loss", "huber": "HuberLoss",
                 "bce": "BCEWithLogitsLoss", "cross_entropy": "CrossEntropyLoss"}  # fmt: skip


def explained(pm, *overrides):
    return explain(compose(list(overrides), registry=pm.registry), pm)


def close(a, b, tol=1e-12):
    return abs(a - b) <= tol * max(1.0, abs(b))


# ---------------------------------------------------------------------------------------------
# the values agree


# (loss, data): every built-in on class data, and on regression data where the loss allows it
AGREEMENT = [("mse", "iris"), ("mae", "iris"), ("huber", "iris"), ("bce", "breast_cancer"),
             ("cross_entropy", "iris"), ("mse", "diabetes"), ("mae", "diabetes"),
             ("huber", "diabetes")]  # fmt: skip


@pytest.mark.parametrize("loss,data", AGREEMENT, ids=[f"{a}-{b}" for a, b in AGREEMENT])
def test_kernel_by_hand_and_reference_agree_in_float64(pm, loss, data):
    extra = ["loss.delta=0.5"] if loss == "huber" else []  # both of Huber's branches are hit
    e = explained(pm, f"loss={loss}", f"data={data}", "trainer.dtype=float64", *extra)
    rows, cols = e.pred.shape
    assert e.pred.dtype == np.float64 and rows == 32
    by_elements = e.spec.reduction == "elements"
    assert e.hand.divisor == (rows * cols if by_elements else rows)
    assert e.hand.terms.shape == ((rows, cols) if by_elements else (rows,))
    assert close(e.hand.value, e.hand.terms.sum() / e.hand.divisor)
    assert close(e.kernel[0], e.hand.value) and close(e.reference[0], e.hand.value)
    np.testing.assert_allclose(e.kernel[1], e.reference[1], rtol=1e-12, atol=1e-15)
    # and what is printed is those numbers
    text = render(e)
    assert f"{e.hand.value:<18.12g}sum of the {e.hand.terms.size} terms" in text
    assert f"kernel     {e.kernel[0]:<18.12g}" in text


def test_the_shown_gradient_is_scaled_by_the_reductions_divisor(pm):
    e = explained(pm, "loss=mse", "data=iris", "trainer.dtype=float64")
    # mse: dLoss/dp = 2 (p - y) / (rows x columns); shown times 96 it is 2 (p - y)
    assert e.scale == 32 * 3
    np.testing.assert_allclose(e.kernel[1] * e.scale, 2 * (e.pred - e.target), rtol=1e-12)
    text = render(e, 1)
    g_line = next(line for line in text.splitlines() if line.lstrip().startswith("g kernel"))
    shown = [float(v) for v in g_line.split()[2:]]
    np.testing.assert_allclose(shown, 2 * (e.pred[0] - e.target[0]), atol=6e-5)
    assert "already divided by 96 (32 rows x 3 columns)" in " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# the batch is the one training's first step sees


@dataclasses.dataclass
class ProbeOptions:
    lr: float = 0.0


@njit(nogil=True)
def probe_step(params, grads, state, scalars, hp, t, lr):
    """At the first step, params := grads: after training, the weights are the gradient of the
    first minibatch's loss at the initial weights, as the fused epoch computed it."""
    if t == 1:
        for i in range(params.shape[0]):
            params[i] = grads[i]


def probe_reference(params, grads, state, scalars, hp, t, lr):
    if t == 1:
        params[:] = grads


class ProbePlugin:
    @lossbench.hookimpl
    def register_optimizers(self, register):
        register(lossbench.OptimizerSpec(name="probe", options=ProbeOptions, kernel=probe_step,
                                         reference=probe_reference))  # fmt: skip


@pytest.fixture(scope="module")
def probe_pm():
    return build_plugin_manager(entry_points=False, extra=[("probe", ProbePlugin())])


PROBED = {
    "cross_entropy-digits-float32": ["loss=cross_entropy", "data=digits"],
    "mse-iris-float64-seed3": ["loss=mse", "data=iris", "trainer.dtype=float64", "seed=3"],
    "bce-breast_cancer-batch16": ["loss=bce", "data=breast_cancer", "trainer.dtype=float64",
                                  "trainer.batch_size=16"],
    "mse-iris-dropout": ["loss=mse", "data=iris", "trainer.dtype=float64", "model.dropout=0.4"],
}  # fmt: skip


def _param_gradient(e, rows):
    """dLoss/dparams at the initial weights of the batch ``rows`` with dLoss/dpred = the
    kernel's gradient of explain's batch (the model's NumPy reference backward)."""
    run = e.run
    model, layout = run.specs["model"], run.layout
    X = np.ascontiguousarray(run.dataset.X_train[rows], dtype=np.float64)
    hp = layout.kernel_hp(True, stream_seed(run.config), 1)  # training, the first step
    params = run.flat_params.astype(np.float64)
    return model.reference_backward(params, layout.layout, hp, X, e.kernel[1].astype(np.float64))


@pytest.mark.parametrize("name", list(PROBED))
def test_the_batch_is_the_first_minibatch_of_training(probe_pm, name):
    overrides = [*PROBED[name], "trainer.progress=false", "tracking=none"]
    run = lossbench.train(overrides=[*overrides, "trainer.epochs=1", "optimizer=probe"],
                          plugin_manager=probe_pm)  # fmt: skip
    assert run.path == "fused" and run.status == "finished"
    first_step = run.flat_params.astype(np.float64)  # the first step's dLoss/dparams
    e = explained(probe_pm, *overrides)
    assert e.pred.dtype == run.flat_params.dtype  # the run's dtype
    assert len(e.rows) == int(run.config.trainer.batch_size)
    tol = 1e-10 if e.pred.dtype == np.float64 else 2e-4
    scale = np.max(np.abs(first_step))
    np.testing.assert_allclose(_param_gradient(e, e.rows), first_step, rtol=0, atol=tol * scale)
    # planted wrong, the same check fails: the unshuffled first rows are another batch
    unshuffled = np.arange(len(e.rows))
    assert not np.allclose(_param_gradient(e, unshuffled), first_step, atol=tol * scale)


def test_printed_rows_are_the_batchs_in_training_order(pm):
    e = explained(pm, "loss=cross_entropy", "data=digits")
    assert not np.array_equal(e.rows, np.sort(e.rows)), "the batch is not in shuffled order"
    text = render(e, 3)
    names = re.findall(r"training row (\d+)", text)
    assert [int(n) for n in names] == list(e.rows[:3])
    p_line = next(line for line in text.splitlines() if line.lstrip().startswith("p "))
    np.testing.assert_allclose([float(v) for v in p_line.split()[1:]],
                               e.pred[0, :MAX_COLUMNS], atol=6e-5)  # fmt: skip
    y_line = next(line for line in text.splitlines() if line.lstrip().startswith("y "))
    assert int(y_line.split()[1]) == int(e.target[0, 0])  # the class index, as the loss reads it


# ---------------------------------------------------------------------------------------------
# the reduction against the textbook, with the batch's numbers


@pytest.mark.parametrize("data,classes", [("iris", 3), ("digits", 10)])
def test_mse_on_one_hot_says_the_factor_with_the_batchs_numbers(pm, data, classes):
    e = explained(pm, "loss=mse", f"data={data}")
    assert set(np.unique(e.target)) == {0.0, 1.0} and e.target.shape == (32, classes)
    total = float(((e.pred.astype(np.float64) - e.target) ** 2).sum())  # independent of explain
    text = " ".join(render(e).split())
    assert f"(1/n) sum_i sum_j l_ij, n = 32 rows: {total:.6g} / 32 = {total / 32:.6g}" in text
    assert f"divides by rows x columns = 32 x {classes} = {32 * classes} instead" in text
    assert f"{classes} times smaller ({classes} one-hot columns, one per class)" in text
    assert close(e.hand.value * classes, total / 32)


def test_cross_entropy_and_one_column_losses_are_the_textbook_mean(pm):
    for overrides in (["loss=cross_entropy"], ["loss=bce", "data=breast_cancer"],
                      ["loss=mse", "data=diabetes"]):  # fmt: skip
        text = " ".join(render(explained(pm, *overrides)).split())
        assert "times smaller" not in text
        assert "is the textbook formula" in text


# ---------------------------------------------------------------------------------------------
# plugin losses: from their reference and docstring


def cubic_reference(pred, target, hp):
    """Mean cubed absolute error (a NumPy-only test loss).

    l_ij = |p_ij - y_ij|^3;  dl_ij/dp_ij = 3 |p_ij - y_ij| (p_ij - y_ij).

    This third paragraph is not part of the formula explain prints.
    """
    d = pred - target
    return float(np.mean(np.abs(d) ** 3)), 3 * np.abs(d) * d / d.size


class CubicPlugin:
    @lossbench.hookimpl
    def register_losses(self, register):
        register(lossbench.LossSpec(name="cubic", options=ProbeOptions, reference=cubic_reference,
                                    target="values"))  # fmt: skip


def test_a_numpy_only_plugin_loss_is_explained_from_its_reference_and_docstring():
    pm = build_plugin_manager(entry_points=False, extra=[("cubic", CubicPlugin())])
    e = explained(pm, "loss=cubic", "data=iris", "trainer.dtype=float64")
    assert e.kernel is None and e.hand is None
    d = e.pred - e.target
    assert close(e.value, float(np.mean(np.abs(d) ** 3)))
    text = render(e)
    flat = " ".join(text.split())
    assert "from cubic_reference's docstring (the spec gives no formula):" in flat
    assert "l_ij = |p_ij - y_ij|^3; dl_ij/dp_ij = 3 |p_ij - y_ij| (p_ij - y_ij)." in flat
    assert "third paragraph" not in flat
    assert "reduction not declared" in flat
    assert f"reference {e.value:.12g} cubic_reference (NumPy" in flat
    assert "the spec gives no unreduced terms, so this is the value by hand" in flat
    assert "kernel none: a NumPy-only loss" in flat
    assert "g kernel" not in text and "g ref." in text


def test_the_focal_plugin_file_is_explained_from_its_kernels_docstring():
    module = load_plugin_file(FOCAL_FILE)
    pm = build_plugin_manager(entry_points=False, extra=[("focal", module)])
    e = explained(pm, "loss=focal", "trainer.dtype=float64")
    value, grad = module.focal_reference(e.pred, e.target, np.array([2.0, 1.0]))
    assert e.hand is None and close(e.value, value) and close(e.kernel[0], value)
    np.testing.assert_allclose(e.kernel[1], grad, rtol=1e-12, atol=1e-15)
    flat = " ".join(render(e).split())
    assert "from focal_kernel's docstring" in flat
    assert "l = -alpha (1 - p_k)^gamma log p_k" in flat  # its second paragraph
    assert "reduction not declared" in flat and "options gamma=2.0, alpha=1.0" in flat


# ---------------------------------------------------------------------------------------------
# the LossSpec fields explain reads


def _registered(spec):
    class One:
        @lossbench.hookimpl
        def register_losses(self, register):
            register(spec)

    return build_plugin_manager(entry_points=False, extra=[("one", One())])


def test_a_declared_reduction_and_terms_give_a_value_by_hand():
    spec = lossbench.LossSpec(
        name="cubic_terms", options=ProbeOptions, reference=cubic_reference, formula="l = |d|^3",
        reduction="elements", unreduced=lambda p, t, hp: np.abs(p - t) ** 3,
    )  # fmt: skip
    e = explained(_registered(spec), "loss=cubic_terms", "data=iris", "trainer.dtype=float64")
    assert close(e.hand.value, e.reference[0]) and e.hand.divisor == 96
    assert "formula    l = |d|^3" in render(e)


def test_an_unknown_reduction_or_terms_without_one_are_refused_at_registration():
    base = {"name": "odd", "options": ProbeOptions, "reference": cubic_reference}
    with pytest.raises(PluginError, match="reduction='sum', which lossbench does not know"):
        _registered(lossbench.LossSpec(**base, reduction="sum"))
    with pytest.raises(PluginError, match="unreduced terms but no reduction"):
        _registered(lossbench.LossSpec(**base, unreduced=lambda p, t, hp: p))


def test_terms_of_the_wrong_shape_are_a_plugin_error():
    spec = lossbench.LossSpec(
        name="odd", options=ProbeOptions, reference=cubic_reference, reduction="rows",
        unreduced=lambda p, t, hp: np.abs(p - t),
    )  # fmt: skip
    with pytest.raises(PluginError, match=r"shape \(32, 3\), but with reduction='rows'"):
        by_hand(_registered(spec).registry.get("loss", "odd"), np.zeros((32, 3)),
                np.zeros((32, 3)), np.zeros(0))  # fmt: skip


def test_old_specs_register_unchanged_and_the_builtins_declare_everything(pm):
    focal = build_plugin_manager(entry_points=False, extra=[load_plugin_file(FOCAL_FILE)])
    spec = focal.registry.get("loss", "focal")
    assert (spec.formula, spec.reduction, spec.unreduced) == ("", "", None)
    assert spec.api == lossbench.PLUGIN_API == 2
    for name in BUILTIN_TORCH:
        builtin = pm.registry.get("loss", name)
        assert builtin.formula and builtin.reduction and builtin.unreduced is not None


def test_the_layout_fits_100_columns(pm):
    module = load_plugin_file(FOCAL_FILE)
    focal = build_plugin_manager(entry_points=False, extra=[("focal", module)])
    for manager, overrides in ((pm, ["loss=mse"]), (pm, ["loss=huber", "data=diabetes"]),
                               (pm, []), (focal, ["loss=focal"])):  # fmt: skip
        long = [line for line in render(explained(manager, *overrides)).splitlines()
                if len(line) > 100]  # fmt: skip
        assert not long, long


# ---------------------------------------------------------------------------------------------
# the command line: bad input, and nothing written


def _cli(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["LOSSBENCH_LOAD_PLUGINS"] = ""
    # the default tracking (./mlflow.db) is on: explain must not create the store
    return subprocess.run([sys.executable, "-m", "lossbench", "explain", *args], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


BAD = {
    "unknown_loss": (["loss=nope"], "loss='nope' is not a known loss. Available: bce,"),
    "class_loss_on_regression": (["loss=cross_entropy", "data=diabetes"],
                                 "loss=cross_entropy needs class labels"),
    "two_class_loss_on_three": (["loss=bce", "data=iris"], "loss=bce is for two-class data"),
    "rows_zero": (["--rows", "0"], "explain --rows 0 is not allowed: it must be a positive"),
    "rows_negative": (["--rows=-2"], "explain --rows -2 is not allowed"),
    "rows_not_a_number": (["--rows=many"], "explain --rows 'many' is not a valid int"),
    "rows_without_value": (["loss=mse", "--rows"], "explain --rows needs a value"),
    "unknown_flag": (["--bogus", "loss=mse"], "explain does not take '--bogus'; its options "
                     "are --rows, then any override"),
    "multirun_flag": (["-m", "loss=mse"], "explain does not take '-m'"),
}  # fmt: skip
GOOD = {"mse_iris": ["loss=mse", "data=iris"],
        "focal_plugins_dir": ["--plugins-dir", str(FOCAL_FILE.parent), "loss=focal", "--rows",
                              "2"]}  # fmt: skip


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """Every command line case, each in an empty folder of its own: (folder, process)."""
    cases = {**{n: a for n, (a, _) in BAD.items()}, **GOOD}
    folders = {n: tmp_path_factory.mktemp(n) for n in cases}
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = {n: pool.submit(_cli, folders[n], *cases[n]) for n in cases}
        return {n: (folders[n], done[n].result()) for n in cases}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_exits_2_with_one_paragraph_and_writes_nothing(cli_results, name):
    folder, r = cli_results[name]
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr + r.stdout
    err = r.stderr.strip()
    assert err.startswith("lossbench: error: ") and "\n" not in err, err
    assert BAD[name][1] in err and "Fix:" in err
    assert r.stdout == "" and not list(folder.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(GOOD))
def test_explain_prints_and_writes_nothing_nor_tracks(cli_results, name):
    folder, r = cli_results[name]
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list(folder.iterdir()), "explain wrote files (an MLflow store, outputs/)"
    assert all(len(line) <= 100 for line in r.stdout.splitlines())
    rows = 2 if "--rows" in GOOD[name] else 4
    assert len(re.findall(r"^  training row \d+", r.stdout, re.M)) == rows
    for part in ("by hand" if name == "mse_iris" else "reference", "kernel", "g kernel"):
        assert part in r.stdout


# ---------------------------------------------------------------------------------------------
# the docs


def test_the_losses_page_names_every_builtin_and_its_pytorch_class(pm):
    text = (ROOT / "docs" / "losses.md").read_text()
    sections = dict(re.findall(r"^## `(\w+)`\n(.*?)(?=^## |\Z)", text, re.S | re.M))
    assert set(pm.registry.names("loss")) <= set(sections), "a built-in loss has no section"
    for name, torch_class in BUILTIN_TORCH.items():
        assert f"torch.nn.{torch_class}" in sections[name], name
        assert f"torch.nn.{torch_class}" in pm.registry.get("loss", name).description
        for part in ("Reduction", "Gradient", "PyTorch"):
            assert part in sections[name], (name, part)
    assert "python -m lossbench explain" in text
    for page in ("README.md", "docs/architecture.md"):  # both link to it
        assert "losses.md)" in (ROOT / page).read_text(), page
