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
    if not isinstance(kernel, CPUDispatcher):
        raise PluginError(
            f"the {role} kernel of {owner} is {kernel!r}, not a numba @njit function. Fix: "
            f"decorate it with @numba.njit(cache=True) and give it the canonical signature {sig}."
        )
    try:
        address = _get_wrapper_address(kernel, sig)
    except Exception as exc:
        raise PluginError(
            f"the {role} kernel of {owner} does not compile for the canonical signature {sig} "
            f"({dtype}): {type(exc).__name__}: {str(exc).strip().splitlines()[0]}. Fix the "
            "kernel so it accepts exactly these argument types (see lossbench.specs)."
        ) from exc
    ref = KernelRef(kernel, sig, address)
    _CACHE[key] = ref
    return ref
