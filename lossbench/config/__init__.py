"""Configuration: the schemas of lossbench's own groups, the ConfigStore filled from the
plugin registry, and composing a config outside the CLI.

The config tree is ``conf/`` (shipped inside the wheel as ``lossbench/conf``): ``config.yaml``
holds the defaults list; the sweep presets are ``sweeps/*.yaml`` (the ``sweep`` group). Every
registered component is an option of its group, type-checked by Hydra (``store``); the trainer,
tracking and sweep schemas are dataclasses with typed choice fields (``schemas``); ``compose``
builds a config as ``python -m lossbench OVERRIDES`` would.
"""

from lossbench.config.compose import check_choices, compose, hparams
from lossbench.config.schemas import (
    DTYPES,
    LR_SCHEDULES,
    PRUNERS,
    SAMPLERS,
    EarlyStoppingConfig,
    MlflowTrackingConfig,
    SweepConfig,
    TrainerConfig,
)
from lossbench.config.store import GROUPS, config_dir, node_class, presets_dir, store_configs

__all__ = [
    "DTYPES",
    "GROUPS",
    "LR_SCHEDULES",
    "PRUNERS",
    "SAMPLERS",
    "EarlyStoppingConfig",
    "MlflowTrackingConfig",
    "SweepConfig",
    "TrainerConfig",
    "check_choices",
    "compose",
    "config_dir",
    "hparams",
    "node_class",
    "presets_dir",
    "store_configs",
]
