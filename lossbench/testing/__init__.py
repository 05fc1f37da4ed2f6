"""The conformance kit: every property lossbench expects of a component, checked in one call;
the checks every component gets are in ``common``, those that hyperparameters reach the kernels
as values in ``hyperparameters``, those of each kind in ``losses``, ``optimizers``, ``models``,
``data`` and ``schedules``; ``golden`` holds a component to stored values (from PyTorch or any
callable).

In a plugin's own test suite (in the spirit of scikit-learn's ``parametrize_with_checks``)::

    import lossbench_focal
    from lossbench.testing import parametrize_with_checks

    @parametrize_with_checks(lossbench_focal)
    def test_lossbench_conformance(check):
        check()

``parametrize_with_checks(*plugins, options=None, fast=None)`` takes plugin modules or objects
(what the entry point names), or paths of single-file plugins, and makes one pytest case per
(component, property), with ids like ``loss-focal-gradient_matches_finite_differences``. A
plugin is named as the command line names it: an installed module by its entry-point name, a
file by its stem. Each component is checked with its defaults (or the cases ``options`` gives
per component name or ``group.name``, e.g. ``{"focal": [{"gamma": 0.0}, {"gamma": 2.0}]}``),
and, for losses, optimizers and models, with each boolean option flipped and each option whose
default is 0 set to 0.1 (1 for an int) on its own (``option_cases``), so a bug on a branch only
a non-default option reaches is found; a case the component's ``check`` refuses is left out.
``check_plugin(*plugins)`` runs every check at once and raises one error listing all failures;
``run_checks(checks)`` gives one ``Result`` per check (``python -m lossbench check`` prints
them).

What is checked (``CHECKS``), for every component the plugins register:

- plugin: ``registers``: the plugin loads beside the built-ins, names are unique, it registers a
  component or implements a hook;
- every component: ``hydra_options``: its options dataclass is stored as a Hydra option,
  ``GROUP=NAME`` composes to the defaults, and a non-number for a number field is rejected;
- loss: kernel compiles in nopython mode for float32 and float64 with the canonical signature;
  kernel == NumPy reference; gradient == central finite differences; inputs not modified; each
  option on its own changes the result; a changed hyperparameter takes effect without a
  recompile; two epochs of a small MLP lower the validation loss;
- optimizer: compiles; kernel == reference over 25 steps (inputs checked after every step, state
  slots named: ``scalars[1]``, ``state[row 2, 75]``); decreases a convex quadratic; a zero
  learning rate changes no parameter; deterministic; grads and hp not modified; a step costs the
  same at t = 10 and t = 10,000; each option on its own; hyperparameter change without a
  recompile; trains a small MLP;
- model: builds a consistent layout; forward/backward compile; kernels == references; backward
  == finite differences of forward (a miss named by tensor: ``W1[3, 0]``); inputs not modified
  (these in training mode at one seed and step, so dropout is compared too); evaluation mode
  draws nothing from the random stream and training mode draws the same for one (seed, step);
  parameter groups name tensors once, set options some optimizer has, and a no-decay group
  over biases holds every 1-D tensor; buffers (running statistics): forward writes no
  parameter and no buffer while evaluating (every forward the kit runs), finite differences
  leave them out and backward gives them 0, and every registered optimizer, weight decay on,
  leaves them as they are; each option on its own; hyperparameter change without a recompile;
  trains;
- data: loads a consistent ``Dataset``, the same for the same seed; a small MLP trains on it;
- schedule: ``rate`` == ``reference`` at every epoch of schedules 1, 5 and 30 epochs long
  (finite, never negative); each numeric option on its own changes the rates; in a real run
  every epoch trains at the rate the schedule gives after the warm-up, and a changed option
  compiles nothing.

Every kernel call goes through one harness (``_harness``): guard rows around every buffer the
kit hands out, the kernel compiled with numba's boundscheck for float64 calls (a copy with its
own cache entry), inputs checked unchanged, outputs the kit filled with NaN checked written,
and NaN or inf from finite inputs named with its likely cause. A check that does not apply is
listed and skipped with the reason (a component without hyperparameters, a NumPy-only
component's kernel checks).
Fast mode (``fast=True`` or ``LOSSBENCH_KIT_FAST=1``), for the edit-run loop: float64 only and
no bounds-checked compile (guard rows stay), so an edited kernel compiles once, not three times
(the bounds-checked copy runs the float64 calls only: indices do not depend on the dtype).

A component with only NumPy references (no kernels) gets the same checks on its references and
trains on the slow path. A failure raises ``ConformanceError`` naming the component, the plugin,
the property and by how much it is missed. A kernel numba cannot compile fails
``kernel_compiles`` once, with numba's reason; the component's checks that run its kernels are
then skipped, naming that check.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from lossbench.plugins import (
    DEFAULT_PLUGINS,
    ENTRY_POINT_GROUP,
    build_plugin_manager,
    load_plugin_file,
)
from lossbench.testing._base import (
    FAST_ENV,
    Check,
    CheckSkipped,
    ConformanceError,
    _fail,
    central_difference,
    fast_from_env,
    option_cases,
)
from lossbench.testing._toy import TOY_PLUGIN
from lossbench.testing.common import _hydra_options, _kernel_compiles, _trains, compile_problem
from lossbench.testing.data import _data_loads
from lossbench.testing.hyperparameters import _each_hyperparameter, _hyperparameter_change
from lossbench.testing.losses import _loss_gradient, _loss_inputs_unchanged, _loss_matches_reference
from lossbench.testing.models import (
    _model_buffers,
    _model_builds,
    _model_gradient,
    _model_groups,
    _model_inputs_unchanged,
    _model_matches_reference,
    _model_modes,
)
from lossbench.testing.optimizers import (
    _opt_deterministic,
    _opt_inputs_unchanged,
    _opt_matches_reference,
    _opt_quadratic,
    _opt_step_cost,
    _opt_zero_lr,
)
from lossbench.testing.schedules import (
    _schedule_each_option,
    _schedule_matches_reference,
    _schedule_reaches_training,
)

CHECKS = {
    "plugin": ("registers",),
    "loss": (
        "hydra_options",
        "kernel_compiles",
        "kernel_matches_reference",
        "gradient_matches_finite_differences",
        "inputs_unchanged",
        "each_hyperparameter_takes_effect",
        "hyperparameter_change_takes_effect_without_recompiling",
        "trains_small_mlp",
    ),
    "optimizer": (
        "hydra_options",
        "kernel_compiles",
        "kernel_matches_reference",
        "decreases_convex_quadratic",
        "zero_lr_changes_nothing",
        "deterministic",
        "inputs_unchanged",
        "step_cost_does_not_grow_with_t",
        "each_hyperparameter_takes_effect",
        "hyperparameter_change_takes_effect_without_recompiling",
        "trains_small_mlp",
    ),
    "model": (
        "hydra_options",
        "builds_layout",
        "kernel_compiles",
        "kernel_matches_reference",
        "gradient_matches_finite_differences",
        "inputs_unchanged",
        "evaluation_ignores_the_random_stream",
        "parameter_groups",
        "buffers_stay_out_of_the_optimizer",
        "each_hyperparameter_takes_effect",
        "hyperparameter_change_takes_effect_without_recompiling",
        "trains_small_mlp",
    ),
    "data": ("hydra_options", "loads", "trains_small_mlp"),
    "schedule": (
        "hydra_options",
        "rate_matches_reference",
        "each_hyperparameter_takes_effect",
        "every_epoch_trains_at_its_rate_without_recompiling",
    ),
}

# ---------------------------------------------------------------------------------------------
# entry points


def parametrize_with_checks(*plugins, options: dict | None = None, fast: bool | None = None,
                            hparams: dict | None = None):  # fmt: skip
    """A ``pytest.mark.parametrize("check", ...)`` over every check of every component the
    ``plugins`` register; the test body calls ``check()``. ``fast`` (default: the environment
    variable ``LOSSBENCH_KIT_FAST``) runs each check in fast mode. ``hparams`` is the spelling
    of ``options`` before (deprecated)."""
    import pytest  # the kit's users have pytest; check_plugin works without it

    options = _given_options(options, hparams, "parametrize_with_checks")
    checks = checks_for(*plugins, options=options, fast=fast)
    return pytest.mark.parametrize("check", checks, ids=[c.id for c in checks])


@dataclasses.dataclass
class Result:
    """What running one check gave: ``status`` is passed, failed or skipped; ``message`` the
    failure or the reason it was skipped."""

    check: Check
    status: str
    message: str = ""
    seconds: float = 0.0


def run_checks(checks: list[Check]) -> list[Result]:
    """Run ``checks`` one after the other; one ``Result`` each."""
    results = []
    for check in checks:
        start = time.perf_counter()
        try:
            check.run()
            status, message = "passed", ""
        except ConformanceError as exc:
            status, message = "failed", str(exc)
        except CheckSkipped as exc:
            status, message = "skipped", str(exc)
        results.append(Result(check, status, message, time.perf_counter() - start))
    return results


def check_plugin(*plugins, options: dict | None = None, fast: bool | None = None,
                 hparams: dict | None = None) -> int:  # fmt: skip
    """Run every check; raise one ``ConformanceError`` listing all failures (and what was
    skipped, with the reason), else return how many checks passed. ``hparams``: as
    ``parametrize_with_checks``'s."""
    options = _given_options(options, hparams, "check_plugin")
    results = run_checks(checks_for(*plugins, options=options, fast=fast))
    failures = [r.message for r in results if r.status == "failed"]
    skipped = [r.message for r in results if r.status == "skipped"]
    if failures:
        more = f" ({len(skipped)} more skipped)" if skipped else ""
        raise ConformanceError(
            f"{len(failures)} of {len(results)} checks fail{more}:\n- "
            + "\n- ".join(failures + [f"skipped: {m}" for m in skipped])
        )
    return sum(r.status == "passed" for r in results)


