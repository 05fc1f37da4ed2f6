"""Composing a config outside Hydra's CLI, and reading a component's options from it.
Composing starts from the primary config ``lossbench.config.source`` names (lossbench's own
``config.yaml`` unless ``-cp``/``-cn`` name another)."""

from __future__ import annotations

import copy
import dataclasses
import secrets

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from lossbench.config.errors import (
    _suggest,
    check_deletions,
    check_interpolations,
    check_known_keys,
    translate,
)
from lossbench.config.source import config_source
from lossbench.config.store import (
    CONFIG_GROUPS,
    GROUPS,
    close_tracking,
    config_dir,
    store_configs,
    tracking_keys,
)
from lossbench.errors import ConfigError
from lossbench.plugins import get_plugin_manager
from lossbench.specs import KINDS


def _initialize():
    source = config_source()
    return initialize_config_dir(config_dir=source.path or str(config_dir()), version_base="1.3")
def run_token() -> str:
    """Six random hex digits, new for every run: the default run directory
    (``outputs/DATE/TIME-TOKEN``, conf/config.yaml) differs for runs started in the same
    second, on one machine or on several sharing a folder, whatever their clocks say."""
    return secrets.token_hex(3)


# cached like Hydra's ${now:...}: one value per composed config, however often it is read
OmegaConf.register_new_resolver("lossbench.run_token", run_token, use_cache=True, replace=True)


def options_of(spec, node):
    """The spec's options (an instance of its options dataclass) from a config node (DictConfig
    or dict)."""
    try:
        values = (
            OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        )
    except MissingMandatoryValue as exc:
        key = str(exc.full_key) if getattr(exc, "full_key", None) else str(exc)
        raise ConfigError(
            f"{key} must be set. Fix: pass {key}=VALUE on the command line."
        ) from None
    names = {f.name for f in dataclasses.fields(spec.options)}
    kwargs = {k: v for k, v in dict(values).items() if k in names}
    group = next(g for g, cls in KINDS.items() if isinstance(spec, cls))
    for k, v in kwargs.items():
        if v == "???":
            raise ConfigError(
                f"{group}.{k} must be set for {spec.name}. Fix: pass {group}.{k}=VALUE."
            )
    return spec.options(**kwargs)


def check_choices(overrides, registry) -> None:
    """Reject ``loss=NAME``-style overrides naming unknown components, with the choices."""
    for ov in overrides:
        key, sep, value = ov.partition("=")
        key = key.lstrip("+")
        if sep and key in GROUPS and value and "(" not in value and "," not in value:
            registry.get(key, value)
        if sep and key == "tracking" and value.startswith("[") and value.endswith("]"):
            _check_trackers(ov, value[1:-1].split(","), registry)


def _check_trackers(override: str, names: list[str], registry) -> None:
    """``tracking=[a,b]``: each a registered tracker (Hydra said only "Could not load")."""
    known = {*registry.trackers, "none"} | {p.stem for p in (config_dir() / "tracking").glob(
        "*.yaml")}  # fmt: skip
    for name in (n.strip() for n in names):
        if name not in known:
            raise ConfigError(
                f"{override}: {name!r} is not a tracker. Choices: {', '.join(sorted(known))}."
                f"{_suggest(name, known)} Fix: list installed trackers, e.g. "
                "tracking=[mlflow,NAME], or install the plugin that provides "
                f"{name!r} (`python -m lossbench plugins` lists what is loaded)."
            )


def compose(overrides=(), registry=None):
    """Compose the config as ``python -m lossbench OVERRIDES`` would, outside Hydra's CLI."""

    registry = registry or get_plugin_manager().registry
    overrides = list(overrides)
    check_choices(overrides, registry)
    store_configs(registry)
    return _checked(overrides, _compose_task, lambda cfg: cfg, registry)


def _compose_task(overrides):
    if GlobalHydra.instance().is_initialized():
        return _compose_checked(overrides)
    with _initialize():
        return _compose_checked(overrides)


def _compose_checked(overrides):
    cfg = hydra_compose(config_name=config_source().name, overrides=overrides)
    check_optional_choices(overrides)
    return cfg


