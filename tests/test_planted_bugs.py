"""Six bugs a plugin author really wrote (issue 21), planted one each into copies of a correct
RAdam and Poisson NLL (tests/planted/radam.py): the correct plugin passes the conformance kit and
its torch golden values, and each bugged copy fails, with a message that names the problem, in
the kit or (a bug written into both the kernel and its reference) in the golden values."""

import re
from pathlib import Path

import pytest

import lossbench
from lossbench.plugins import load_plugin_file
from lossbench.testing import ConformanceError, check_plugin, checks_for
from lossbench.testing.golden import check_golden

HERE = Path(__file__).resolve().parent / "planted"
PLANTED = load_plugin_file(HERE / "radam.py")
GOLDEN = {"radam": HERE / "golden_radam.json", "poisson_nll": HERE / "golden_poisson_nll.json"}


class One:
    """A plugin registering one component, named as the bug it carries."""

    def __init__(self, name, spec):
        self.__name__, self.spec = name, spec

    @lossbench.hookimpl
    def register_optimizers(self, register):
        if isinstance(self.spec, lossbench.OptimizerSpec):
            register(self.spec)

    @lossbench.hookimpl
    def register_losses(self, register):
        if isinstance(self.spec, lossbench.LossSpec):
            register(self.spec)


def test_the_correct_plugin_passes_the_kit_and_its_golden_values():
    checks = checks_for(HERE / "radam.py")
    assert {c.id for c in checks} >= {
        "optimizer-radam-each_hyperparameter_takes_effect",
        "optimizer-radam-step_cost_does_not_grow_with_t",
        "loss-poisson_nll-gradient_matches_finite_differences",
    }
    assert check_plugin(HERE / "radam.py") == len(checks) - 2  # poisson_nll: no options
    assert check_golden(PLANTED.RADAM, GOLDEN["radam"]) == 4
    assert check_golden(PLANTED.POISSON_NLL, GOLDEN["poisson_nll"]) == 2


KIT_CATCHES = {  # bug -> (check, what its message says)
    "global_hyperparameter": (
        "each_hyperparameter_takes_effect",
        r"beta1 = 0\.8 gave the same result as 0\.9 \(25 steps of the kernel, bit for bit, while "
        r"the reference's moved by up to [\d.e-]+\): is it read from a global or a constant\? "
        r"It reaches the kernels as hp\[0\]",
    ),
    "late_mutation": (
        "inputs_unchanged",
        r"it modifies its input grads \(float64\) at step 6 \(\d+ of 9 values",
    ),
    "factor_of_two_gradient": (
        "gradient_matches_finite_differences",
        r"gradients \(analytic vs central differences, eps 1e-6\) differ by up to [\d.e-]+ in "
        r"24 of 24 values at grad\[\d, \d\].*everywhere 2 x the expected values: a constant "
        r"factor is off",
    ),
    "stale_state_slot": (
        "kernel_matches_reference",
        r"scalar state after step 1 \(kernel vs reference\) differ by up to 0\.001 in 1 of 2 "
        r"values at scalars\[1\]: 1 vs 0\.999 .*scalars\[1\] still holds its value from before "
        r"step 1 while the reference updated it: a stale slot",
    ),
    "o_of_t_step": (
        "step_cost_does_not_grow_with_t",
        # at t=10,000 on a busy machine, else at t=100,000: either names the growth
        r"a step costs [\d.]+ us at t=(10|100),000 against [\d.]+ us at t=10 \(\d+x, 1000 "
        r"parameters"
        r".*the cost grows with t\. Fix: keep running quantities .* as scalar state",
    ),
}


@pytest.mark.parametrize("bug", list(KIT_CATCHES))
def test_the_kit_catches_the_planted_bug_and_names_it(bug):
    name, pattern = KIT_CATCHES[bug]
    spec = PLANTED.BUGS[bug]
    checks = {c.name: c for c in checks_for(One(bug, spec)) if c.component == spec.name}
    with pytest.raises(ConformanceError) as info:
        checks[name].run()
    text = str(info.value)
    assert text.startswith(f"{'optimizer' if bug != 'factor_of_two_gradient' else 'loss'} "
                           f"{spec.name!r} from plugin {bug!r} fails {name}: "), text  # fmt: skip
    assert re.search(pattern, text), text


def test_a_late_mutation_is_reported_as_a_mutation_by_the_reference_comparison_too():
    checks = checks_for(One("late_mutation", PLANTED.BUGS["late_mutation"]))
    (check,) = [c for c in checks if c.name == "kernel_matches_reference"]
    with pytest.raises(ConformanceError, match=r"it modifies its input grads \(float64\) at step "
                                               r"6 \(.*\)\. Fix: write only to params, state, "
                                               r"scalars"):  # fmt: skip
        check.run()


def test_bias_correction_missing_in_kernel_and_reference_passes_the_kit_and_fails_golden():
    spec = PLANTED.BUGS["bias_correction_missing_in_both"]
    plugin = One("bias_correction_missing_in_both", spec)
    assert check_plugin(plugin) == len(checks_for(plugin))  # kernel == reference: all pass
    with pytest.raises(ConformanceError) as info:
        check_golden(spec, GOLDEN["radam"])
    text = str(info.value)
    assert text.startswith("4 of 4 golden cases miss:"), text
    assert re.search(
        r"optimizer 'radam' misses the golden values of golden_radam.json \(torch 2\.13[^)]*\), "
        r"case lr_0\.01-float64, the kernel: parameters after step 1 differ by up to 0\.03\d* "
        r"in 7 of 7 values at params\[\d\]: .* \(allowed 1e-10 x \(\|stored\| \+ 0\.03\d*, the "
        r"largest movement so far\); the worst miss is [\d.e+]+x that\)", text), text  # fmt: skip
    assert "case lr_0.01-float64, the NumPy reference: parameters after step 1" in text
