"""Hydra's ConfigStore filled from lossbench's schemas and the plugin registry: every
registered component becomes an option of its group (``loss/mse``, ``optimizer/adam``, ...), a
structured config made from the spec's options dataclass plus a ``name`` field, so
``loss=huber loss.delta=2`` is type-checked by Hydra the moment the plugin is loaded."""

from __future__ import annotations

import dataclasses
import typing
import weakref
from dataclasses import field
from pathlib import Path
from types import SimpleNamespace

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from lossbench.config.schemas import (
    MlflowTrackingConfig,
    RootConfig,
    SweepConfig,
    TrainerConfig,
)
from lossbench.errors import PluginError
from lossbench.plugins import ENV_DISABLE
from lossbench.specs import KIND_TABLE

GROUPS = tuple(k.group for k in KIND_TABLE)  # the component groups plugins fill
# every config group a command line can choose an option of
CONFIG_GROUPS = (*GROUPS, "trainer", "tracking", "sweep", "experiment")
# trackers whose options are the ``tracking`` node itself (``tracking.uri``), not tracking.NAME:
# MLflow's, kept where they were when it was the only tracker
TOP_LEVEL_TRACKERS = ("mlflow",)
HPARAM_TYPES = "int, float, bool, str, an Enum, or list/dict/Optional of those"
_PACKAGE = Path(__file__).resolve().parent.parent


def presets_dir() -> Path | None:
    """The sweep presets: inside the installed package, or the repo's sweeps/."""
    for candidate in (_PACKAGE / "sweeps", _PACKAGE.parent / "sweeps"):
        if candidate.is_dir():
            return candidate
    return None


def config_dir() -> Path:
    """The directory holding config.yaml: inside the installed package, or the repo's conf/."""
    for candidate in (_PACKAGE / "conf", _PACKAGE.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"lossbench's config tree (config.yaml) is missing next to {_PACKAGE}")


def _unstorable(group: str, spec, problem: str, field_name: str | None = None) -> PluginError:
    """The error for an options dataclass Hydra cannot store, naming plugin and fix."""
    where = f" field {field_name!r}" if field_name else ""
    return PluginError(
        f"plugin {spec.plugin!r} registers {group} {spec.name!r} whose options dataclass "
        f"{spec.options.__name__}{where} cannot be stored as a Hydra config: {problem}. Fix: "
        f"give every field one of the types Hydra stores ({HPARAM_TYPES}; e.g. "
        f"list[float] instead of a NumPy array), or disable the plugin with "
        f"{ENV_DISABLE}={spec.plugin}."
    )


def node_class(group: str, spec) -> type:
    """A dataclass for ``spec``'s config node: ``name`` plus the hyperparameter fields."""
    try:
        hints = typing.get_type_hints(spec.options)
    except Exception as exc:  # e.g. an annotation naming something undefined
        raise _unstorable(group, spec, f"its annotations do not resolve ({exc})") from None
    fields = [("name", str, field(default=spec.name))]
    for f in dataclasses.fields(spec.options):
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


@dataclasses.dataclass
class _NoOptions:
    """A tracker without options: its node holds its name only."""


def _store_trackers(cs, registry, files: Path) -> None:
    """Each tracker's options as ``schema/tracking/NAME``; one without a YAML option in
    conf/tracking/ (a plugin's) also as the option ``tracking/NAME`` in the package
    ``tracking.NAME``, so ``tracking=[mlflow,NAME]`` selects both. With other trackers
    registered, MLflow's schema (the ``tracking`` node itself) is stored open (``struct``
    off): each selected tracker's node merges into it, whatever the list's order, and an
    unselected one leaves no key (no ``???``); ``close_tracking`` closes it once composed, and
    ``check_known_keys`` refuses any other key (``tracking_keys``)."""
    others = False
    for name, tracker in registry.trackers.items():
        if name in TOP_LEVEL_TRACKERS:
            continue
        spec = SimpleNamespace(name=name, options=tracker.options or _NoOptions,
                               plugin=tracker.plugin)  # fmt: skip
        node = node_class("tracking", spec)
        try:
            cs.store(group="schema/tracking", name=name, node=node, provider="lossbench")
        except Exception as exc:
            raise _unstorable("tracking", spec, str(exc).strip().splitlines()[0]) from None
        if not (files / "tracking" / f"{name}.yaml").is_file():
            cs.store(group="tracking", name=name, node=node, package=f"tracking.{name}",
                     provider="lossbench")  # fmt: skip
        others = True
    mlflow = OmegaConf.structured(MlflowTrackingConfig)
    if others:
        OmegaConf.set_struct(mlflow, False)  # typed, but takes the other trackers' nodes
    cs.store(group="schema/tracking", name="mlflow", node=mlflow, provider="lossbench")


def tracking_keys(registry) -> dict[str, set[str]]:
    """The keys the ``tracking`` node takes beyond MLflow's options: each other tracker's
    node (``tracking.NAME``), for ``config.errors.check_known_keys``."""
    return {"tracking": {n for n in registry.trackers if n not in TOP_LEVEL_TRACKERS}}


