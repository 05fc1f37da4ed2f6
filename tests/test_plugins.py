"""The plugin system: files, entry points, allow/deny lists, duplicate names, broken plugins."""

import re
import textwrap

import pytest

import lossbench
import lossbench.testing
from conftest import TINY
from lossbench.errors import ConfigError, PluginError
from lossbench.plugins import build_plugin_manager, describe

FOCAL_FILE = '''
"""A single-file plugin: a squared-hinge loss for one-hot targets, with a margin."""
from dataclasses import dataclass

import numpy as np
from numba import njit

import lossbench
import lossbench.testing


@dataclass
class Options:
    margin: float = 1.0


@njit(cache=True)
def kernel(pred, target, hp, grad):
    """L = mean_ij max(0, m - s_ij p_ij)^2 with s = 2 y - 1."""
    rows, cols = pred.shape
    n = rows * cols
    total = 0.0
    for i in range(rows):
        for j in range(cols):
            s = 2.0 * target[i, j] - 1.0
            h = hp[0] - s * pred[i, j]
            if h > 0:
                total += h * h
                grad[i, j] = -2.0 * h * s / n
            else:
                grad[i, j] = 0.0
    return total / n


def reference(pred, target, hp):
    s = 2 * target - 1
    h = np.maximum(0, hp[0] - s * pred)
    return float(np.mean(h * h)), -2 * h * s / pred.size


@lossbench.hookimpl
def register_losses(register):
    register(lossbench.LossSpec(name="sqhinge", options=Options, kernel=kernel,
                                reference=reference, target="values",
                                pack=lambda hp: [hp.margin]))
'''


@pytest.fixture
def plugin_dir(tmp_path):
    (tmp_path / "sqhinge.py").write_text(FOCAL_FILE)
    return tmp_path


def test_single_file_plugin_trains_on_the_fused_path(plugin_dir):
    pm = build_plugin_manager(str(plugin_dir), entry_points=False)
    spec = pm.registry.get("loss", "sqhinge")
    assert spec.plugin == "sqhinge"
    run = lossbench.train(
        overrides=[
            *TINY,
            "data=iris",
            "loss=sqhinge",
            "loss.margin=0.5",
            "trainer.epochs=10",
            "optimizer.lr=0.01",
        ],
        plugin_manager=pm,
    )
    assert run.status == "finished" and run.options["loss"].margin == 0.5
    assert run.history[-1]["val_loss"] < run.history[0]["val_loss"]
    rows = {r["name"]: r for r in describe(pm)}
    assert rows["sqhinge"]["components"] == {"loss": ["sqhinge"]}


def test_the_spelling_hparams_still_works_and_warns(tmp_path):
    """Before options= a spec took hparams= (and a run had .hparams, the kit hparams=): a
    plugin written then registers, trains and is checked as before, each old spelling warned
    with the new one named."""
    (tmp_path / "sqhinge.py").write_text(FOCAL_FILE.replace("options=Options", "hparams=Options"))
    with pytest.warns(DeprecationWarning, match=r"LossSpec\(hparams=...\) is now spelled options="):
        pm = build_plugin_manager(str(tmp_path), entry_points=False)
    spec = pm.registry.get("loss", "sqhinge")
    assert spec.options.__name__ == "Options" and spec.hparams is spec.options
    run = lossbench.train(overrides=[*TINY, "data=iris", "loss=sqhinge", "loss.margin=0.5"],
                          plugin_manager=pm)  # fmt: skip
    assert run.status == "finished"
    with pytest.warns(DeprecationWarning, match="Run.hparams is now spelled Run.options"):
        assert run.hparams["loss"].margin == 0.5
    cases = {"sqhinge": [{}, {"margin": 0.5}]}
    with pytest.warns(DeprecationWarning, match="LossSpec"):  # the file, loaded again
        new = lossbench.testing.checks_for(tmp_path / "sqhinge.py", options=cases)
    with pytest.warns(DeprecationWarning, match=r"checks_for\(hparams=...\) is now spelled"):
        old = lossbench.testing.checks_for(tmp_path / "sqhinge.py", hparams=cases)
    assert [c.id for c in old] == [c.id for c in new]
    with pytest.raises(TypeError, match="pass options= alone"):
        lossbench.LossSpec(name="x", options=spec.options, hparams=spec.options.__class__)


def test_plugin_hyperparameters_are_type_checked_by_hydra(plugin_dir):
    pm = build_plugin_manager(str(plugin_dir), entry_points=False)
    with pytest.raises(ConfigError, match="loss.margin=wide"):
        lossbench.train(overrides=[*TINY, "loss=sqhinge", "loss.margin=wide"], plugin_manager=pm)


