"""How the kit calls kernels (lossbench/testing/_harness.py), each property shown failing on a
component built to miss it (the built-ins it is copied from pass, tests/test_conformance.py): an
index out of
bounds (numba's boundscheck) and a write past a buffer (guard rows, fast mode), NaN named with
its cause, a boolean option read from a global, a state row named, checks that do not apply
listed as skipped with the reason, and fast mode compiling float64 only, with no bounds-checked
copy."""

import dataclasses

import numpy as np
import pytest
from numba import njit

import lossbench
from lossbench import kernels
from lossbench.builtin.losses import LOSSES, mse_kernel
from lossbench.builtin.models import MODELS, mlp_backward
from lossbench.builtin.optimizers import OPTIMIZERS
from lossbench.testing import ConformanceError, checks_for, run_checks

MSE, SGD, MLP = LOSSES[0], OPTIMIZERS[0], MODELS[0]


@njit
def past_the_end_sgd(p, g, state, scalars, hp, t, lr):
    n = p.shape[0]
    for i in range(n):
        p[i] -= lr * g[i]
    p[n] = 0.0  # one past the end


def sgd_reference(p, g, state, scalars, hp, t, lr):
    p -= lr * g


@njit
def partial_mse(pred, target, hp, grad):
    value = mse_kernel(pred, target, hp, grad)
    grad[grad.shape[0] - 1, 0] = np.nan  # as if the last row were never written
    return value


@njit
def partial_grad_mse(pred, target, hp, grad):
    rows, cols = pred.shape
    total = 0.0
    for i in range(rows - 1):  # forgets the last row
        for j in range(cols):
            d = pred[i, j] - target[i, j]
            total += d * d
            grad[i, j] = 2.0 * d / (rows * cols)
    return total / (rows * cols)


@njit
def reads_unwritten_work_backward(params, layout, hp, x, work, dout, grads):
    mlp_backward(params, layout, hp, x, work, dout, grads)
    grads[0] += work[work.shape[0] - 1]  # the one value of work forward never writes


def _build_with_spare_work(options, n_in, n_out):
    layout = MLP.build(options, n_in, n_out)
    workspace = layout.workspace
    return dataclasses.replace(layout, workspace=lambda m: workspace(m) + 1)


@dataclasses.dataclass
class FlagOptions:
    squared: bool = True


SQUARED = True


@njit
def frozen_flag_loss(pred, target, hp, grad):
    # reads the module's SQUARED instead of hp[0]: loss.squared=false has no effect
    rows, cols = pred.shape
    total = 0.0
    for i in range(rows):
        for j in range(cols):
            d = pred[i, j] - target[i, j]
            total += d * d if SQUARED else abs(d)
            grad[i, j] = (2.0 * d if SQUARED else np.sign(d)) / (rows * cols)
    return total / (rows * cols)


def flag_reference(pred, target, hp):
    d = pred - target
    if hp[0]:
        return float(np.mean(d * d)), 2 * d / d.size
    return float(np.mean(np.abs(d))), np.sign(d) / d.size


@njit
def second_row_sgd(p, g, state, scalars, hp, t, lr):
    for i in range(p.shape[0]):
        state[0, i] = g[i]
        state[1, i] = 2.0 * g[i]  # the reference keeps g^2 here
        p[i] -= lr * g[i]


def second_row_reference(p, g, state, scalars, hp, t, lr):
    state[0] = g
    state[1] = g * g
    p -= lr * g


class Harnessed:
    @lossbench.hookimpl
    def register_optimizers(self, register):
        replace = dataclasses.replace
        register(replace(SGD, name="past_end", kernel=past_the_end_sgd, reference=sgd_reference))
        register(replace(SGD, name="second_row", kernel=second_row_sgd, state_rows=2,
                         reference=second_row_reference))  # fmt: skip

    @lossbench.hookimpl
    def register_losses(self, register):
        replace = dataclasses.replace
        register(replace(MSE, name="nan_grad", kernel=partial_mse))
        register(replace(MSE, name="partial", kernel=partial_grad_mse))
        register(lossbench.LossSpec(name="flag", options=FlagOptions, kernel=frozen_flag_loss,
                                    reference=flag_reference,
                                    pack=lambda options: [float(options.squared)]))  # fmt: skip

    @lossbench.hookimpl
    def register_models(self, register):
        register(dataclasses.replace(MLP, name="spare_work", build=_build_with_spare_work,
                                     backward=reads_unwritten_work_backward))  # fmt: skip