def close_tracking(cfg) -> None:
    """The composed ``tracking`` node closed again (``struct`` as the rest of the config):
    open only while composing (``_store_trackers``)."""
    node = cfg.get("tracking") if isinstance(cfg, DictConfig) else None
    if isinstance(node, DictConfig):
        OmegaConf.set_struct(node, None)


_LAST_STORED = None  # weakref to the registry whose nodes the ConfigStore holds


def root_schema(registry, sweep: type = SweepConfig) -> type:
    """``RootConfig``, with a node ``plugins`` holding each lifecycle plugin's own options
    (``register_options``) when plugins declare some, and ``sweep`` typed by ``sweep`` (the
    class ``sweep_schema`` made for the registry: one class, which the sweep group's options
    are made of too)."""
    if not registry.options:
        return _with_sweep(RootConfig, sweep)
    fields = [(name, cls, dataclasses.field(default_factory=cls))
              for name, (cls, _) in sorted(registry.options.items())]  # fmt: skip
    plugins = dataclasses.make_dataclass("PluginOptions", fields)
    try:
        OmegaConf.structured(plugins)
    except Exception as exc:
        owners = ", ".join(f"{n} ({p})" for n, (_, p) in sorted(registry.options.items()))
        raise PluginError(
            f"the options plugins declare ({owners}) cannot be stored as a config: "
            f"{str(exc).strip().splitlines()[0]}. Fix: give the dataclass fields of the types "
            f"Hydra stores ({HPARAM_TYPES}), each with a default."
        ) from None
    return dataclasses.make_dataclass(
        "RootWithPluginOptions",
        [("plugins", plugins, dataclasses.field(default_factory=plugins))],
        bases=(_with_sweep(RootConfig, sweep),),
    )


def _with_sweep(root: type, sweep: type) -> type:
    if sweep is SweepConfig:
        return root
    field_ = ("sweep", sweep, dataclasses.field(default_factory=sweep))
    return dataclasses.make_dataclass("RootWithLaunchers", [field_], bases=(root,))


def sweep_schema(registry) -> type:
    """``SweepConfig`` plus a node ``sweep.NAME`` for each registered launcher that declares
    options (``LauncherSpec.options``: ``sweep.ray.address=...``)."""
    taken = {f.name for f in dataclasses.fields(SweepConfig)}
    fields = []
    for name, spec in sorted(registry.launchers.items()):
        if spec.options is None:
            continue
        if name in taken:
            raise PluginError(
                f"plugin {spec.plugin!r} registers the launcher {name!r} with options, but "
                f"sweep.{name} is one of the sweep's own settings. Fix: rename the launcher "
                f"(the sweep's settings: {', '.join(sorted(taken))})."
            )
        fields.append((name, spec.options, dataclasses.field(default_factory=spec.options)))
    if not fields:
        return SweepConfig
    schema = dataclasses.make_dataclass("SweepWithLaunchers", fields, bases=(SweepConfig,))
    try:
        OmegaConf.structured(schema)
    except Exception as exc:
        owners = ", ".join(f"{n} ({registry.launchers[n].plugin})" for n, *_ in fields)
        raise PluginError(
            f"the options launchers declare ({owners}) cannot be stored as a config: "
            f"{str(exc).strip().splitlines()[0]}. Fix: give the dataclass fields of the types "
            f"Hydra stores ({HPARAM_TYPES}), each with a default."
        ) from None
    return schema


def store_configs(registry) -> None:
    """Put lossbench's schemas and every registered component into Hydra's ConfigStore (once
    per registry: storing costs ~50 ms, and a sweep worker composes a config per trial).

    Each component's schema goes to ``schema/GROUP/NAME``; a YAML option in conf/ (the
    built-ins) extends it through its defaults list, so Hydra type-checks the file and every
    override. A component without a YAML option (a plugin's) is stored as the option
    ``GROUP/NAME`` itself."""
    global _LAST_STORED
    if _LAST_STORED is not None and _LAST_STORED() is registry:
        return
    cs = ConfigStore.instance()
    files = config_dir()
    for group in GROUPS:
        for name, spec in registry.components[group].items():
            node = node_class(group, spec)
            try:  # storing validates the node (OmegaConf.structured)
                cs.store(group=f"schema/{group}", name=name, node=node, provider="lossbench")
            except Exception as exc:
                problem = str(exc).strip().splitlines()[0]
                key = getattr(exc, "full_key", None)
                raise _unstorable(group, spec, problem, str(key) if key else None) from None
            if not (files / group / f"{name}.yaml").is_file():
                cs.store(group=group, name=name, node=node, provider="lossbench")
    sweep = sweep_schema(registry)
    cs.store(name="base_config", node=root_schema(registry, sweep), provider="lossbench")
    cs.store(group="schema/trainer", name="default", node=TrainerConfig, provider="lossbench")
    _store_trackers(cs, registry, files)
    cs.store(group="sweep", name="none", node=sweep, provider="lossbench")
    folder = presets_dir()
    for preset in sorted(folder.glob("*.yaml")) if folder else []:
        node = OmegaConf.merge(
            OmegaConf.structured(sweep(name=preset.stem)), OmegaConf.load(preset)
        )
        cs.store(group="sweep", name=preset.stem, node=node, provider="lossbench")
    _LAST_STORED = weakref.ref(registry)
