"""The plugin manager: built-ins, installed distributions and single-file plugins.

Sources, in load order:

1. built-in plugin modules (``DEFAULT_PLUGINS``), registered through the same hooks as others;
2. installed distributions with an entry point in the group ``lossbench``;
3. ``*.py`` files in the directory named by ``--plugins-dir DIR`` or ``LOSSBENCH_PLUGINS_DIR``
   (not in its subfolders, and not those whose name starts with ``.`` or ``_``).

``LOSSBENCH_LOAD_PLUGINS=a,b`` loads only the named entry-point plugins (an empty value loads
none); ``LOSSBENCH_DISABLE_PLUGINS=a,b`` skips the named ones (entry-point or distribution name,
file stem, or a built-in's short name: losses, ..., outputs, tracking), e.g. one that fails to
import. After loading,
``check_pending()`` makes a misspelled hook implementation an error. Every error a plugin can
cause here is a ``PluginError`` naming the plugin, the component and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import pluggy
from omegaconf import OmegaConf

from lossbench import hookspecs
from lossbench._version import __version__
from lossbench.errors import ConfigError, PluginError, choices_text
from lossbench.launcher import LauncherSpec, check_launcher_class
from lossbench.specs import API_CHANGES, KIND, KIND_TABLE, KINDS, PLUGIN_API, REDUCTIONS

DEFAULT_PLUGINS = (
    "lossbench.builtin.losses",
    "lossbench.builtin.optimizers",
    "lossbench.builtin.models",
    "lossbench.builtin.datasets",
    "lossbench.builtin.schedules",
    "lossbench.builtin.launchers",
    "lossbench.builtin.progress",
    "lossbench.builtin.early_stopping",
    "lossbench.builtin.outputs",
    "lossbench.tracking.plugin",
)
ENTRY_POINT_GROUP = "lossbench"
ENV_PLUGINS_DIR = "LOSSBENCH_PLUGINS_DIR"
ENV_LOAD = "LOSSBENCH_LOAD_PLUGINS"
ENV_DISABLE = "LOSSBENCH_DISABLE_PLUGINS"

# which registration hook fills which config group (lossbench.specs.KIND_TABLE)
REGISTER_HOOKS = {k.group: k.hook for k in KIND_TABLE}


@dataclass
class Registry:
    """Every registered component, by config group ("loss", ...) and name."""

    components: dict[str, dict] = field(default_factory=lambda: {k: {} for k in KINDS})
    # lifecycle plugins' own options (register_options): name -> (dataclass, plugin)
    options: dict[str, tuple[type, str]] = field(default_factory=dict)
    # sweep launchers (register_launchers): name -> LauncherSpec; not a kind of KIND_TABLE
    # (lossbench.launcher says why)
    launchers: dict[str, LauncherSpec] = field(default_factory=dict)
    # trackers (register_trackers): name -> tracker class (lossbench.tracking.base.Tracker)
    trackers: dict[str, type] = field(default_factory=dict)

    def get(self, group: str, name: str):
        table = self.components[group]
        if name not in table:
            raise ConfigError(
                f"{group}={name!r} is not a known {KIND[group].noun}. Available: "
                f"{choices_text(table)}. Fix: pick one of those, or install the plugin that "
                f"provides {name!r} (`python -m lossbench plugins` lists what is loaded)."
            )
        return table[name]

    def names(self, group: str) -> list[str]:
        return sorted(self.components[group])

    def launcher(self, name: str) -> LauncherSpec:
        """The launcher ``sweep.launcher=name`` chooses, or the error naming the choices."""
        if name not in self.launchers:
            raise ConfigError(
                f"sweep.launcher={name!r} is not a known launcher. Available: "
                f"{choices_text(self.launchers)}. Fix: pass one of those (sweep.launcher="
                "local runs the workers on this machine), or install the plugin that provides "
                f"{name!r} (`python -m lossbench plugins` lists what is loaded)."
            )
        return self.launchers[name]

    def trackers_of(self, tracking) -> list[tuple[str, type, object]]:
        """The trackers a ``tracking`` config node selects, as (name, class, options node):
        its ``name`` (unless none) with the node itself, then every ``tracking.NAME`` node
        naming itself NAME (``tracking=[mlflow,tensorboard]``). An unknown name is refused."""
        if tracking is None:
            return []
        chosen = []
        name = tracking.get("name")
        if name not in (None, "none"):
            chosen.append((str(name), tracking))
        for key in tracking:
            value = tracking.get(key) if not OmegaConf.is_missing(tracking, key) else None
            if OmegaConf.is_dict(value) and value.get("name") == key:
                chosen.append((str(key), value))
        for name, _ in chosen:
            if name not in self.trackers:
                raise ConfigError(
                    f"tracking={name!r} is not a known tracker. Available: "
                    f"{choices_text({**self.trackers, 'none': None})}. Fix: pick those, e.g. "
                    "tracking=[mlflow,OTHER], or install the plugin that provides "
                    f"{name!r} (`python -m lossbench plugins` lists what is loaded)."
                )
        return [(name, self.trackers[name], node) for name, node in chosen]


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus the component registry filled by the register_* hooks."""

    def __init__(self) -> None:
        super().__init__("lossbench")
        self.add_hookspecs(hookspecs)
        self.registry = Registry()
        # plugin name -> (distribution name, version) for entry-point plugins
        self.distributions: dict[str, tuple[str, str]] = {}

    def collect(self) -> None:
        """Call every register_* hook and fill the registry; duplicate names are an error."""
        self.registry = Registry()
        for plugin_name, call in self.each_implementation("register_options", call_order=False):
            call(register=functools.partial(self._register_options, plugin_name))
        for plugin_name, call in self.each_implementation("register_launchers", False):
            _call_register(call, functools.partial(self._register_launcher, plugin_name),
                           plugin_name, "register_launchers")  # fmt: skip
        for plugin_name, call in self.each_implementation("register_trackers", call_order=False):
            call(register=functools.partial(self._register_tracker, plugin_name))
        for group, hook_name in REGISTER_HOOKS.items():
            for plugin_name, call in self.each_implementation(hook_name, call_order=False):

                def register(spec, _group=group, _plugin=plugin_name):
                    self._register(_group, spec, _plugin)

                _call_register(call, register, plugin_name, hook_name)

    def each_implementation(self, hook_name: str, call_order: bool = True):
        """``(plugin name, caller)`` for each implementation of ``hook_name``, so that one can be
        told from another (which plugin registered a component, which one raised) while every
        call still goes through pluggy (its tracing and hook-call monitoring see it). In pluggy's
        call order (the last registered first), or with ``call_order=False`` in registration
        order."""
        impls = getattr(self.hook, hook_name).get_hookimpls()
        plugins = [impl.plugin for impl in impls]
        for impl in reversed(impls) if call_order else impls:
            others = [p for p in plugins if p is not impl.plugin]
            name = self.get_name(impl.plugin) or repr(impl.plugin)
            yield name, self.subset_hook_caller(hook_name, remove_plugins=others)

    def origin(self, plugin_name: str) -> tuple[str, str]:
        """Where a plugin comes from: (distribution or file, version); the version is empty
        for a single-file plugin."""
        if plugin_name in self.distributions:
            return self.distributions[plugin_name]
        if plugin_name in DEFAULT_PLUGINS:
            return "lossbench", __version__
        plugin = self.get_plugin(plugin_name)
        return str(getattr(plugin, "__file__", None) or type(plugin).__module__), ""

    def source_of(self, plugin_name: str) -> dict[str, str]:
        """The plugin and its distribution with version (or its file), for run records."""
        where, version = self.origin(plugin_name)
        return {"plugin": plugin_name, "distribution": f"{where} {version}".strip()}

    def _register_options(self, plugin_name: str, name, options) -> None:
        """``register(NAME, DATACLASS)`` of the register_options hook, checked."""
        what = f"plugin {plugin_name!r} registers options {name!r}"
        if not (isinstance(name, str) and name.isidentifier()):
            raise PluginError(
                f"{what}: the name must be an identifier (plugins.NAME.KEY on the command "
                'line). Fix: register("my_plugin", MyOptions).'
            )
        if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
            raise PluginError(
                f"{what} with {options!r}, which is not a dataclass. Fix: pass a @dataclass "
                "class whose fields (with defaults) are the options."
            )
        if name in self.registry.options:
            other = self.registry.options[name][1]
            raise PluginError(
                f"{what}, but plugin {other!r} registered options under that name already. "
                "Fix: rename one of them."
            )
        self.registry.options[name] = (options, plugin_name)

    def _register_launcher(self, plugin_name: str, spec) -> None:
        """``register(LauncherSpec(...))`` of the register_launchers hook, checked (a class
        named by its import path is checked when a sweep imports it)."""
        if not isinstance(spec, LauncherSpec):
            raise PluginError(
                f"plugin {plugin_name!r} registered {spec!r} as a launcher, but a launcher must "
                "be a lossbench.LauncherSpec. Fix the plugin's register_launchers hook."
            )
        spec = replace(spec, plugin=plugin_name)
        what = f"plugin {plugin_name!r} registers the launcher {spec.name!r}"
        if not (isinstance(spec.name, str) and spec.name.isidentifier()):
            raise PluginError(
                f"{what}; its name must be an identifier (sweep.launcher=NAME, options "
                "sweep.NAME.KEY). Fix: rename it, e.g. LauncherSpec(name=\"slurm\", ...)."
            )
        if spec.name in self.registry.launchers:
            other = self.registry.launchers[spec.name].plugin
            raise PluginError(
                f"two plugins register a launcher named {spec.name!r}: {other!r} and "
                f"{plugin_name!r}. Fix: rename one, or disable one with "
                f"{ENV_DISABLE}={plugin_name}."
            )
        if spec.options is not None and not (
            isinstance(spec.options, type) and dataclasses.is_dataclass(spec.options)
        ):
            raise PluginError(
                f"{what} with options={spec.options!r}, which is not a dataclass. Fix: pass a "
                "@dataclass class whose fields (with defaults) are its options, or None."
            )
        if not isinstance(spec.launcher, str):
            check_launcher_class(spec, spec.launcher)
        self.registry.launchers[spec.name] = spec

    def _register_tracker(self, plugin_name: str, tracker) -> None:
        """``register(TRACKER_CLASS)`` of the register_trackers hook, checked."""
        name = getattr(tracker, "name", None)
        what = f"plugin {plugin_name!r} registers the tracker {tracker!r}"
        methods = ("start", "log_epoch", "log_artifacts", "log_model", "end", "incomplete")
        if not isinstance(tracker, type) or not all(callable(getattr(tracker, m, None))
                                                    for m in methods):  # fmt: skip
            raise PluginError(
                f"{what}, which is not a tracker class. Fix: register a subclass of "
                "lossbench.tracking.base.Tracker (docs/plugins.md, \"Writing a tracker\")."
            )
        if not (isinstance(name, str) and name.isidentifier() and name != "none"):
            raise PluginError(
                f"{what} named {name!r}; a tracker's name is an identifier other than 'none' "
                "(tracking=[mlflow,NAME] on the command line). Fix: set the class's name."
            )
        options = getattr(tracker, "options", None)
        if options is not None and not (isinstance(options, type)
                                        and dataclasses.is_dataclass(options)):  # fmt: skip
            raise PluginError(
                f"{what} whose options {options!r} are not a dataclass. Fix: options = a "
                "@dataclass class whose fields (with defaults) are tracking.NAME.KEY, or None."
            )
        trackers = self.registry.trackers
        if name in trackers:
            raise PluginError(
                f"two plugins register a tracker named {name!r}: {trackers[name].plugin!r} "
                f"and {plugin_name!r}. Fix: rename one, or disable one with "
                f"{ENV_DISABLE}={plugin_name}."
            )
        tracker.plugin = plugin_name
        trackers[name] = tracker

    def _register(self, group: str, spec, plugin_name: str) -> None:
        expected = KINDS[group]
        if not isinstance(spec, expected):
            raise PluginError(
                f"plugin {plugin_name!r} registered {spec!r} as a {group}, but a {group} must be "
                f"a lossbench.{expected.__name__}. Fix the plugin's {REGISTER_HOOKS[group]} hook."
            )
        table = self.registry.components[group]
        if spec.name in table:
            other = table[spec.name].plugin
            raise PluginError(
                f"two plugins register a {group} named {spec.name!r}: {other!r} and "
                f"{plugin_name!r}. Fix: rename one, or disable one with "
                f"{ENV_DISABLE}={plugin_name}."
            )
        if not spec.name.isidentifier():
            raise PluginError(
                f"plugin {plugin_name!r} registers a {group} named {spec.name!r}; names must be "
                "identifiers (letters, digits, underscores) so they work as Hydra overrides."
            )
        _check_spec(group, spec, plugin_name)
        table[spec.name] = replace(spec, plugin=plugin_name)