def check(component, name, fast=False):
    (found,) = [c for c in checks_for(Harnessed(), fast=fast)
                if (c.component, c.name) == (component, name)]  # fmt: skip
    return found


def failure(component, name, fast=False) -> str:
    with pytest.raises(ConformanceError) as info:
        check(component, name, fast).run()
    return str(info.value)


def test_an_index_out_of_bounds_is_caught_by_the_bounds_checked_compile_and_names_the_kernel():
    text = failure("past_end", "zero_lr_changes_nothing")
    assert ("the optimizer kernel test_kit_harness.past_the_end_sgd indexes out of bounds at "
            "step 1: IndexError: index is out of bounds (numba's boundscheck") in text, text
    assert "params (11,)" in text


def test_a_write_past_a_buffer_is_caught_by_the_guard_rows_without_boundscheck():
    text = failure("past_end", "zero_lr_changes_nothing", fast=True)
    assert ("the optimizer kernel test_kit_harness.past_the_end_sgd writes past the end of "
            "params at step 1: 1 of the guard values the kit put around it changed") in text, text


def test_nan_in_an_output_is_named_as_nan():
    text = failure("nan_grad", "gradient_matches_finite_differences")
    assert "loss kernel test_kit_harness.partial_mse wrote NaN in 1 of 24 values of grad" in text
    assert "a 0/0, a log or sqrt of a value <= 0" in text


def test_an_output_left_unwritten_is_named():
    text = failure("partial", "kernel_matches_reference")
    assert ("wrote NaN in 4 of 24 values of grad in batch 1: it does not write every value of "
            "grad (the kit fills them with NaN first)") in text, text


def test_backward_reading_work_that_forward_did_not_write_is_named():
    text = failure("spare_work", "gradient_matches_finite_differences")
    assert ("the backward kernel test_kit_harness.reads_unwritten_work_backward wrote NaN in 1 "
            "of ") in text, text
    assert "values of grads: is it reading `work` that forward did not write?" in text


def test_a_component_whose_only_option_is_a_boolean_gets_both_hyperparameter_checks():
    text = failure("flag", "each_hyperparameter_takes_effect")
    assert ("squared = False gave the same result as True (2 batches of the kernel, bit for bit, "
            "while the reference's moved by up to") in text, text
    text = failure("flag", "hyperparameter_change_takes_effect_without_recompiling")
    assert "changing {'squared': False} leaves the training bit-identical" in text, text


def test_a_state_row_is_named_by_row_and_index():
    text = failure("second_row", "kernel_matches_reference")
    assert "state after step 1 (kernel vs reference) differ by up to" in text
    assert "values at state[row 1, " in text, text


def test_checks_that_do_not_apply_are_listed_as_skipped_with_the_reason():
    mine = [c for c in checks_for(Harnessed()) if c.component == "nan_grad"]
    results = {r.check.id: r for r in run_checks(mine)}
    skipped = {k: r.message for k, r in results.items() if r.status == "skipped"}
    assert skipped == {
        f"loss-nan_grad-{name}": f"loss 'nan_grad' from plugin 'Harnessed': {name} skipped: it "
        "has no hyperparameters"
        for name in ("each_hyperparameter_takes_effect",
                     "hyperparameter_change_takes_effect_without_recompiling")
    }  # fmt: skip


@njit
def fresh_sgd(p, g, state, scalars, hp, t, lr):
    for i in range(p.shape[0]):
        p[i] -= lr * g[i]


@dataclasses.dataclass
class LrOnly:
    lr: float = 0.01


def test_fast_mode_compiles_float64_only_and_no_bounds_checked_copy():
    class Fresh:
        @lossbench.hookimpl
        def register_optimizers(self, register):
            register(lossbench.OptimizerSpec(name="fresh", options=LrOnly, kernel=fresh_sgd,
                                             reference=sgd_reference))  # fmt: skip

    checks = [c for c in checks_for(Fresh(), fast=True) if c.name != "trains_small_mlp"]
    results = run_checks(checks)
    assert [r.status for r in results].count("failed") == 0, [r.message for r in results]
    assert [r.status for r in results].count("skipped") == 2  # only lr: no options to change
    signatures = {str(sig[0].dtype) for sig in fresh_sgd.overloads}
    assert signatures == {"float64"}, signatures
    assert id(fresh_sgd) not in kernels._BOUNDS_CHECKED
    assert checks_for(Fresh())[0].fast is False  # LOSSBENCH_KIT_FAST is not set here
