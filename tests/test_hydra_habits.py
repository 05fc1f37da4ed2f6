"""A Hydra user's habits do what they say: comma lists are a grid of exactly those jobs, Hydra's
sweeper and launcher choices and hydra-optuna-sweeper's spellings are read as lossbench's (or
refused with a fix that works), a team's own config folder works with --multirun, an unknown
experiment is refused with the choices, and each job's .hydra/ holds what Hydra writes."""

import shlex
import subprocess
import sys

import pytest
import yaml
from test_sweep import load, sweep

import lossbench
from lossbench.errors import ConfigError
from lossbench.sweep.coordinator import make_plan

BASE = ["data=iris", "tracking=none", "trainer.epochs=2"]


def plan_of(pm, *args):
    plan, _, _ = make_plan(list(args), pm.registry)
    return plan


@pytest.mark.slow
def test_comma_lists_are_a_grid_of_exactly_those_jobs_each_run_once(tmp_path):
    r = sweep("optimizer.lr=0.1,0.01,0.001", *BASE, "sweep.study_name=commas", cwd=tmp_path)
    assert "comma lists, as Hydra's basic sweeper runs them" in r.stdout
    trials = load(tmp_path, "commas").trials
    assert sorted(t.params["optimizer.lr"] for t in trials) == [0.001, 0.01, 0.1]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3  # none pruned, none repeated
    for t in trials:  # each job's .hydra/ as Hydra writes it
        hydra_dir = tmp_path / f"multirun/commas/{t.number}/.hydra"
        assert {p.name for p in hydra_dir.iterdir()} == {"config.yaml", "overrides.yaml",
                                                          "hydra.yaml"}  # fmt: skip
        node = yaml.safe_load((hydra_dir / "hydra.yaml").read_text())["hydra"]
        assert node["job"]["num"] == t.number and node["mode"] == "MULTIRUN"
        assert node["overrides"]["task"] == t.user_attrs["overrides"]
        assert node["runtime"]["output_dir"] == str(hydra_dir.parent)


def test_group_lists_are_a_grid_and_losses_compare_on_their_common_metric(pm):
    plan = plan_of(pm, "loss=mse,cross_entropy", "optimizer=adam,sgd", *BASE)
    assert (plan.sampler, plan.pruner, plan.n_trials) == ("grid", "none", 4)
    assert plan.metrics == ["val_accuracy"] and plan.directions == ["maximize"]
    assert any("which every loss shares" in n for n in plan.notes)
    chosen = plan_of(pm, "loss=mse,cross_entropy", *BASE, "sweep.metric=val_loss")
    assert chosen.metrics == ["val_loss"]  # the command's choice stands, with a warning
    assert any(n.startswith("warning: trials of different losses") for n in chosen.notes)


def test_comma_lists_beside_a_search_function_say_what_the_sampler_does(pm):
    plan = plan_of(pm, "loss=mse,cross_entropy", "optimizer.lr=interval(0.001, 0.1)", *BASE)
    assert plan.sampler == "tpe" and plan.n_trials == 20
    assert any("comma lists beside search functions" in n for n in plan.notes)
    grid = plan_of(pm, "optimizer.lr=0.1,0.01", *BASE, "sweep.n_trials=1")
    assert grid.n_trials == 1  # a budget the command gave is kept


def test_hydras_sweeper_and_launcher_choices_are_mapped_or_refused_with_a_fix_that_works(pm):
    basic = plan_of(pm, "hydra/sweeper=basic", "optimizer.lr=choice(0.1,0.01)", *BASE)
    assert (basic.sampler, basic.pruner, basic.n_trials) == ("grid", "none", 2)
    assert plan_of(pm, "hydra/sweeper=optuna", "optimizer.lr=interval(0.001,0.1)",
                   *BASE).sampler == "tpe"  # fmt: skip
    joblib = plan_of(pm, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                     "optimizer.lr=0.1,0.01", *BASE)  # fmt: skip
    assert (joblib.launcher, joblib.n_jobs) == ("local", 2)
    assert plan_of(pm, "hydra/launcher=ray", "optimizer.lr=0.1,0.01", *BASE).launcher == "ray"
    for choice, fix in (("hydra/launcher=submitit_slurm", "sweep.launcher=local sweep.n_jobs=N"),
                        ("hydra/sweeper=nevergrad", "hydra/sweeper=basic")):
        with pytest.raises(ConfigError, match="Fix: ") as err:
            plan_of(pm, choice, "optimizer.lr=0.1,0.01", *BASE)
        assert fix in str(err.value)
    # the fix it names works
    assert plan_of(pm, "sweep.launcher=local", "sweep.n_jobs=2", "optimizer.lr=0.1,0.01",
                   *BASE).n_jobs == 2  # fmt: skip