def _call_register(call, register, plugin_name: str, hook_name: str) -> None:
    """Call one plugin's registration hook; what it raises (but a ``PluginError``, already
    naming it) becomes a ``PluginError`` naming the plugin and the hook."""
    try:
        call(register=register)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(
            f"plugin {plugin_name!r} raised {type(exc).__name__} in its {hook_name} "
            f"hook: {exc}. Fix the plugin, or disable it with {ENV_DISABLE}={plugin_name}."
        ) from exc


# what a spec must give to train: kernels, or NumPy references for the slow path
_NEEDS = {
    k.group: (tuple(attr for attr, _ in k.kernels), k.references) for k in KIND_TABLE if k.kernels
}


def _check_spec(group: str, spec, plugin_name: str) -> None:
    """Reject specs that could never train, naming the plugin, the component and the fix."""
    what = f"plugin {plugin_name!r} registers {group} {spec.name!r}"
    if not (isinstance(spec.options, type) and dataclasses.is_dataclass(spec.options)):
        raise PluginError(
            f"{what} with options={spec.options!r}, which is not a dataclass. Fix: pass a "
            "@dataclass class whose fields (with defaults) are the Hydra options; an empty "
            "@dataclass for none."
        )
    _check_api(what, spec)
    if group == "optimizer":
        _check_optimizer(what, spec)
    if group == "loss":
        _check_loss(what, spec)
    if group not in _NEEDS:
        if group == "data" and spec.load is None:
            raise PluginError(f"{what} without load. Fix: pass load=FUNCTION(hp, seed).")
        if group == "schedule":
            _check_schedule(what, spec)
        return
    kernels, references = _NEEDS[group]
    given = [getattr(spec, k) is not None for k in kernels]
    if any(given) and not all(given):
        raise PluginError(
            f"{what} with only some of its kernels ({', '.join(kernels)}). Fix: give all of "
            "them, or none and only the NumPy references (the slow path)."
        )
    if not all(given) and any(getattr(spec, r) is None for r in references):
        raise PluginError(
            f"{what} without numba kernels ({', '.join(kernels)}) and without NumPy references "
            f"({', '.join(references)}). Fix: give the references (they train on the slow "
            "path), and kernels with the canonical signatures for the fused path."
        )


