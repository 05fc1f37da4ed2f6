"""Component specs: what a plugin registers, the table of component kinds (``KIND_TABLE``),
and the fixed kernel signatures.

Every loss, optimizer and model is a *spec*: a name, its options dataclass (``options``: one
field per hyperparameter, stored as a Hydra config option), numba kernels with the canonical
signatures below, and a plain NumPy reference with the same meaning. The engine passes the
kernels to one fused, disk-cached epoch as first-class function values, so a new kernel never
means recompiling the epoch.

The plugin interface is versioned: ``PLUGIN_API`` is the version this lossbench implements, and a
spec's ``api`` field (default: ``PLUGIN_API``) the version its plugin was written for. A spec
declaring another version is refused at registration with what changed (``API_CHANGES``).

Canonical kernel signatures of interface version 2 (``F`` is the run's float dtype, float32 or
float64; arrays are C-contiguous). The packed options (``hp``) and the learning rate are float64
whatever the run's dtype, as PyTorch keeps them in double precision: form derived constants
(``1 - beta2``, bias corrections) in float64, then cast them to ``F`` where they multiply ``F``
arrays (``p.dtype.type(1.0 - beta2)``), so a float32 loop stays in float32.

loss kernel
    ``loss(pred: F[:, ::1], target: F[:, ::1], hp: float64[::1], grad: F[:, ::1]) -> float64``
    Returns the mean loss of the batch and writes dLoss/dpred (the gradient of that mean, so
    already divided by the batch size) into ``grad``.

optimizer kernel
    ``step(params: F[::1], grads: F[::1], state: F[:, ::1], scalars: float64[::1],
    hp: float64[::1], t: int64, lr: float64) -> None``
    Updates ``params``, ``state`` and ``scalars`` in place. ``state`` holds per-parameter rows,
    ``scalars`` the optimizer's scalar state (e.g. NAdam's running product of momentum factors,
    so a step's cost does not grow with ``t``). ``t`` is the 1-based step count, ``lr`` the
    learning rate of this epoch (schedules live outside the kernel).

model kernels
    ``forward(params: F[::1], layout: int64[:, ::1], hp: float64[::1], x: F[:, ::1], work: F[::1],
    out: F[:, ::1]) -> None`` writes the model's output for the batch ``x`` into ``out``, keeping
    whatever backward needs in ``work``.
    ``backward(params, layout, hp, x, work, dout: F[:, ::1], grads: F[::1]) -> None`` overwrites
    ``grads`` with dLoss/dparams given dLoss/dout, using what forward left in ``work``.
    The last ``len(CONTEXT)`` entries of the model's ``hp`` are the engine's, after
    ``ModelLayout.hp``: ``hp[-3]`` 1.0 while training, 0.0 while evaluating (validation,
    prediction); ``hp[-2]`` the run's stream seed and ``hp[-1]`` the step (1-based while
    training, 0 while evaluating) for ``lossbench.streams`` (dropout). A model that has no
    modes ignores them (additive within interface version 2).
    Tensors a layout names as ``ModelLayout.buffers`` (running statistics) are state inside
    ``params``: forward may write them while training, never while evaluating; backward
    writes 0 as their gradient; the optimizer never steps them.

Three words, one meaning each: a spec's ``options`` is its options *dataclass* (a type); the
component's *options* are an instance of it, filled from the config (``Run.options[group]``,
what ``pack``, ``check``, ``build``, ``load`` and ``rate`` receive); ``hp`` is the float64 vector
``pack(options)`` makes, which is how options reach kernels (never as closure constants or
globals). ``hparams=``, the spelling of ``options=`` before, is still accepted, with a
DeprecationWarning (additive within interface version 2).

A spec may leave its kernels out (``None``) and give only the NumPy reference: it then trains on
the slow path, a Python epoch over the references (``lossbench.training.slow``), and
``python -m lossbench plugins`` marks it "numpy only".

A loss may also say how it is computed, for ``python -m lossbench explain`` (all optional, and
additive within interface version 2: a spec without them registers as before): ``formula`` (the
loss of one term and its derivative, as text), ``reduction`` (how the kernel averages the terms,
``REDUCTIONS``) and ``unreduced(pred, target, hp)`` (the terms before that average, as PyTorch's
``reduction="none"``), which explain sums and divides by hand.

Datasets (``DatasetSpec``) and learning-rate schedules (``ScheduleSpec``) have no kernels: a
dataset loads arrays, a schedule gives each epoch's learning rate in Python.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from numba import types

FLOAT_DTYPES = {"float32": types.float32, "float64": types.float64}

PLUGIN_API = 2
"""The plugin interface version this lossbench implements (a spec's ``api`` field)."""

API_CHANGES = {
    1: (
        "interface version 2 passes the packed options (hp) and the learning rate as float64 "
        "whatever the run's dtype, and gives optimizer kernels and references a scalars: "
        "float64[::1] argument after state: step(params, grads, state, scalars, hp, t, lr). "
        "Fix: add the scalars argument to the optimizer kernel and reference, cast constants "
        "formed from hp to the parameters' dtype where they multiply them "
        "(p.dtype.type(1.0 - hp[1])), and declare api=2 (or leave api out) in the spec "
        "(docs/plugins.md, 'Interface versions')"
    ),
}
"""What changed since each older interface version, and what to do about it."""


# hp (and an optimizer's scalars): float64 whatever the run's dtype
_HP = types.Array(types.float64, 1, "C")


def loss_signature(dtype: str) -> types.Signature:
    """Canonical loss kernel signature for ``dtype`` ('float32' or 'float64')."""
    f = FLOAT_DTYPES[dtype]
    m2 = types.Array(f, 2, "C")
    return types.float64(m2, m2, _HP, m2)


def optimizer_signature(dtype: str) -> types.Signature:
    """Canonical optimizer kernel signature for ``dtype``."""
    f = FLOAT_DTYPES[dtype]
    v = types.Array(f, 1, "C")
    return types.none(v, v, types.Array(f, 2, "C"), _HP, _HP, types.int64, types.float64)


def forward_signature(dtype: str) -> types.Signature:
    """Canonical model forward kernel signature for ``dtype``."""
    f = FLOAT_DTYPES[dtype]
    v, m2 = types.Array(f, 1, "C"), types.Array(f, 2, "C")
    return types.none(v, types.Array(types.int64, 2, "C"), _HP, m2, v, m2)


def backward_signature(dtype: str) -> types.Signature:
    """Canonical model backward kernel signature for ``dtype``."""
    f = FLOAT_DTYPES[dtype]
    v, m2 = types.Array(f, 1, "C"), types.Array(f, 2, "C")
    return types.none(v, types.Array(types.int64, 2, "C"), _HP, m2, v, m2, v)


CONTEXT = ("training", "stream_seed", "step")
"""What the engine appends to a model's ``hp`` (``ModelLayout.kernel_hp``), in this order."""


def no_hp(options: Any) -> list[float]:
    """``pack`` for components whose kernels read no options."""
    return []


no_hparams = no_hp  # the name before (plugins may import it)


@dataclasses.dataclass(frozen=True)
class _Spec:
    name: str
    # the options dataclass: one field per option, the group's Hydra schema
    options: type = None
    description: str = ""
    # the plugin interface version the component was written for (PLUGIN_API)
    api: int = PLUGIN_API
    # set by the registry: which plugin registered this spec
    plugin: str = dataclasses.field(default="", compare=False)
    # the spelling of ``options`` before (deprecated; reads as ``options``)
    hparams: type = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        if self.hparams is None or self.hparams is self.options:  # (replace passes both)
            object.__setattr__(self, "hparams", self.options)
            return
        if self.options is not None:
            raise TypeError(
                f"{type(self).__name__} {self.name!r}: options= and hparams= name one thing; "
                "pass options= alone (dataclasses.replace(spec, options=...) carries the old "
                "hparams along: add hparams=None)"
            )
        warnings.warn(f"{type(self).__name__}(hparams=...) is now spelled options=...; "
                      "hparams= still works but will go in a later interface version",
                      DeprecationWarning, stacklevel=3)  # fmt: skip
        object.__setattr__(self, "options", self.hparams)

    @property
    def numpy_only(self) -> bool:
        """True when the component has no numba kernels and trains on the slow path."""
        return False


# A loss's targets: class indices (one column), 0/1 labels of a two-class task (one column), or
# real values (regression targets, or one-hot rows on a classification task).
TargetKind = Literal["class_index", "binary", "values"]

# How a loss averages its terms into the one value its kernel returns (LossSpec.reduction); ""
# when the spec does not say.
Reduction = Literal["", "elements", "rows"]
REDUCTIONS = {
    "elements": "mean over rows x columns: every element of the (rows, columns) batch is one "
    "term, as PyTorch's reduction='mean' of MSELoss, L1Loss, HuberLoss and BCEWithLogitsLoss",
    "rows": "mean over rows: one term per row, as PyTorch's reduction='mean' of "
    "CrossEntropyLoss with class-index targets",
}
"""The declared reductions and what each means."""


@dataclasses.dataclass(frozen=True)
class LossSpec(_Spec):
    """A loss. ``kernel`` has the canonical loss signature; ``reference(pred, target, hp)``
    returns ``(loss, grad)`` in NumPy with the same meaning; ``pack(options) -> list[float]``
    makes ``hp`` from the options; ``check(options)`` may raise ``ConfigError`` for values it
    cannot handle.

    Optional, for ``python -m lossbench explain``: ``formula`` (text: one term's loss and its
    derivative; explain falls back to the kernel's docstring), ``reduction`` (a key of
    ``REDUCTIONS``; "" when not declared) and ``unreduced(pred, target, hp)``, the terms before
    the reduction (pred's shape for "elements", ``(rows,)`` for "rows"), which needs a declared
    reduction."""

    kernel: Any = None
    reference: Callable[..., tuple[float, np.ndarray]] | None = None
    target: TargetKind = "values"
    pack: Callable[[Any], list[float]] = no_hp
    check: Callable[[Any], None] | None = None
    formula: str = ""
    reduction: Reduction = ""
    unreduced: Callable[..., np.ndarray] | None = None

    @property
    def numpy_only(self) -> bool:
        return self.kernel is None


@dataclasses.dataclass(frozen=True)
class OptimizerSpec(_Spec):
    """An optimizer. ``kernel`` has the canonical optimizer signature; ``reference(params, grads,
    state, scalars, hp, t, lr)`` updates NumPy arrays in place with the same meaning.
    ``state_rows`` rows of state are allocated per parameter, filled by ``init_state(state,
    options)`` (zeros by default); ``scalar_slots`` float64 values of scalar state (the
    ``scalars`` argument), filled by ``init_scalars(scalars, options)`` (zeros by default).
    The learning rate is the float field ``lr`` of the options dataclass, which every
    optimizer must have (registration refuses one without it): the engine reads it, applies
    the schedule, and passes each epoch's value to the kernel as ``lr``; ``pack`` need not
    include it."""

    kernel: Any = None
    reference: Callable[..., None] | None = None
    state_rows: int = 0
    pack: Callable[[Any], list[float]] = no_hp
    init_state: Callable[[np.ndarray, Any], None] | None = None
    check: Callable[[Any], None] | None = None
    scalar_slots: int = 0
    init_scalars: Callable[[np.ndarray, Any], None] | None = None

    @property
    def numpy_only(self) -> bool:
        return self.kernel is None


@dataclasses.dataclass(frozen=True)
class ModelSpec(_Spec):
    """A model over a flat parameter vector.

    ``build(options, n_in, n_out) -> ModelLayout`` describes the parameter layout and kernel
    inputs, and refuses options it cannot take by raising ``ConfigError``;
    ``forward``/``backward`` have the canonical model signatures (``hp`` is ``ModelLayout.hp``);
    ``reference_forward(params, layout, hp, x) -> out`` and ``reference_backward(params, layout,
    hp, x, dout) -> grads`` are NumPy (docs/plugins.md, "Models")."""

    build: Callable[..., ModelLayout] | None = None
    forward: Any = None
    backward: Any = None
    reference_forward: Callable[..., np.ndarray] | None = None
    reference_backward: Callable[..., np.ndarray] | None = None

    @property
    def numpy_only(self) -> bool:
        return self.forward is None and self.backward is None


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """Tensors of a model that the optimizer steps with other options, as a torch.optim
    parameter group: ``ParamGroup(("b0", "b1"), {"weight_decay": 0.0})`` is torch's
    ``{"params": biases, "weight_decay": 0.0}``. ``options`` override fields of the optimizer's
    options for these tensors (a field the optimizer does not have is ignored, as torch
    ignores a group key its optimizer does not read; ``lr`` cannot be overridden: the schedule
    owns it)."""

    tensors: tuple[str, ...]
    options: dict[str, float]
    name: str = ""


@dataclasses.dataclass
class ModelLayout:
    """What a model's ``build`` returns.

    ``tensors`` maps a parameter name (``W0``, ``b0``, ...) to ``(offset, shape)`` inside the flat
    vector; ``init(rng, params)`` fills the flat vector; ``layout``/``hp`` go to the kernels
    (``hp`` followed by the engine's ``CONTEXT``: ``kernel_hp``); ``workspace(batch)`` is the
    length of ``work`` forward/backward need for ``batch`` rows; ``groups`` the parameter groups
    (tensors in none are stepped with the optimizer's options as configured).

    ``buffers`` names tensors that are state, not parameters (batch norm's running statistics,
    torch's ``register_buffer``): the optimizer never steps them (they are in no optimizer
    segment, ``training.groups``), backward writes 0 as their gradient, and forward may write
    them while training (``hp[-3]`` 1.0), never while evaluating. They live in the flat vector
    like the parameters, so they are saved, restored with the kept epoch's weights and read by
    predictions with them. ``min_batch``: the fewest rows a training minibatch may hold (batch
    norm's unbiased variance needs 2); ``set_up`` refuses a batch size that would give fewer.
    Both are additive within interface version 2 (a layout without them is as before)."""

    n_params: int
    tensors: dict[str, tuple[int, tuple[int, ...]]]
    layout: np.ndarray
    hp: list[float]
    init: Callable[[np.random.Generator, np.ndarray], None]
    workspace: Callable[[int], int]
    groups: tuple[ParamGroup, ...] = ()
    buffers: tuple[str, ...] = ()
    min_batch: int = 1

    def views(self, params: np.ndarray) -> dict[str, np.ndarray]:
        """Named views (W0, b0, ...) into ``params``."""
        out = {}
        for name, (off, shape) in self.tensors.items():
            size = int(np.prod(shape))
            out[name] = params[off : off + size].reshape(shape)
        return out

    def buffer_mask(self) -> np.ndarray:
        """True at every entry of the flat vector that belongs to a buffer (``buffers``)."""
        mask = np.zeros(self.n_params, dtype=bool)
        for name in self.buffers:
            off, shape = self.tensors[name]
            mask[off : off + int(np.prod(shape))] = True
        return mask

    def kernel_hp(self, training: bool = False, seed: int = 0, step: int = 0) -> np.ndarray:
        """The ``hp`` the model kernels and references take: ``hp`` then ``CONTEXT`` (float64;
        the defaults are evaluation mode, as prediction runs)."""
        own = np.asarray(self.hp, dtype=np.float64).reshape(-1)
        return np.concatenate([own, [float(training), float(seed), float(step)]])


@dataclasses.dataclass(frozen=True)
class DatasetSpec(_Spec):
    """A dataset. ``load(options, seed) -> lossbench.data.Dataset``. The options dataclass
    should derive from ``lossbench.data.DataOptions`` so the common split/scaling options exist."""

    load: Callable[..., Any] | None = None


@dataclasses.dataclass(frozen=True)
class ScheduleSpec(_Spec):
    """A learning-rate schedule, evaluated once per epoch in Python (kernels get the value).

    ``rate(epoch, epochs, base_lr, options) -> float`` is the learning rate of ``epoch``
    (0-based) of a schedule ``epochs`` long that starts at ``base_lr`` (``optimizer.lr``); the
    engine applies ``trainer.warmup_epochs`` first and hands the schedule the epochs after the
    warm-up (``epoch - W`` of ``epochs - W``). ``reference`` has the same signature and meaning,
    written another way (a recursive form, PyTorch's own update), so the kit can hold one
    against the other. ``uses_epochs``: whether the rate depends on ``epochs`` (cosine's period
    does; step's does not): when it does not, a run of N epochs is the start of a longer run and
    a sweep reads epoch counts from one run (``lossbench.sweep.answers``). ``check(options)``
    may raise ``ConfigError`` for values it cannot handle."""

    rate: Callable[[int, int, float, Any], float] | None = None
    reference: Callable[[int, int, float, Any], float] | None = None
    uses_epochs: bool = True
    check: Callable[[Any], None] | None = None


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of component, declared once: everything that differs between kinds is here,
    and the registry (``lossbench.plugins``), the ConfigStore (``lossbench.config.store``),
    the fused epoch's kernel roles (``lossbench.training.fused``) and the kit read it.

    ``group`` is the config group and registry key; ``spec`` the class a plugin registers;
    ``hook`` the registration hook (``hookspecs``); ``noun`` how messages name one;
    ``kernels`` the spec attributes the fused epoch calls, with their role, in call order, and
    ``references`` the NumPy references the slow path calls instead (a spec needs one set or
    the other to train); ``default`` the option ``conf/config.yaml`` chooses."""

    group: str
    spec: type
    hook: str
    noun: str
    default: str
    kernels: tuple[tuple[str, str], ...] = ()
    references: tuple[str, ...] = ()


KIND_TABLE = (
    Kind("data", DatasetSpec, "register_datasets", "dataset", "digits"),
    Kind("model", ModelSpec, "register_models", "model", "mlp",
         kernels=(("forward", "forward"), ("backward", "backward")),
         references=("reference_forward", "reference_backward")),
    Kind("loss", LossSpec, "register_losses", "loss", "cross_entropy",
         kernels=(("kernel", "loss"),), references=("reference",)),
    Kind("optimizer", OptimizerSpec, "register_optimizers", "optimizer", "adam",
         kernels=(("kernel", "optimizer"),), references=("reference",)),
    Kind("schedule", ScheduleSpec, "register_schedules", "learning-rate schedule", "constant"),
)  # fmt: skip
"""Every kind of component. Adding a kind is one entry here, its hook and its built-ins."""

KIND = {k.group: k for k in KIND_TABLE}
KINDS = {k.group: k.spec for k in KIND_TABLE}
