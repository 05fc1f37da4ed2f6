"""Where composing starts: the primary config (lossbench's ``conf/config.yaml``, or the one
``-cp/--config-path`` and ``-cn/--config-name`` name, as on Hydra's command line) and more
config folders (``-cd/--config-dir``, e.g. a team's ``experiment/`` presets), which reach
Hydra as one ``hydra.searchpath`` override, so a sweep's trials compose with them and their
rerun commands keep them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from lossbench.config.store import config_dir
from lossbench.errors import ConfigError

FLAGS = {"-cd": "config_dir", "--config-dir": "config_dir", "-cp": "config_path",
         "--config-path": "config_path", "-cn": "config_name", "--config-name": "config_name"}


@dataclasses.dataclass
class ConfigSource:
    """The primary config: its folder (None: lossbench's conf/) and name."""

    path: str | None = None
    name: str = "config"


_SOURCE = ConfigSource()


def use_config(path: str | None = None, name: str | None = None) -> None:
    """Compose from the primary config ``name`` in the folder ``path`` (None: lossbench's);
    without arguments, lossbench's own ``config``."""
    _SOURCE.path, _SOURCE.name = path, name or "config"


def config_source() -> ConfigSource:
    """The primary config composing starts from (``use_config``)."""
    return _SOURCE


def read_config_flags(argv: list[str]) -> tuple[list[str], dict]:
    """The arguments without the config flags, and the flags' values: ``config_dir`` (a list:
    Hydra takes one, lossbench any number), ``config_path`` and ``config_name`` (None when not
    given); folders made absolute and checked."""
    out, rest = [], list(argv)
    flags: dict = {"config_dir": [], "config_path": None, "config_name": None}
    while rest:
        arg = rest.pop(0)
        name, eq, value = arg.partition("=")
        if name not in FLAGS:
            out.append(arg)
            continue
        if not eq:
            if not rest:
                raise ConfigError(f"{name} needs a value: {name} DIR (or -cn NAME).")
            value = rest.pop(0)
        key = FLAGS[name]
        if key == "config_dir":
            flags[key].append(_folder(name, value))
        else:
            flags[key] = value if key == "config_name" else _folder(name, value)
    return out, flags


def _folder(flag: str, value: str) -> str:
    path = Path(os.path.expanduser(value)).absolute()
    if not path.is_dir():
        raise ConfigError(
            f"{flag} {value}: no such folder ({path}). Fix: pass the folder that holds your "
            "config files (for --config-dir: the one with experiment/, data/, ... inside)."
        )
    return str(path)


def _searchpath(arg: str) -> bool:
    return arg.lstrip("+").startswith("hydra.searchpath=")


def with_searchpath(args: list[str], flags: dict) -> list[str]:
    """``args`` with the command's ``hydra.searchpath`` and the ``--config-dir`` folders as one
    override (and lossbench's own config tree when ``--config-path`` names another primary
    folder, so its groups are found)."""
    given = [a for a in args if _searchpath(a)]
    paths = []
    if given:
        value = given[-1].split("=", 1)[1].strip()
        paths = [p.strip().strip("'\"") for p in value.strip("[]").split(",") if p.strip()]
    paths += [f"file://{d}" for d in flags["config_dir"]]
    if flags["config_path"]:
        paths.append(f"file://{config_dir()}")
    paths = list(dict.fromkeys(paths))  # each folder once
    rest = [a for a in args if not _searchpath(a)]
    return [*rest, f"hydra.searchpath=[{','.join(paths)}]"] if paths else rest


def is_searchpath(arg: str) -> bool:
    """Whether ``arg`` is a ``hydra.searchpath=[...]`` override."""
    return _searchpath(arg)


def flag_args(flags: dict) -> list[str]:
    """The primary-config flags again, for a rerun command (``-cp DIR -cn NAME``)."""
    out = []
    if flags.get("config_path"):
        out += ["-cp", flags["config_path"]]
    if flags.get("config_name"):
        out += ["-cn", flags["config_name"]]
    return out
