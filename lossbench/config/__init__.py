"""Configuration over the YAML tree in ``conf/`` and the sweep presets in ``sweeps/``: the typed
schemas of the root, trainer, tracking and sweep (``schemas``), the ConfigStore filled with every
registered component's schema (``store``), composing a config as ``python -m lossbench
OVERRIDES`` would and as ``--multirun`` starts from (``compose``), where composing starts: the
primary config and more config folders (``source``), Hydra's errors said in one paragraph
(``errors``), and a config as YAML text, fast (``text``)."""

from lossbench.config.compose import (
    check_choices,
    compose,
    compose_multirun,
    compose_run,
    options_of,
    run_token,
)
from lossbench.config.schemas import (
    DTYPES,
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
    "PRUNERS",
    "SAMPLERS",
    "EarlyStoppingConfig",
    "MlflowTrackingConfig",
    "SweepConfig",
    "TrainerConfig",
    "check_choices",
    "compose",
    "compose_multirun",
    "compose_run",
    "config_dir",
    "node_class",
    "options_of",
    "presets_dir",
    "run_token",
    "store_configs",
]
