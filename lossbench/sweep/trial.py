"""One trial's pieces, for the worker's ask/tell loop (``lossbench.sweep.worker``): its values
from the search space, its config (composed fast), its training seeds, its objective, its
``.hydra`` files, its trackers told it is a trial (``tag_child_run``: MLflow's child-run
tags), and the two plugins a trial trains with: the pruner's reports (``Pruning``) and which
runs log a model (``BestModelsOnly``).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict
from optuna.distributions import CategoricalDistribution, IntDistribution

from lossbench.config import GROUPS, compose
from lossbench.config.text import to_yaml
from lossbench.files import save_together, text_file
from lossbench.hookspecs import hookimpl
from lossbench.plugins import get_plugin_manager
from lossbench.sweep.plan import Plan, parent_run_id
from lossbench.sweep.space import format_override
from lossbench.sweep.study import trial_seeds
from lossbench.tracking.base import SweepChild
from lossbench.urls import mask_text


def suggest(trial, space):
    """Values for the trial from its distributions (group choices first, so ``optimizer=sgd``
    precedes ``optimizer.lr=...`` in the overrides)."""
    values = {}
    for key in sorted(space, key=lambda k: ("." in k, k)):
        d = space[key].distribution
        if isinstance(d, CategoricalDistribution):
            values[key] = trial.suggest_categorical(key, d.choices)
        elif isinstance(d, IntDistribution):
            values[key] = trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
        else:
            values[key] = trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)
    return values


def seeds_of(plan: Plan, number: int, values: dict) -> list[int]:
    """The training seeds of trial ``number``, one per repeat: ``sweep.seeds`` and
    ``sweep.repeats`` (``lossbench.sweep.study.trial_seeds``), or from ``seed`` when the search
    space sweeps it."""
    if "seed" in values:
        return [int(values["seed"]) + r for r in range(plan.repeats)]
    return trial_seeds(plan, number)


def trial_overrides(plan: Plan, values: dict, seed: int) -> list[str]:
    """The overrides that reproduce a trial's run: the fixed ones, its values, and its seed
    when that is not the one the fixed overrides give."""
    out = [*plan.fixed, *(format_override(k, v) for k, v in values.items())]
    if seed != plan.train_seed and "seed" not in values:
        out.append(f"seed={seed}")
    return out


class Composer:
    """Trial configs, fast: Hydra composes once per combination of config-group choices (about
    0.1 s each); the other parameters are then set on a copy, each value parsed by Hydra's own
    override parser, so the result equals composing the trial's logged overrides."""

    def __init__(self, plan: Plan, registry):
        self.plan, self.registry, self.cache = plan, registry, {}
        self.parser = OverridesParser.create()

    def __call__(self, values: dict, seed: int):
        groups = [format_override(k, v) for k, v in values.items() if k in GROUPS]
        base = self.cache.get(tuple(groups))
        if base is None:
            base = compose([*self.plan.fixed, *groups], registry=self.registry)
            self.cache[tuple(groups)] = base
        cfg = copy.deepcopy(base)
        for key, value in values.items():
            if key not in GROUPS:
                (ov,) = self.parser.parse_overrides([format_override(key, value)])
                OmegaConf.update(cfg, key, ov.value(), merge=False)
        cfg.seed = seed
        return cfg


def objective_values(run, metrics: list[str]) -> list[float]:
    """The trial's objective(s): each metric at the last epoch run, the lowest val_loss
    (``best_val_loss``), or a timing."""
    out = []
    for m in metrics:
        if m == "best_val_loss":
            vals = [h["val_loss"] for h in run.history if math.isfinite(h["val_loss"])]
            out.append(min(vals) if vals else float("nan"))
        elif m in run.timings:
            out.append(float(run.timings[m]))
        else:
            out.append(float(run.history[-1][m]))
    return out


