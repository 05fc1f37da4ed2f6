"""Epoch counts answered from trajectories: with ``trainer.epochs`` swept and a schedule that
does not depend on the number of epochs (``lossbench.sweep.design.epoch_counts``), a trial
trains the largest count, and every smaller count E is answered from its run, because a run of
E epochs is, bit for bit, its first E epochs: the same shuffles, the same steps, the same
learning rates.

While the run trains, ``Trajectory`` keeps the weights an E-epoch run would end with (its kept
weights: the best epoch's up to E, or epoch E's; ``trainer.keep_weights``). After it,
``answer_epoch_counts`` adds one finished Optuna trial per count (``trainer.epochs=E``, the
objective over the first E epochs, the user attribute ``read_from`` naming the trial whose run
it was read from), writes its folder inside that run's (``epochs-E/``: ``.hydra``, history.csv,
model.npz, summary.json saying where it was read from) and records it in every tracker the
trial has, as a child run of its own (MLflow's: labelled as read from the longer run), through
the tracker protocol (``tracking.plugin.record_ended``: ``Tracker.record_ended``). Its
overrides rerun it bit for bit. A count beyond where the run stopped is pruned (the run was
pruned there) or failed (it diverged).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from lossbench.hookspecs import hookimpl
from lossbench.plugins import get_plugin_manager
from lossbench.sweep.design import EPOCHS
from lossbench.sweep.study import READ_FROM, add_answer
from lossbench.sweep.trial import (
    beats_the_best,
    objective_values,
    tag_child_run,
    trial_overrides,
    write_hydra_files,
)
from lossbench.tracking.plugin import record_ended
from lossbench.training import outputs
from lossbench.urls import mask_text

CURVES = ("train_loss", "val_loss")


def curves(run, plan) -> dict[str, list[float]]:
    """A run's per-epoch curves as a trial keeps them (user attributes): train and validation
    loss, and the sweep's metrics that are per-epoch metrics."""
    keys = [*CURVES, *(m for m in plan.metrics if m not in CURVES)]
    return {k: [h[k] for h in run.history] for k in keys if run.history and k in run.history[0]}


class Trajectory:
    """During a trial's run: the weights an E-epoch run would end with, for every epoch count
    E answered from this run (the run's own count, the largest, excepted)."""

    def __init__(self, counts: list[int]):
        self.counts = set(counts[:-1])
        self.weights: dict[int, tuple[np.ndarray, int]] = {}  # E -> (weights, their epoch)

    @hookimpl
    def on_epoch_end(self, run, epoch, metrics):
        if epoch + 1 in self.counts:
            best = run.keep_weights == "best" and run.best_params is not None
            self.weights[epoch + 1] = (run.kept_params().copy(),
                                       run.best_so_far[0] if best else epoch)  # fmt: skip
        return None


def _epochs_ok(repeat) -> int:
    """How many first epochs of a repeat's run an equally seeded shorter run shares: all it
    ran, but a diverged last epoch."""
    run = repeat.run
    return len(run.history) - (1 if run.status == "diverged" else 0)


def answer_epoch_counts(study, plan, trial, repeats: list, how, stop) -> None:
    """One trial per epoch count below the trial's own, read from its run(s) (see the module);
    ``how`` is (the worker's Composer, the trial's values), ``stop`` the worker's stop event.
    Every tracker gets them together (``tracking.plugin.record_ended``); the one that logs a
    model (``sweep.log_models=best``: the best of these answers, if it is at least as good as
    every completed trial) comes with its files and model."""
    answered = []
    for epochs in plan.epoch_counts[:-1]:
        ok = len(repeats) == plan.repeats and all(_epochs_ok(x) >= epochs for x in repeats)
        if not ok:
            _add_unanswered(study, plan, trial, repeats, epochs)
            continue
        per_seed = [objective_values(_prefix(x.run, epochs), plan.metrics) for x in repeats]
        values = [float(np.mean(col)) for col in zip(*per_seed, strict=True)]
        number = _add(study, trial, epochs, TrialState.COMPLETE, values, {
            "status": "finished", **curves(_prefix(repeats[0].run, epochs), plan),
            "train_seconds": _train_seconds(repeats[0].run, epochs),
            "output_dir": str(repeats[0].out / f"epochs-{epochs}"),
            "overrides": [mask_text(o) for o in _overrides(plan, how[1], repeats[0], epochs)],
            **({"repeat_values": [v[0] for v in per_seed]} if len(repeats) > 1 else {}),
        })  # fmt: skip
        answered.append((epochs, number, values[0]))
    with_model = _with_model(study, plan, answered)
    models, batch = [], []
    for epochs, number, _ in answered:
        for r, repeat in enumerate(repeats):
            short = _write_answer(plan, trial.number, number, repeat, epochs, (*how, r, stop))
            if short is not None:
                (models if number in with_model else batch).append(short)
    registry = get_plugin_manager().registry
    record_ended(models, registry, keep_files=True)
    record_ended(batch, registry)
    for short in models + batch:
        for message in short.record_errors:
            print(f"lossbench: {message}", flush=True)


