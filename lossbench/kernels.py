"""Kernels as first-class function values.

The fused epoch (``lossbench.training.fused.train_epoch``) takes its loss, optimizer and model
kernels as arguments. Passed as numba dispatchers they would be typed by identity, so every new
kernel would compile a new epoch, in every process. Wrapped in ``KernelRef`` they are typed by their
*signature* only (``numba.types.FunctionType``): the epoch compiles once per dtype, is cached on
disk, and any kernel with the canonical signature (built-in or plugin) runs in it through an
indirect call. A kernel is compiled (or loaded from its own module's cache) the first time it is
wrapped; editing a plugin's file recompiles every kernel in that file (numba's cache entries
record the file's modification time and size; benchmarks/kernel_cache.py), never the epoch.

This module is also the one door to numba's internals (``_get_wrapper_address``, a dispatcher's
``overloads``, ``_cache`` and cache ``stats``): nothing else in lossbench touches them,
pyproject.toml pins numba to the tested range, and ``numba_internals_problem`` says what changed
if a new numba moves them (tests/test_kernels.py runs it).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import sys
import threading
import traceback
import types
from pathlib import Path

import numba
import numpy as np
from numba import typeof
from numba.core import event
from numba.core.registry import CPUDispatcher
from numba.core.types import FunctionType, WrapperAddressProtocol
from numba.extending import typeof_impl

try:  # private to numba: see numba_internals_problem
    from numba.experimental.function_type import _get_wrapper_address
except ImportError:  # a numba that moved it; numba_internals_problem says so
    _get_wrapper_address = None

from lossbench.errors import PluginError, PluginFailure
from lossbench.specs import (
    API_CHANGES,
    backward_signature,
    forward_signature,
    loss_signature,
    optimizer_signature,
)

SIGNATURES = {
    "loss": loss_signature,
    "optimizer": optimizer_signature,
    "forward": forward_signature,
    "backward": backward_signature,
}
# the canonical argument names, for messages (docs/plugins.md, "Kernels")
PARAMETERS = {
    "loss": ("pred", "target", "hp", "grad"),
    "optimizer": ("params", "grads", "state", "scalars", "hp", "t", "lr"),
    "forward": ("params", "layout", "hp", "x", "work", "out"),
    "backward": ("params", "layout", "hp", "x", "work", "dout", "grads"),
}


def signature_text(role: str, dtype: str) -> str:
    """The canonical signature of ``role`` as a reader writes it, e.g. ``(pred: float32[:, ::1],
    ...) -> float64``."""
    sig = SIGNATURES[role](dtype)

    def show(t):
        if hasattr(t, "ndim"):
            return f"{t.dtype}[{', '.join([':'] * (t.ndim - 1) + ['::1'])}]"
        return str(t)

    args = ", ".join(f"{n}: {show(t)}" for n, t in zip(PARAMETERS[role], sig.args, strict=True))
    return f"({args}) -> {'None' if str(sig.return_type) == 'none' else sig.return_type}"


def numba_reason(exc: BaseException) -> str:
    """The informative part of a numba compile error: what failed and where."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    what = next((ln.strip() for ln in lines if not ln.startswith("Failed in")), text)
    where = re.search(r'File "(.+?)", line (\d+)', text)
    if where:
        what += f" (line {where.group(2)} of {Path(where.group(1)).name})"
    return what


class KernelRef(WrapperAddressProtocol):
    """A compiled kernel seen by numba as a function pointer of a fixed signature."""

    def __init__(self, dispatcher, signature, address: int):
        self.dispatcher = dispatcher
        self._signature = signature
        self._address = address
        self.numba_type = FunctionType(signature)

    def __wrapper_address__(self) -> int:
        return self._address

    def signature(self):
        return self._signature


@typeof_impl.register(KernelRef)
def _typeof_kernel_ref(val, c):
    """The numba type of a KernelRef, made once per kernel. numba's own typeof for a
    WrapperAddressProtocol builds a new FunctionType from the signature on every call of the
    fused epoch: 4-6 us per kernel argument, most of the 40 us it took to call train_epoch
    (benchmarks/epoch_breakdown.py). Same type, so the same compiled epoch and cache entry."""
    return val.numba_type


_CACHE: dict[tuple[int, str, str], KernelRef] = {}


