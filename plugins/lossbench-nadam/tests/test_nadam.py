"""lossbench-nadam: the conformance kit, and the update matched to torch.optim.NAdam (values in
torch_nadam.json, written by lossbench's benchmarks/make_torch_reference.py with torch 2.13)."""

import json
from pathlib import Path

import lossbench
import numpy as np
import pytest
from lossbench.errors import ConfigError
from lossbench.plugins import build_plugin_manager
from lossbench.testing import parametrize_with_checks

import lossbench_nadam

TORCH = json.loads(Path(__file__).with_name("torch_nadam.json").read_text())
CASES = {"nadam": [{}, {"momentum_decay": 0.05, "beta1": 0.8}]}  # and each option on its own


@parametrize_with_checks(lossbench_nadam, hparams=CASES)
def test_lossbench_conformance(check):
    check()


def run_steps(case, dtype):
    """lossbench's NAdam kernel over the torch case, as a run calls it (hp and lr in float64,
    parameters and state in the run's dtype); yields the parameters after every step."""
    hp = lossbench_nadam.NAdamOptions(**case["hparams"])
    packed = np.asarray(lossbench_nadam.pack(hp), dtype=np.float64)
    p = np.array(case["params0"], dtype=dtype)
    state = np.zeros((2, p.size), dtype=dtype)
    scalars = np.zeros(1)
    lossbench_nadam.init_scalars(scalars, hp)
    for t, g in enumerate(case["grads"], start=1):
        lossbench_nadam.kernel(p, np.array(g, dtype=dtype), state, scalars, packed, t, hp.lr)
        yield p


@pytest.mark.parametrize("case", TORCH["float64"], ids=lambda c: c["name"])
def test_float64_matches_torch_nadam(case):
    steps = zip(run_steps(case, np.float64), case["params"], strict=True)
    for t, (p, expected) in enumerate(steps, 1):
        np.testing.assert_allclose(p, expected, rtol=1e-12, err_msg=f"step {t}")


@pytest.mark.parametrize("case", TORCH["float32"], ids=lambda c: c["name"])
def test_float32_matches_torch_nadam_float32(case):
    # float32 rounding: 1e-6 of |p| plus the parameters' largest movement so far (a parameter
    # passing near 0 has no meaningful relative error of its own)
    p0 = np.array(case["params0"])
    steps = zip(run_steps(case, np.float32), case["params"], strict=True)
    for t, (p, expected) in enumerate(steps, 1):
        assert p.dtype == np.float32
        expected = np.array(expected)
        scale = np.abs(expected) + np.max(np.abs(expected - p0))
        worst = float(np.max(np.abs(p - expected) / scale))
        assert worst <= 1e-6, f"{case['torch']}, step {t}: {worst:.2e}"


def test_the_momentum_product_is_scalar_state():
    case = TORCH["float64"][0]
    hp = lossbench_nadam.NAdamOptions(**case["hparams"])
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
