"""Kernels as first-class function values.

The fused epoch (``lossbench.engine.train_epoch``) takes its loss, optimizer and model kernels as
arguments. Passed as numba dispatchers they would be typed by identity, so every new kernel
would compile a new epoch, in every process. Wrapped in ``KernelRef`` they are typed by their
*signature* only (``numba.types.FunctionType``): the epoch compiles once per dtype, is cached on
disk, and any kernel with the canonical signature (built-in or plugin) runs in it through an
indirect call. A kernel is compiled (or loaded from its own module's cache) the first time it is
wrapped; editing a plugin's kernel recompiles that kernel only.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from numba.core.types import WrapperAddressProtocol

from lossbench.errors import PluginError
from lossbench.specs import (
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
    "optimizer": ("params", "grads", "state", "hp", "t", "lr"),
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

    def __wrapper_address__(self) -> int:
        return self._address

    def signature(self):
        return self._signature


_CACHE: dict[tuple[int, str, str], KernelRef] = {}


def kernel_ref(kernel, role: str, dtype: str, *, owner: str) -> KernelRef:
    """Compile ``kernel`` for the canonical ``role`` signature in ``dtype`` and wrap it.

    ``owner`` names the component and plugin for error messages (e.g. "loss 'focal' from
    plugin 'lossbench_focal'").
    """
    key = (id(kernel), role, dtype)
    if key in _CACHE:
        return _CACHE[key]
    from numba.core.registry import CPUDispatcher
    from numba.experimental.function_type import _get_wrapper_address

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
            f"{len(PARAMETERS[role])}: {wanted}. Fix the kernel's arguments (docs/plugins.md, "
            "section Kernels)."
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