def kernel_ref(kernel, role: str, dtype: str, *, owner: str) -> KernelRef:
    """Compile ``kernel`` for the canonical ``role`` signature in ``dtype`` and wrap it.

    ``owner`` names the component and plugin for error messages (e.g. "loss 'focal' from
    plugin 'lossbench_focal'").
    """
    key = (id(kernel), role, dtype)
    if key in _CACHE:
        return _CACHE[key]
    problem = numba_internals_problem()
    if problem:
        raise RuntimeError(f"{problem}. Fix: install a numba version pyproject.toml allows.")
    sig = SIGNATURES[role](dtype)
    wanted = signature_text(role, dtype)
    if not isinstance(kernel, CPUDispatcher):
        raise PluginError(
            f"the {role} kernel of {owner} is {kernel!r}, not a numba @njit function. Fix: "
            f"decorate it with @numba.njit(cache=True) and give it the canonical signature "
            f"{wanted}; or set it to None and give only the NumPy reference (the slow path)."
        )
    params = list(inspect.signature(kernel.py_func).parameters)
    if len(params) != len(PARAMETERS[role]):
        raise PluginError(
            f"the {role} kernel of {owner} has the wrong signature: it takes {len(params)} "
            f"arguments ({', '.join(params)}), the canonical {role} signature has "
            f"{len(PARAMETERS[role])}: {wanted}. "
            + (
                f"It has the signature of plugin interface version 1: {API_CHANGES[1]}."
                if role == "optimizer" and len(params) == len(PARAMETERS[role]) - 1
                else "Fix the kernel's arguments (docs/plugins.md, section Kernels)."
            )
        )
    if kernel.targetoptions.get("forceobj") or kernel.targetoptions.get("nopython") is False:
        raise PluginError(
            f"the {role} kernel of {owner} is compiled in object mode (forceobj/nopython=False). "
            "Fix: decorate it with @numba.njit(cache=True) so it runs in nopython mode."
        )
    try:
        address = _get_wrapper_address(kernel, sig)
    except Exception as exc:
        raise PluginError(
            f"the {role} kernel of {owner} does not compile in nopython mode for the canonical "
            f"signature {wanted}: {type(exc).__name__}: {numba_reason(exc)}. Fix the kernel: "
            "use only what numba supports on these argument types (numba.readthedocs.io, "
            "'Supported Python features'), or set it to None and give only the NumPy reference "
            "(the slow path)."
        ) from exc
    ref = KernelRef(kernel, sig, address)
    _CACHE[key] = ref
    return ref


# ---------------------------------------------------------------------------------------------
# a kernel that raises


# the codes the fused epoch writes into ``KernelWatch.flag[1]``: which call raised
FAILED_CALLS = {1: "forward", 2: "loss", 3: "backward", 4: "optimizer"}
_WATCHING = threading.local()  # the KernelWatch of this thread's compiled call, if any


def failure_text(role: str, kind: str, function, owner: str, plugin: str, exc) -> str:
    """One paragraph for a plugin function that raised: which one, of which plugin, the
    exception and where it was raised, and the fix."""
    name = getattr(getattr(function, "py_func", function), "__qualname__", repr(function))
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" (line {where[0].lineno} of {Path(where[0].filename).name})" if where else ""
    return (
        f"the {role} {kind} {name} of {owner} raised {type(exc).__name__}: {exc}{at}; the run "
        f"failed. This is a bug in the plugin {plugin!r}, not in the config. Fix: correct the "
        f"{kind} (`python -m lossbench check {plugin}` runs the conformance kit on it), or train "
        f"without it (another component, or LOSSBENCH_DISABLE_PLUGINS={plugin})."
    )


class KernelWatch:
    """Catches an exception raised by a kernel inside a compiled call (the fused epoch, the
    evaluation). numba calls a kernel given as a function pointer through its C wrapper, which
    cannot return an error: it hands the exception to ``sys.unraisablehook`` ("Exception
    ignored in: ...") and returns garbage. ``call`` installs a hook that records the exception
    and sets ``flag[0]``; the compiled loop reads that flag after each kernel call, writes which
    call it was into ``flag[1]`` (``FAILED_CALLS``) and returns at once; ``call`` then raises
    ``PluginFailure`` naming the kernel and its plugin. Costs a load and a branch per call.
    ``kernels``: role -> (the kernel, its owner text, its plugin)."""

    def __init__(self, kernels: dict[str, tuple]):
        self.kernels = kernels
        self.flag = np.zeros(2, np.int64)
        self.error: BaseException | None = None

    def call(self, compiled, *args):
        self.flag[0] = self.flag[1] = 0
        previous, _WATCHING.watch = sys.unraisablehook, self
        sys.unraisablehook = functools.partial(_unraisable, previous)
        try:
            result = compiled(*args)
        finally:
            sys.unraisablehook, _WATCHING.watch = previous, None
        if self.flag[0]:
            raise self.failure()
        return result

    def failure(self) -> PluginFailure:
        role = FAILED_CALLS.get(int(self.flag[1]))
        if role not in self.kernels:  # the loop did not say: the kernel in the traceback
            tb = traceback.extract_tb(getattr(self.error, "__traceback__", None))
            names = {frame.name for frame in tb}
            role = next((r for r, (k, *_) in self.kernels.items()
                         if getattr(k, "py_func", k).__name__ in names), next(iter(self.kernels)))
        kernel, owner, plugin = self.kernels[role]
        return PluginFailure(failure_text(role, "kernel", kernel, owner, plugin, self.error))


def _unraisable(previous, unraisable) -> None:
    """numba's kernel wrapper reports with a string as the object (``repr`` of its context);
    anything else, or another thread's, goes to the hook that was there."""
    watch = getattr(_WATCHING, "watch", None)
    if watch is None or not isinstance(unraisable.object, str):
        previous(unraisable)
        return
    if not watch.flag[0]:
        watch.error = unraisable.exc_value
    watch.flag[0] = 1


