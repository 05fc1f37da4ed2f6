"""Checks every kind of component gets: its Hydra options, its kernels compile, and two epochs of a
small MLP lower the validation loss; and the composed training configs they share (Hydra
composes in about 0.3 s: each is composed once per component and copied)."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lossbench import hookimpl
from lossbench.config import compose
from lossbench.errors import LossbenchError
from lossbench.kernels import compiled_in_object_mode, kernel_ref
from lossbench.specs import KIND_TABLE
from lossbench.testing._base import (
    TRAINING,
    TRAINING_DATA,
    _fail,
    _packed,
    _plain,
    dtypes,
    fast_mode,
    not_applicable,
)
from lossbench.testing.losses import _loss_fn
from lossbench.training import train

# ---------------------------------------------------------------------------------------------
# composed configs, once per plugin manager and overrides

_COMPOSED: dict[int, tuple[object, dict[tuple[str, ...], object]]] = {}


def composed(pm, overrides: list[str]):
    """A copy of the config ``overrides`` compose to with ``pm``'s registry (composed once)."""
    if id(pm) not in _COMPOSED:
        _COMPOSED[id(pm)] = (pm, {})  # the manager is kept with its configs: ids stay unique
    configs = _COMPOSED[id(pm)][1]
    key = tuple(overrides)
    if key not in configs:
        configs[key] = compose(list(overrides), registry=pm.registry)
    return copy.deepcopy(configs[key])


# ---------------------------------------------------------------------------------------------
# every component: Hydra options


def _hydra_options(pm, group, spec, cases):
    def check():
        if group == "data":
            cfg = composed(pm, [f"data={spec.name}", *TRAINING, "tracking=none"])
        else:
            cfg = composed(pm, _training(pm, group, spec, spec.options()))
        node = OmegaConf.to_container(cfg[group])
        defaults = spec.options()
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
                OmegaConf.update(cfg, f"{group}.{key}", "not_a_number")
            except OmegaConfBaseException:
                continue
            _fail(f"{group}.{key}=not_a_number is accepted: the option is not type-checked")

    return check


# ---------------------------------------------------------------------------------------------
# kernels compile


_ROLES = {k.group: tuple(attr for attr, _ in k.kernels) for k in KIND_TABLE if k.kernels}
_COMPILE_PROBLEMS: dict[tuple[int, bool], tuple[object, str | None]] = {}


def _first_compile_problem(group, spec) -> str | None:
    owner = f"{group} {spec.name!r} from plugin {spec.plugin!r}"
    for attr in _ROLES.get(group, ()):
        kernel = getattr(spec, attr)
        role = group if attr == "kernel" else attr
        for dtype in dtypes():
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
    key = (id(spec), fast_mode())
    if key not in _COMPILE_PROBLEMS:  # the spec is kept with its result: ids stay unique
        _COMPILE_PROBLEMS[key] = (spec, _first_compile_problem(group, spec))
    problem = _COMPILE_PROBLEMS[key][1]
    return problem and "its kernels do not compile (kernel_compiles fails and says why)"


def _kernel_compiles(pm, group, spec, cases):
    if spec.numpy_only:
        return not_applicable("it has no kernels (numpy only: it trains on the slow path)")

    def check():
        compile_problem(group, spec)
        problem = _COMPILE_PROBLEMS[id(spec), fast_mode()][1]
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
        hp = _packed(spec, run.options["loss"])
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
    fast = ["trainer.dtype=float64"] if fast_mode() else []  # one dtype compiled, not two
    return [*base, *TRAINING, *fast, "tracking=none"]


def _train(pm, overrides, group, values):
    cfg = composed(pm, overrides)
    for key, value in values.items():
        OmegaConf.update(cfg, f"{group}.{key}", _plain(value))
    return train(cfg, plugin_manager=pm)


def _values(options) -> dict:
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


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