def _check_api(what: str, spec) -> None:
    """Refuse a spec written for another plugin interface version, saying what changed."""
    if spec.api == PLUGIN_API:
        return
    if spec.api in API_CHANGES:
        raise PluginError(
            f"{what} for plugin interface version {spec.api}; this lossbench implements "
            f"version {PLUGIN_API}: {API_CHANGES[spec.api]}."
        )
    raise PluginError(
        f"{what} for plugin interface version {spec.api!r}, which this lossbench does not "
        f"know (it implements version {PLUGIN_API}). Fix: upgrade lossbench, or declare "
        f"api={PLUGIN_API} after following docs/plugins.md."
    )


def _check_loss(what: str, spec) -> None:
    """A loss's optional ``reduction`` is a known one, and ``unreduced`` comes with it."""
    if spec.reduction not in ("", *REDUCTIONS):
        raise PluginError(
            f"{what} with reduction={spec.reduction!r}, which lossbench does not know. "
            f"Choices: {', '.join(map(repr, REDUCTIONS))}, or leave it out (not declared). "
            "Fix the spec's reduction (lossbench.specs.REDUCTIONS says what each means)."
        )
    if spec.unreduced is not None and not spec.reduction:
        raise PluginError(
            f"{what} with unreduced terms but no reduction: explain cannot tell what their sum "
            "is divided by. Fix: declare reduction='elements' or reduction='rows' in the spec."
        )