def _with_model(study, plan, answered: list) -> set[int]:
    """The answers that log a model (and their files): all with ``sweep.log_models=all`` (or several
    objectives), else the best of them if it beats every completed trial (BestModelsOnly's
    rule for a trained run)."""
    if not answered:
        return set()
    if not (plan.log_models == "best" and len(plan.directions) == 1):
        return {number for _, number, _ in answered}
    pick = min if plan.directions[0] == "minimize" else max
    _, number, value = pick(answered, key=lambda a: a[2])
    return {number} if beats_the_best(study, plan, value) else set()


def _overrides(plan, values: dict, repeat, epochs: int) -> list[str]:
    return trial_overrides(plan, {**values, EPOCHS: epochs}, int(repeat.run.config.seed))


def _train_seconds(run, epochs: int) -> float:
    return float(sum(h["epoch_seconds"] for h in run.history[:epochs]))


def _add(study, trial, epochs: int, state, values, attrs: dict) -> int:
    """Add the answer for ``epochs`` as a finished trial; returns its number."""
    frozen = optuna.trial.create_trial(
        state=state,
        values=values,
        params={**trial.params, EPOCHS: epochs},
        distributions=trial.distributions,
        user_attrs={READ_FROM: trial.number, "seed": trial.user_attrs.get("seed"), **attrs},
    )
    return add_answer(study, frozen)


def _add_unanswered(study, plan, trial, repeats: list, epochs: int) -> None:
    """A count the run(s) did not reach: pruned if the pruner stopped them, failed if one
    diverged or failed first."""
    last = repeats[-1]
    stopped = len(last.run.history)
    if last.pruned or len(repeats) < plan.repeats and repeats[0].pruned:
        state, status = TrialState.PRUNED, "pruned"
        why = f"the run it is read from (trial {trial.number}) was pruned after epoch {stopped - 1}"
    else:
        state, status = TrialState.FAIL, last.run.status
        why = f"the run it is read from (trial {trial.number}) {status} at epoch {stopped - 1}"
    _add(study, trial, epochs, state, None, {"status": status, "error": why})


def _prefix(run, epochs: int, weights=None, cfg=None, out=None, read_from=None):
    """The run of ``epochs`` epochs read from ``run``: its first epochs' history and timings,
    the weights it would end with, ``cfg`` (trainer.epochs = epochs) and its folder."""
    timings = {k: v for k, v in run.timings.items() if k in ("setup_seconds", "compile_seconds")}
    timings["train_seconds"] = _train_seconds(run, epochs)
    timings["total_seconds"] = sum(timings.values())
    short = dataclasses.replace(
        run, history=run.history[:epochs], status="finished", error=None, stop_reason=None,
        plugin_state={}, record_errors=[], best_params=None, best_so_far=None, timings=timings,
        read_from=read_from,
    )  # fmt: skip
    if weights is not None:
        short.flat_params, short.weights_epoch = weights
    if cfg is not None:
        short.config, short.output_dir = cfg, out
    return short


def _write_answer(plan, carrier: int, number: int, repeat, epochs: int, how):
    """The answer's folder, for one seed; returns its Run (its trackers told it is a trial:
    MLflow's child run), or None when its files could not be written. ``how`` is (composer,
    values, repeat index, stop event)."""
    composer, values, r, stop = how
    seed = int(repeat.run.config.seed)
    cfg = composer({**values, EPOCHS: epochs}, seed)
    out = Path(repeat.out) / f"epochs-{epochs}"
    where = f"the first {epochs} epochs of trial {carrier}'s run ({repeat.out})"
    short = _prefix(repeat.run, epochs, repeat.trajectory.weights[epochs], cfg, out, where)
    try:
        write_hydra_files(out, cfg, _overrides(plan, values, repeat, epochs), plan, number)
        failed = outputs.write_files(out, short, plots=False)
        if failed:
            raise failed[0][1]
        outputs.write_summary(out / "summary.json", short)
    except OSError as exc:  # the answer stays in the study; its files are a copy of the run's
        print(f"lossbench: trial {number}'s files could not be written: {exc}", flush=True)
        return None
    tag_child_run(cfg, plan, number, stop, repeat=r if plan.repeats > 1 else None,
                  read_from=carrier)  # every tracker told which trial it records
    return short
