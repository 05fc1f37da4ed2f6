"""Hydra configuration: the config tree, the schemas plugins bring, and composing outside a CLI.

The primary config is ``conf/config.yaml`` (shipped inside the wheel as ``lossbench/conf``).
Every registered component becomes a Hydra config option in its group (``loss/mse``,
``optimizer/adam``, ...): a structured config made from the spec's hyperparameter dataclass plus
a ``name`` field, so ``loss=huber loss.delta=2`` is type-checked by Hydra the moment the plugin is
loaded. The trainer's options are the ``TrainerConfig`` dataclass below.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lossbench.errors import ConfigError, PluginError

GROUPS = ("data", "model", "loss", "optimizer")
DTYPES = ("float32", "float64")
LR_SCHEDULES = ("constant", "step", "cosine")


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    monitor: str = "val_loss"
    patience: int = 10
    min_delta: float = 0.0


@dataclass
class TrainerConfig:
    """Training loop options (group ``trainer``, option ``default``)."""

    epochs: int = 50
    batch_size: int = 32
    shuffle: bool = True
    dtype: str = "float32"
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    step_size: int = 10
    gamma: float = 0.1
    min_lr: float = 0.0
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    progress: bool = True
    plots: bool = True  # loss_curve.png (and the MLflow confusion matrix); sweeps turn it off


SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp", "qmc")
PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband", "patient")


@dataclass
class SweepConfig:
    """Sweep settings (group ``sweep``; presets from sweeps/*.yaml). Names follow Hydra's Optuna
    sweeper where they overlap; ``hydra.sweeper.X=...`` is accepted as ``sweep.X=...``."""

    name: str = "none"
    params: dict[str, str] = field(default_factory=dict)  # key -> search-space expression
    overrides: list[str] = field(default_factory=list)  # fixed for every trial
    sampler: str = "tpe"
    pruner: str = "median"
    direction: Any = "minimize"  # a list makes the study multi-objective
    metric: Any = "val_loss"  # one per direction
    n_trials: int = 20  # total for the study, across workers and restarts
    n_jobs: int = 1  # worker processes on this machine
    storage: str | None = None  # default: a journal file in the sweep directory
    study_name: str | None = None  # default: the preset's name, or one made from the space
    seed: int = 0
    pruner_warmup_epochs: int = 3  # epochs a trial always runs before it can be pruned
    heartbeat_seconds: float = 5.0
    grace_seconds: float = 60.0  # a RUNNING trial silent this long is failed and retried


def presets_dir() -> Path | None:
    """The sweep presets: inside the installed package, or the repo's sweeps/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sweeps", here.parent / "sweeps"):
        if candidate.is_dir():
            return candidate
    return None


def config_dir() -> Path:
    """The directory holding config.yaml: inside the installed package, or the repo's conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"lossbench's config tree (config.yaml) is missing next to {here}")


HPARAM_TYPES = "int, float, bool, str, an Enum, or list/dict/Optional of those"


def _unstorable(group: str, spec, problem: str, field_name: str | None = None) -> PluginError:
    """The error for a hyperparameter dataclass Hydra cannot store, naming plugin and fix."""
    from lossbench.plugins import ENV_DISABLE

    where = f" field {field_name!r}" if field_name else ""
    return PluginError(
        f"plugin {spec.plugin!r} registers {group} {spec.name!r} whose hyperparameter dataclass "
        f"{spec.hparams.__name__}{where} cannot be stored as a Hydra config: {problem}. Fix: "
        f"give every field one of the types Hydra stores ({HPARAM_TYPES}; e.g. "
        f"list[float] instead of a NumPy array), or disable the plugin with "
        f"{ENV_DISABLE}={spec.plugin}."
    )


def node_class(group: str, spec) -> type:
    """A dataclass for ``spec``'s config node: ``name`` plus the hyperparameter fields."""
    try:
        hints = typing.get_type_hints(spec.hparams)
    except Exception as exc:  # e.g. an annotation naming something undefined
        raise _unstorable(group, spec, f"its annotations do not resolve ({exc})") from None
    fields = [("name", str, field(default=spec.name))]
    for f in dataclasses.fields(spec.hparams):
        if f.name == "name":
            raise _unstorable(
                group, spec, "'name' is reserved for the component's name; rename it", "name"
            )
        if f.default is not dataclasses.MISSING:
            fields.append((f.name, hints[f.name], field(default=f.default)))
        elif f.default_factory is not dataclasses.MISSING:
            fields.append((f.name, hints[f.name], field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, hints[f.name], field(default="???")))
    cls_name = f"{group.capitalize()}_{spec.name}"
    return dataclasses.make_dataclass(cls_name, fields)


_LAST_STORED = None  # weakref to the registry whose nodes the ConfigStore holds


def store_configs(registry) -> None:
    """Put every registered component and the trainer schema into Hydra's ConfigStore (once
    per registry: storing costs ~50 ms, and a sweep worker composes a config per trial)."""
    global _LAST_STORED
    import weakref

    from hydra.core.config_store import ConfigStore

    if _LAST_STORED is not None and _LAST_STORED() is registry:
        return

    cs = ConfigStore.instance()
    for group in GROUPS:
        for name, spec in registry.components[group].items():
            node = node_class(group, spec)
            try:  # storing validates the node (OmegaConf.structured)
                cs.store(group=group, name=name, node=node, provider="lossbench")
            except Exception as exc:
                problem = str(exc).strip().splitlines()[0]
                key = getattr(exc, "full_key", None)
                raise _unstorable(group, spec, problem, str(key) if key else None) from None
    cs.store(group="trainer", name="default", node=TrainerConfig, provider="lossbench")
    from lossbench.builtin.tracking import MlflowTrackingConfig

    cs.store(group="tracking", name="mlflow", node=MlflowTrackingConfig, provider="lossbench")
    cs.store(group="sweep", name="none", node=SweepConfig, provider="lossbench")
    folder = presets_dir()
    for preset in sorted(folder.glob("*.yaml")) if folder else []:
        from omegaconf import OmegaConf

        node = OmegaConf.merge(
            OmegaConf.structured(SweepConfig(name=preset.stem)), OmegaConf.load(preset)
        )
        cs.store(group="sweep", name=preset.stem, node=node, provider="lossbench")
    _LAST_STORED = weakref.ref(registry)


def hparams(spec, node):
    """The spec's hyperparameter dataclass filled from a config node (DictConfig or dict)."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        values = (
            OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        )
    except MissingMandatoryValue as exc:
        key = str(exc.full_key) if getattr(exc, "full_key", None) else str(exc)
        raise ConfigError(
            f"{key} must be set. Fix: pass {key}=VALUE on the command line."
        ) from None
    names = {f.name for f in dataclasses.fields(spec.hparams)}
    kwargs = {k: v for k, v in dict(values).items() if k in names}
    for k, v in kwargs.items():
        if v == "???":
            raise ConfigError(
                f"{_group_of(spec)}.{k} must be set for {spec.name}. Fix: pass "
                f"{_group_of(spec)}.{k}=VALUE."
            )
    return spec.hparams(**kwargs)


def _group_of(spec) -> str:
    from lossbench.specs import KINDS

    return next(g for g, cls in KINDS.items() if isinstance(spec, cls))


def check_choices(overrides, registry) -> None:
    """Reject ``loss=NAME``-style overrides naming unknown components, with the choices."""
    for ov in overrides:
        key, sep, value = ov.partition("=")
        key = key.lstrip("+")
        if sep and key in GROUPS and value and "(" not in value and "," not in value:
            registry.get(key, value)


def compose(overrides=(), registry=None):
    """Compose the config as ``python -m lossbench OVERRIDES`` would, outside Hydra's CLI."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lossbench.plugins import get_plugin_manager

    registry = registry or get_plugin_manager().registry
    overrides = list(overrides)
    check_choices(overrides, registry)
    store_configs(registry)
    try:
        if GlobalHydra.instance().is_initialized():
            return hydra_compose(config_name="config", overrides=overrides)
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"the overrides {overrides} do not fit the config: {exc}") from None