def test_hydra_optuna_sweeper_spellings_work(pm):
    plan = plan_of(pm, "hydra.sweeper.params.optimizer.lr=interval(0.001, 0.1)",
                   "hydra.sweeper.sampler.seed=3", "hydra.sweeper.n_trials=7",
                   "hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler", *BASE)
    assert plan.params == {"optimizer.lr": "interval(0.001, 0.1)"}
    assert (plan.seed, plan.n_trials, plan.sampler) == (3, 7, "random")
    with pytest.raises(ConfigError, match="sweep.sampler"):
        plan_of(pm, "hydra.sweeper.sampler.n_startup_trials=3", "optimizer.lr=0.1,0.01", *BASE)


@pytest.fixture
def team(tmp_path):
    """A team's config folders: experiment/ presets beside lossbench's, and a primary config
    of its own that builds on lossbench's."""
    (tmp_path / "team/experiment").mkdir(parents=True)
    (tmp_path / "team/experiment/short.yaml").write_text(
        "# @package _global_\ntrainer:\n  epochs: 3\ndata:\n  val_fraction: 0.3\n")
    (tmp_path / "primary").mkdir()
    (tmp_path / "primary/team.yaml").write_text(
        "defaults:\n  - config\n  - _self_\ntrainer:\n  epochs: 4\n")
    return tmp_path


@pytest.mark.slow
def test_a_teams_own_config_folder_works_with_multirun(team):
    work = team / "work"
    work.mkdir()
    r = sweep("--config-dir", str(team / "team"), "experiment=short", "optimizer.lr=0.1,0.01",
              "data=iris", "tracking=none", "sweep.study_name=team", cwd=work)  # fmt: skip
    trials = load(work, "team").trials
    assert {len(t.user_attrs["val_loss"]) for t in trials} == {3}  # the team's preset
    best = min(trials, key=lambda t: t.value)
    again = lossbench.train(overrides=[*best.user_attrs["overrides"], "trainer.progress=false"])
    assert [h["val_loss"] for h in again.history] == best.user_attrs["val_loss"]
    r = sweep("-cp", str(team / "primary"), "-cn", "team", "optimizer.lr=0.1,0.01", "data=iris",
              "tracking=none", "sweep.study_name=primary", cwd=work)  # fmt: skip
    trials = load(work, "primary").trials
    assert {len(t.user_attrs["val_loss"]) for t in trials} == {4}  # the team's primary config
    rerun = shlex.split(r.stdout.split("rerun it with:")[1].split("\n")[1])
    assert rerun[:7] == ["python", "-m", "lossbench", "-cp", str(team / "primary"), "-cn",
                         "team"]  # fmt: skip
    out = subprocess.run([sys.executable, *rerun[1:], "trainer.progress=false"],
                         cwd=work, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0 and "finished after 4 epochs" in out.stdout, out.stderr


@pytest.mark.parametrize("multirun", [[], ["--multirun"]], ids=["run", "sweep"])
def test_an_unknown_experiment_is_refused_with_the_choices(tmp_path, multirun):
    r = subprocess.run([sys.executable, "-m", "lossbench", *multirun, "experiment=wich_loss",
                        *BASE], cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "experiment=wich_loss is not a preset" in r.stderr and "which_loss" in r.stderr
    assert not list(tmp_path.rglob("*"))


def test_an_unknown_primary_config_names_the_flags_to_check(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lossbench", "-cn", "nonexistent", *BASE],
                       cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "free some space" not in r.stderr
    assert "nonexistent" in r.stderr and "--config-name/-cn" in r.stderr