def test_duplicate_names_name_both_plugins(tmp_path):
    (tmp_path / "clash.py").write_text(
        textwrap.dedent("""
        import lossbench
        from lossbench.builtin.losses import LOSSES

        @lossbench.hookimpl
        def register_losses(register):
            register(LOSSES[0])  # "mse" again
    """)
    )
    with pytest.raises(
        PluginError,
        match="two plugins register a loss named 'mse': 'lossbench.builtin.losses' and 'clash'",
    ):
        build_plugin_manager(str(tmp_path), entry_points=False)


def test_misspelled_hook_is_an_error(tmp_path):
    (tmp_path / "typo.py").write_text(
        textwrap.dedent("""
        import lossbench

        @lossbench.hookimpl
        def register_lossses(register):
            pass
    """)
    )
    with pytest.raises(PluginError, match="'typo' implements a hook lossbench does not have"):
        build_plugin_manager(str(tmp_path), entry_points=False)


def test_registering_something_else_is_an_error(tmp_path):
    (tmp_path / "wrong.py").write_text(
        textwrap.dedent("""
        import lossbench

        @lossbench.hookimpl
        def register_optimizers(register):
            register("lion")
    """)
    )
    with pytest.raises(PluginError, match="must be a lossbench.OptimizerSpec"):
        build_plugin_manager(str(tmp_path), entry_points=False)


def test_kernel_with_the_wrong_signature_names_the_component(tmp_path):
    (tmp_path / "badkernel.py").write_text(
        textwrap.dedent("""
        from dataclasses import dataclass
        from numba import njit
        import lossbench

        @dataclass
        class NoOptions:
            pass

        @njit
        def kernel(pred, target):  # two arguments instead of four
            return 0.0

        @lossbench.hookimpl
        def register_losses(register):
            register(lossbench.LossSpec(name="bad", options=NoOptions, kernel=kernel))
    """)
    )
    pm = build_plugin_manager(str(tmp_path), entry_points=False)
    with pytest.raises(
        PluginError,
        match=r"loss kernel of loss 'bad' from plugin 'badkernel' has the wrong signature: it "
        r"takes 2 arguments \(pred, target\), the canonical loss signature has 4: \(pred: "
        r"float32\[:, ::1\], target",
    ):
        lossbench.train(overrides=[*TINY, "data=iris", "loss=bad"], plugin_manager=pm)


def test_missing_plugin_dir_is_an_error(tmp_path):
    with pytest.raises(PluginError, match="does not exist"):
        build_plugin_manager(str(tmp_path / "nope"), entry_points=False)


def make_distribution(root, name, module_source, ep_name):
    """An installed-looking distribution (dist-info + module) under ``root``."""
    module = f"{name}_mod"
    (root / f"{module}.py").write_text(module_source)
    info = root / f"{name}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[lossbench]\n{ep_name} = {module}\n")


def test_entry_point_plugins_allow_and_deny_lists(tmp_path, monkeypatch):
    make_distribution(tmp_path, "lossbench_sqhinge", FOCAL_FILE, "sqhinge")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LOSSBENCH_LOAD_PLUGINS", raising=False)
    pm = build_plugin_manager()
    assert "sqhinge" in pm.registry.names("loss")
    row = next(r for r in describe(pm) if r["name"] == "sqhinge")
    assert row["version"] == "1.2.3" and row["source"] == "lossbench_sqhinge"
    monkeypatch.setenv("LOSSBENCH_LOAD_PLUGINS", "")
    assert "sqhinge" not in build_plugin_manager().registry.names("loss")
    monkeypatch.setenv("LOSSBENCH_LOAD_PLUGINS", "sqhinge")
    assert "sqhinge" in build_plugin_manager().registry.names("loss")
    monkeypatch.delenv("LOSSBENCH_LOAD_PLUGINS")
    monkeypatch.setenv("LOSSBENCH_DISABLE_PLUGINS", "sqhinge")
    assert "sqhinge" not in build_plugin_manager().registry.names("loss")


def test_entry_point_that_fails_to_import_names_distribution_and_fix(tmp_path, monkeypatch):
    make_distribution(tmp_path, "lossbench_broken", "raise RuntimeError('boom')\n", "broken")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LOSSBENCH_LOAD_PLUGINS", raising=False)
    with pytest.raises(PluginError) as info:
        build_plugin_manager()
    text = str(info.value)
    assert "plugin 'broken' from the distribution lossbench_broken 1.2.3 failed to import" in text
    assert "RuntimeError: boom" in text and "LOSSBENCH_DISABLE_PLUGINS=broken" in text


def test_managers_are_independent(plugin_dir):
    build_plugin_manager(str(plugin_dir), entry_points=False)
    assert "sqhinge" not in build_plugin_manager(entry_points=False).registry.names("loss")


def write_plugin(directory, name, source):
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return directory


