"""Checks every kind of component gets: its Hydra options, its kernels compile, two epochs of a
small MLP lower the validation loss, and a changed hyperparameter takes effect without a
recompile."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from omegaconf import OmegaConf

from lossbench import hookimpl
from lossbench.config import compose
from lossbench.errors import ConfigError, LossbenchError
from lossbench.kernels import (
    compiled_in_object_mode,
    kernel_ref,
    overload_count,
    recording_compiles,
)
from lossbench.testing._base import (
    _N_IN,
    _N_OUT,
    DTYPES,
    TRAINING,
    TRAINING_DATA,
    _fail,
    _packed,
    _plain,
)
from lossbench.testing.losses import _loss_fn
from lossbench.training import evaluate, train, train_epoch

# ---------------------------------------------------------------------------------------------
# every component: Hydra options


def _hydra_options(pm, group, spec, cases):
    def check():
        cfg = compose([f"{group}={spec.name}"], registry=pm.registry)
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
                compose(
                    [f"{group}={spec.name}", f"{group}.{key}=not_a_number"], registry=pm.registry
                )
            except ConfigError:
                continue
            _fail(f"{group}.{key}=not_a_number is accepted: the option is not type-checked")

    return check


# ---------------------------------------------------------------------------------------------
# kernels compile


_ROLES = {"loss": ("kernel",), "optimizer": ("kernel",), "model": ("forward", "backward")}
_COMPILE_PROBLEMS: dict[int, tuple[object, str | None]] = {}


def _first_compile_problem(group, spec) -> str | None:
    owner = f"{group} {spec.name!r} from plugin {spec.plugin!r}"
    for attr in _ROLES.get(group, ()):
        kernel = getattr(spec, attr)
        role = group if attr == "kernel" else attr
        for dtype in DTYPES:
            try:
                kernel_ref(kernel, role, dtype, owner=owner)
            except LossbenchError as exc:
                return str(exc)
            if compiled_in_object_mode(kernel, role, dtype):
                return f"the {role} kernel compiled in object mode for {dtype}; use @njit"
    return None


def compile_problem(group, spec) -> str | None:
    """None when the component's kernels compile in both dtypes (or it has none); else why not,
    pointing at ``kernel_compiles`` (checked once per component and remembered)."""
    if spec.numpy_only:
        return None
    if id(spec) not in _COMPILE_PROBLEMS:  # the spec is kept with its result: ids stay unique
        problem = _first_compile_problem(group, spec)
        _COMPILE_PROBLEMS[id(spec)] = (spec, problem)
    problem = _COMPILE_PROBLEMS[id(spec)][1]
    return problem and "its kernels do not compile (kernel_compiles fails and says why)"


def _kernel_compiles(pm, group, spec, cases):
    if spec.numpy_only:
        return None

    def check():
        compile_problem(group, spec)
        problem = _COMPILE_PROBLEMS[id(spec)][1]
        if problem:
            _fail(problem)

    return check


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
        hp = _packed(spec, run.hparams["loss"])
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
    cfg = compose(overrides, registry=pm.registry)
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
        hp = cases[0]
        changes = _perturbed(group, spec, hp)
        overrides = _training(pm, group, spec, hp)
        first = _train(pm, overrides, group, _values(hp))
        dispatchers = [train_epoch, evaluate] + [
            getattr(spec, k)
            for k in ("kernel", "forward", "backward")
            if getattr(spec, k, None) is not None
        ]
        loaded = [overload_count(d) for d in dispatchers]
        with recording_compiles() as compiled:
            second = _train(pm, overrides, group, {**_values(hp), **changes})
        reloaded = [
            d.py_func.__qualname__
            for d, n in zip(dispatchers, loaded, strict=True)
            if overload_count(d) != n
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
