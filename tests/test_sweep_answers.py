"""Sweeps whose answers a careful reader can trust: one dataset and one validation split per
study, the user's seed honoured, epoch counts answered from one run's trajectory bit for bit,
a pruner that compares trials only within a category and reads the sweep's metric, losses
that cannot train on the data left out, repeats with their spread, the best of each category,
and a note when the pruner decided most of the answer. Each test fails when its behaviour is
planted wrong."""

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from test_sweep import load, mlflow_runs, sweep

import lossbench
from lossbench.sweep.study import ComparablePruner

pytestmark = pytest.mark.slow

IRIS = ["data=iris", "tracking=none"]


def test_every_trial_of_a_study_sees_one_dataset_and_one_validation_split(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = sweep("optimizer.lr=tag(log, interval(1e-3, 0.1))", "data=moons", "trainer.epochs=3",
              "seed=3", f"tracking.uri={uri}", "sweep.n_trials=4", "sweep.study_name=split",
              cwd=tmp_path)  # fmt: skip
    assert "one dataset and one validation split" in r.stdout
    client, runs = mlflow_runs(uri)
    trials = [x for x in runs if x.data.tags.get("lossbench.role") == "trial"]
    assert len(trials) == 4
    digests = {tuple(sorted((d.dataset.name, d.dataset.digest) for d in x.inputs.dataset_inputs))
               for x in trials}  # fmt: skip
    assert len(digests) == 1  # generated data, split, scaling: the same for every trial
    study = load(tmp_path, "split")
    for t in study.trials:  # the user's seed=3, honoured, never replaced
        assert t.user_attrs["seed"] == 3 and "seed=3" in t.user_attrs["overrides"]
        saved = yaml.safe_load((tmp_path / f"multirun/split/{t.number}/.hydra/config.yaml")
                               .read_text())  # fmt: skip
        assert saved["seed"] == 3
    # each trial its own training seed, asked for: still one dataset and one split
    sweep("optimizer.lr=tag(log, interval(1e-3, 0.1))", "data=moons", "trainer.epochs=2",
          f"tracking.uri={uri}", "sweep.seeds=per_trial", "sweep.n_trials=3",
          "sweep.study_name=own", cwd=tmp_path)  # fmt: skip
    assert len({t.user_attrs["seed"] for t in load(tmp_path, "own").trials}) == 3
    own = [x for x in mlflow_runs(uri)[1] if x.data.tags.get("lossbench.study") == "own"
           and x.data.tags.get("lossbench.role") == "trial"]  # fmt: skip
    assert len(own) == 3
    assert {tuple(sorted(d.dataset.digest for d in x.inputs.dataset_inputs)) for x in own} == {
        tuple(sorted(d[1] for d in next(iter(digests))))}


@pytest.mark.parametrize(
    "schedule",
    [
        [],
        ["schedule=step", "schedule.step_size=2", "schedule.gamma=0.5"],
        ["trainer.warmup_epochs=3"],
        ["trainer.keep_weights=last", "trainer.dtype=float64"],
    ],
    ids=["constant", "step", "warmup", "last-weights-float64"],
)
def test_epoch_counts_read_from_one_run_are_bit_identical_to_their_own_runs(tmp_path, schedule):
    r = sweep("optimizer.lr=tag(log, interval(1e-3, 0.05))", "trainer.epochs=range(2, 10, 2)",
              *IRIS, *schedule, "sweep.pruner=none", "sweep.n_trials=8",
              "sweep.study_name=traj", cwd=tmp_path)  # fmt: skip
    assert "one run of 8 epochs per configuration answers all 4 epoch counts" in r.stdout
    study = load(tmp_path, "traj")
    trained = [t for t in study.trials if "read_from" not in t.user_attrs]
    answers = [t for t in study.trials if "read_from" in t.user_attrs]
    assert len(trained) == 2 and len(answers) == 6  # 8 trials from 2 runs of 8 epochs
    assert {t.params["trainer.epochs"] for t in trained} == {8}
    import numpy as np

    for t in answers:
        epochs = t.params["trainer.epochs"]
        own = lossbench.train(overrides=[*t.user_attrs["overrides"], "trainer.progress=false"])
        assert len(own.history) == epochs
        assert [h["val_loss"] for h in own.history] == t.user_attrs["val_loss"]
        assert own.history[-1]["val_loss"] == t.value
        with np.load(f"{t.user_attrs['output_dir']}/model.npz") as saved:
            for name, array in own.params.items():
                np.testing.assert_array_equal(saved[name], array)  # the weights it would keep
        summary = yaml.safe_load(open(f"{t.user_attrs['output_dir']}/summary.json"))
        assert f"trial {t.user_attrs['read_from']}'s run" in summary["read_from"]


def test_a_schedule_that_depends_on_the_epochs_trains_each_count_separately(tmp_path):
    r = sweep("trainer.epochs=range(2, 6, 2)", *IRIS, "schedule=cosine",
              "sweep.sampler=grid", "sweep.pruner=none", "sweep.study_name=cos", cwd=tmp_path)
    assert "each trial trains its own epochs: the cosine schedule depends" in r.stdout
    trials = load(tmp_path, "cos").trials
    assert len(trials) == 2 and not [t for t in trials if "read_from" in t.user_attrs]
    assert sorted(len(t.user_attrs["val_loss"]) for t in trials) == [2, 4]


def _study_with(groups_values, **attrs):
    """A study with completed trials of two losses whose values sit on different scales."""
    study = optuna.create_study()
    dists = {"loss": CategoricalDistribution(["mse", "cross_entropy"]),
             "optimizer.lr": FloatDistribution(1e-4, 1.0, log=True)}  # fmt: skip
    for loss, curve in groups_values:
        study.add_trial(create_trial(
            params={"loss": loss, "optimizer.lr": 0.01}, distributions=dists, value=curve[-1],
            intermediate_values=dict(enumerate(curve)), user_attrs=attrs,
        ))  # fmt: skip
    return study, dists


def test_a_trial_is_pruned_only_by_trials_of_its_own_category():
    # mse values are ~0.01, cross-entropy ~0.5: one scale must never prune the other
    study, dists = _study_with([("mse", [0.02, 0.01, 0.01])] * 3
                               + [("cross_entropy", [0.6, 0.5, 0.45])] * 3)  # fmt: skip
    median = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    grouped = ComparablePruner(median, ["loss"])

    def running(loss, values):
        return create_trial(state=TrialState.RUNNING, params={"loss": loss, "optimizer.lr": 0.1},
                            distributions=dists, intermediate_values=dict(enumerate(values)))

    good_ce = running("cross_entropy", [0.55, 0.44])  # better than the other cross-entropies
    assert median.prune(study, good_ce)  # compared with mse as well: wrongly pruned
    assert not grouped.prune(study, good_ce)
    bad_mse = running("mse", [0.03, 0.05])  # worse than every mse trial: pruned within mse
    assert grouped.prune(study, bad_mse)
    # trials answered from another trial's run do not count as comparable runs
    answers, _ = _study_with([("mse", [0.02, 0.01, 0.01])] * 3, read_from=0)
    assert not ComparablePruner(median, ["loss"]).prune(answers, bad_mse)  # none to compare


def test_category_sweeps_prune_within_each_category_after_a_warm_up(pm):
    from lossbench.sweep.coordinator import make_plan
    from lossbench.sweep.study import make_pruner

    plan, _, _ = make_plan(["experiment=which_loss"], pm.registry)
    pruner = make_pruner(plan)
    assert isinstance(pruner, ComparablePruner) and pruner.groups == ["loss"]
    assert pruner.base._n_warmup_steps == 10 and pruner.base._n_startup_trials == 5  # of 30
    plan, _, _ = make_plan(["sweep=lr"], pm.registry)
    assert make_pruner(plan).groups == []  # numbers are not categories


def test_the_pruner_reads_the_sweeps_metric(tmp_path):
    sweep("optimizer.lr=tag(log, interval(1e-3, 0.1))", *IRIS, "trainer.epochs=4",
          "sweep.metric=val_macro_f1", "sweep.pruner=median", "sweep.n_trials=2",
          "sweep.study_name=f1", cwd=tmp_path)  # fmt: skip
    study = load(tmp_path, "f1")
    assert study.direction.name == "MAXIMIZE"  # sweep.direction=auto: F1 is maximised
    for t in study.trials:
        curve = t.user_attrs["val_macro_f1"]
        assert [t.intermediate_values[e] for e in range(4)] == curve
        assert t.value == curve[-1] and curve != t.user_attrs["val_loss"]


def test_which_loss_on_regression_leaves_out_classification_losses_and_ranks_on_r2(tmp_path):
    r = sweep("experiment=which_loss", "data=diabetes", "tracking=none", "trainer.epochs=4",
              "data.standardize_target=true", "sweep.n_trials=6", "sweep.pruner=none",
              cwd=tmp_path)  # fmt: skip
    assert "loss: cross_entropy left out" in r.stdout and "metric: val_r2" in r.stdout
    (root,) = (tmp_path / "multirun").iterdir()
    results = yaml.safe_load((root / "optimization_results.yaml").read_text())
    assert results["metric"] == "val_r2" and results["direction"] == "maximize"
    assert results["trials"] == {"done": 6, "complete": 6, "pruned": 0, "failed": 0}
    losses = {row["loss"] for row in results["best_per_category"]}
    assert losses <= {"mse", "mae", "huber"} and losses
    assert "best val_r2 of each loss" in r.stdout
    bad = sweep("loss=choice(mse,cross_entropy)", "data=diabetes", "tracking=none",
                cwd=tmp_path, check=False)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "cross_entropy, which cannot train on this data" in bad.stderr
    assert "Fix: pass loss=choice(mse)" in bad.stderr


def test_repeats_train_each_configuration_with_several_seeds_and_report_the_spread(tmp_path):
    r = sweep("optimizer.lr=choice(0.01, 0.03)", *IRIS, "trainer.epochs=3", "sweep.repeats=3",
              "sweep.sampler=grid", "sweep.pruner=none", "sweep.study_name=rep", cwd=tmp_path)
    import numpy as np

    for t in load(tmp_path, "rep").trials:
        per_seed = t.user_attrs["repeat_values"]
        assert t.user_attrs["seeds"] == [0, 1, 2] and len(set(per_seed)) > 1
        assert t.value == pytest.approx(float(np.mean(per_seed)))
        for seed in (0, 1, 2):  # each seed its own run, with its own folder
            assert (tmp_path / f"multirun/rep/{t.number}/seed-{seed}/history.csv").is_file()
    assert "(3 seeds)" in r.stdout and "±" in r.stdout


def test_the_sweep_says_when_the_pruner_decided_most_trials(tmp_path):
    from lossbench.sweep.study import open_storage

    storage = open_storage(f"journal:{tmp_path}/multirun/pr/journal.log")
    study = optuna.create_study(study_name="pr", storage=storage)
    for lr in (0.02, 1e-5, 1.5e-5, 2e-5, 3e-5):  # a good learning rate, then hopeless ones
        study.enqueue_trial({"optimizer.lr": lr})
    args = ["optimizer.lr=tag(log, interval(1e-5, 0.05))", *IRIS, "trainer.epochs=12",
            "sweep.pruner_warmup_epochs=1", "sweep.pruner_startup_trials=1", "sweep.n_trials=5",
            "sweep.study_name=pr"]  # fmt: skip
    r = sweep(*args, cwd=tmp_path)
    results = yaml.safe_load((tmp_path / "multirun/pr/optimization_results.yaml").read_text())
    assert results["trials"]["pruned"] == 4
    assert "4 of 5 trials were pruned in the first half of their epochs" in r.stdout
    assert any("sweep.pruner=none" in n for n in results["notes"])
    quiet = sweep(*args[:-1], "sweep.pruner=none", "sweep.study_name=np", cwd=tmp_path)
    assert "pruned in the first half" not in quiet.stdout
