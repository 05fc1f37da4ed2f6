"""lossbench: train small neural networks on fused numba kernels, compare losses, optimizers and
learning rates with measured curves.

Python API::

    import lossbench
    run = lossbench.train(overrides=["loss=mse", "optimizer=sgd", "optimizer.lr=0.1"])
    run.history        # one dict per epoch
    run.params         # {"W0": ..., "b0": ...}
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lossbench")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

from lossbench.hookspecs import hookimpl  # noqa: E402
from lossbench.specs import (  # noqa: E402
    DatasetSpec,
    LossSpec,
    ModelLayout,
    ModelSpec,
    OptimizerSpec,
)


def train(cfg=None, *, overrides=(), output_dir=None, plugin_manager=None):
    """Train once; see ``lossbench.engine.train``."""
    from lossbench.engine import train as _train

    return _train(cfg, overrides=overrides, output_dir=output_dir, plugin_manager=plugin_manager)


def compose(overrides=()):
    """The config ``python -m lossbench OVERRIDES`` would use; see ``lossbench.config.compose``."""
    from lossbench.config import compose as _compose

    return _compose(overrides)


__all__ = [
    "__version__",
    "hookimpl",
    "train",
    "compose",
    "LossSpec",
    "OptimizerSpec",
    "ModelSpec",
    "ModelLayout",
    "DatasetSpec",
]
