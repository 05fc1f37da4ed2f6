"""The kit holds models to the modes and groups contract: the MLP with dropout and biases out of
weight decay passes every model check, and three planted bugs fail the check that names them:
dropout applied while evaluating, a bias left in weight decay, a misspelled group option."""

import dataclasses
import re

import pytest
from numba import njit
from planted_models import MLP, always_training, mode_ignoring, planted_checks

import lossbench
from lossbench.builtin.models import (
    build_mlp_layout,
    mlp_backward,
    mlp_forward,
)
from lossbench.specs import ParamGroup
from lossbench.testing import CHECKS, ConformanceError, checks_for


@njit(cache=True)
def eval_dropout_forward(params, layout, hp, x, work, out):
    mlp_forward(params, layout, always_training(hp), x, work, out)


@njit(cache=True)
def eval_dropout_backward(params, layout, hp, x, work, dout, grads):
    mlp_backward(params, layout, always_training(hp), x, work, dout, grads)


def _build(groups_of):
    def build(options, n_in, n_out):
        layout = build_mlp_layout([n_in, *options.hidden, n_out], options.activation,
                                  options.dropout, options.decay_biases)  # fmt: skip
        return dataclasses.replace(layout, groups=groups_of(layout)) if layout.groups else layout

    return build


def _last_bias_left_out(layout):
    (group,) = layout.groups
    return (ParamGroup(group.tensors[:-1], group.options, group.name),)


def _misspelled(layout):
    (group,) = layout.groups
    return (ParamGroup(group.tensors, {"weight_deacy": 0.0}, group.name),)


PLANTED = {
    "eval_dropout": mode_ignoring("eval_dropout", forward=eval_dropout_forward,
                                  backward=eval_dropout_backward),
    "bias_decayed": dataclasses.replace(MLP, name="bias_decayed",
                                        build=_build(_last_bias_left_out)),
    "misspelled_group": dataclasses.replace(MLP, name="misspelled_group",
                                            build=_build(_misspelled)),
}  # fmt: skip


@pytest.fixture(scope="module")
def planted():
    return planted_checks(PLANTED, {"hidden": [5, 4], "dropout": 0.3, "decay_biases": False})


CAUGHT = {
    "model-eval_dropout-evaluation_ignores_the_random_stream": r"forward in evaluation mode "
    r"\(hp\[-3\] = 0\) changed when the stream's seed and step changed \(by up to [\d.e-]+\): is "
    r"dropout \(or another draw\) applied while evaluating\? Fix: draw only while hp\[-3\] is 1.0",
    "model-bias_decayed-parameter_groups": r"tensor b2 is 1-D like the tensors of parameter group "
    r"no_decay \(b0, b1\), which sets weight_decay = 0, but is in no such group, so weight decay "
    r"still shrinks it: is a bias left out\? Fix:",
    "model-misspelled_group-parameter_groups": r"parameter group no_decay sets 'weight_deacy', "
    r"which no registered optimizer has \(adagrad, adam, adamw, rmsprop, sgd\): is it misspelled\?",
}


@pytest.mark.parametrize("check_id", list(CAUGHT))
def test_each_planted_bug_fails_the_check_that_names_it(planted, check_id):
    with pytest.raises(ConformanceError) as info:
        planted[check_id]()
    assert re.search(CAUGHT[check_id], str(info.value)), str(info.value)


def test_the_planted_models_pass_what_they_do_not_break(planted):
    for check_id in (
        "model-eval_dropout-kernel_matches_reference",
        "model-eval_dropout-parameter_groups",
        "model-bias_decayed-evaluation_ignores_the_random_stream",
        "model-misspelled_group-kernel_matches_reference",
    ):
        planted[check_id]()


@pytest.mark.parametrize("check_name", CHECKS["model"])
def test_the_mlp_with_dropout_and_no_bias_decay_passes_every_model_check(check_name):
    options = {"mlp": [{"hidden": [5, 4], "dropout": 0.3, "decay_biases": False},
                       {"activation": "tanh", "dropout": 0.5}]}  # fmt: skip
    (check,) = [c for c in checks_for(lossbench.builtin.models, options=options)
                if c.id == f"model-mlp-{check_name}"]  # fmt: skip
    check()


def test_a_model_without_groups_skips_the_group_check_with_the_reason():
    (check,) = [c for c in checks_for(lossbench.builtin.models)
                if c.id == "model-linear-parameter_groups"]  # fmt: skip
    result = lossbench.testing.run_checks([check])[0]
    assert result.status == "skipped" and "declare no parameter groups" in result.message