def checks_for(*plugins, options: dict | None = None, fast: bool | None = None,
               hparams: dict | None = None) -> list[Check]:  # fmt: skip
    """The ``Check`` objects for ``plugins`` (modules, objects or single-file paths). A check
    that does not apply to a component is there, and skips with the reason. ``hparams``: as
    ``parametrize_with_checks``'s."""
    options = _given_options(options, hparams, "checks_for")
    fast = fast_from_env() if fast is None else fast
    objects, extra = [], []
    for plugin in plugins:
        label = str(plugin) if isinstance(plugin, str | Path) else _plugin_label(plugin)
        try:
            obj = _as_plugin(plugin)
        except Exception as exc:
            return [_broken(label, exc)]
        objects.append(obj)
        if _is_file(plugin):
            extra.append((Path(plugin).stem, obj))  # the name --plugins-dir gives it
        elif getattr(obj, "__name__", None) not in DEFAULT_PLUGINS:
            name = _entry_point_name(obj)  # the name the command line gives it
            extra.append((name, obj) if name else obj)

    def manager():
        return build_plugin_manager(entry_points=False, extra=[TOY_PLUGIN, *extra])

    try:
        pm = manager()
    except Exception as exc:
        return [_broken(", ".join(_plugin_label(o) for o in objects), exc)]
    checks = []
    for obj in objects:
        name = pm.get_name(obj)
        checks.append(Check("plugin", name, name, "registers", _registers(manager, obj)))
        for group, table in pm.registry.components.items():
            for spec in sorted((s for s in table.values() if s.plugin == name), key=_name):
                checks += _component_checks(pm, group, spec, name, _cases(options or {}, group,
                                                                          spec))  # fmt: skip
    return [dataclasses.replace(c, fast=fast) for c in checks]


