"""The kit holds models to the buffers contract: the MLP with batch norm (with dropout and its
1-D parameters out of weight decay) passes every model check, and planted bugs fail the check
that names them: a buffer written while evaluating, a parameter written by forward (running
statistics not declared as buffers), a gradient given to a buffer, a buffer in a parameter
group, and an engine whose segments reach the buffers."""

import dataclasses
import re

import numpy as np
import pytest
from numba import njit
from planted_models import MLP, always_training, mode_ignoring, planted_checks

import lossbench
import lossbench.builtin.models
import lossbench.testing.models as kit_models
import lossbench.training.groups
from lossbench.builtin.models import (
    build_mlp_layout,
    mlp_backward,
    mlp_forward,
    mlp_reference_backward,
    mlp_reference_forward,
)
from lossbench.specs import ParamGroup
from lossbench.testing import CHECKS, ConformanceError, central_difference, checks_for, run_checks

BATCH_NORM = {"hidden": [5, 4], "batch_norm": True}


@njit(cache=True)
def eval_update_forward(params, layout, hp, x, work, out):
    mlp_forward(params, layout, always_training(hp), x, work, out)  # updates in eval


@njit(cache=True)
def gamma_writing_forward(params, layout, hp, x, work, out):
    mlp_forward(params, layout, hp, x, work, out)
    if layout.shape[1] > 5:  # with batch norm
        params[layout[0, 5]] *= 0.5  # the bug: a trainable parameter written by forward


@njit(cache=True)
def buffer_gradient_backward(params, layout, hp, x, work, dout, grads):
    mlp_backward(params, layout, hp, x, work, dout, grads)
    if layout.shape[1] > 5:  # with batch norm
        grads[layout[0, 7]] = 1.0  # the bug: a gradient for running_mean0[0]


def _gamma_writing_reference(p, lay, hp, x):
    out = mlp_reference_forward(p, lay, hp, x)
    if lay.shape[1] > 5:
        p[lay[0, 5]] *= 0.5
    return out


def _buffer_gradient_reference(p, lay, hp, x, d):
    grads = mlp_reference_backward(p, lay, hp, x, d)
    if lay.shape[1] > 5:
        grads[lay[0, 7]] = 1.0
    return grads


def _build(change):
    def build(options, n_in, n_out):
        layout = MLP.build(options, n_in, n_out)
        return change(layout) if layout.buffers else layout

    return build


def _undeclared(layout):
    return dataclasses.replace(layout, buffers=(), min_batch=2)


def _buffer_in_group(layout):
    return dataclasses.replace(
        layout, groups=(ParamGroup(("b0", "running_var0"), {"weight_decay": 0.0}, "no_decay"),))


PLANTED = {
    "eval_update": mode_ignoring("eval_update", forward=eval_update_forward),
    "gamma_writing": dataclasses.replace(MLP, name="gamma_writing", forward=gamma_writing_forward,
                                         reference_forward=_gamma_writing_reference),
    "buffer_gradient": dataclasses.replace(MLP, name="buffer_gradient",
                                           backward=buffer_gradient_backward,
                                           reference_backward=_buffer_gradient_reference),
    "undeclared": dataclasses.replace(MLP, name="undeclared", build=_build(_undeclared)),
    "buffer_in_group": dataclasses.replace(MLP, name="buffer_in_group",
                                           build=_build(_buffer_in_group)),
}  # fmt: skip


@pytest.fixture(scope="module")
def planted():
    return planted_checks(PLANTED, BATCH_NORM)


CAUGHT = {
    "model-eval_update-inputs_unchanged": r"the forward kernel test_kit_buffers\."
    r"eval_update_forward writes the buffer running_mean0\[0\] \(params\[\d+\]\) in evaluation "
    r"mode \(hp\[-3\] = 0; \d+ values changed\): the validation pass and predictions must leave "
    r"running statistics as they are\. Fix: update buffers only while hp\[-3\] is 1\.0",
    "model-gamma_writing-inputs_unchanged": r"the forward kernel test_kit_buffers\."
    r"gamma_writing_forward writes the trainable parameter gamma0\[0\] \(params\[\d+\]\) \(1 "
    r"values of parameters changed\): forward may write only buffers \(ModelLayout\.buffers\)",
    "model-undeclared-inputs_unchanged": r"writes the trainable parameter running_mean0\[0\] "
    r"\(params\[\d+\]\) \(18 values of parameters changed\).*Fix: .*declare running statistics "
    r"as ModelLayout\.buffers",
    "model-buffer_gradient-gradient_matches_finite_differences": r"the backward kernel "
    r"test_kit_buffers\.buffer_gradient_backward gives the buffer running_mean0\[0\] "
    r"\(params\[\d+\]\) a gradient of 1 \(1 buffer values nonzero\): buffers are not parameters",
    "model-buffer_gradient-buffers_stay_out_of_the_optimizer": r"gives the buffer "
    r"running_mean0\[0\] \(params\[\d+\]\) a gradient of 1",
    "model-buffer_in_group-parameter_groups": r"parameter group no_decay names 'running_var0', "
    r"a buffer \(ModelLayout\.buffers\), which the optimizer never steps\. Fix: leave buffers "
    r"out of ParamGroup\.tensors",
    "model-buffer_in_group-buffers_stay_out_of_the_optimizer": r"names 'running_var0', a buffer",
}


