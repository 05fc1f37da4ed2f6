"""How the kit calls a kernel: every buffer it hands out has guard rows around it, the kernel
runs compiled with numba's boundscheck in float64 calls (a copy, see
``kernels.bounds_checked_copy``; not in fast mode), inputs must come back unchanged, outputs the
kit filled with NaN must be written, and a non-finite result from finite inputs is named with its
likely cause. A miss names the kernel.

Compiled code has no bounds checks: a kernel that writes a few values past a buffer corrupts
whatever lies there (a run then ends with absurd losses), a far write crashes the process. The
bounds-checked copy turns an index out of bounds into an IndexError; the guard rows catch what
it cannot see (a helper the kernel calls, compiled without boundscheck).
"""

from __future__ import annotations

import math
import typing

import numpy as np
from numba.core.registry import CPUDispatcher

from lossbench.kernels import bounds_checked_copy
from lossbench.testing._base import _fail, fast_mode

GUARD = 8  # guard values before and after a 1-D buffer; a 2-D buffer gets ceil(GUARD / cols) rows
# what guards hold: a float no kernel computes by chance, an int no layout holds
_SENTINEL = {"f": -1.5e29, "i": -0x5A5A5A5A5A5A5A5}


class Arg(typing.NamedTuple):
    """One argument: ``mode`` is ``in`` (must come back unchanged), ``out`` (the kit fills it
    with NaN; the kernel must write every value), ``inout`` (updated in place) or ``work``
    (scratch the kernel may read and write)."""

    name: str
    value: typing.Any
    mode: str = "in"


class _Guarded:
    """A copy of an array inside a larger one whose first and last rows are guards."""

    def __init__(self, array: np.ndarray, fill: float | None):
        array = np.asarray(array)
        rows = GUARD if array.ndim == 1 else max(2, math.ceil(GUARD / max(1, array.shape[1])))
        shape = (array.shape[0] + 2 * rows, *array.shape[1:])
        self.base = np.empty(shape, dtype=array.dtype)
        self.base[...] = _SENTINEL["i" if array.dtype.kind in "iu" else "f"]
        self.rows = rows
        self.view = self.base[rows : rows + array.shape[0]]
        self.view[...] = array if fill is None else fill
        self.guards = self._guards().copy()

    def _guards(self) -> np.ndarray:
        return np.concatenate([self.base[: self.rows].ravel(), self.base[-self.rows :].ravel()])

    def overwritten(self) -> tuple[int, int]:
        """How many guard values before and after the buffer changed."""
        now = self._guards().view(np.uint8).reshape(2, -1)
        was = self.guards.view(np.uint8).reshape(2, -1)
        per_value = self.base.itemsize
        changed = (now != was).reshape(2, -1, per_value).any(axis=2)
        return int(changed[0].sum()), int(changed[1].sum())


def _callable(kernel, args: list[Arg]):
    """The kernel the kit runs: its bounds-checked copy for float64 calls (not in fast mode),
    else itself. Indices do not depend on the dtype: one bounds-checked compile per kernel, not
    two; float32 calls keep the guard rows."""
    float32 = any(getattr(a.value, "dtype", None) == np.float32 for a in args)
    if fast_mode() or float32 or not isinstance(kernel, CPUDispatcher):
        return kernel
    return bounds_checked_copy(kernel)


def kernel_label(role: str, kernel) -> str:
    """``the backward kernel my_model.backward``: how a miss names the kernel."""
    f = getattr(kernel, "py_func", kernel)
    name = f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', repr(f))}"
    return f"the {role} kernel {name}" if hasattr(kernel, "py_func") else f"the {role} {name}"


def _shapes(args: list[Arg]) -> str:
    return ", ".join(
        f"{a.name} {np.shape(a.value)}" for a in args if isinstance(a.value, np.ndarray)
    )


def _invoke(kernel, role: str, args: list[Arg], fills: dict[str, float], when: str):
    """Call ``kernel`` on guarded copies of ``args``: (return value, the guarded copies)."""
    guarded = {
        a.name: _Guarded(a.value, fills.get(a.name) if a.mode == "out" else None)
        for a in args
        if isinstance(a.value, np.ndarray)
    }
    for name, fill in fills.items():
        if name in guarded and fill is not None and _mode_of(args, name) == "work":
            g = guarded[name].view
            g[np.isnan(g)] = fill  # the values forward left unwritten (the kit filled NaN)
    values = [guarded[a.name].view if a.name in guarded else a.value for a in args]
    fn = _callable(kernel, args)
    try:
        result = fn(*values)
    except IndexError as exc:
        _fail(
            f"{kernel_label(role, kernel)} indexes out of bounds{when}: IndexError: {exc} "
            f"(numba's boundscheck, which the kit compiles it with; {_shapes(args)}). Fix the "
            "loop bounds or offsets: compiled code has no bounds checks, so a run would read or "
            "write memory that is not the array's"
        )
    return result, guarded


