"""Parameter groups: the optimizer's segments of the flat parameter vector.

A model's ``ModelLayout.groups`` (``specs.ParamGroup``, torch.optim's parameter groups) give some
tensors other optimizer options, e.g. ``weight_decay = 0`` on biases. The engine turns them into
*segments*: maximal runs of the flat vector whose tensors share a group, each stepped by the
optimizer kernel as a vector of its own with its group's packed options, as torch steps each
group with its own options. The kernel's signature does not change, so every optimizer (built-in
or a plugin's) reads groups through its ``hp``; a model without groups is one segment, the whole
vector, exactly the call it always was.

Buffers (``ModelLayout.buffers``: running statistics) are in no segment: the optimizer never
steps them, whatever its options (weight decay included), and their state rows stay unused. A
model whose buffers all come after its parameters (the built-in MLP's) without groups is still
one segment, its parameters.

``Segments.bounds`` rows are ``(start, end, hp_lo, hp_hi)``: the slice of the flat vector and of
the packed options ``Segments.hp`` (every group's ``pack`` one after another). The state array
keeps its ``(rows, n_params)`` shape; its memory holds each segment's ``(rows, end - start)``
block in turn (one segment: the same array as without groups), and ``scalars`` holds
``scalar_slots`` values per segment (torch keeps scalar state per tensor too).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lossbench.errors import PluginError


@dataclass
class Segments:
    """The optimizer's segments of one run (module docstring)."""

    bounds: np.ndarray
    hp: np.ndarray
    state: np.ndarray
    scalars: np.ndarray

    def views(self, params: np.ndarray, grads: np.ndarray):
        """Per segment ``(params, grads, state, scalars, hp)`` views, for Python callers (the
        slow path, the kit); the fused epoch takes the same slices."""
        rows, flat = self.state.shape[0], self.state.reshape(-1)
        slots = len(self.scalars) // len(self.bounds)
        for r, (a, b, lo, hi) in enumerate(self.bounds.tolist()):
            block = flat[rows * a : rows * b].reshape(rows, b - a)
            yield params[a:b], grads[a:b], block, self.scalars[r * slots : (r + 1) * slots], \
                self.hp[lo:hi]  # fmt: skip


def check_buffers(layout, owner: str) -> None:
    """Refuse buffers that name no tensor of the layout, or a tensor twice."""
    buffers = tuple(getattr(layout, "buffers", ()))
    for name in buffers:
        if name not in layout.tensors:
            raise PluginError(
                f"{owner}: ModelLayout.buffers names tensor {name!r}, which the layout does "
                f"not have (tensors: {', '.join(layout.tensors)}). Fix: name tensors of "
                "ModelLayout.tensors."
            )
    twice = sorted({name for name in buffers if buffers.count(name) > 1})
    if twice:
        raise PluginError(f"{owner}: ModelLayout.buffers names {twice[0]!r} twice. Fix: name "
                          "each buffer once.")  # fmt: skip
    if buffers and set(buffers) >= set(layout.tensors):
        raise PluginError(f"{owner}: every tensor is a buffer (ModelLayout.buffers), so "
                          "nothing trains. Fix: name only the non-trainable state.")  # fmt: skip


def check_groups(layout, owner: str) -> None:
    """Refuse groups that name no tensor of the layout, a tensor twice, a buffer, or ``lr``
    (and buffers that are not tensors: ``check_buffers``)."""
    check_buffers(layout, owner)
    buffers = set(getattr(layout, "buffers", ()))
    seen: dict[str, str] = {}
    for g in layout.groups:
        label = g.name or repr(g.tensors)
        if "lr" in g.options:
            raise PluginError(
                f"{owner}: parameter group {label} overrides lr, which the schedule owns. "
                "Fix: leave lr out of ParamGroup.options."
            )
        for name in g.tensors:
            if name not in layout.tensors:
                raise PluginError(
                    f"{owner}: parameter group {label} names tensor {name!r}, which the layout "
                    f"does not have (tensors: {', '.join(layout.tensors)}). Fix: name tensors "
                    "of ModelLayout.tensors."
                )
            if name in buffers:
                raise PluginError(
                    f"{owner}: parameter group {label} names {name!r}, a buffer "
                    "(ModelLayout.buffers), which the optimizer never steps. Fix: leave "
                    "buffers out of ParamGroup.tensors."
                )
            if name in seen:
                raise PluginError(
                    f"{owner}: tensor {name!r} is in parameter groups {seen[name]} and {label}. "
                    "Fix: put each tensor in at most one group."
                )
            seen[name] = label


def group_options(layout, options) -> list:
    """The optimizer's options of each group: index 0 the options as configured (tensors in no
    group), then one per ``layout.groups`` entry with its overrides of fields the optimizer has
    (others ignored, as torch ignores a group key its optimizer does not read)."""
    fields = {f.name for f in dataclasses.fields(options)}
    out = [options]
    for g in layout.groups:
        changes = {k: type(getattr(options, k))(v) for k, v in g.options.items() if k in fields}
        out.append(dataclasses.replace(options, **changes))
    return out


BUFFER = -1  # element_groups' index of a buffer's entries: in no segment


def element_groups(layout) -> np.ndarray:
    """The group index (0: no group; ``BUFFER`` for a buffer) of every entry of the flat
    vector."""
    which = np.zeros(layout.n_params, dtype=np.int64)
    for k, g in enumerate(layout.groups, start=1):
        for name in g.tensors:
            off, shape = layout.tensors[name]
            which[off : off + int(np.prod(shape))] = k
    for name in getattr(layout, "buffers", ()):
        off, shape = layout.tensors[name]
        which[off : off + int(np.prod(shape))] = BUFFER
    return which


def make_segments(layout, spec, options, dtype, owner: str = "model") -> Segments:
    """The segments of ``layout`` for optimizer ``spec`` with ``options``: bounds, each group's
    packed options (checked by the spec's ``check``), and state and scalars initialised per
    segment with its group's options."""
    check_groups(layout, owner)
    per_group = group_options(layout, options)
    which = element_groups(layout)
    cuts = np.flatnonzero(np.diff(which)) + 1
    starts = np.concatenate([[0], cuts]).astype(np.int64)
    ends = np.concatenate([cuts, [layout.n_params]]).astype(np.int64)
    stepped = which[starts] != BUFFER
    starts, ends = starts[stepped], ends[stepped]
    packed, spans = [], {}
    for k in sorted(set(which[starts].tolist())):
        if k and spec.check is not None:
            spec.check(per_group[k])
        values = np.asarray(spec.pack(per_group[k]), dtype=np.float64).reshape(-1)
        lo = sum(len(v) for v in packed)
        spans[k] = (lo, lo + len(values))
        packed.append(values)
    bounds = np.array([[a, b, *spans[which[a]]] for a, b in zip(starts, ends, strict=True)],
                      dtype=np.int64).reshape(-1, 4)  # fmt: skip
    rows, slots = spec.state_rows, spec.scalar_slots
    state = np.zeros(rows * layout.n_params, dtype=dtype)
    scalars = np.zeros(slots * len(bounds), dtype=np.float64)
    for r, (a, b, _, _) in enumerate(bounds.tolist()):
        if spec.init_state is not None:
            spec.init_state(state[rows * a : rows * b].reshape(rows, b - a), per_group[which[a]])
        if spec.init_scalars is not None:
            spec.init_scalars(scalars[r * slots : (r + 1) * slots], per_group[which[a]])
    hp = np.concatenate(packed) if packed else np.zeros(0)
    return Segments(bounds, hp, state.reshape(rows, layout.n_params), scalars)