def _check_optimizer(what: str, spec) -> None:
    """An optimizer needs a float ``lr`` field, and a reference with the API-2 arguments."""
    fields = {f.name: f for f in dataclasses.fields(spec.options)}
    lr = fields.get("lr")
    if lr is None or lr.type not in (float, "float"):
        declared = getattr(lr, "type", None)
        declared = getattr(declared, "__name__", declared)  # a class, or the annotation's text
        found = "has no field lr" if lr is None else f"declares lr as {declared!r}"
        raise PluginError(
            f"{what} whose options dataclass {spec.options.__name__} {found}. The "
            "engine reads the learning rate from that field (optimizer.lr on the command "
            "line), applies the schedule and passes it to the kernel as lr. Fix: add the field "
            "lr: float = 0.001 (with your default) to the dataclass."
        )
    if spec.reference is None:
        return
    params = inspect.signature(spec.reference).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params) or len(params) == 7:
        return
    version_1 = f"the signature of plugin interface version 1: {API_CHANGES[1]}"
    raise PluginError(
        f"{what} whose reference takes {len(params)} arguments "
        f"({', '.join(p.name for p in params)}); it must take 7: (params, grads, state, "
        "scalars, hp, t, lr). "
        + (f"That is {version_1}." if len(params) == 6 else "Fix the reference's arguments.")
    )


