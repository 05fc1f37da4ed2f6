import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from lossbench.config.schemas import TrainerConfig
from lossbench.training.schedules import lr_at


def tc(**kw):
    base = dict(
        warmup_epochs=0, lr_schedule="constant", step_size=10, gamma=0.1, min_lr=0.0, epochs=10
    )
    return SimpleNamespace(**{**base, **kw})


def test_constant():
    assert [lr_at(e, 0.1, tc()) for e in range(3)] == [0.1] * 3


def test_step_like_torch_steplr():
    c = tc(lr_schedule="step", step_size=3, gamma=0.5)
    assert [lr_at(e, 1.0, c) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]


def test_cosine_like_torch_cosineannealinglr():
    c = tc(lr_schedule="cosine", epochs=10, min_lr=0.01)
    lrs = [lr_at(e, 0.1, c) for e in range(10)]
    assert lrs[0] == pytest.approx(0.1)
    # torch: eta_t = eta_min + (eta_0 - eta_min)(1 + cos(pi t / T_max)) / 2
    assert lrs[5] == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi / 2)) / 2)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_linear_warmup_then_schedule():
    c = tc(lr_schedule="cosine", warmup_epochs=3, epochs=13)
    lrs = [lr_at(e, 0.4, c) for e in range(13)]
    assert lrs[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert lrs[-1] < 0.4


# ---------------------------------------------------------------------------------------------
# every epoch's lr against torch.optim.lr_scheduler (values from tests/data/torch_reference.json,
# written by benchmarks/make_torch_reference.py: StepLR, CosineAnnealingLR(T_max=epochs - W,
# eta_min=min_lr), warm-up as LinearLR(1/(W+1) -> 1 over W epochs) chained by SequentialLR)

SCHEDULES = json.loads((Path(__file__).parent / "data" / "torch_reference.json").read_text())[
    "schedules"
]


def test_torch_schedules_cover_each_schedule_with_and_without_warmup():
    for c in SCHEDULES:
        assert set(c["trainer"]) <= {f.name for f in dataclasses.fields(TrainerConfig)}, c["name"]
    covered = {(c["trainer"]["lr_schedule"], c["trainer"]["warmup_epochs"] > 0) for c in SCHEDULES}
    assert covered == {(s, w) for s in ("constant", "step", "cosine") for w in (False, True)}


@pytest.mark.parametrize("case", SCHEDULES, ids=[c["name"] for c in SCHEDULES])
def test_lr_at_matches_torch_schedulers_every_epoch(case):
    c = tc(**case["trainer"])
    assert len(case["lrs"]) == c.epochs
    for epoch, expected in enumerate(case["lrs"]):
        got = lr_at(epoch, case["lr"], c)
        assert got == pytest.approx(expected, rel=1e-12, abs=0), (
            f"epoch {epoch}: lr_at gives {got!r}, torch {case['torch']} gives {expected!r}"
        )


@pytest.mark.parametrize("warmup", [4, 6])
def test_warmup_as_long_as_the_run_is_all_warmup(warmup):
    # torch cannot chain this (CosineAnnealingLR(T_max=0) divides by zero when built): held to
    # the documented formula lr0 (e + 1) / (W + 1) instead
    c = tc(lr_schedule="cosine", warmup_epochs=warmup, epochs=4, min_lr=0.01)
    assert [lr_at(e, 0.5, c) for e in range(4)] == pytest.approx(
        [0.5 * (e + 1) / (warmup + 1) for e in range(4)], rel=1e-15
    )
