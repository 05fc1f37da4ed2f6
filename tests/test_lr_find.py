"""The learning-rate range test: the jitted ramp against a Python loop over the same components,
its early stop, the suggestion rule, the command (files, MLflow run, bad options), and its
suggestion on digits against the best learning rate of a sweep."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from lossbench.config import compose
from lossbench.training.lr_find import LRFindOptions, run_ramp, smooth, suggest
from lossbench.training.run import Run
from lossbench.training.setup import resolve, set_up
from lossbench.training.slow import python_parts


def env_for(**extra):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "LOSSBENCH_LOAD_PLUGINS": "", **extra}


def cli(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "lossbench", "lr_find", *args], cwd=cwd,
                          env=env_for(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def set_up_run(pm, overrides):
    cfg = compose(["tracking=none", *overrides], registry=pm.registry)
    specs, hp = resolve(cfg, pm.registry)
    run = Run(config=cfg, output_dir=None, specs=specs, options=hp)
    return run, set_up(run)


def python_ramp(run, s, options):
    """The ramp as a plain loop over the run's components (kernels called from Python)."""
    prep, layout = run.dataset, run.layout
    parts = python_parts(run.specs, layout, prep.n_outputs)
    lrs = options.ramp()
    per_epoch = math.ceil(len(prep.X_train) / s.batch)
    losses, best, avg, i = [], math.inf, 0.0, 0
    for _ in range(math.ceil(options.steps / per_epoch)):
        s.rng.shuffle(s.order)
        for start in range(0, len(s.order), s.batch):
            if i == options.steps:
                return np.array(losses)
            rows = s.order[start : start + s.batch]
            x, y = prep.X_train[rows], prep.Y_train[rows]
            value, grad = parts.loss(parts.forward(run.flat_params, layout.layout,
                                                   s.model_hp, x), y, s.loss_hp)  # fmt: skip
            losses.append(value)
            avg = options.beta * avg + (1 - options.beta) * value
            smoothed = avg / (1 - options.beta ** (i + 1))
            if not math.isfinite(value) or smoothed > options.divergence * best:
                return np.array(losses)
            best = min(best, smoothed)
            grads = parts.backward(run.flat_params, layout.layout, s.model_hp, x, grad)
            parts.step(run.flat_params, grads.astype(s.dtype), s.state, s.scalars, s.opt_hp, i + 1,
                       lrs[i])
            i += 1
    return np.array(losses)


@pytest.mark.parametrize("overrides", [["data=iris", "trainer.dtype=float64"],
                                       ["data=wine", "optimizer=sgd", "optimizer.momentum=0.9",
                                        "trainer.dtype=float64", "trainer.batch_size=16"]])
def test_the_jitted_ramp_takes_the_steps_a_python_loop_takes(pm, overrides):
    options = LRFindOptions(start_lr=1e-5, end_lr=10.0, steps=60)
    run, s = set_up_run(pm, overrides)
    fused = run_ramp(run, s, options, restore=False)
    ref_run, ref_s = set_up_run(pm, overrides)
    ref = python_ramp(ref_run, ref_s, options)
    assert len(fused.losses) == len(ref)
    np.testing.assert_allclose(fused.losses, ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(run.flat_params, ref_run.flat_params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fused.lrs, options.ramp()[: len(ref)], rtol=1e-15)


def test_the_ramp_stops_once_the_smoothed_loss_exceeds_divergence_times_its_minimum(pm):
    options = LRFindOptions(start_lr=1e-4, end_lr=1e3, steps=300)
    run, s = set_up_run(pm, ["data=digits", "trainer.dtype=float64"])
    r = run_ramp(run, s, options)
    assert r.diverged and len(r.lrs) < options.steps
    sm = smooth(r.losses, options.beta)
    last = sm[-1]
    assert not math.isfinite(r.losses[-1]) or last > options.divergence * sm[:-1].min()
    assert np.all(sm[1:-1] <= options.divergence * np.minimum.accumulate(sm[:-2]))


def test_suggest_is_the_steepest_descent_below_the_minimum():
    lrs = np.logspace(-6, 0, 200)
    x = np.log10(lrs)
    loss = 2 - np.tanh(2 * (x + 3)) + np.where(x > -1.5, 10 * (x + 1.5) ** 2, 0)
    steepest, min_over_10 = suggest(lrs, loss)
    assert steepest == pytest.approx(1e-3, rel=0.08)  # where tanh falls fastest
    assert min_over_10 == pytest.approx(lrs[np.argmin(loss)] / 10)
    assert suggest(lrs, np.linspace(1, 2, 200))[0] is None  # never falls: no suggestion


@pytest.mark.parametrize("args, says", [
    (["--steps", "3"], "--steps 3 is not allowed: it must be between 10 and 1000000"),
    (["--start-lr", "1e-2", "--end-lr", "1e-3"], "--end-lr 0.001 is not allowed"),
    (["--beta", "1"], "--beta 1.0 is not allowed: it must lie in [0, 1)"),
    (["--divergence", "0.5"], "--divergence 0.5 is not allowed"),
    (["--steps", "many"], "--steps 'many' is not a valid int"),
    (["--lr", "1"], "lr_find does not take '--lr'; its options are --start-lr"),
    (["optimizer.lrr=1"], "optimizer.lrr"),
])  # fmt: skip
def test_bad_lr_find_options_exit_2_with_one_paragraph(tmp_path, args, says):
    r = cli(*args, "tracking=none", "--output-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_lr_find_writes_its_plot_and_records_an_mlflow_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = cli("--output-dir", "out", "data=iris", f"tracking.uri={uri}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "lr_find.json").read_text())
    lr = result["suggested_lr"]
    assert f"python -m lossbench data=iris tracking.uri={uri} optimizer.lr={lr:.3g}" in r.stdout
    assert "steepest descent" in result["rule"]
    assert (tmp_path / "out" / "lr_find.png").stat().st_size > 10_000
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("lossbench").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("lr_find-")
    assert run.data.metrics["suggested_lr"] == pytest.approx(lr)
    steps = client.get_metric_history(run.info.run_id, "lr_find_smoothed_loss")
    assert len(steps) == result["steps"]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"lr_find.png", "lr_find.csv", "lr_find.json"} <= names and "model" not in names


@pytest.mark.slow
def test_lr_find_suggests_within_3x_of_the_best_lr_a_sweep_finds_on_digits(tmp_path):
    # the preset a user runs (TPE, 40 trials, lr log-uniform in [1e-4, 1], 30 epochs); a grid
    # was noisier: every trial has its own seed, so its own validation split
    sweep = subprocess.run(
        [sys.executable, "-m", "lossbench", "--multirun", "sweep=lr", "tracking=none",
         "hydra.sweep.dir=sweep"],
        cwd=tmp_path, env=env_for(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    best = float(results["best_params"]["optimizer.lr"])
    r = cli("--output-dir", "out", "tracking=none", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    suggested = json.loads((tmp_path / "out" / "lr_find.json").read_text())["suggested_lr"]
    print(f"digits, mlp, adam: sweep best lr {best:.3g}, lr_find suggests {suggested:.3g}")
    assert best / 3 <= suggested <= best * 3, (best, suggested)