def write_hydra_files(out: Path, cfg, overrides: list[str], plan: Plan | None = None,
                      number: int | None = None) -> None:  # fmt: skip
    """The trial's ``.hydra/`` files, as Hydra writes a job's (a URL's password as ***):
    config.yaml, overrides.yaml and, from the sweep's hydra node (``plan.hydra``), hydra.yaml
    with the job's number, overrides and output folder; flushed to disk together
    (``lossbench.files.save_together``). Raises the first OSError met."""
    hydra_dir = out / ".hydra"
    texts = {"config.yaml": mask_text(to_yaml(cfg)),  # no password
             "overrides.yaml": mask_text(to_yaml(list(overrides)))}
    if plan is not None and plan.hydra:
        node = copy.deepcopy(plan.hydra)
        dirname = ",".join(sorted(o for o in overrides if not o.startswith("hydra.")))
        node.setdefault("job", {}).update(num=number, id=str(number), override_dirname=dirname)
        node.setdefault("overrides", {})["task"] = list(overrides)
        node.setdefault("runtime", {})["output_dir"] = str(Path(out).absolute())
        node["mode"] = "MULTIRUN"
        texts["hydra.yaml"] = mask_text(to_yaml({"hydra": node}))
    errors = save_together([text_file(hydra_dir / name, text) for name, text in texts.items()])
    for error in errors:
        if error is not None:
            raise error


def tag_child_run(cfg, plan: Plan, number: int, stop, repeat: int | None = None,
                  read_from: int | None = None) -> None:  # fmt: skip
    """Tell each tracker of the trial's config that its run is trial ``number`` of the study
    (``Tracker.as_child``: MLflow tags it and names its parent run, waited for while the
    coordinator opens it, until ``stop`` is set); ``repeat`` with ``sweep.repeats``,
    ``read_from`` for a trial answered from another trial's run. A tracker without parent
    runs simply records the trial as a run of its own."""
    trackers = get_plugin_manager().registry.trackers_of(cfg.get("tracking"))
    child = SweepChild(plan.study_name, number, repeat, read_from)
    if any(cls.parent is not None for _, cls, _ in trackers):
        child.parent_id = parent_run_id(plan, stop)
    with open_dict(cfg):
        for _, cls, options in trackers:
            cls.as_child(options, cfg, child)


class Pruning:
    """Reports each epoch's metric to the trial and stops the run when the pruner says so."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric, self.pruned_at = trial, metric, None

    @hookimpl
    def on_epoch_end(self, run, epoch, metrics):
        value = metrics.get(self.metric)
        if value is None:
            return None
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            # tracking logs no model for it (lossbench.tracking.base.NO_MODEL): a model
            # costs the trial ~0.5 s in the MLflow process, and a pruned one is never the best
            run.plugin_state["tracking.no_model"] = "pruned"
            return f"pruned by Optuna after epoch {epoch} ({self.metric}={value:.6g})"
        return None


def beats_the_best(study, plan: Plan, value: float) -> bool:
    """Whether an objective ``value`` is at least as good as every completed trial's (True
    while none has completed)."""
    try:
        best = study.best_value  # over the completed trials
    except ValueError:
        return True
    return value <= best if plan.directions[0] == "minimize" else value >= best


class BestModelsOnly:
    """``sweep.log_models=best``: a trial's run logs its MLflow model only when its objective is
    at least as good as every trial completed so far (``tracking.no_model`` otherwise). The
    study's best trial always has one: when it ended, no completed trial was better. Logging a
    model costs a trial about half a second, several times a short trial's training."""

    def __init__(self, study, plan: Plan):
        self.study, self.plan = study, plan

    @hookimpl(tryfirst=True)  # before the tracking plugin ends the run
    def on_run_end(self, run, status):
        if status not in ("finished", "stopped") or not run.history:
            return
        try:
            value = objective_values(run, self.plan.metrics)[0]
        except (KeyError, IndexError):  # no such metric
            return
        if not beats_the_best(self.study, self.plan, value):
            run.plugin_state["tracking.no_model"] = "not the best trial so far"
