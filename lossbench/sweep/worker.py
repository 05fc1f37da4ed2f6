"""A sweep worker: ``python -m lossbench.sweep.worker PLAN.json INDEX``.

An ask/tell loop on the shared study: under the budget lock, recover lost trials, count, ask;
then compose the trial's config, train it in this process (the fused epoch is loaded from
numba's cache once per worker, not per trial) with the trial attached through a pruning plugin,
and tell Optuna the result. A heartbeat thread stamps the running trial so another process can
tell when this one died.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from lossbench.config import GROUPS, compose
from lossbench.errors import LossbenchError
from lossbench.hookspecs import hookimpl
from lossbench.plugins import build_plugin_manager, set_plugin_manager
from lossbench.sweep.plan import Plan
from lossbench.sweep.space import build_space, format_override
from lossbench.sweep.study import (
    budget_lock,
    counted,
    make_sampler,
    open_study,
    recover_stale,
    set_trial_attr,
    trial_seed,
)
from lossbench.tracking.plugin import default_run_name
from lossbench.training import train

STATUS_TO_STATE = {"finished": "COMPLETE", "stopped": "COMPLETE"}
# Set by Ctrl-C / SIGTERM. The signal can land inside a storage call and surface as another
# exception (Optuna's journal lock turns it into FileNotFoundError); with this flag set, any
# exception means "interrupted", not "the trial failed".
STOPPING = threading.Event()


def _on_signal(signum, frame):
    STOPPING.set()
    raise KeyboardInterrupt


def _lose(study, trial) -> None:
    """Mark an interrupted trial: failed, not counted, retried by the next invocation."""
    set_trial_attr(study, trial, "lossbench_lost", True)
    trial.set_user_attr("status", "interrupted")
    study.tell(trial, state=TrialState.FAIL)


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
            return f"pruned by Optuna after epoch {epoch} ({self.metric}={value:.6g})"
        return None


class Heartbeat:
    def __init__(self, study, trial, every: float):
        self.study, self.trial, self.every = study, trial, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self.stop.wait(self.every):
            set_trial_attr(self.study, self.trial, "heartbeat", time.time())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


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
    out = []
    for m in metrics:
        if m == "best_val_loss":
            best = run.best_epoch
            out.append(run.history[best]["val_loss"] if best is not None else float("nan"))
        elif m in run.timings:
            out.append(float(run.timings[m]))
        else:
            out.append(float(run.history[-1][m]))
    return out


def write_hydra_files(out: Path, cfg, overrides: list[str]) -> None:
    hydra_dir = out / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))


def run_trial(study, plan: Plan, space, pm, trial, composer: Composer) -> bool:
    """Train one trial and tell Optuna; False when the worker should stop (interrupted)."""
    values = suggest(trial, space)
    seed = trial_seed(plan.seed, trial.number)
    overrides = [*plan.fixed, *(format_override(k, v) for k, v in values.items()), f"seed={seed}"]
    out = Path(plan.sweep_dir) / str(trial.number)
    trial.set_user_attr("overrides", overrides)
    trial.set_user_attr("seed", seed)
    trial.set_user_attr("output_dir", str(out))
    try:
        cfg = composer(values, seed)
    except (LossbenchError, ValueError, KeyError) as exc:
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("error", str(exc))
        study.tell(trial, state=TrialState.FAIL)
        return True
    _tag_child_run(cfg, plan, trial)
    write_hydra_files(out, cfg, overrides)
    # Optuna prunes single-objective studies only (trial.report refuses several objectives)
    pruning = Pruning(trial, plan.metrics[0]) if len(plan.directions) == 1 else None
    if pruning is not None:
        pm.register(pruning)
    try:
        with Heartbeat(study, trial, plan.heartbeat_seconds):
            run = train(cfg, output_dir=out, plugin_manager=pm)
    except KeyboardInterrupt:
        _lose(study, trial)  # the run itself is marked interrupted (KILLED in MLflow)
        return False
    except Exception as exc:
        if STOPPING.is_set():
            _lose(study, trial)
            return False
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
        study.tell(trial, state=TrialState.FAIL)
        return True
    finally:
        if pruning is not None:
            pm.unregister(pruning)
    _tell(study, plan, trial, run, pruned=pruning is not None and pruning.pruned_at is not None)
    return True


def _tag_child_run(cfg, plan: Plan, trial) -> None:
    """Tags tying the trial's MLflow run to its study, its number and the parent run."""
    with open_dict(cfg):
        tags = cfg.tracking.get("tags")
        if tags is not None:
            tags["lossbench.study"] = plan.study_name
            tags["lossbench.trial"] = str(trial.number)
            tags["lossbench.role"] = "trial"
            if plan.parent_run_id:
                tags["mlflow.parentRunId"] = plan.parent_run_id
            cfg.tracking.run_name = f"{trial.number}: {default_run_name(cfg)}"


def _tell(study, plan: Plan, trial, run, pruned: bool) -> None:
    """The trial's curves and result into the study: complete, pruned or failed."""
    trial.set_user_attr("train_loss", [h["train_loss"] for h in run.history])
    trial.set_user_attr("val_loss", [h["val_loss"] for h in run.history])
    trial.set_user_attr("train_seconds", run.timings.get("train_seconds", 0.0))
    status = "pruned" if pruned else run.status
    trial.set_user_attr("status", status)
    if run.error:
        trial.set_user_attr("error", run.error[:2000])
    if status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    elif status in STATUS_TO_STATE:
        try:
            study.tell(trial, objective_values(run, plan.metrics))
        except (ValueError, optuna.exceptions.OptunaError) as exc:  # e.g. a NaN objective
            trial.set_user_attr("error", str(exc))
            study.tell(trial, state=TrialState.FAIL)
    else:  # diverged or failed: recorded, and the sweep goes on
        study.tell(trial, state=TrialState.FAIL)


def main(plan_path: str, index: int) -> int:
    plan = Plan.load(plan_path)
    os.chdir(Path(plan.sweep_dir).parent.parent)  # where the coordinator ran (relative paths)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(plan)
    study.sampler = make_sampler(plan, worker=index)
    pm = build_plugin_manager(plan.plugins_dir)
    set_plugin_manager(pm)
    base = compose(plan.fixed, registry=pm.registry)
    space = build_space(plan.params, base)
    composer = Composer(plan, pm.registry)
    host, pid = socket.gethostname(), os.getpid()
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    while not STOPPING.is_set():
        with budget_lock(plan):
            recover_stale(study, plan.grace_seconds)
            trials = study.get_trials(deepcopy=False)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if len(counted(trials)) + len(running) >= plan.n_trials:
                return 0
            trial = study.ask()
            for key, value in (("host", host), ("pid", pid), ("heartbeat", time.time())):
                trial.set_user_attr(key, value)
        print(f"worker {index}: trial {trial.number}", flush=True)
        if not run_trial(study, plan, space, pm, trial, composer):
            return 130
    return 130


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1], int(sys.argv[2])))
    except KeyboardInterrupt:
        sys.exit(130)
