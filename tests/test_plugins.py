"""The plugin system: files, entry points, allow/deny lists, duplicate names, broken plugins."""

import textwrap

import pytest

import lossbench
from conftest import TINY
from lossbench.errors import ConfigError, PluginError
from lossbench.plugins import build_plugin_manager, describe

FOCAL_FILE = '''
"""A single-file plugin: a squared-hinge loss for one-hot targets, with a margin."""
from dataclasses import dataclass

import numpy as np
from numba import njit

import lossbench


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
    register(lossbench.LossSpec(name="sqhinge", hparams=Options, kernel=kernel,
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
    assert run.status == "finished" and run.hparams["loss"].margin == 0.5
    assert run.history[-1]["val_loss"] < run.history[0]["val_loss"]
    rows = {r["name"]: r for r in describe(pm)}
    assert rows["sqhinge"]["components"] == {"loss": ["sqhinge"]}


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
            register(lossbench.LossSpec(name="bad", hparams=NoOptions, kernel=kernel))
    """)
    )
    pm = build_plugin_manager(str(tmp_path), entry_points=False)
    with pytest.raises(
        PluginError,
        match="loss kernel of loss 'bad' from plugin 'badkernel' "
        "does not compile for the canonical signature",
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
