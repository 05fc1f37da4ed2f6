"""The conformance kit: every property lossbench expects of a component, checked in one call.

In a plugin's own test suite (in the spirit of scikit-learn's ``parametrize_with_checks``)::

    import lossbench_focal
    from lossbench.testing import parametrize_with_checks

    @parametrize_with_checks(lossbench_focal)
    def test_lossbench_conformance(check):
        check()

``parametrize_with_checks(*plugins, hparams=None)`` takes plugin modules or objects (what the
entry point names), or paths of single-file plugins, and makes one pytest case per (component,
property), with ids like ``loss-focal-gradient_matches_finite_differences``. ``hparams`` adds
hyperparameter cases per component name (or ``group.name``), e.g. ``{"focal": [{"gamma": 0.0},
{"gamma": 2.0, "alpha": 0.5}]}``; without it each component is checked with its defaults.
``check_plugin(*plugins)`` runs every check at once and raises one error listing all failures.

What is checked (``CHECKS``), for every component the plugins register:

- plugin: ``registers``: the plugin loads beside the built-ins, names are unique, it registers a
  component or implements a hook;
- every component: ``hydra_options``: its hyperparameter dataclass is stored as a Hydra option,
  ``GROUP=NAME`` composes to the defaults, and a non-number for a number field is rejected;
- loss: kernel compiles in nopython mode for float32 and float64 with the canonical signature;
  kernel == NumPy reference; gradient == central finite differences; inputs not modified; a
  changed hyperparameter takes effect without a recompile; two epochs of a small MLP lower the
  validation loss;
- optimizer: compiles; kernel == reference over many steps; decreases a convex quadratic; a zero
  learning rate changes no parameter; deterministic; grads and hp not modified; hyperparameter
  change without a recompile; trains a small MLP;
- model: builds a consistent layout; forward/backward compile; kernels == references; backward
  == finite differences of forward; inputs not modified; hyperparameter change without a
  recompile; trains;
- data: loads a consistent ``Dataset``, the same for the same seed; a small MLP trains on it.

A component with only NumPy references (no kernels) gets the same checks on its references and
trains on the slow path. A failure raises ``ConformanceError`` naming the component, the plugin,
the property and by how much it is missed.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lossbench import hookimpl
from lossbench.errors import ConfigError, LossbenchError

CHECKS = {
    "plugin": ("registers",),
    "loss": (
        "hydra_options",
        "kernel_compiles",
        "kernel_matches_reference",
        "gradient_matches_finite_differences",
        "inputs_unchanged",
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
        "hyperparameter_change_takes_effect_without_recompiling",
        "trains_small_mlp",
    ),
    "data": ("hydra_options", "loads", "trains_small_mlp"),
}
DTYPES = ("float32", "float64")
# a small run: two epochs of a 16-unit MLP with Adam on a few hundred rows, no files, no tracking
TRAINING = ["trainer.epochs=2", "trainer.batch_size=32", "trainer.progress=false", "seed=0"]
TRAINING_DATA = {
    "class_index": ["data=blobs", "data.n_samples=320"],
    "values": ["data=blobs", "data.n_samples=320"],  # one-hot rows, as mse on class data
    "binary": ["data=moons", "data.n_samples=320"],
}


class ConformanceError(AssertionError):
    """A component misses a property; the message names component, plugin, property, amount."""


class _Miss(Exception):
    """Raised inside a check; ``Check`` adds which component and property."""


def _fail(message: str):
    raise _Miss(message)


@dataclasses.dataclass(frozen=True)
class Check:
    """One property of one component; call it to check (raises ``ConformanceError``)."""

    group: str
    component: str
    plugin: str
    name: str
    function: Callable[[], None] = dataclasses.field(repr=False, compare=False)

    @property
    def id(self) -> str:
        return f"{self.group}-{self.component}-{self.name}"

    @property
    def subject(self) -> str:
        if self.group == "plugin":
            return f"plugin {self.plugin!r}"
        return f"{self.group} {self.component!r} from plugin {self.plugin!r}"

    def __call__(self) -> None:
        try:
            self.function()
        except _Miss as miss:
            raise ConformanceError(f"{self.subject} fails {self.name}: {miss}") from None
        except Exception as exc:
            hint = ""
            if isinstance(exc, ConfigError) and self.group != "plugin":
                hint = (
                    " (the kit used the defaults, or the cases given; pass values that work "
                    f"with parametrize_with_checks(..., hparams={{{self.component!r}: {{...}}}}))"
                )
            raise ConformanceError(
                f"{self.subject} fails {self.name}: it raised {type(exc).__name__}: {exc}{hint}"
            ) from exc


# ---------------------------------------------------------------------------------------------
# entry points


def parametrize_with_checks(*plugins, hparams: dict | None = None):
    """A ``pytest.mark.parametrize("check", ...)`` over every check of every component the
    ``plugins`` register; the test body calls ``check()``."""
    import pytest

    checks = checks_for(*plugins, hparams=hparams)
    return pytest.mark.parametrize("check", checks, ids=[c.id for c in checks])


def check_plugin(*plugins, hparams: dict | None = None) -> int:
    """Run every check; raise one ``ConformanceError`` listing all failures, else return how
    many checks passed."""
    failures = []
    checks = checks_for(*plugins, hparams=hparams)
    for check in checks:
        try:
            check()
        except ConformanceError as exc:
            failures.append(str(exc))
    if failures:
        raise ConformanceError(
            f"{len(failures)} of {len(checks)} checks fail:\n- " + "\n- ".join(failures)
        )
    return len(checks)


def checks_for(*plugins, hparams: dict | None = None) -> list[Check]:
    """The ``Check`` objects for ``plugins`` (modules, objects or single-file paths)."""
    from lossbench.plugins import DEFAULT_PLUGINS, build_plugin_manager

    hparams = hparams or {}
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
            extra.append(obj)

    def manager():
        return build_plugin_manager(entry_points=False, extra=extra)

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
                cases = _cases(hparams, group, spec)
                for check_name in CHECKS[group]:
                    function = _CHECK_FUNCTIONS[group, check_name](pm, group, spec, cases)
                    if function is not None:  # None: the property does not apply
                        checks.append(Check(group, spec.name, name, check_name, function))
    return checks


def _name(spec) -> str:
    return spec.name


def _plugin_label(plugin) -> str:
    return getattr(plugin, "__name__", None) or type(plugin).__name__


def _is_file(plugin) -> bool:
    return isinstance(plugin, Path) or (isinstance(plugin, str) and plugin.endswith(".py"))


def _as_plugin(plugin):
    """A plugin object from a module, an object, a module name or a single-file path."""
    if _is_file(plugin):
        from lossbench.plugins import load_plugin_file

        return load_plugin_file(plugin)
    if isinstance(plugin, str):
        return importlib.import_module(plugin)
    return plugin


def _broken(label: str, exc: Exception) -> Check:
    def check():
        _fail(f"it does not load: {type(exc).__name__}: {exc}")

    return Check("plugin", label, label, "registers", check)


def _cases(hparams: dict, group: str, spec) -> list:
    given = hparams.get(f"{group}.{spec.name}", hparams.get(spec.name))
    if given is None:
        return [spec.hparams()]
    given = [given] if isinstance(given, dict) else list(given)
    return [spec.hparams(**values) for values in given]


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


# ---------------------------------------------------------------------------------------------
# comparisons with a measured miss


def _compare(what: str, got, expected, rtol: float, atol: float) -> None:
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        _fail(f"{what}: shape {got.shape}, expected {expected.shape}")
    err = np.abs(got - expected)
    allowed = atol + rtol * np.abs(expected)
    bad = ~(err <= allowed)  # NaN counts as a miss
    if bad.any():
        excess = np.where(bad, np.nan_to_num(err - allowed, nan=np.inf), -np.inf)
        i = np.unravel_index(int(np.argmax(excess)), got.shape) if got.shape else ()
        at = f" at index {tuple(int(k) for k in i)}" if got.shape else ""
        _fail(
            f"{what} differ by up to {np.nanmax(np.where(bad, err, 0)):.3g} in {int(bad.sum())} "
            f"of {bad.size} values{at}: {got[i]:.10g} vs {expected[i]:.10g} (allowed "
            f"{atol:.0e} + {rtol:.0e} x |expected|)"
        )


def _unchanged(what: str, before: np.ndarray, after: np.ndarray) -> None:
    if not np.array_equal(before, after, equal_nan=True):
        diff = np.abs(np.asarray(after, np.float64) - np.asarray(before, np.float64))
        _fail(
            f"it modifies its input {what} ({int(np.sum(before != after))} of {before.size} "
            f"values, by up to {np.nanmax(diff):.3g}). Fix: write only to the output arguments."
        )


def _packed(spec, hp, dtype) -> np.ndarray:
    return np.asarray(spec.pack(hp), dtype=dtype).reshape(-1)


def _hp_text(hp) -> str:
    return f"{type(hp).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(hp).items())})"


def _each_case(cases, body):
    """Run ``body(hp)`` for every case, naming the case in a miss."""
    for hp in cases:
        try:
            body(hp)
        except _Miss as miss:
            if len(cases) == 1:
                raise
            _fail(f"with {_hp_text(hp)}: {miss}")


# ---------------------------------------------------------------------------------------------
# every component: Hydra options


def _hydra_options(pm, group, spec, cases):
    def check():
        from omegaconf import OmegaConf

        from lossbench import config

        cfg = config.compose([f"{group}={spec.name}"], registry=pm.registry)
        node = OmegaConf.to_container(cfg[group])
        defaults = spec.hparams()
        for f in dataclasses.fields(defaults):
            value = getattr(defaults, f.name)
            if node.get(f.name) != "???" and node.get(f.name) != _plain(value):
                _fail(
                    f"{group}={spec.name} composes {group}.{f.name}={node.get(f.name)!r}, but "
                    f"the dataclass default is {value!r}"
                )
        numbers = [
            f.name
            for f in dataclasses.fields(defaults)
            if type(getattr(defaults, f.name)) in (int, float)
        ]
        for key in numbers[:1]:
            try:
                config.compose(
                    [f"{group}={spec.name}", f"{group}.{key}=not_a_number"], registry=pm.registry
                )
            except ConfigError:
                continue
            _fail(f"{group}.{key}=not_a_number is accepted: the option is not type-checked")

    return check


def _plain(value):
    """A dataclass default as OmegaConf gives it back."""
    return list(value) if isinstance(value, tuple) else value


# ---------------------------------------------------------------------------------------------
# kernels compile


def _kernel_compiles(pm, group, spec, cases):
    roles = {"loss": ("kernel",), "optimizer": ("kernel",), "model": ("forward", "backward")}
    if spec.numpy_only:
        return None

    def check():
        from lossbench.kernels import SIGNATURES, kernel_ref

        owner = f"{group} {spec.name!r} from plugin {spec.plugin!r}"
        for attr in roles[group]:
            kernel = getattr(spec, attr)
            role = group if attr == "kernel" else attr
            for dtype in DTYPES:
                try:
                    kernel_ref(kernel, role, dtype, owner=owner)
                except LossbenchError as exc:
                    _fail(str(exc))
                cres = kernel.overloads.get(tuple(SIGNATURES[role](dtype).args))
                if cres is not None and cres.objectmode:
                    _fail(f"the {role} kernel compiled in object mode for {dtype}; use @njit")

    return check


# ---------------------------------------------------------------------------------------------
# losses


def _loss_batch(spec, rng, dtype, rows=6, cols=4):
    pred = rng.normal(size=(rows, cols)) * 2.0
    if spec.target == "class_index":
        target = rng.integers(0, cols, size=(rows, 1)).astype(np.float64)
    elif spec.target == "binary":
        pred = pred[:, :1]
        target = (np.arange(rows) % 2)[rng.permutation(rows)][:, None].astype(np.float64)
    else:
        target = rng.uniform(size=(rows, cols))
    c = np.ascontiguousarray
    return c(pred, dtype=dtype), c(target, dtype=dtype)


def _loss_fn(spec):
    """(pred, target, hp) -> (value, grad) through the kernel, or the reference if none."""
    if spec.numpy_only:
        return spec.reference

    def call(pred, target, hp):
        grad = np.empty_like(pred)
        return spec.kernel(pred, target, hp, grad), grad

    return call


def _loss_matches_reference(pm, group, spec, cases):
    if spec.numpy_only:
        return None

    def body(hp):
        if spec.reference is None:
            _fail("it has no NumPy reference. Fix: pass reference=FUNCTION(pred, target, hp)")
        rng = np.random.default_rng(0)
        for _ in range(4):
            pred, target = _loss_batch(spec, rng, np.float64)
            hp64 = _packed(spec, hp, np.float64)
            ref_value, ref_grad = spec.reference(pred.copy(), target.copy(), hp64.copy())
            value, grad = _loss_fn(spec)(pred, target, hp64)
            _compare("float64 loss values (kernel vs reference)", value, ref_value, 1e-9, 1e-12)
            _compare("float64 gradients (kernel vs reference)", grad, ref_grad, 1e-9, 1e-12)
            p32, t32 = pred.astype(np.float32), target.astype(np.float32)
            value, grad = _loss_fn(spec)(p32, t32, _packed(spec, hp, np.float32))
            scale = max(1.0, abs(ref_value))
            _compare(
                "float32 loss values (kernel vs reference)", value, ref_value, 1e-4, 1e-6 * scale
            )
            gscale = max(1e-3, float(np.max(np.abs(ref_grad))))
            _compare("float32 gradients (kernel vs reference)", grad, ref_grad, 1e-3, 1e-5 * gscale)

    return lambda: _each_case(cases, body)


def _loss_gradient(pm, group, spec, cases):
    def body(hp):
        rng = np.random.default_rng(1)
        pred, target = _loss_batch(spec, rng, np.float64)
        hp64 = _packed(spec, hp, np.float64)
        loss = _loss_fn(spec)
        _, grad = loss(pred, target, hp64)
        numeric = central_difference(lambda: float(loss(pred, target, hp64)[0]), pred)
        _compare("gradients (analytic vs central differences, eps 1e-6)", grad, numeric, 1e-5, 1e-8)

    return lambda: _each_case(cases, body)


def _loss_inputs_unchanged(pm, group, spec, cases):
    def body(hp):
        rng = np.random.default_rng(2)
        for dtype in DTYPES if not spec.numpy_only else ("float64",):
            pred, target = _loss_batch(spec, rng, dtype)
            hp_arr = _packed(spec, hp, dtype)
            before = [a.copy() for a in (pred, target, hp_arr)]
            functions = [_loss_fn(spec)]
            if not spec.numpy_only and spec.reference is not None:
                functions.append(spec.reference)
            for function in functions:
                function(pred, target, hp_arr)
                for what, b, a in zip(
                    ("pred", "target", "hp"), before, (pred, target, hp_arr), strict=True
                ):
                    _unchanged(f"{what} ({dtype})", b, a)

    return lambda: _each_case(cases, body)


# ---------------------------------------------------------------------------------------------
# optimizers


def _opt_setup(spec, hp, n, dtype=np.float64):
    state = np.zeros((spec.state_rows, n), dtype=dtype)
    if spec.init_state is not None:
        spec.init_state(state, hp)
    return state, _packed(spec, hp, dtype)


def _step_fn(spec):
    if spec.numpy_only:
        return spec.reference
    return lambda p, g, state, hp, t, lr: spec.kernel(p, g, state, hp, t, p.dtype.type(lr))


def _opt_matches_reference(pm, group, spec, cases):
    if spec.numpy_only:
        return None

    def body(hp):
        if spec.reference is None:
            _fail("it has no NumPy reference. Fix: pass reference=FUNCTION(params, grads, ...)")
        rng = np.random.default_rng(0)
        n = 37
        state_k, hp64 = _opt_setup(spec, hp, n)
        state_r = state_k.copy()
        p_k = rng.normal(size=n)
        p_r = p_k.copy()
        for t in range(1, 26):
            g = rng.normal(size=n)
            lr = 0.01 * (0.9 ** (t // 5))  # a changing lr, as schedules make it
            spec.kernel(p_k, g, state_k, hp64, t, lr)
            spec.reference(p_r, g.copy(), state_r, hp64.copy(), t, lr)
            _compare(f"parameters after step {t} (kernel vs reference)", p_k, p_r, 1e-9, 1e-12)
            _compare(f"state after step {t} (kernel vs reference)", state_k, state_r, 1e-9, 1e-12)

    return lambda: _each_case(cases, body)


def _opt_quadratic(pm, group, spec, cases):
    def body(hp):
        state, hp64 = _opt_setup(spec, hp, 5)
        a = np.array([1.0, 2.0, 0.5, 3.0, 1.5])
        p = np.full(5, 2.0)
        f0 = 0.5 * np.sum(a * p * p)
        step = _step_fn(spec)
        for t in range(1, 201):
            step(p, a * p, state, hp64, t, 0.05)
        f = 0.5 * np.sum(a * p * p)
        if not f < 0.9 * f0:  # a clear decrease, whatever schedule the hyperparameters imply
            _fail(
                f"200 steps with lr=0.05 on f(p) = sum(a p^2)/2 (p0 = 2, a = {a.tolist()}) take "
                f"f from {f0:.4g} to {f:.4g}; expected a decrease below 0.9 f0 = {0.9 * f0:.4g}"
            )

    return lambda: _each_case(cases, body)


def _opt_zero_lr(pm, group, spec, cases):
    def body(hp):
        rng = np.random.default_rng(3)
        state, hp64 = _opt_setup(spec, hp, 11)
        p = rng.normal(size=11)
        p0 = p.copy()
        step = _step_fn(spec)
        for t in range(1, 6):
            step(p, rng.normal(size=11), state, hp64, t, 0.0)
        if not np.array_equal(p, p0):
            _fail(
                f"five steps with lr=0 change the parameters by up to {np.max(np.abs(p - p0)):.3g}"
                " (a learning rate of 0 must leave them as they are: scale every change, weight "
                "decay included, by lr)"
            )

    return lambda: _each_case(cases, body)


def _opt_deterministic(pm, group, spec, cases):
    def body(hp):
        results = []
        for _ in range(2):
            rng = np.random.default_rng(4)
            state, hp64 = _opt_setup(spec, hp, 13)
            p = rng.normal(size=13)
            step = _step_fn(spec)
            for t in range(1, 11):
                step(p, rng.normal(size=13), state, hp64, t, 0.01)
            results.append((p, state))
        (p1, s1), (p2, s2) = results
        if not (np.array_equal(p1, p2) and np.array_equal(s1, s2)):
            _fail(
                "two identical sequences of 10 steps give different parameters (max difference "
                f"{np.max(np.abs(p1 - p2)):.3g}): the same inputs must give the same bits"
            )

    return lambda: _each_case(cases, body)


def _opt_inputs_unchanged(pm, group, spec, cases):
    def body(hp):
        rng = np.random.default_rng(5)
        for dtype in DTYPES if not spec.numpy_only else ("float64",):
            state, hp_arr = _opt_setup(spec, hp, 9, np.dtype(dtype))
            p = rng.normal(size=9).astype(dtype)
            g = rng.normal(size=9).astype(dtype)
            g0, hp0 = g.copy(), hp_arr.copy()
            _step_fn(spec)(p, g, state, hp_arr, 1, 0.01)
            _unchanged(f"grads ({dtype})", g0, g)
            _unchanged(f"hp ({dtype})", hp0, hp_arr)

    return lambda: _each_case(cases, body)


# ---------------------------------------------------------------------------------------------
# models

_N_IN, _N_OUT, _ROWS = 4, 3, 5


def _model_setup(spec, hp, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    layout = spec.build(hp, _N_IN, _N_OUT)
    params = np.empty(layout.n_params)
    layout.init(rng, params)
    x = rng.normal(size=(_ROWS, _N_IN))
    c = np.ascontiguousarray
    return layout, c(params, dtype=dtype), c(x, dtype=dtype), np.asarray(layout.hp, dtype)


def _model_fns(spec, layout):
    """forward(params, hp, x) -> out and backward(params, hp, x, dout) -> grads through the
    kernels, or the references if the model has none."""
    if spec.numpy_only:
        return (
            lambda p, hp, x: spec.reference_forward(p, layout.layout, hp, x),
            lambda p, hp, x, d: spec.reference_backward(p, layout.layout, hp, x, d),
        )

    def forward(p, hp, x, work=None):
        work = np.empty(layout.workspace(len(x)), p.dtype) if work is None else work
        out = np.empty((len(x), _N_OUT), p.dtype)
        spec.forward(p, layout.layout, hp, x, work, out)
        return out

    def backward(p, hp, x, dout):
        work = np.empty(layout.workspace(len(x)), p.dtype)
        forward(p, hp, x, work)
        grads = np.full(len(p), np.nan, p.dtype)
        spec.backward(p, layout.layout, hp, x, work, dout, grads)
        return grads

    return forward, backward


def _model_builds(pm, group, spec, cases):
    def body(hp):
        layout = spec.build(hp, _N_IN, _N_OUT)
        lay = layout.layout
        if not (isinstance(lay, np.ndarray) and lay.dtype == np.int64 and lay.ndim == 2):
            _fail(f"build() gives layout {lay!r}; the kernels need a 2-D int64 array")
        if not lay.flags.c_contiguous:
            _fail("build() gives a layout array that is not C-contiguous")
        size = sum(int(np.prod(shape)) for _, shape in layout.tensors.values())
        if size != layout.n_params:
            _fail(f"tensors hold {size} values but n_params is {layout.n_params}")
        params = np.full(layout.n_params, np.nan)
        layout.init(np.random.default_rng(0), params)
        if not np.all(np.isfinite(params)):
            _fail(
                f"init() leaves {int(np.sum(~np.isfinite(params)))} parameters unset or non-finite"
            )
        if int(layout.workspace(_ROWS)) < 0:
            _fail(f"workspace({_ROWS}) is negative")

    return lambda: _each_case(cases, body)


def _model_matches_reference(pm, group, spec, cases):
    if spec.numpy_only:
        return None

    def body(hp):
        if spec.reference_forward is None or spec.reference_backward is None:
            _fail("it has no NumPy reference_forward/reference_backward. Fix: pass both")
        layout, params, x, mhp = _model_setup(spec, hp)
        forward, backward = _model_fns(spec, layout)
        dout = np.random.default_rng(1).normal(size=(_ROWS, _N_OUT))
        ref_out = spec.reference_forward(params, layout.layout, mhp, x)
        ref_grads = spec.reference_backward(params, layout.layout, mhp, x, dout)
        _compare(
            "float64 forward outputs (kernel vs reference)",
            forward(params, mhp, x),
            ref_out,
            1e-9,
            1e-12,
        )
        _compare(
            "float64 gradients (kernel vs reference)",
            backward(params, mhp, x, dout),
            ref_grads,
            1e-9,
            1e-12,
        )
        f32 = np.float32
        p32, x32, h32 = params.astype(f32), x.astype(f32), mhp.astype(f32)
        scale = max(1.0, float(np.max(np.abs(ref_out))))
        _compare(
            "float32 forward outputs (kernel vs reference)",
            forward(p32, h32, x32),
            ref_out,
            1e-3,
            1e-4 * scale,
        )
        gscale = max(1.0, float(np.max(np.abs(ref_grads))))
        grads32 = backward(p32, h32, x32, dout.astype(f32))
        _compare("float32 gradients (kernel vs reference)", grads32, ref_grads, 1e-3, 1e-4 * gscale)

    return lambda: _each_case(cases, body)


def _model_gradient(pm, group, spec, cases):
    def body(hp):
        layout, params, x, mhp = _model_setup(spec, hp)
        forward, backward = _model_fns(spec, layout)
        dout = np.random.default_rng(1).normal(size=(_ROWS, _N_OUT))
        grads = backward(params, mhp, x, dout)
        numeric = central_difference(lambda: float(np.sum(forward(params, mhp, x) * dout)), params)
        _compare(
            "d sum(forward * dout) / d params (backward vs central differences, eps 1e-6)",
            grads, numeric, 1e-5, 1e-7,
        )  # fmt: skip

    return lambda: _each_case(cases, body)


def _model_inputs_unchanged(pm, group, spec, cases):
    def body(hp):
        for dtype in DTYPES if not spec.numpy_only else ("float64",):
            layout, params, x, mhp = _model_setup(spec, hp, np.dtype(dtype))
            forward, backward = _model_fns(spec, layout)
            dout = np.random.default_rng(1).normal(size=(_ROWS, _N_OUT)).astype(dtype)
            inputs = {"params": params, "x": x, "hp": mhp, "layout": layout.layout, "dout": dout}
            before = {k: v.copy() for k, v in inputs.items()}
            forward(params, mhp, x)
            backward(params, mhp, x, dout)
            for k, v in inputs.items():
                _unchanged(f"{k} ({dtype})", before[k], v)

    return lambda: _each_case(cases, body)


# ---------------------------------------------------------------------------------------------
# datasets


def _data_loads(pm, group, spec, cases):
    def body(hp):
        from lossbench.data import Dataset

        first, again = spec.load(hp, 7), spec.load(hp, 7)
        if not isinstance(first, Dataset):
            _fail(f"load() returns {type(first).__name__}, not a lossbench.data.Dataset")
        X, y = np.asarray(first.X), np.asarray(first.y)
        if X.ndim != 2 or len(X) != len(y) or len(X) == 0:
            _fail(f"X has shape {X.shape} and y {y.shape}: expected (n, d) and n targets, n > 0")
        if not np.all(np.isfinite(X.astype(np.float64))):
            _fail(f"X has {int(np.sum(~np.isfinite(X)))} non-finite values")
        if first.task not in ("classification", "regression"):
            _fail(f"task is {first.task!r}: expected 'classification' or 'regression'")
        if first.task == "classification" and (y.min() < 0 or y.max() >= first.n_classes):
            _fail(f"class labels run from {y.min()} to {y.max()} with {first.n_classes} classes")
        for name in ("X", "y", "X_val", "y_val"):
            a, b = getattr(first, name), getattr(again, name)
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
                _fail(f"two loads with the same seed give different {name}: seed it")

    return lambda: _each_case(cases, body)


# ---------------------------------------------------------------------------------------------
# training: a small MLP, and a changed hyperparameter without a recompile


class _InitialLoss:
    """A hook that records the validation loss at the initial parameters."""

    def __init__(self):
        self.value = math.nan

    @hookimpl
    def on_run_start(self, run):
        spec = run.specs["loss"]
        out = run.predict(run.dataset.X_val).astype(np.float64)
        hp = _packed(spec, run.hparams["loss"], np.float64)
        loss = spec.reference if spec.reference is not None else _loss_fn(spec)
        self.value = float(loss(out, run.dataset.Y_val.astype(np.float64), hp)[0])


def _training(pm, group, spec, case) -> list[str]:
    """Overrides for two quick epochs that use the component ``spec`` of ``group``."""
    if group == "loss":
        base = [*TRAINING_DATA[spec.target], f"loss={spec.name}"]
    elif group == "data":
        task = spec.load(case, 0).task
        base = [
            f"data={spec.name}",
            "loss=cross_entropy" if task == "classification" else "loss=mse",
        ]
    else:
        base = [*TRAINING_DATA["class_index"], "loss=cross_entropy", f"{group}={spec.name}"]
    if group != "model":
        base += ["model=mlp", "model.hidden=[16]"]
    return [*base, *TRAINING, "tracking=none"]


def _train(pm, overrides, group, values):
    from omegaconf import OmegaConf

    from lossbench import config
    from lossbench.engine import train

    cfg = config.compose(overrides, registry=pm.registry)
    for key, value in values.items():
        OmegaConf.update(cfg, f"{group}.{key}", _plain(value))
    return train(cfg, plugin_manager=pm)


def _values(hp) -> dict:
    return {f.name: getattr(hp, f.name) for f in dataclasses.fields(hp)}


def _trains(pm, group, spec, cases):
    def check():
        hp = cases[0]
        initial = _InitialLoss()
        pm.register(initial)
        try:
            run = _train(pm, _training(pm, group, spec, hp), group, _values(hp))
        finally:
            pm.unregister(initial)
        if run.status != "finished":
            _fail(f"two epochs end with status {run.status!r}: {run.error}")
        final = run.history[-1]["val_loss"]
        if not final < initial.value:
            _fail(
                f"val_loss is {initial.value:.6g} at initialisation and {final:.6g} after two "
                f"epochs ({final - initial.value:+.3g}); training must lower it"
                f" ({'slow NumPy path' if run.path == 'numpy' else 'fused path'})"
            )

    return check


def _perturbed(group, spec, hp) -> dict:
    """New values for the numeric hyperparameters that reach the kernels (through ``pack``, or
    the layout for a model), still accepted by the component; {} if there are none."""
    candidates = {}
    for f in dataclasses.fields(hp):
        value = getattr(hp, f.name)
        if f.name == "lr" or isinstance(value, bool):  # lr is the engine's, not the kernel's
            continue
        if isinstance(value, float):
            candidates[f.name] = value * 0.5 if value != 0 else 0.1
        elif isinstance(value, int):
            candidates[f.name] = value + 1
        elif isinstance(value, list) and value and all(type(v) is int for v in value):
            candidates[f.name] = [v + 1 for v in value]

    def reach(changes):
        new = dataclasses.replace(hp, **changes)
        try:
            if group == "model":
                a, b = spec.build(hp, _N_IN, _N_OUT), spec.build(new, _N_IN, _N_OUT)
                return (
                    a.n_params != b.n_params
                    or a.hp != b.hp
                    or not np.array_equal(a.layout, b.layout)
                )
            if spec.check is not None:
                spec.check(new)
            return spec.pack(new) != spec.pack(hp)
        except LossbenchError:
            return False

    if candidates and reach(candidates):
        return candidates
    return next(({k: v} for k, v in candidates.items() if reach({k: v})), {})


def _hyperparameter_change(pm, group, spec, cases):
    if not _perturbed(group, spec, cases[0]):
        return None  # no numeric hyperparameter reaches the kernels

    def check():
        from numba.core import event

        from lossbench import engine

        hp = cases[0]
        changes = _perturbed(group, spec, hp)
        overrides = _training(pm, group, spec, hp)
        first = _train(pm, overrides, group, _values(hp))
        dispatchers = [engine.train_epoch, engine.evaluate] + [
            getattr(spec, k)
            for k in ("kernel", "forward", "backward")
            if getattr(spec, k, None) is not None
        ]
        loaded = [len(d.overloads) for d in dispatchers]
        with event.install_recorder("numba:compile") as recorder:
            second = _train(pm, overrides, group, {**_values(hp), **changes})
        compiled = sorted(
            {e.data["dispatcher"].py_func.__qualname__ for _, e in recorder.buffer if e.is_start}
        )
        reloaded = [
            d.py_func.__qualname__
            for d, n in zip(dispatchers, loaded, strict=True)
            if len(d.overloads) != n
        ]
        if compiled or reloaded:
            _fail(
                f"changing {changes} compiled {', '.join(compiled + reloaded)} again; "
                "hyperparameters must reach kernels as values in hp (pack), not as types, "
                "closure constants or new functions"
            )
        curves = [[h["train_loss"] for h in r.history] for r in (first, second)]
        if curves[0] == curves[1]:
            _fail(
                f"changing {changes} leaves the training bit-identical ({curves[0]}): the "
                "kernels do not read them. Fix: pass them through pack into hp and read hp[i] "
                "in the kernel (a global or closure constant is frozen at compile time)"
            )

    return check


# ---------------------------------------------------------------------------------------------
# numerics helpers


def central_difference(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences (f scalar, x a float64 array changed in place)."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        g[i] = (up - down) / (2 * eps)
    return grad


_CHECK_FUNCTIONS: dict[tuple[str, str], Callable[..., Callable[[], None] | None]] = {
    **{(g, "hydra_options"): _hydra_options for g in ("loss", "optimizer", "model", "data")},
    **{(g, "kernel_compiles"): _kernel_compiles for g in ("loss", "optimizer", "model")},
    **{(g, "trains_small_mlp"): _trains for g in ("loss", "optimizer", "model", "data")},
    **{
        (g, "hyperparameter_change_takes_effect_without_recompiling"): _hyperparameter_change
        for g in ("loss", "optimizer", "model")
    },
    ("loss", "kernel_matches_reference"): _loss_matches_reference,
    ("loss", "gradient_matches_finite_differences"): _loss_gradient,
    ("loss", "inputs_unchanged"): _loss_inputs_unchanged,
    ("optimizer", "kernel_matches_reference"): _opt_matches_reference,
    ("optimizer", "decreases_convex_quadratic"): _opt_quadratic,
    ("optimizer", "zero_lr_changes_nothing"): _opt_zero_lr,
    ("optimizer", "deterministic"): _opt_deterministic,
    ("optimizer", "inputs_unchanged"): _opt_inputs_unchanged,
    ("model", "builds_layout"): _model_builds,
    ("model", "kernel_matches_reference"): _model_matches_reference,
    ("model", "gradient_matches_finite_differences"): _model_gradient,
    ("model", "inputs_unchanged"): _model_inputs_unchanged,
    ("data", "loads"): _data_loads,
}


__all__ = [
    "CHECKS",
    "Check",
    "ConformanceError",
    "central_difference",
    "check_plugin",
    "checks_for",
    "parametrize_with_checks",
]