# ---------------------------------------------------------------------------------------------
# numba internals, behind this one door


def ensure_compiled(dispatcher, args) -> None:
    """Compile (or load from the disk cache) ``dispatcher`` for the types of ``args`` now, so
    the first call does not; a no-op when it is already loaded."""
    sig = tuple(typeof(a) for a in args)
    if sig not in dispatcher.overloads:
        dispatcher.compile(sig)


def overload_count(dispatcher) -> int:
    """How many signatures ``dispatcher`` has compiled or loaded in this process."""
    return len(dispatcher.overloads)


def compiled_in_object_mode(dispatcher, role: str, dtype: str) -> bool:
    """True when ``dispatcher``'s overload for the canonical ``role`` signature fell back to
    numba's object mode (slow Python objects instead of machine code)."""
    compiled = dispatcher.overloads.get(tuple(SIGNATURES[role](dtype).args))
    return compiled is not None and compiled.objectmode


@contextlib.contextmanager
def recording_compiles():
    """Within the block, record what numba compiles; the list yielded is filled on exit with
    the qualified names of the functions compiled."""
    names: list[str] = []
    with event.install_recorder("numba:compile") as recorder:
        yield names
    started = {e.data["dispatcher"].py_func.__qualname__ for _, e in recorder.buffer if e.is_start}
    names.extend(sorted(started))


@contextlib.contextmanager
def compile_report(dispatchers):
    """Within the block, note what happens to ``dispatchers`` and whatever else numba compiles;
    the dict yielded is filled on exit: ``compiled`` (qualified names of every function
    compiled, helpers included), ``loaded_from_cache`` (those of ``dispatchers`` loaded from the
    disk cache) and ``in_memory`` (those already loaded in this process)."""
    before = [(d, cache_counts(d)) for d in dispatchers]
    report: dict[str, list[str]] = {"compiled": [], "loaded_from_cache": [], "in_memory": []}
    try:
        with recording_compiles() as names:
            yield report
    finally:
        report["compiled"] = list(names)
        for d, counts in before:
            name, now = d.py_func.__qualname__, cache_counts(d)
            if now["cache_hits"] > counts["cache_hits"]:
                report["loaded_from_cache"].append(name)
            elif now["compiled"] == counts["compiled"] and name not in names:
                report["in_memory"].append(name)


def cache_counts(dispatcher) -> dict[str, int]:
    """How often ``dispatcher`` was loaded from the disk cache and compiled in this process."""
    stats = dispatcher.stats
    return {
        "cache_hits": sum(stats.cache_hits.values()),
        "compiled": sum(stats.cache_misses.values()),
    }


_BOUNDS_CHECKED: dict[int, tuple[object, object]] = {}
# compile options a bounds-checked copy keeps from its kernel
_KEPT_OPTIONS = ("nogil", "error_model", "fastmath")


def bounds_checked_copy(dispatcher):
    """The same kernel compiled with numba's ``boundscheck`` (an index out of bounds raises
    IndexError instead of reading or writing memory that is not the array's), for the
    conformance kit. Its Python function is a copy with its own qualified name: numba's cache
    key ignores compile options, so a copy under the kernel's own name would share (and
    poison) the kernel's cache entry. Cached on disk beside the kernel's when the kernel is."""
    if id(dispatcher) in _BOUNDS_CHECKED:
        return _BOUNDS_CHECKED[id(dispatcher)][1]
    f = dispatcher.py_func
    copy = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    copy.__qualname__ = f"{f.__qualname__}__boundscheck"
    copy.__module__, copy.__doc__ = f.__module__, f.__doc__
    options = {k: v for k, v in dispatcher.targetoptions.items() if k in _KEPT_OPTIONS}
    cached = type(dispatcher._cache).__name__ != "NullCache"
    try:
        checked = numba.njit(boundscheck=True, cache=cached, **options)(copy)
    except RuntimeError:  # no cache locator for its file (a function made by exec)
        checked = numba.njit(boundscheck=True, **options)(copy)
    _BOUNDS_CHECKED[id(dispatcher)] = (dispatcher, checked)  # the dispatcher kept: ids unique
    return checked


@functools.cache
def numba_internals_problem() -> str | None:
    """None when the numba internals lossbench uses are where it expects them; else what moved
    (lossbench pins numba to the versions where they are)."""
    if not callable(_get_wrapper_address):
        return (
            f"numba {numba.__version__} has no numba.experimental.function_type."
            "_get_wrapper_address, which lossbench needs to pass kernels to the fused epoch as "
            "function pointers"
        )
    probe = numba.njit(lambda x: x)  # not compiled: only its attributes are looked at
    for attribute in ("overloads", "stats", "_cache"):
        if not hasattr(probe, attribute):
            return f"numba {numba.__version__}: a dispatcher has no .{attribute}"
    if not (hasattr(probe.stats, "cache_hits") and hasattr(probe.stats, "cache_misses")):
        return f"numba {numba.__version__}: dispatcher.stats has no cache_hits/cache_misses"
    return None
