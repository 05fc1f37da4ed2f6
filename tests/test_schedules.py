"""Learning-rate schedules, a kind of component (group ``schedule``): the built-ins against
torch.optim.lr_scheduler at every epoch, warm-up, plugins' own schedules from the command line,
the kit catching a schedule whose option is frozen, and the sweep reading epoch counts from one
run only when the schedule allows it."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lossbench
from lossbench.builtin.schedules import SCHEDULES, CosineOptions, StepOptions
from lossbench.specs import ScheduleSpec
from lossbench.testing import checks_for, run_checks
from lossbench.training.schedules import Schedule

SPECS = {s.name: s for s in SCHEDULES}


def schedule(name="constant", epochs=10, warmup=0, **options) -> Schedule:
    spec = SPECS[name]
    return Schedule(spec, spec.options(**options), epochs, warmup)


def test_constant():
    assert [schedule().lr(e, 0.1) for e in range(3)] == [0.1] * 3


def test_step_like_torch_steplr():
    s = schedule("step", step_size=3, gamma=0.5)
    assert [s.lr(e, 1.0) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]


def test_cosine_like_torch_cosineannealinglr():
    s = schedule("cosine", epochs=10, min_lr=0.01)
    lrs = [s.lr(e, 0.1) for e in range(10)]
    assert lrs[0] == pytest.approx(0.1)
    # torch: eta_t = eta_min + (eta_0 - eta_min)(1 + cos(pi t / T_max)) / 2
    assert lrs[5] == pytest.approx(0.01 + 0.09 * (1 + math.cos(math.pi / 2)) / 2)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_linear_warmup_then_schedule():
    s = schedule("cosine", epochs=13, warmup=3)
    lrs = [s.lr(e, 0.4) for e in range(13)]
    assert lrs[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert lrs[-1] < 0.4


# ---------------------------------------------------------------------------------------------
# every epoch's lr against torch.optim.lr_scheduler (values from tests/data/torch_reference.json,
# written by benchmarks/make_torch_reference.py: StepLR, CosineAnnealingLR(T_max=epochs - W,
# eta_min=min_lr), warm-up as LinearLR(1/(W+1) -> 1 over W epochs) chained by SequentialLR; the
# file names each case's options as the trainer keys they were before schedules became a group)

TORCH = json.loads((Path(__file__).parent / "data" / "torch_reference.json").read_text())[
    "schedules"
]


def _from_torch_case(case) -> Schedule:
    t = case["trainer"]
    options = {"step": {"step_size": t["step_size"], "gamma": t["gamma"]},
               "cosine": {"min_lr": t["min_lr"]}}.get(t["lr_schedule"], {})  # fmt: skip
    return schedule(t["lr_schedule"], t["epochs"], t["warmup_epochs"], **options)


def test_torch_schedules_cover_each_builtin_schedule_with_and_without_warmup():
    covered = {(c["trainer"]["lr_schedule"], c["trainer"]["warmup_epochs"] > 0) for c in TORCH}
    assert covered == {(s, w) for s in SPECS for w in (False, True)}


@pytest.mark.parametrize("case", TORCH, ids=[c["name"] for c in TORCH])
def test_every_builtin_schedule_matches_torch_every_epoch(case):
    s = _from_torch_case(case)
    assert len(case["lrs"]) == s.epochs
    for epoch, expected in enumerate(case["lrs"]):
        got = s.lr(epoch, case["lr"])
        assert got == pytest.approx(expected, rel=1e-12, abs=0), (
            f"epoch {epoch}: {s.spec.name} gives {got!r}, torch {case['torch']} gives {expected!r}"
        )


@pytest.mark.parametrize("case", TORCH, ids=[c["name"] for c in TORCH])
def test_each_builtin_reference_matches_torch_every_epoch(case):
    s = _from_torch_case(case)
    reference = Schedule(ScheduleSpec(name="ref", options=type(s.options), rate=s.spec.reference),
                         s.options, s.epochs, s.warmup)  # fmt: skip
    for epoch, expected in enumerate(case["lrs"]):
        assert reference.lr(epoch, case["lr"]) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("warmup", [4, 6])
def test_warmup_as_long_as_the_run_is_all_warmup(warmup):
    # torch cannot chain this (CosineAnnealingLR(T_max=0) divides by zero when built): held to
    # the documented formula lr0 (e + 1) / (W + 1) instead
    s = schedule("cosine", epochs=4, warmup=warmup, min_lr=0.01)
    assert [s.lr(e, 0.5) for e in range(4)] == pytest.approx(
        [0.5 * (e + 1) / (warmup + 1) for e in range(4)], rel=1e-15
    )


def test_which_schedules_depend_on_the_number_of_epochs():
    # a run of N epochs is the start of a longer run exactly when uses_epochs is false
    for spec in SCHEDULES:
        short, long = (Schedule(spec, spec.options(), n, 2) for n in (8, 20))
        prefix = [short.lr(e, 0.1) for e in range(8)] == [long.lr(e, 0.1) for e in range(8)]
        assert prefix is not spec.uses_epochs, spec.name
    assert StepOptions().step_size == 10 and CosineOptions().min_lr == 0.0


# ---------------------------------------------------------------------------------------------
# a plugin's schedule

EXPONENTIAL = '''
"""An exponential schedule: lr = lr0 gamma^s (torch.optim.lr_scheduler.ExponentialLR)."""
from dataclasses import dataclass

import lossbench


@dataclass
class ExponentialOptions:
    gamma: float = 0.5


def rate(epoch, epochs, base_lr, options):
    return base_lr * GAMMA ** epoch if FROZEN else base_lr * options.gamma ** epoch


def reference(epoch, epochs, base_lr, options):
    lr = base_lr
    for _ in range(epoch):
        lr *= GAMMA if FROZEN else options.gamma
    return lr


GAMMA, FROZEN = 0.5, {frozen}


@lossbench.hookimpl
def register_schedules(register):
    register(lossbench.ScheduleSpec(name="exponential", options=ExponentialOptions, rate=rate,
                                    reference=reference, uses_epochs=False))
'''


def _plugin(folder: Path, frozen: bool) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "exponential.py"
    path.write_text(textwrap.dedent(EXPONENTIAL.format(frozen=frozen)))
    return path


def test_a_plugin_schedule_trains_from_the_command_line(tmp_path):
    _plugin(tmp_path / "plugins", frozen=False)
    env = {**os.environ, "LOSSBENCH_PLUGINS_DIR": str(tmp_path / "plugins")}
    cmd = [sys.executable, "-m", "lossbench", "data=iris", "trainer.epochs=4",
           "schedule=exponential", "schedule.gamma=0.25", "optimizer.lr=0.2", "tracking=none",
           "trainer.progress=false", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    lr = [float(row.split(",")[history[0].split(",").index("lr")]) for row in history[1:]]
    assert lr == pytest.approx([0.2, 0.05, 0.0125, 0.003125], rel=1e-15)
    listed = subprocess.run([sys.executable, "-m", "lossbench", "plugins"], env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "exponential" in listed.stdout


def test_the_kit_checks_a_plugin_schedule_and_names_a_frozen_option(tmp_path):
    good = run_checks(checks_for(_plugin(tmp_path / "good", frozen=False)))
    assert [r.status for r in good] == ["passed"] * len(good), [r.message for r in good]
    assert {r.check.name for r in good} >= {"rate_matches_reference",
                                            "each_hyperparameter_takes_effect"}  # fmt: skip
    frozen = run_checks(checks_for(_plugin(tmp_path / "frozen", frozen=True)))
    failed = {r.check.name: r.message for r in frozen if r.status == "failed"}
    assert list(failed) == ["each_hyperparameter_takes_effect"], failed
    assert "schedule.gamma = 0.4 gives the same rates as 0.5" in failed[
        "each_hyperparameter_takes_effect"]


def test_the_schedule_is_a_run_record(pm):
    run = lossbench.train(overrides=["data=iris", "trainer.epochs=3", "trainer.progress=false",
                                     "tracking=none", "schedule=step", "schedule.step_size=2",
                                     "schedule.gamma=0.5", "optimizer.lr=0.1"])  # fmt: skip
    assert run.config.schedule.name == "step"
    assert [h["lr"] for h in run.history] == pytest.approx([0.1, 0.1, 0.05])
    assert run.specs["schedule"].name == "step"
