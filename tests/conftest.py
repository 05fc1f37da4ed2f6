import os

import numpy as np
import pytest

from lossbench.plugins import build_plugin_manager, set_plugin_manager

# Tests never load whatever plugins happen to be installed: built-ins only, unless a test
# registers its own.
os.environ.setdefault("LOSSBENCH_LOAD_PLUGINS", "")

TINY = ["trainer.progress=false", "trainer.epochs=3"]


@pytest.fixture(scope="session")
def pm():
    manager = build_plugin_manager(entry_points=False)
    set_plugin_manager(manager)
    return manager


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def central_difference(f, x, eps=1e-6):
    """d f / d x by central differences (f scalar, x float64 array)."""
    grad = np.zeros_like(x)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        g[i] = (up - down) / (2 * eps)
    return grad
