"""How a sweep makes its comparison fair, decided before any trial (``make_plan`` calls these):

- the metric and its direction: ``sweep.metric=auto`` is the metric every loss shares (val
  accuracy for classes, val R^2 for regression); ``sweep.direction=auto`` is the metric's own
  (lower losses and errors, higher accuracy, F1 and R^2);
- the losses that can train on the data: a preset's choice that cannot (cross-entropy on a
  regression target) is left out with a note, a command line's is refused with the fix;
- epoch counts read from trajectories: with ``trainer.epochs`` swept and a schedule that does
  not depend on the number of epochs (its spec's ``uses_epochs`` is false: constant or step,
  with or without warm-up; no early stopping), a run of N epochs is, bit for bit, the first N
  epochs of a longer run, so each configuration trains once, to the largest count, and every
  count is answered from it;
- the pruner's warm-up (epochs and completed trials) and its groups: trials are pruned only by
  trials of the same category (the same loss, optimizer, ...), never across categories.

Every decision is written into ``Plan.notes``, which the sweep prints before its first trial.
"""

from __future__ import annotations

import math

from omegaconf import ListConfig
from optuna.distributions import CategoricalDistribution

from lossbench.config import options_of
from lossbench.config.schemas import MAXIMIZED, metrics_for
from lossbench.errors import ConfigError, positive_int
from lossbench.sweep.space import parse_choices
from lossbench.training.prepare import target_problem

SUMMARY_METRICS = ("best_val_loss", "train_seconds", "total_seconds")
EPOCHS = "trainer.epochs"


def load_data(base, registry):
    """The dataset the sweep's trials train on (its task and classes decide the metrics and
    the losses that fit)."""
    spec = registry.get("data", base.data.name)
    return spec.load(options_of(spec, base.data), int(base.get("data_seed", 0)))


LOSS_METRICS = ("train_loss", "val_loss", "best_val_loss")


def objectives(sw, task: str, notes: list[str], categories=(), chosen: bool = True):
    """The metrics and their directions, checked against what runs on ``task`` record. Trials
    of different losses ranked by their own loss compare numbers on different scales: with the
    loss swept, the default metric (not ``chosen`` by the command or a preset) becomes the one
    every loss shares, and a chosen loss metric gets a warning note."""
    metrics = [str(m) for m in _list(sw.metric)]
    common = "val_accuracy" if task == "classification" else "val_r2"
    if "loss" in categories and metrics[0] in LOSS_METRICS and len(metrics) == 1:
        if not chosen:
            metrics = ["auto"]
        else:
            notes.append(f"warning: trials of different losses are ranked by {metrics[0]}, each "
                         f"on its own loss's scale; sweep.metric=auto ranks them by {common}, "
                         "which every loss shares")  # fmt: skip
    if metrics == ["auto"]:
        metrics = [common]
        notes.append(f"metric: {common}, which every loss shares on a {task} task")
    available = [*metrics_for(task), *SUMMARY_METRICS]
    for m in metrics:
        if m not in available:
            raise ConfigError(
                f"sweep.metric={m!r} is not a metric these runs produce ({task} data). "
                f"Available: {', '.join(available)}, or auto. Fix: pass e.g. "
                f"sweep.metric={'val_accuracy' if task == 'classification' else 'val_r2'}."
            )
    directions = [str(d) for d in _list(sw.direction)]
    if directions == ["auto"]:
        directions = ["maximize" if m in MAXIMIZED else "minimize" for m in metrics]
    bad = [d for d in directions if d not in ("minimize", "maximize")]
    if bad or len(directions) != len(metrics):
        raise ConfigError(
            f"sweep.direction={directions} must be auto, minimize or maximize, one per metric "
            f"(sweep.metric={metrics}). Fix: e.g. sweep.metric=[val_loss,train_seconds] "
            "sweep.direction=[minimize,minimize], or leave sweep.direction unset (auto)."
        )
    return metrics, directions


def _list(value) -> list:
    return list(value) if isinstance(value, list | tuple | ListConfig) else [value]


def fitting_losses(expressions: dict, preset: dict, data, registry, notes: list[str]) -> dict:
    """The search space with ``loss`` choices that cannot train on ``data`` left out (a
    preset's, with a note) or refused (the command line's, naming each and the fix)."""
    expression = expressions.get("loss")
    if expression is None:
        return expressions
    choices = parse_choices("loss", expression)
    if choices is None:
        return expressions
    unfit = {}
    for name in choices:
        spec = registry.get("loss", str(name))
        problem = target_problem(data.task, data.n_classes, spec.target, spec.name)
        if problem:
            unfit[str(name)] = problem
    if not unfit:
        return expressions
    keep = [str(c) for c in choices if str(c) not in unfit]
    task = f"{data.task} data" if data.task != "classification" else f"{data.n_classes} classes"
    if "loss" in preset and expressions["loss"] == preset["loss"] and keep:
        notes.append(f"loss: {', '.join(unfit)} left out: {'it' if len(unfit) == 1 else 'they'} "
                     f"cannot train on {task} ({next(iter(unfit.values())).split(' Fix:')[0]})")
        return {**expressions, "loss": f"choice({', '.join(keep)})"}
    fix = (f"pass loss=choice({', '.join(keep)})" if keep else
           "choose losses for this task (mse, mae, huber for regression)")  # fmt: skip
    raise ConfigError(
        f"loss={expression} includes {', '.join(unfit)}, which cannot train on this data "
        f"({task}): {next(iter(unfit.values()))} Fix: {fix}."
    )