def _component_checks(pm, group, spec, plugin, cases) -> list[Check]:
    checks = []
    for check_name in CHECKS[group]:
        function = _CHECK_FUNCTIONS[group, check_name](pm, group, spec, cases)
        requires = None
        if check_name not in _WITHOUT_KERNELS:
            requires = functools.partial(compile_problem, group, spec)
        checks.append(Check(group, spec.name, plugin, check_name, function, requires))
    return checks


# checks that do not run a component's kernels: they run even when the kernels do not compile
_WITHOUT_KERNELS = {"hydra_options", "kernel_compiles", "builds_layout", "loads"}


def _entry_point_name(obj) -> str | None:
    """The name of the entry point (group ``lossbench``) that loads module ``obj``, if any."""
    module = getattr(obj, "__name__", None)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.value == module:
            return ep.name
    return None


def _name(spec) -> str:
    return spec.name


def _plugin_label(plugin) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__name__


def _is_file(plugin) -> bool:
    return isinstance(plugin, Path) or (isinstance(plugin, str) and plugin.endswith(".py"))


def _as_plugin(plugin):
    """A plugin object from a module, an object, a module name or a single-file path."""
    if _is_file(plugin):
        return load_plugin_file(plugin)
    if isinstance(plugin, str):
        return importlib.import_module(plugin)
    return plugin


