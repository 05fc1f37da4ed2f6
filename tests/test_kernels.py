"""The numba internals lossbench relies on (all behind lossbench/kernels.py) are where it
expects them: a numba upgrade that moves one fails here, with what moved, before anything else."""

import numba
from numba.core.types import FunctionType

from lossbench.builtin.losses import mse_kernel
from lossbench.kernels import kernel_ref, numba_internals_problem
from lossbench.specs import loss_signature


def test_numba_internals_are_where_lossbench_expects_them():
    problem = numba_internals_problem()
    assert problem is None, (
        f"{problem}. lossbench is tested on numba {numba.__version__}; pin numba in "
        "pyproject.toml to a version that has it, or port lossbench/kernels.py."
    )


def test_a_kernel_ref_is_typed_without_rebuilding_its_type(monkeypatch):
    """Every call of the fused epoch types its four KernelRef arguments. numba's own typeof
    for a WrapperAddressProtocol builds FunctionType(ref.signature()) each time (most of the
    cost of calling the epoch from Python); lossbench's gives the type made once, equal to
    numba's, so the compiled epoch and its cache entry are the same."""
    ref = kernel_ref(mse_kernel, "loss", "float64", owner="test")
    calls = []
    monkeypatch.setattr(ref, "signature", lambda: calls.append(1) or loss_signature("float64"))
    assert numba.typeof(ref) == FunctionType(loss_signature("float64"))
    assert calls == [], "typeof rebuilt the KernelRef's type from its signature"
