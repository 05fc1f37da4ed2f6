"""lossbench-nadam: the conformance kit, and the update held to torch.optim.NAdam through
lossbench's golden-value helper (values in golden_nadam.json, written by make_golden.py with
torch 2.13 in another environment; no torch needed here)."""

from pathlib import Path

import lossbench
import numpy as np
import pytest
from lossbench.errors import ConfigError
from lossbench.plugins import build_plugin_manager
from lossbench.testing import parametrize_with_checks
from lossbench.testing.golden import parametrize_golden

import lossbench_nadam

GOLDEN = Path(__file__).with_name("golden_nadam.json")
CASES = {"nadam": [{}, {"momentum_decay": 0.05, "beta1": 0.8}]}  # and each option on its own


@parametrize_with_checks(lossbench_nadam, options=CASES)
def test_lossbench_conformance(check):
    check()


# 30 steps of five cases in float64 (1e-10) and float32 (1e-6), relative to |torch| plus the
# parameters' largest movement so far; the kernel and the NumPy reference both
@parametrize_golden(lossbench_nadam.NADAM, GOLDEN)
def test_matches_torch_nadam(case):
    case()


def test_the_momentum_product_is_scalar_state():
    hp = lossbench_nadam.NAdamOptions(lr=0.01)
    scalars = np.ones(1)
    p, state = np.zeros(3), np.zeros((2, 3))
    for t in range(1, 4):
        lossbench_nadam.kernel(p, np.ones(3), state, scalars, np.array(lossbench_nadam.pack(hp)),
                               t, hp.lr)  # fmt: skip
    mus = [0.9 * (1 - 0.5 * 0.96 ** (t * 0.004)) for t in (1, 2, 3)]
    assert scalars[0] == pytest.approx(np.prod(mus), rel=1e-15)


@pytest.fixture(scope="module")
def pm():
    return build_plugin_manager(entry_points=False, extra=[lossbench_nadam])


TINY = ["trainer.progress=false", "tracking=none", "data=iris"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_trains(pm, dtype):
    run = lossbench.train(
        overrides=[*TINY, "optimizer=nadam", "trainer.epochs=15", f"trainer.dtype={dtype}"],
        plugin_manager=pm,
    )
    assert run.status == "finished" and run.path == "fused"
    assert run.history[-1]["val_loss"] < 0.5 * run.history[0]["val_loss"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr=0", "optimizer.lr=0.0 is not allowed"),
        ("optimizer.beta2=1", "optimizer.beta2=1.0 is not allowed: it must lie in [0, 1)"),
        ("optimizer.momentum_decay=-1", "optimizer.momentum_decay=-1.0 is not allowed"),
    ],
)
def test_bad_hyperparameters_are_config_errors(pm, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        lossbench.train(overrides=[*TINY, "optimizer=nadam", override], plugin_manager=pm)