def _broken(label: str, exc: Exception) -> Check:
    def check():
        _fail(f"it does not load: {type(exc).__name__}: {exc}")

    return Check("plugin", label, label, "registers", check)


def _given_options(options: dict | None, hparams: dict | None, where: str) -> dict | None:
    """``options``, or ``hparams`` (its spelling before) with a DeprecationWarning."""
    if hparams is None:
        return options
    if options is not None:
        raise TypeError(f"{where}: options= and hparams= name one thing; pass options= alone")
    warnings.warn(f"{where}(hparams=...) is now spelled options=...; hparams= still works "
                  "but will go in a later interface version", DeprecationWarning,
                  stacklevel=3)  # fmt: skip
    return hparams


def _cases(options: dict, group: str, spec) -> list:
    """The given cases (or the defaults), then each option on its own (``option_cases``)."""
    given = options.get(f"{group}.{spec.name}", options.get(spec.name))
    if given is None:
        cases = [spec.options()]
    else:
        given = [given] if isinstance(given, dict) else list(given)
        cases = [spec.options(**values) for values in given]
    if group in ("loss", "optimizer", "model", "schedule"):
        cases += [c for c in option_cases(spec) if c not in cases]
    return cases


def _registers(manager, obj):
    def check():
        pm = manager()  # raises, with the plugin's name and the fix, when registration fails
        name = pm.get_name(obj)
        mine = [
            n for t in pm.registry.components.values() for n, s in t.items() if s.plugin == name
        ]
        hooks = [h.name for h in pm.get_hookcallers(obj) or []]
        if not mine and not hooks:
            _fail(
                "it registers no component and implements no hook. Fix: mark the hook "
                "functions with @lossbench.hookimpl, and point the entry point at this module."
            )

    return check


_CHECK_FUNCTIONS: dict[tuple[str, str], Callable[..., Callable[[], None] | None]] = {
    **{
        (g, "hydra_options"): _hydra_options
        for g in ("loss", "optimizer", "model", "data", "schedule")
    },
    ("schedule", "rate_matches_reference"): _schedule_matches_reference,
    ("schedule", "each_hyperparameter_takes_effect"): _schedule_each_option,
    ("schedule", "every_epoch_trains_at_its_rate_without_recompiling"): _schedule_reaches_training,
    **{(g, "kernel_compiles"): _kernel_compiles for g in ("loss", "optimizer", "model")},
    **{(g, "trains_small_mlp"): _trains for g in ("loss", "optimizer", "model", "data")},
    **{
        (g, "hyperparameter_change_takes_effect_without_recompiling"): _hyperparameter_change
        for g in ("loss", "optimizer", "model")
    },
    **{(g, "each_hyperparameter_takes_effect"): _each_hyperparameter
       for g in ("loss", "optimizer", "model")},  # fmt: skip
    ("loss", "kernel_matches_reference"): _loss_matches_reference,
    ("loss", "gradient_matches_finite_differences"): _loss_gradient,
    ("loss", "inputs_unchanged"): _loss_inputs_unchanged,
    ("optimizer", "kernel_matches_reference"): _opt_matches_reference,
    ("optimizer", "decreases_convex_quadratic"): _opt_quadratic,
    ("optimizer", "zero_lr_changes_nothing"): _opt_zero_lr,
    ("optimizer", "deterministic"): _opt_deterministic,
    ("optimizer", "inputs_unchanged"): _opt_inputs_unchanged,
    ("optimizer", "step_cost_does_not_grow_with_t"): _opt_step_cost,
    ("model", "builds_layout"): _model_builds,
    ("model", "kernel_matches_reference"): _model_matches_reference,
    ("model", "gradient_matches_finite_differences"): _model_gradient,
    ("model", "inputs_unchanged"): _model_inputs_unchanged,
    ("model", "evaluation_ignores_the_random_stream"): _model_modes,
    ("model", "parameter_groups"): _model_groups,
    ("model", "buffers_stay_out_of_the_optimizer"): _model_buffers,
    ("data", "loads"): _data_loads,
}


__all__ = [
    "CHECKS",
    "FAST_ENV",
    "Check",
    "CheckSkipped",
    "ConformanceError",
    "Result",
    "central_difference",
    "check_plugin",
    "checks_for",
    "option_cases",
    "parametrize_with_checks",
    "run_checks",
]
