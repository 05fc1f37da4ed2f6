"""lossbench: train small neural networks on fused numba kernels, compare losses, optimizers and
learning rates with measured curves.

Python API::

    import lossbench
    run = lossbench.train(overrides=["loss=mse", "optimizer=sgd", "optimizer.lr=0.1"])
    run.history        # one dict per epoch
    run.params         # {"W0": ..., "b0": ...}

This module is the public API only; docs/architecture.md maps the packages behind it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lossbench._version import __version__
from lossbench.hookspecs import hookimpl
from lossbench.launcher import EXIT_LOST, Launcher, LauncherSpec
from lossbench.specs import (
    PLUGIN_API,
    DatasetSpec,
    LossSpec,
    ModelLayout,
    ModelSpec,
    OptimizerSpec,
    ParamGroup,
    ScheduleSpec,
)

if TYPE_CHECKING:
    from lossbench.training import Run


def train(cfg=None, *, overrides=(), output_dir=None, plugin_manager=None) -> Run:
    """Train once; see ``lossbench.training.train``."""
    # start-up: numba, Hydra and the kernels load on the first train, not on `import lossbench`
    from lossbench.training import train as _train

    return _train(cfg, overrides=overrides, output_dir=output_dir, plugin_manager=plugin_manager)


def compose(overrides=()):
    """The config ``python -m lossbench OVERRIDES`` would use; see ``lossbench.config.compose``."""
    from lossbench.config import compose as _compose  # start-up: as train

    return _compose(overrides)


def __getattr__(name: str):
    if name == "Run":  # the object hooks receive and train returns
        from lossbench.training import Run  # start-up: `import lossbench` loads no numba

        return Run
    raise AttributeError(f"module 'lossbench' has no attribute {name!r}")


__all__ = [
    "__version__",
    "hookimpl",
    "train",
    "compose",
    "Run",
    "LossSpec",
    "OptimizerSpec",
    "ModelSpec",
    "ModelLayout",
    "ParamGroup",
    "DatasetSpec",
    "ScheduleSpec",
    "Launcher",
    "LauncherSpec",
    "EXIT_LOST",
    "PLUGIN_API",
]