def test_kernel_numba_cannot_compile_names_the_line_and_the_fix(tmp_path):
    write_plugin(
        tmp_path,
        "nocompile",
        """
        from dataclasses import dataclass
        from numba import njit
        import lossbench

        @dataclass
        class NoOptions:
            pass

        @njit
        def kernel(pred, target, hp, grad):
            return pred.no_such_attribute

        @lossbench.hookimpl
        def register_losses(register):
            register(lossbench.LossSpec(name="nocompile", options=NoOptions, kernel=kernel))
        """,
    )
    pm = build_plugin_manager(str(tmp_path), entry_points=False)
    with pytest.raises(PluginError) as info:
        lossbench.train(overrides=[*TINY, "data=iris", "loss=nocompile"], plugin_manager=pm)
    text = str(info.value)
    assert "loss kernel of loss 'nocompile' from plugin 'nocompile' does not compile" in text
    assert "Unknown attribute 'no_such_attribute'" in text and "line 12 of nocompile.py" in text
    assert "give only the NumPy reference (the slow path)" in text


def test_a_register_hook_that_raises_names_plugin_hook_and_fix(tmp_path):
    write_plugin(
        tmp_path,
        "raises",
        """
        import lossbench

        @lossbench.hookimpl
        def register_optimizers(register):
            raise KeyError("lion")
        """,
    )
    with pytest.raises(
        PluginError,
        match=r"plugin 'raises' raised KeyError in its register_optimizers hook: 'lion'\. Fix "
        r"the plugin, or disable it with LOSSBENCH_DISABLE_PLUGINS=raises\.",
    ):
        build_plugin_manager(str(tmp_path), entry_points=False)


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            "lossbench.LossSpec(name='empty', options=Options)",
            "registers loss 'empty' without numba kernels (kernel) and without NumPy references",
        ),
        (
            "lossbench.LossSpec(name='nodc', options=dict, reference=lambda p, t, h: (0.0, p))",
            "registers loss 'nodc' with options=<class 'dict'>, which is not a dataclass",
        ),
        (
            "lossbench.ModelSpec(name='half', options=Options, forward=MODELS[0].forward)",
            "registers model 'half' with only some of its kernels (forward, backward)",
        ),
    ],
)
def test_specs_that_cannot_train_are_rejected_at_registration(tmp_path, spec, message):
    group = spec.split("Spec")[0].split(".")[1].lower()
    hook = {"loss": "register_losses", "model": "register_models"}[group]
    write_plugin(
        tmp_path,
        "incomplete",
        f"""
        from dataclasses import dataclass
        import lossbench
        from lossbench.builtin.models import MODELS

        @dataclass
        class Options:
            pass

        @lossbench.hookimpl
        def {hook}(register):
            register({spec})
        """,
    )
    with pytest.raises(PluginError, match=re.escape(message)):
        build_plugin_manager(str(tmp_path), entry_points=False)


UNSTORABLE = """
from dataclasses import dataclass, field

import numpy as np

import lossbench
import lossbench.testing
from lossbench.builtin.losses import LOSSES


@dataclass
class Options:
    weights: np.ndarray = field(default_factory=lambda: np.ones(3))


@lossbench.hookimpl
def register_losses(register):
    register(lossbench.LossSpec(name="weighted", options=Options, kernel=LOSSES[0].kernel,
                                reference=LOSSES[0].reference))
"""


def test_hyperparameters_hydra_cannot_store_name_plugin_field_and_fix(tmp_path, monkeypatch):
    write_plugin(tmp_path, "unstorable", UNSTORABLE)
    pm = build_plugin_manager(str(tmp_path), entry_points=False)
    with pytest.raises(PluginError) as info:
        lossbench.train(overrides=[*TINY, "data=iris"], plugin_manager=pm)
    text = str(info.value)
    assert (
        "plugin 'unstorable' registers loss 'weighted' whose options dataclass Options "
        "field 'weights' cannot be stored as a Hydra config: Unexpected type annotation: "
        "ndarray" in text
    )
    assert "int, float, bool, str, an Enum, or list/dict/Optional of those" in text
    assert "LOSSBENCH_DISABLE_PLUGINS=unstorable" in text
    # the fix it names works: the broken plugin is skipped, nothing is uninstalled
    monkeypatch.setenv("LOSSBENCH_DISABLE_PLUGINS", "unstorable")
    pm = build_plugin_manager(str(tmp_path), entry_points=False)
    assert lossbench.train(overrides=[*TINY, "data=iris"], plugin_manager=pm).status == "finished"


def test_a_distribution_can_be_disabled_by_its_distribution_name(tmp_path, monkeypatch):
    make_distribution(tmp_path, "lossbench_sqhinge", FOCAL_FILE, "sqhinge")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("LOSSBENCH_LOAD_PLUGINS", raising=False)
    monkeypatch.setenv("LOSSBENCH_DISABLE_PLUGINS", "lossbench-sqhinge")  # pip's spelling
    assert "sqhinge" not in build_plugin_manager().registry.names("loss")