def _mode_of(args: list[Arg], name: str) -> str:
    return next(a.mode for a in args if a.name == name)


def _check_guards(kernel, role: str, guarded: dict[str, _Guarded], when: str) -> None:
    for name, g in guarded.items():
        before, after = g.overwritten()
        if before or after:
            side = "past the end of" if after else "before the start of"
            _fail(
                f"{kernel_label(role, kernel)} writes {side} {name}{when}: {before + after} of "
                f"the guard values the kit put around it changed ({name} has shape "
                f"{g.view.shape}). Fix the loop bounds or offsets: in a run that memory belongs "
                "to something else"
            )


def _check_inputs(args: list[Arg], guarded: dict[str, _Guarded], when: str) -> None:
    for a in args:
        if a.mode == "in" and a.name in guarded:
            before, after = np.asarray(a.value), guarded[a.name].view
            if not np.array_equal(before, after, equal_nan=True):
                changed = int(np.sum(~((before == after) | (np.isnan(before) & np.isnan(after)))))
                diff = np.nanmax(np.abs(after.astype(np.float64) - before.astype(np.float64)))
                outputs = ", ".join(x.name for x in args if x.mode in ("out", "inout", "work"))
                _fail(
                    f"it modifies its input {a.name} ({before.dtype}){when} ({changed} of "
                    f"{before.size} values, by up to {diff:.3g}). Fix: write only to "
                    f"{outputs or 'its outputs'}; copy an input before changing it"
                )


def _non_finite(args: list[Arg], guarded, result) -> list[tuple[str, np.ndarray]]:
    """The written arrays (and the return value) holding NaN or inf."""
    found = [
        (a.name, guarded[a.name].view)
        for a in args
        if a.mode in ("out", "inout") and not np.all(np.isfinite(guarded[a.name].view))
    ]
    if isinstance(result, float) and not math.isfinite(result):
        found.append(("the value it returns", np.array([result])))
    return found


def _finite_inputs(args: list[Arg]) -> bool:
    given = [a.value for a in args if a.mode in ("in", "inout")]
    floats = [a for a in given if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
    return all(np.all(np.isfinite(a)) for a in floats)


def _cause(kernel, role, args, when) -> str:
    """Why a kernel gave NaN: rerun it with what the kit filled with NaN set to 0."""
    outs = [a.name for a in args if a.mode == "out"]
    works = [a.name for a in args if a.mode == "work"]
    if outs:
        result, guarded = _invoke(kernel, role, args, dict.fromkeys(outs, 0.0), when)
        if not _non_finite(args, guarded, result):
            return (
                f"it does not write every value of {', '.join(outs)} (the kit fills them with "
                "NaN first): overwrite all of them, do not add to them"
            )
    if works:
        result, guarded = _invoke(kernel, role, args, dict.fromkeys(works, 0.0), when)
        if not _non_finite(args, guarded, result):
            return (
                "is it reading `work` that forward did not write? (work is not zeroed: the kit "
                "fills it with NaN before forward)"
            )
    return "from finite inputs: a 0/0, a log or sqrt of a value <= 0, an exp that overflows?"


def call(kernel, role: str, args: list[Arg], when: str = "") -> tuple[typing.Any, dict]:
    """Run ``kernel`` (``role``: loss, optimizer, forward, backward, or a NumPy reference) on
    guarded copies of ``args``; returns (its return value, {name: the array after the call}).
    Misses are named: an index out of bounds, a write past a buffer, a changed input, NaN or inf
    from finite inputs. ``when`` (e.g. " at step 6") says where in a sequence of calls."""
    out_fill = {a.name: np.nan for a in args if a.mode == "out"}
    result, guarded = _invoke(kernel, role, args, out_fill, when)
    _check_guards(kernel, role, guarded, when)
    _check_inputs(args, guarded, when)
    broken = _non_finite(args, guarded, result)
    if broken and _finite_inputs(args):
        name, values = broken[0]
        bad = ~np.isfinite(values)
        kinds = " and ".join(
            f"{kind} in {int(np.sum(test(values) & bad))} of {values.size} values"
            for kind, test in (("NaN", np.isnan), ("inf", np.isinf))
            if np.any(test(values) & bad)
        )
        who = kernel_label(role, kernel)
        _fail(f"{who} wrote {kinds} of {name}{when}: {_cause(kernel, role, args, when)}")
    return result, {name: g.view.copy() for name, g in guarded.items()}
