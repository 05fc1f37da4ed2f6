"""Hydra's and OmegaConf's composition errors, said in lossbench's one paragraph: the key and
the value, what the key accepts (its choices, its type, its sibling keys), and the fix. Also the
check Hydra leaves out: a ``+group.key=...`` that adds a key the component does not have."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re

from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    ValidationError,
)

from lossbench.errors import ConfigError

TYPE_NAMES = {"Integer": "an integer", "Float": "a number", "bool": "true or false"}
GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def _value_of(overrides, key: str) -> str | None:
    """The value the overrides give ``key`` (the last one wins, as in Hydra)."""
    found = None
    for ov in overrides:
        k, sep, v = ov.partition("=")
        if sep and k.lstrip("+~") == key:
            found = v
    return found


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]}?" if close else ""


def _cause(exc: BaseException):
    """The innermost OmegaConf error under a Hydra composition error (it names the key)."""
    found, x = None, exc
    while x is not None:
        if isinstance(x, ValidationError | ConfigAttributeError | ConfigKeyError):
            found = found or x
        x = x.__cause__ or x.__context__
    return found


def translate(exc: BaseException, overrides, default) -> ConfigError:
    """A ``ConfigError`` for a failed composition of ``overrides``; ``default`` gives a key's
    default value for the example (a callable: key -> value or None)."""
    text = str(exc).strip()
    if isinstance(exc, OverrideParseException):
        return _unreadable_override(text, overrides)
    missing = re.search(r"Could not load 'schema/(\w+)/(\w+)'", text)
    if missing:
        return _unregistered_choice(*missing.groups(), overrides)
    if isinstance(exc, MissingConfigException):
        primary = re.search(r"(Cannot find primary config '.+?'|Could not load '.+?')", text)
        if primary and "/" not in primary.group(1):
            return ConfigError(
                f"{primary.group(1)}. Fix: check --config-name/-cn and --config-path/-cp (or "
                "--config-dir): the config must be NAME.yaml in one of those folders; "
                "lossbench's own primary config is config (in its conf/)."
            )
        found = re.search(r"Could not find '(.+?)/(.+?)'", text)
        options = re.findall(r"^\t(\S+)$", text.split("Config search path")[0], re.M)
        if found:
            group, name = found.groups()
            return ConfigError(
                f"{group}={name} is not an option of {group}. Choices: {', '.join(options)}."
                f"{_suggest(name, options)} Fix: pass {group}={options[0] if options else '...'}."
            )
    absent = re.search(r"Could not delete from config\. '(.+?)' does not exist", text)
    if absent:
        return ConfigError(
            f"~{absent.group(1)} deletes {absent.group(1)}, which the config does not have. "
            f"Fix: drop ~{absent.group(1)}, or check its spelling (python -m lossbench --cfg job "
            "shows the whole config)."
        )
    cause = _cause(exc)
    key = str(getattr(cause, "full_key", "") or "")
    message = str(cause).splitlines()[0] if cause is not None else text.splitlines()[0]
    value = _value_of(overrides, key.split("[")[0]) if key else None
    if isinstance(cause, ValidationError) and key:
        base = key.split("[")[0]  # model.hidden[0] -> model.hidden: name what the user typed
        error = _invalid_value(base, value, message, default(base))
        if base != key:
            error = ConfigError(
                str(error).replace(f"{base} must be", f"every entry of {base} must be")
            )
        return error
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and key:
        return _moved_key(key, overrides) or _unknown_key(key, default)
    return ConfigError(f"the overrides {' '.join(overrides)} do not fit the config: {message}")


def _unreadable_override(text: str, overrides) -> ConfigError:
    """The one override Hydra's lexer stopped in, and the character, with the quoting that
    reads it when quotes would (unicode, ``~``, ``!`` ... are not allowed unquoted)."""
    lines = text.splitlines()
    bad = re.search(r"Error parsing override '(.+?)'", text)
    head = re.match(r"\w+: (.*)$", lines[0])
    what = bad.group(1) if bad else head.group(1) if head else " ".join(overrides)
    at = lines[1].find("^") - (len(lines[0]) - len(what)) if head and len(lines) > 1 else -1
    key, sep, value = what.partition("=")
    if sep and 0 <= at < len(what) and _reads(f'{key}="{value}"'):
        return ConfigError(
            f"cannot read the override {what!r}: the character {what[at]!r} needs quotes in "
            "Hydra's override grammar (unquoted values are letters, digits and _-+./:\\ and a "
            f"few more, ASCII only). Fix: quote the value, and the whole argument for the "
            f"shell: '{key}=\"{value}\"' ({GRAMMAR})."
        )
    reason = lines[1].strip() if len(lines) > 1 and not head else lines[0]
    return ConfigError(
        f"cannot read the override {what!r} ({reason}). Fix: write KEY=VALUE, e.g. "
        f"optimizer.lr=0.01, quoting a value with other characters: 'KEY=\"VALUE\"' "
        f"(Hydra's override grammar: {GRAMMAR})."
    )


def _reads(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser  # loaded by Hydra

    try:
        OverridesParser.create().parse_overrides([override])
    except OverrideParseException:
        return False
    return True


# the built-in plugin that gives each group's built-in options (LOSSBENCH_DISABLE_PLUGINS)
_BUILTINS = {"loss": "losses", "optimizer": "optimizers", "model": "models", "data": "datasets",
             "schedule": "schedules"}  # fmt: skip


def _unregistered_choice(group: str, name: str, overrides) -> ConfigError:
    """A group option (the default, or a preset's choice) no loaded plugin registers."""
    from hydra.core.config_store import ConfigStore  # loaded by Hydra

    repo = ConfigStore.instance().repo.get("schema", {}).get(group, {})
    options = sorted(k.removesuffix(".yaml") for k in repo)
    given = _value_of(overrides, group) == name
    disabled = os.environ.get("LOSSBENCH_DISABLE_PLUGINS", "")
    builtin = _BUILTINS.get(group)
    why = ""
    if builtin and builtin in {d.strip() for d in disabled.split(",")}:
        why = f" (LOSSBENCH_DISABLE_PLUGINS={disabled} disabled the built-in {builtin})"
    noun = "dataset" if group == "data" else group
    return ConfigError(
        f"{group}={name}{'' if given else ' (the default)'} is not a known {noun}: no loaded "
        f"plugin registers it{why}. Available: {', '.join(options) or '(none)'}. Fix: pass "
        f"{group}=NAME with one of those, or load the plugin that gives {name!r}"
        f"{' (remove it from LOSSBENCH_DISABLE_PLUGINS)' if why else ''}."
    )


def _invalid_value(key: str, value, message: str, default) -> ConfigError:
    choices = re.search(r"expected one of \[(.+)\]", message)
    example = default if default is not None and not isinstance(default, DictConfig) else None
    example = OmegaConf.to_container(example) if hasattr(example, "_metadata") else example
    fix = f" Fix: pass e.g. {key}={_show(example)}." if example is not None else ""
    if choices:
        names = [c.strip() for c in choices.group(1).split(",")]
        return ConfigError(
            f"{key}={value} is not allowed. Choices: {', '.join(names)}."
            f"{_suggest(str(value), names)}{fix}"
        )
    kind = re.search(r"converted to (\w+)|valid (bool)|not a (ListConfig)", message)
    if kind:
        wanted = next(k for k in kind.groups() if k)
        noun = TYPE_NAMES.get(wanted, "a list" if wanted == "ListConfig" else wanted)
        return ConfigError(f"{key}={value} is not allowed: {key} must be {noun}.{fix}")
    return ConfigError(f"{key}={value} is not allowed: {message}.{fix}")


def _show(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


# trainer keys that became the schedule group: key -> (the schedule it belongs to, its new key)
MOVED = {
    "trainer.lr_schedule": (None, None),
    "trainer.step_size": ("step", "schedule.step_size"),
    "trainer.gamma": ("step", "schedule.gamma"),
    "trainer.min_lr": ("cosine", "schedule.min_lr"),
}


def _moved_key(key: str, overrides) -> ConfigError | None:
    """A key of the old trainer schedule options, with the new spelling of what was typed."""
    if key not in MOVED:
        return None
    schedule, new = MOVED[key]
    value = _value_of(overrides, key)
    if new is None:
        fix = f"schedule={value if value is not None else 'NAME'}"
    else:
        fix = f"schedule={schedule} {new}={value if value is not None else '...'}"
    return ConfigError(
        f"{key} has moved: learning-rate schedules are the config group schedule now (options "
        "constant, step, cosine, and what plugins add; trainer.warmup_epochs stays). "
        f"Fix: write {fix}."
    )


def _unknown_key(key: str, default) -> ConfigError:
    parent, _, name = key.rpartition(".")
    siblings = default(parent) if parent else default("")
    keys = [k for k in (siblings.keys() if isinstance(siblings, DictConfig) else [])]
    keys = [k for k in keys if k not in ("name", "hydra", "defaults")]
    owner = f"{parent} {siblings.get('name')}" if parent and "name" in (siblings or {}) else parent
    where = f"an option of {owner}" if parent else "a config key or group"
    prefix = f"{parent}." if parent else ""
    full = [f"{prefix}{k}" for k in keys]
    if not keys:
        return ConfigError(f"{key} is not an option: {owner} has none. Fix: drop {key}.")
    return ConfigError(
        f"{key} is not {where}. Its keys: {', '.join(keys) or '(none)'}."
        f"{_suggest(key, full)} Fix: use one of those (`python -m lossbench --cfg job` shows "
        "the whole config)."
    )


def check_interpolations(cfg) -> None:
    """Raise for a ``${...}`` in the config that does not resolve (``optimizer.lr=${x}``): found
    now, in one paragraph, rather than as a traceback wherever the value is first read."""
    for key in cfg:
        if key == "hydra":
            continue  # Hydra's own node resolves at run time (${now:...}, ${hydra.job.num})
        try:
            node = cfg[key]
            if OmegaConf.is_config(node):
                OmegaConf.to_container(node, resolve=True)
        except InterpolationResolutionError as exc:
            where = str(getattr(exc, "full_key", "") or key)
            reason = str(exc).splitlines()[0]
            raise ConfigError(
                f"{where} does not resolve: {reason}. Fix: an interpolation must name a key "
                "of the config, e.g. data.val_path=${data.path}; write the value itself "
                "otherwise (optimizer.lr=0.01)."
            ) from None


def check_deletions(overrides, default) -> None:
    """Refuse ``~KEY`` for a key a schema declares (``~seed``, ``~trainer.epochs``): Hydra
    deletes it, and the run then fails where it reads it, with OmegaConf's "Key 'seed' not in
    'Root...'". Deleting an entry of a free-form node (``~tracking.tags.team``) stays allowed.
    ``default``: key -> its value with the same group choices (None when absent)."""
    for ov in overrides:
        if not ov.startswith("~"):
            continue
        key = ov[1:].partition("=")[0]
        if not key or "/" in key:
            continue
        parent_key, _, name = key.rpartition(".")
        parent = default(parent_key)
        kind = OmegaConf.get_type(parent) if isinstance(parent, DictConfig) else None
        if kind is None or not dataclasses.is_dataclass(kind):
            continue
        if name in {f.name for f in dataclasses.fields(kind)}:
            value = OmegaConf.select(parent, name, throw_on_missing=False)
            if isinstance(value, DictConfig) and isinstance(value.get("name"), str):
                value = value.name  # a component group: its option's name
            example = f"{key}={value}" if isinstance(value, int | float | str) else f"{key}=..."
            raise ConfigError(
                f"{ov} deletes {key}, which every run reads (a key of the config's schema); "
                f"it cannot be left out. Fix: give it a value instead ({example}), or drop {ov}."
            )


def check_known_keys(cfg, default, beyond: dict[str, set[str]] | None = None) -> None:
    """Raise for a key in the composed config that no schema declares: ``+optimizer.lrr=0.1``
    adds one (Hydra allows it), but no component would read it. ``beyond``: the keys a node
    (by its dotted path) takes besides its schema's, each a node of a schema of its own (the
    ``tracking`` node: each other tracker's, ``config.store.tracking_keys``)."""
    extra = _extra(cfg, "", beyond or {})
    if extra:
        raise _unknown_key(extra[0], default)


def _extra(node: DictConfig, path: str, beyond: dict[str, set[str]]) -> list[str]:
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return []  # a plain dict (tags, params): any key is fine
    declared = {f.name for f in dataclasses.fields(schema)}
    out = []
    for k in node:
        inner = f"{path}.{k}" if path else str(k)
        if k not in declared and not (k in beyond.get(path, ()) and _typed(node, k)):
            out.append(str(k))
        elif not OmegaConf.is_missing(node, k) and isinstance(node[k], DictConfig):
            out += [f"{k}.{sub}" for sub in _extra(node[k], inner, beyond)]
    return out


def _typed(node: DictConfig, key) -> bool:
    """``node[key]`` is a node made from a schema (a stored option), not keys added by hand."""
    value = node[key]
    return isinstance(value, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(value))