def _check_schedule(what: str, spec) -> None:
    """A schedule needs ``rate``, and ``rate`` and ``reference`` take (epoch, epochs, base_lr,
    options)."""
    if spec.rate is None:
        raise PluginError(
            f"{what} without rate. Fix: pass rate=FUNCTION(epoch, epochs, base_lr, options) "
            "returning that epoch's learning rate (docs/plugins.md, \"Schedules\")."
        )
    for role in ("rate", "reference"):
        fn = getattr(spec, role)
        if fn is None:
            continue
        params = inspect.signature(fn).parameters.values()
        if not any(p.kind is p.VAR_POSITIONAL for p in params) and len(params) != 4:
            raise PluginError(
                f"{what} whose {role} takes {len(params)} arguments "
                f"({', '.join(p.name for p in params)}); it must take 4: (epoch, epochs, "
                "base_lr, options). Fix the function's arguments."
            )


def _split_env(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {p.strip() for p in value.split(",") if p.strip()}


def _canonical(distribution: str) -> str:
    """A distribution name as pip compares them: lossbench_Focal == lossbench-focal."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _load_entry_points(pm: PluginManager) -> None:
    allow = _split_env(ENV_LOAD)
    deny = _split_env(ENV_DISABLE) or set()
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            disabled = ep.name in deny or _canonical(dist.name) in {_canonical(d) for d in deny}
            if (allow is not None and ep.name not in allow) or disabled:
                continue
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                dist_name = dist.metadata["Name"]
                raise PluginError(
                    f"plugin {ep.name!r} from the distribution {dist_name} "
                    f"{dist.version} failed to import: {type(exc).__name__}: {exc}. Fix: repair "
                    f"or upgrade it, uninstall it (pip uninstall {dist_name}), or skip it with "
                    f"{ENV_DISABLE}={ep.name}."
                ) from exc
            pm.register(plugin, name=ep.name)
            pm.distributions[ep.name] = (dist.metadata["Name"], dist.version)


def _load_dir(pm: PluginManager, directory: str) -> None:
    path = Path(directory)
    if not path.is_dir():
        raise PluginError(
            f"the plugin directory {directory!r} does not exist. Fix: pass an existing directory "
            f"with --plugins-dir or {ENV_PLUGINS_DIR}, or unset it."
        )
    deny = _split_env(ENV_DISABLE) or set()
    for file in sorted(path.glob("*.py")):
        if file.name.startswith((".", "_")):  # hidden (an editor's), or a plugin's own helper
            continue
        if file.stem in deny or f"lossbench_plugin_{file.stem}" in deny:
            continue
        pm.register(load_plugin_file(file), name=file.stem)


def load_plugin_file(file: str | Path):
    """Import a single-file plugin as the module ``lossbench_plugin_<stem>``."""
    file = Path(file)
    name = f"lossbench_plugin_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    try:
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise PluginError(
            f"the plugin file {file} failed to import: {type(exc).__name__}: {exc}. Fix the "
            f"file, move it out of {file.parent}, or skip it with {ENV_DISABLE}={file.stem}."
        ) from exc
    return module


def _check_disabled_names(deny: set[str], directory: str | None) -> None:
    """Every name in LOSSBENCH_DISABLE_PLUGINS names a plugin that exists (a misspelled one
    disabled nothing, silently): a built-in, an installed entry point or its distribution, or
    a file of the plugin directory."""
    if not deny:
        return
    known = {name for m in DEFAULT_PLUGINS for name in (m, builtin_short_name(m))}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        known.add(ep.name)
        if ep.dist is not None:
            known |= {ep.dist.name, _canonical(ep.dist.name)}
    if directory and Path(directory).is_dir():
        known |= {f.stem for f in Path(directory).glob("*.py")}
        known |= {f"lossbench_plugin_{f.stem}" for f in Path(directory).glob("*.py")}
    unknown = sorted(d for d in deny if d not in known and _canonical(d) not in known)
    if unknown:
        shown = sorted(k for k in known if "." not in k)
        close = difflib.get_close_matches(unknown[0], shown, n=1)
        raise PluginError(
            f"{ENV_DISABLE} names {unknown[0]!r}, which is not a plugin: no built-in, installed "
            f"entry point or plugin file has that name, so it disabled nothing. Choices: "
            f"{', '.join(shown)}.{f' Did you mean {close[0]}?' if close else ''} Fix: correct "
            f"the name, or remove it from {ENV_DISABLE}."
        )


def builtin_short_name(module_name: str) -> str:
    """The name that disables a built-in: lossbench.builtin.losses -> losses,
    lossbench.tracking.plugin -> tracking."""
    parts = module_name.split(".")
    return parts[2] if parts[1] == "builtin" else parts[1]


def build_plugin_manager(
    plugins_dir: str | None = None, *, entry_points: bool = True, extra=()
) -> PluginManager:
    """A manager with built-ins, entry points (unless disabled) and plugin files loaded, hook
    implementations checked and the component registry filled. ``extra`` plugins (objects or
    modules, or ``(name, plugin)`` pairs) are registered last; tests use it to add components
    without installing them."""
    pm = PluginManager()
    deny = _split_env(ENV_DISABLE) or set()
    for module_name in DEFAULT_PLUGINS:
        if {module_name, builtin_short_name(module_name)} & deny:
            continue
        pm.register(importlib.import_module(module_name), name=module_name)
    if entry_points:
        _load_entry_points(pm)
    directory = plugins_dir or os.environ.get(ENV_PLUGINS_DIR)
    if directory:
        _load_dir(pm, directory)
    for plugin in extra:
        if isinstance(plugin, tuple):
            name, plugin = plugin
        else:
            name = getattr(plugin, "__name__", None) or type(plugin).__name__
        if pm.has_plugin(name):
            name = f"{name}-{id(plugin):x}"
        pm.register(plugin, name=name)
    _check_disabled_names(deny, directory)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {pm.get_name(exc.plugin)!r} implements a hook lossbench does not have: "
            f"{exc}. Hooks: {', '.join(n for n in dir(pm.hook) if not n.startswith('_'))}."
        ) from exc
    pm.collect()
    return pm


_DEFAULT: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager (built on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = build_plugin_manager()
    return _DEFAULT


def set_plugin_manager(pm: PluginManager | None) -> None:
    """Make ``pm`` the process-wide manager (None: rebuild on next use)."""
    global _DEFAULT
    _DEFAULT = pm


def describe(pm: PluginManager) -> list[dict]:
    """One entry per loaded plugin: name, version, hooks it implements, components it gives."""
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        source, version = pm.origin(name)
        if name in DEFAULT_PLUGINS:
            source = "lossbench (built-in)"
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        mine = {
            group: sorted(
                (n, s) for n, s in pm.registry.components[group].items() if s.plugin == name
            )
            for group in REGISTER_HOOKS
        }
        launchers = sorted(n for n, s in pm.registry.launchers.items() if s.plugin == name)
        components = {g: [n for n, _ in c] for g, c in mine.items() if c}
        trackers = sorted(n for n, t in pm.registry.trackers.items() if t.plugin == name)
        if trackers:  # trackers are a kind of their own (Registry.trackers)
            components["tracking"] = trackers
        if launchers:  # so are launchers (Registry.launchers)
            components["sweep.launcher"] = launchers
        rows.append(
            {
                "name": name,
                "version": version,
                "source": source,
                "hooks": hooks,
                "components": components,
                # components without numba kernels: they train on the (slow) NumPy path
                "numpy_only": {
                    g: [n for n, s in c if s.numpy_only]
                    for g, c in mine.items()
                    if any(s.numpy_only for _, s in c)
                },
            }
        )
    return rows