@pytest.mark.parametrize("check_id", list(CAUGHT))
def test_each_planted_bug_fails_the_check_that_names_it(planted, check_id):
    with pytest.raises(ConformanceError) as info:
        planted[check_id]()
    assert re.search(CAUGHT[check_id], str(info.value)), str(info.value)


def test_the_planted_models_pass_what_they_do_not_break(planted):
    for check_id in (
        "model-eval_update-gradient_matches_finite_differences",
        "model-buffer_gradient-inputs_unchanged",
        "model-gamma_writing-parameter_groups",
        "model-buffer_in_group-kernel_matches_reference",
    ):
        planted[check_id]()


def test_segments_that_reach_the_buffers_fail_the_optimizer_check(monkeypatch):
    """The engine's own bug: groups.element_groups forgetting the buffers."""
    real = lossbench.training.groups.element_groups

    def forgetful(layout):
        which = real(layout)
        which[which == lossbench.training.groups.BUFFER] = 0
        return which

    monkeypatch.setattr(lossbench.training.groups, "element_groups", forgetful)
    (check,) = [c for c in checks_for(lossbench.builtin.models,
                                      options={"mlp": [BATCH_NORM]})
                if c.id == "model-mlp-buffers_stay_out_of_the_optimizer"]  # fmt: skip
    with pytest.raises(ConformanceError, match=r"optimizer 'adagrad' \(\{'weight_decay': 0\.1, "
                       r"'momentum': 0\.9\}\) moved the buffer running_mean0\[0\] "
                       r"\(params\[\d+\]\) from .* in 3 steps over the model's segments: the "
                       r"optimizer must never step a buffer\. Fix:"):  # fmt: skip
        check()


OPTIONS = {"mlp": [{"hidden": [5, 4], "batch_norm": True, "dropout": 0.3,
                    "decay_biases": False},
                   {"hidden": [6], "batch_norm": True, "activation": "tanh",
                    "bn_momentum": 0.3, "bn_eps": 1e-3}]}  # fmt: skip


@pytest.mark.parametrize("check_name", CHECKS["model"])
def test_the_mlp_with_batch_norm_passes_every_model_check(check_name):
    (check,) = [c for c in checks_for(lossbench.builtin.models, options=OPTIONS)
                if c.id == f"model-mlp-{check_name}"]  # fmt: skip
    check()


def test_a_model_without_buffers_skips_the_buffer_check_with_the_reason():
    (check,) = [c for c in checks_for(lossbench.builtin.models)
                if c.id == "model-linear-buffers_stay_out_of_the_optimizer"]  # fmt: skip
    result = run_checks([check])[0]
    assert result.status == "skipped" and "declare no buffers" in result.message


def test_finite_differences_leave_the_buffers_alone():
    """Each perturbed entry costs two forwards; a buffer is never perturbed."""
    layout = build_mlp_layout([4, 6, 3], "relu", batch_norm=True)
    params = np.zeros(layout.n_params)
    layout.init(np.random.default_rng(0), params)
    touched = []

    def f():
        touched.append(params.copy())
        return float(params.sum())

    mask = layout.buffer_mask()
    grad = central_difference(f, params, skip=mask)
    assert len(touched) == 2 * int((~mask).sum())
    assert (grad[mask] == 0).all() and np.allclose(grad[~mask], 1.0)
    assert all(np.array_equal(t[mask], params[mask]) for t in touched)


def test_the_gradient_check_takes_no_difference_at_a_buffer(monkeypatch):
    """The kit's finite differences skip exactly the buffers (a model may read a buffer while
    training, where a difference would be nonzero and its gradient must still be 0)."""
    skipped = []

    def recording(f, x, eps=1e-6, skip=None):
        skipped.append(None if skip is None else skip.copy())
        return central_difference(f, x, eps, skip)

    monkeypatch.setattr(kit_models, "central_difference", recording)
    (check,) = [c for c in checks_for(lossbench.builtin.models,
                                      options={"mlp": [BATCH_NORM]})
                if c.id == "model-mlp-gradient_matches_finite_differences"]  # fmt: skip
    check()
    layout = MLP.build(MLP.options(hidden=[5, 4], batch_norm=True), 4, 3)
    assert skipped and all(s is not None for s in skipped)
    assert any(np.array_equal(s, layout.buffer_mask()) for s in skipped)
