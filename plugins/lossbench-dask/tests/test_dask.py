"""The Dask launcher's own tests: it registers as sweep.launcher=dask with its options, loading
it imports neither Dask nor the sweep machinery, and a scheduler that does not answer is
refused before any trial with the address and a fix."""

import subprocess
import sys

import pytest
from lossbench.errors import ConfigError
from lossbench.plugins import build_plugin_manager

import lossbench_dask


def test_registers_the_dask_launcher_with_its_options():
    pm = build_plugin_manager(entry_points=False, extra=[lossbench_dask])
    spec = pm.registry.launchers["dask"]
    assert spec.options is lossbench_dask.DaskOptions and spec.plugin
    assert spec.load().__name__ == "DaskLauncher"


def test_loading_the_plugin_imports_no_dask():
    modules = "'distributed', 'optuna'"
    code = f"import lossbench_dask, sys; print(*(m in sys.modules for m in ({modules})))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["False", "False"], r.stderr


def test_an_unreachable_scheduler_is_refused_with_a_fix():
    from lossbench_dask.launcher import DaskLauncher

    launcher = DaskLauncher.__new__(DaskLauncher)  # only what connecting reads
    launcher.cluster = None
    launcher.options = lossbench_dask.DaskOptions(address="tcp://127.0.0.1:9", connect_seconds=2)
    with pytest.raises(ConfigError, match=r"sweep.dask.address=tcp://127.0.0.1:9: .* Fix:"):
        launcher._connect()