# groups whose option the defaults list marks optional: Hydra skips a missing one silently
OPTIONAL_GROUPS = ("experiment",)


def check_optional_choices(overrides) -> None:
    """Refuse ``experiment=NAME`` naming no preset on the search path (Hydra composes the
    defaults without a word, and the run trains something else than the command says). Call
    it inside an initialized GlobalHydra."""
    for ov in overrides:
        key, sep, value = ov.partition("=")
        key = key.lstrip("+")
        if not sep or key not in OPTIONAL_GROUPS or value in ("", "null") or "," in value:
            continue
        loader = GlobalHydra.instance().config_loader()
        options = loader.get_group_options(key, config_name=config_source().name,
                                           overrides=list(overrides))  # fmt: skip
        if value not in options:
            raise ConfigError(
                f"{key}={value} is not a preset. Choices: {', '.join(sorted(options)) or 'none'}."
                f"{_suggest(value, options)} Fix: pass one of them, or add "
                f"{key}/{value}.yaml to a folder given with --config-dir (or hydra.searchpath)."
            )


def _checked(overrides: list[str], run, task_of, registry):
    """``run(overrides)`` with Hydra's and OmegaConf's errors said in one paragraph, and the
    keys of the composed task config (``task_of(cfg)``) checked against the schemas (and the
    registry's trackers: ``store.tracking_keys``); the ``tracking`` node closed again."""

    def default(key: str):
        """The value ``key`` has with the same group choices but no other override (None
        when even those do not compose)."""
        choices = [o for o in overrides if o.partition("=")[0] in CONFIG_GROUPS]
        try:
            base = _compose_task(choices)
        except (HydraException, OmegaConfBaseException):
            return None
        return OmegaConf.select(base, key) if key else base

    check_deletions(overrides, default)  # before: Hydra refuses some with a bare "Error merging"
    try:
        cfg = run(overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise translate(exc, overrides, default) from None
    task = task_of(cfg)
    check_interpolations(task)
    check_known_keys(task, default, tracking_keys(registry))
    close_tracking(cfg)
    return cfg


def compose_run(overrides, registry=None) -> DictConfig:
    """The config ``python -m lossbench OVERRIDES`` runs with, ``hydra`` node included (mode
    RUN), composed once and checked as ``compose`` checks it. ``hydra.main`` composes three
    times for one run (the check before it, once to read the mode, once to run: about 0.1 s
    each); the CLI composes with this and hands the result to Hydra's ``run_job`` itself.
    Call it inside an initialized GlobalHydra (``initialize_config_dir``)."""
    registry = registry or get_plugin_manager().registry
    overrides = list(overrides)
    check_choices(overrides, registry)
    store_configs(registry)
    if not any(o.partition("=")[0] == "hydra.mode" for o in overrides):
        overrides.append("hydra.mode=RUN")  # what hydra.main adds when the config sets none

    def run(overrides):
        cfg = GlobalHydra.instance().hydra.compose_config(
            config_source().name, overrides=overrides, run_mode=RunMode.RUN, from_shell=True,
            with_log_configuration=True,
        )  # fmt: skip
        check_optional_choices(overrides)
        return cfg

    def task_of(cfg):
        task = copy.deepcopy(cfg)
        with open_dict(task):
            del task["hydra"]
        return task

    return _checked(overrides, run, task_of, registry)


def compose_multirun(overrides, registry=None) -> DictConfig:
    """The config Hydra's ``--multirun`` starts from, with its ``hydra`` node (mode MULTIRUN,
    ``hydra.overrides.task`` holding the search space as typed, the sweep overrides not applied
    to the task config): what Hydra saves as ``multirun.yaml``. Call it after ``compose`` has
    checked the same overrides."""
    registry = registry or get_plugin_manager().registry
    store_configs(registry)

    def run():
        return GlobalHydra.instance().hydra.compose_config(
            config_source().name, overrides=list(overrides), run_mode=RunMode.MULTIRUN,
            with_log_configuration=False,
        )  # fmt: skip

    try:
        if GlobalHydra.instance().is_initialized():
            return run()
        with _initialize():
            return run()
    except (HydraException, OmegaConfBaseException) as exc:
        raise translate(exc, list(overrides), lambda key: None) from None