def epoch_counts(space: dict, base, notes: list[str], schedule) -> list[int]:
    """The epoch counts to read from one run per configuration, or [] when each trial must
    train its own epochs (and the note says why). ``schedule`` is the base config's schedule
    spec: its ``uses_epochs`` says whether a run of N epochs is the start of a longer one."""
    if EPOCHS not in space:
        return []
    values = space[EPOCHS].discrete_values
    trainer = base.trainer
    swept = [k for k in space if k != EPOCHS and k.startswith(("trainer.", "schedule"))]
    why = None
    if not base.sweep.get("epochs_from_one_run", True):
        why = "sweep.epochs_from_one_run=false"
    elif any(k.startswith(("schedule", "trainer.early_stopping")) for k in swept):
        why = f"{', '.join(swept)} is swept, and it may depend on the number of epochs"
    elif schedule.uses_epochs:
        why = (f"the {schedule.name} schedule depends on the number of epochs (it spans "
               "epochs - warmup)")  # fmt: skip
    elif trainer.early_stopping.enabled:
        why = "early stopping ends each run at its own epoch"
    elif values is None:
        why = f"{EPOCHS}={space[EPOCHS].expression} is not a list of counts (use range or choice)"
    if why:
        notes.append(f"{EPOCHS}: each trial trains its own epochs: {why}")
        return []
    counts = sorted({int(v) for v in values})
    notes.append(
        f"{EPOCHS}: one run of {counts[-1]} epochs per configuration answers all {len(counts)} "
        f"epoch counts ({_short(counts)}): with the {schedule.name} schedule a run of N "
        "epochs is the first N epochs of a longer one, bit for bit"
    )
    return counts


def _short(values: list[int]) -> str:
    return ", ".join(map(str, values)) if len(values) <= 6 else (
        f"{values[0]}, {values[1]}, ..., {values[-1]}")  # fmt: skip


def budget(sw, counts: list[int], grid: dict) -> tuple[int, int]:
    """(n_trials, n_runs): trials in the study and runs trained. With epoch counts read from
    trajectories each run answers ``len(counts)`` trials, so ``n_runs`` is ``n_trials`` divided
    by that, rounded up; a grid caps the runs at its size."""
    positive_int(sw.n_trials, "sweep.n_trials", 20)
    per_run = max(len(counts), 1)
    n_runs = math.ceil(int(sw.n_trials) / per_run)
    if grid:
        n_runs = min(n_runs, math.prod(len(v) for v in grid.values()))  # epochs left out
    return n_runs * per_run, n_runs


def pruner_settings(sw, space: dict, base, counts: list[int], notes: list[str]) -> dict:
    """Warm-up epochs (default: a third of the epochs a trial trains, at least 3), startup
    trials and the groups trials are compared within (``auto``: the categorical parameters
    whose choices are names, e.g. loss or optimizer, not numbers)."""
    swept = space[EPOCHS].discrete_values if EPOCHS in space else None
    epochs = counts[-1] if counts else min([int(v) for v in swept or [base.trainer.epochs]])
    warm = sw.pruner_warmup_epochs
    warm = max(3, epochs // 3) if warm is None else int(warm)
    groups = sw.pruner_groups
    groups = category_keys(space) if groups == "auto" else [str(g) for g in _list(groups)]
    missing = [g for g in groups if g not in space]
    if missing:
        raise ConfigError(
            f"sweep.pruner_groups names {', '.join(missing)}, which the search space does not "
            f"sweep ({', '.join(space)}). Fix: name swept keys, [] for none, or auto."
        )
    startup = int(sw.pruner_startup_trials)
    if str(sw.pruner) != "none":
        within = f", each trial against trials of the same {', '.join(groups)}" if groups else ""
        notes.append(f"pruner: {sw.pruner}, never before epoch {warm} nor before {startup} "
                     f"trials completed{within}")  # fmt: skip
    return {"pruner_warmup_epochs": warm, "pruner_startup_trials": startup,
            "pruner_groups": groups}  # fmt: skip


def category_keys(space: dict) -> list[str]:
    """The swept keys whose choices are names (a loss, an optimizer, an activation), not
    numbers: the categories a sweep compares, and within which the pruner compares trials."""
    return [k for k, p in space.items() if isinstance(p.distribution, CategoricalDistribution)
            and not all(isinstance(c, int | float) for c in p.distribution.choices)]  # fmt: skip


def subject(base, space: dict) -> str:
    """What every trial trains, for figure titles: the model, loss and optimizer (those not
    swept), the data and the epochs (when not swept): ``mlp, cross_entropy, adam on digits,
    30 epochs``."""
    parts = [str(base[g].name) for g in ("model", "loss", "optimizer") if g not in space]
    text = ", ".join(parts) + f" on {base.data.name}"
    if EPOCHS not in space:
        text += f", {base.trainer.epochs} epochs"
    return text


def seeds(sw, base, notes: list[str]) -> dict:
    """The training seeds: shared (every trial trains with ``seed``) or one per trial, and the
    repeats (each configuration with ``seed``, ``seed + 1``, ...)."""
    positive_int(sw.repeats, "sweep.repeats", 3)
    repeats = int(sw.repeats)
    mode, seed = str(sw.seeds), int(base.seed)
    data_seed = int(base.get("data_seed", 0))
    which = (f"seed {seed}" if repeats == 1 else f"seeds {seed}..{seed + repeats - 1}") if (
        mode == "shared") else "its own seed"  # fmt: skip
    notes.append(f"seeds: one dataset and one validation split (data_seed {data_seed}); every "
                 f"trial trains with {which}" + (f", {repeats} runs per configuration "
                 "(mean and spread reported)" if repeats > 1 else ""))  # fmt: skip
    return {"seeds": mode, "train_seed": seed, "repeats": repeats}
