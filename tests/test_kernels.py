"""The numba internals lossbench relies on (all behind lossbench/kernels.py) are where it
expects them: a numba upgrade that moves one fails here, with what moved, before anything else."""

import numba

from lossbench.kernels import numba_internals_problem


def test_numba_internals_are_where_lossbench_expects_them():
    problem = numba_internals_problem()
    assert problem is None, (
        f"{problem}. lossbench is tested on numba {numba.__version__}; pin numba in "
        "pyproject.toml to a version that has it, or port lossbench/kernels.py."
    )