# ---------------------------------------------------------------------------------------------
# the plugin interface version (lossbench.specs.PLUGIN_API) and what an optimizer must give

OLD_OPTIMIZER = """
from dataclasses import dataclass
from numba import njit
import lossbench
import lossbench.testing

@dataclass
class Options:
    lr: float = 0.01

@njit(cache=True)
def kernel(p, g, state, hp, t, lr):  # interface version 1: no scalars
    for i in range(p.shape[0]):
        p[i] -= lr * g[i]

def reference(p, g, state, hp, t, lr):
    p -= lr * g

@lossbench.hookimpl
def register_optimizers(register):
    register(lossbench.OptimizerSpec(name="old", options=Options, {fields}))
"""


@pytest.mark.parametrize(
    "fields,message",
    [
        ("kernel=kernel, reference=reference, api=1", "for plugin interface version 1"),
        ("kernel=kernel, reference=reference", "whose reference takes 6 arguments"),
        ("kernel=kernel, reference=reference, api=3", "plugin interface version 3, which"),
    ],
)
def test_a_plugin_for_interface_version_1_is_refused_with_what_to_change(
    tmp_path, fields, message
):
    write_plugin(tmp_path, "oldopt", OLD_OPTIMIZER.format(fields=fields))
    with pytest.raises(PluginError) as info:
        build_plugin_manager(str(tmp_path), entry_points=False)
    text = str(info.value)
    assert message in text and "plugin 'oldopt' registers optimizer 'old'" in text, text
    if "version 3" not in message:
        assert "step(params, grads, state, scalars, hp, t, lr)" in text, text
        assert "float64" in text and "api=2" in text, text


def test_an_optimizer_kernel_with_the_version_1_signature_says_what_changed(tmp_path):
    write_plugin(tmp_path, "oldkernel", OLD_OPTIMIZER.format(fields="kernel=kernel"))
    pm = build_plugin_manager(str(tmp_path), entry_points=False)
    with pytest.raises(PluginError) as info:
        lossbench.train(overrides=[*TINY, "data=iris", "optimizer=old"], plugin_manager=pm)
    text = str(info.value)
    assert "takes 6 arguments (p, g, state, hp, t, lr)" in text, text
    assert "signature of plugin interface version 1" in text, text
    assert "add the scalars argument to the optimizer kernel" in text, text


def test_a_version_1_plugin_on_the_command_line_exits_2_without_a_traceback(tmp_path):
    import subprocess  # only this test runs the command line
    import sys

    old = OLD_OPTIMIZER.format(fields="kernel=kernel, reference=reference")
    write_plugin(tmp_path, "oldopt", old)
    r = subprocess.run(
        [sys.executable, "-m", "lossbench", "--plugins-dir", str(tmp_path), "optimizer=old",
         *TINY, "data=iris", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "plugin interface version 1" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "options,found",
    [("learning_rate: float = 0.01", "has no field lr"), ("lr: int = 1", "declares lr as 'int'")],
)
def test_an_optimizer_without_a_float_lr_field_is_refused(tmp_path, options, found):
    source = OLD_OPTIMIZER.replace("lr: float = 0.01", options).replace(
        "def kernel(p, g, state, hp, t, lr)", "def kernel(p, g, state, scalars, hp, t, lr)"
    )
    write_plugin(tmp_path, "nolr", source.format(fields="kernel=kernel"))
    with pytest.raises(PluginError) as info:
        build_plugin_manager(str(tmp_path), entry_points=False)
    text = str(info.value)
    assert f"options dataclass Options {found}" in text, text
    assert "Fix: add the field lr: float = 0.001 (with your default)" in text, text
    # the kit says the same, as its one failing check
    (check,) = lossbench.testing.checks_for(tmp_path / "nolr.py")
    with pytest.raises(lossbench.testing.ConformanceError, match="has no field lr|declares lr"):
        check()


def test_plugins_dir_loads_only_what_the_docs_say(tmp_path):
    """Every ``*.py`` directly in the folder, except hidden (``.x.py``) and private (``_x.py``)
    files: an editor's backup, a helper module imported by a plugin."""
    (tmp_path / "shown.py").write_text(
        "import lossbench\n"
        "@lossbench.hookimpl\n"
        "def on_run_start(run):\n"
        "    pass\n"
    )
    for name in (".hidden.py", "_helper.py", "__init__.py"):
        (tmp_path / name).write_text("raise RuntimeError('this file must not be loaded')\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deeper.py").write_text("raise RuntimeError('not in subfolders')\n")
    pm = build_plugin_manager(str(tmp_path), entry_points=False)
    names = [name for name, _ in pm.list_name_plugin()]
    assert "shown" in names
    assert not [n for n in names if "hidden" in n or "helper" in n or "__init__" in n]
