"""A sweep worker: ``python -m lossbench.sweep.worker PLAN.json INDEX``.

An ask/tell loop on the shared study: under the budget lock, recover lost trials, count, ask;
then compose the trial's config, train it in this process (the fused epoch is loaded from
numba's cache once per worker, not per trial) with the trial attached through a pruning plugin,
and tell Optuna the result. A heartbeat thread stamps the running trial so another process can
tell when this one died. When the budget is covered only by trials still running elsewhere,
the worker waits for them (one of them may be lost and need retrying) instead of ending.

Started by the coordinator, the worker reads its stdin, a pipe the coordinator holds: when it
closes (the coordinator died, even by SIGKILL) the worker stops as on Ctrl-C, and its trial is
retried by the next invocation. A trial whose outputs cannot be written (a full disk) is failed
and retried later, and the worker stops (exit code 3): every next trial would fail the same.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import socket
import sys
import threading
import time
import warnings
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
from lossbench.sweep.files import atomic_write
from lossbench.sweep.plan import EXIT_WRITE_FAILED, Plan, parent_run_id, trial_dir
from lossbench.sweep.space import build_space, format_override
from lossbench.sweep.study import (
    budget_lock,
    counted,
    in_budget,
    make_sampler,
    open_study,
    recover_stale,
    retry,
    set_trial_attr,
    trial_seed,
)
from lossbench.tracking.plugin import default_run_name
from lossbench.training import train
from lossbench.urls import mask_text

STATUS_TO_STATE = {"finished": "COMPLETE", "stopped": "COMPLETE"}
# Set by Ctrl-C / SIGTERM. The signal can land inside a storage call and surface as another
# exception (Optuna's journal lock turns it into FileNotFoundError); with this flag set, any
# exception means "interrupted", not "the trial failed".
STOPPING = threading.Event()


class WriteFailed(Exception):
    """A trial's files could not be written; the worker stops."""


_INTERRUPTED = threading.Event()  # the first signal has been raised


def _on_signal(signum, frame):
    """Ctrl-C / SIGTERM: stop. Only the first one raises: the coordinator sends its workers a
    second SIGINT after a Ctrl-C, and raised inside the clean-up (marking the trial lost) it
    would leave the trial RUNNING."""
    STOPPING.set()
    if _INTERRUPTED.is_set():
        return
    _INTERRUPTED.set()
    raise KeyboardInterrupt


def say(text: str, err: bool = False) -> None:
    """A line to the worker's log (stdout) or stderr; a full disk under the log loses the line,
    not the worker."""
    try:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
    except OSError:
        pass


def _lose(study, trial, status: str = "interrupted", error: str | None = None) -> None:
    """Mark a trial that did not get to its end: failed, not counted, retried with the same
    parameters by the next worker that asks."""
    set_trial_attr(study, trial, "lossbench_lost", True)
    trial.set_user_attr("status", status)
    if error:
        trial.set_user_attr("error", error[:2000])
    study.tell(trial, state=TrialState.FAIL)
    retry(study, trial)


def watch_parent() -> None:
    """Stop (as on SIGTERM) when stdin, the coordinator's pipe, closes: the coordinator died."""

    def wait():
        try:
            while os.read(0, 1 << 12):  # the raw descriptor: no buffer lock at exit
                pass
        except OSError:
            pass
        STOPPING.set()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, daemon=True, name="lossbench-parent-watch").start()


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
            # tracking logs no model for it (lossbench.tracking.plugin.NO_MODEL): a model
            # costs the trial ~0.5 s in the MLflow process, and a pruned one is never the best
            run.plugin_state["tracking.no_model"] = "pruned"
            return f"pruned by Optuna after epoch {epoch} ({self.metric}={value:.6g})"
        return None


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
            best = self.study.best_value  # over the completed trials
        except (ValueError, KeyError, IndexError):  # none completed yet, or no such metric
            return
        minimize = self.plan.directions[0] == "minimize"
        if not (value <= best if minimize else value >= best):
            run.plugin_state["tracking.no_model"] = "not the best trial so far"


class Heartbeat:
    def __init__(self, study, trial, every: float):
        self.study, self.trial, self.every = study, trial, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self.stop.wait(self.every):
            try:
                set_trial_attr(self.study, self.trial, "heartbeat", time.time())
            except Exception as exc:  # a full disk, a lost connection: beat again later
                say(f"heartbeat of trial {self.trial.number} not recorded: {exc}")

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
    """The trial's ``.hydra/`` files, as Hydra writes a job's (private if they hold a URL's
    password)."""
    hydra_dir = out / ".hydra"
    atomic_write(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))


def run_trial(study, plan: Plan, space, pm, trial, composer: Composer) -> bool:
    """Train one trial and tell Optuna; False when the worker should stop (interrupted)."""
    values = suggest(trial, space)
    seed = trial_seed(plan.seed, trial.number)
    overrides = [*plan.fixed, *(format_override(k, v) for k, v in values.items()), f"seed={seed}"]
    trial.set_user_attr("overrides", [mask_text(o) for o in overrides])
    trial.set_user_attr("seed", seed)
    try:
        cfg = composer(values, seed)
        out = trial_dir(plan, cfg, trial.number, overrides)
        trial.set_user_attr("output_dir", str(out))
    except (LossbenchError, ValueError, KeyError) as exc:
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("error", str(exc))
        study.tell(trial, state=TrialState.FAIL)
        return True
    _tag_child_run(cfg, plan, trial)
    try:
        write_hydra_files(out, cfg, overrides)
    except OSError as exc:
        _write_failed(study, trial, out, f"its .hydra files: {exc}")
    # Optuna prunes single-objective studies only (trial.report refuses several objectives),
    # and with sweep.pruner=none nothing can prune: no per-epoch report (each one an fsynced
    # append to a journal file, 30 of them were most of a short trial's overhead)
    pruning = None
    if len(plan.directions) == 1 and plan.pruner != "none":
        pruning = Pruning(trial, plan.metrics[0])
    if pruning is not None:
        pm.register(pruning)
    models = None
    if plan.tracking and plan.log_models == "best" and len(plan.directions) == 1:
        models = BestModelsOnly(study, plan)
        pm.register(models)
    try:
        with Heartbeat(study, trial, plan.heartbeat_seconds):
            run, problems = _train(cfg, out, pm)
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
        for hook in (pruning, models):
            if hook is not None:
                pm.unregister(hook)
    if not (out / "summary.json").is_file():  # the outputs plugin writes it last
        why = "; ".join(problems) or run.error or "unknown"  # run.error: which file, and why
        _write_failed(study, trial, out, f"its outputs: {why}")
    _tell(study, plan, trial, run, pruned=pruning is not None and pruning.pruned_at is not None)
    return True


def _train(cfg, out: Path, pm):
    """``train``, and the problems on_run_end hooks met (they warn, the run goes on)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train(cfg, output_dir=out, plugin_manager=pm)
    problems = []
    for w in caught:
        if "on_run_end" in str(w.message):
            problems.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return run, problems


def _write_failed(study, trial, out: Path, what: str) -> None:
    """The trial's files could not be written: remove what it left (which also frees the
    space a full disk needs to record this), fail it for a retry, stop the worker."""
    shutil.rmtree(out, ignore_errors=True)
    reason = f"trial {trial.number} could not write {what}"
    _lose(study, trial, status="failed", error=reason)
    raise WriteFailed(reason)


def _tag_child_run(cfg, plan: Plan, trial) -> None:
    """Tags tying the trial's MLflow run to its study, its number and the parent run."""
    with open_dict(cfg):
        tags = cfg.tracking.get("tags")
        if tags is not None:
            tags["lossbench.study"] = plan.study_name
            tags["lossbench.trial"] = str(trial.number)
            tags["lossbench.role"] = "trial"
            parent = parent_run_id(plan, STOPPING)  # waits while the coordinator opens it
            if parent:
                tags["mlflow.parentRunId"] = parent
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


def work(plan: Plan, index: int, quiet: bool = False) -> int:
    """The ask/tell loop until the budget is used up; returns the exit code. Both launchers run
    it: a worker process of this machine, or a Ray task (``quiet``: errors only, since Ray
    sends a task's output to the coordinator's terminal)."""
    study = open_study(plan)
    study.sampler = make_sampler(plan, worker=index)
    pm = build_plugin_manager(plan.plugins_dir)
    set_plugin_manager(pm)
    base = compose(plan.fixed, registry=pm.registry)
    space = build_space(plan.params, base)
    composer = Composer(plan, pm.registry)
    try:
        return _loop(study, plan, index, (space, pm, composer), quiet)
    except WriteFailed as exc:
        say(f"lossbench: error: worker {index} stopped: {exc}. The trial is marked failed and "
            "will be retried. Fix: free space (or make the folder writable) and run the same "
            "command again to resume.", err=True)  # fmt: skip
    except OSError as exc:
        say(
            f"lossbench: error: worker {index} stopped: the study storage could not be written "
            f"({exc}). Its trial is retried by the next run. Fix: free space (or make the "
            "storage writable) and run the same command again to resume.",
            err=True,
        )
    return EXIT_WRITE_FAILED


def _loop(study, plan: Plan, index: int, parts, quiet: bool) -> int:
    host, pid, waiting = socket.gethostname(), os.getpid(), False
    while not STOPPING.is_set():
        with budget_lock(plan) as locked:
            recover_stale(study, plan.grace_seconds)
            trials = study.get_trials(deepcopy=False)
            running = [t.number for t in trials if t.state == TrialState.RUNNING]
            done = len(counted(trials))
            if done >= plan.n_trials:
                return 0
            trial = None
            if done + len(running) < plan.n_trials:
                trial = _ask(study, plan, host, pid, check=not locked)
        if trial is None:  # the rest of the budget runs elsewhere; one of those may be lost
            if not waiting:
                say(f"worker {index}: waiting for trial(s) {running} still running elsewhere")
            waiting = True
            STOPPING.wait(min(plan.heartbeat_seconds, 1.0))
            continue
        waiting = False
        if not quiet:
            say(f"worker {index}: trial {trial.number}")
        space, pm, composer = parts
        try:
            if not run_trial(study, plan, space, pm, trial, composer):
                return 130
        except KeyboardInterrupt:  # between asking and training (a Ray cancel lands anywhere)
            if study.get_trials(deepcopy=False)[trial.number].state == TrialState.RUNNING:
                _lose(study, trial)
            raise
    return 130


def _ask(study, plan: Plan, host: str, pid: int, check: bool):
    """A new trial, stamped with its worker; None (and the trial given back) when a worker
    without the budget lock (``check``) asked one too many."""
    trial = study.ask()
    for key, value in (("host", host), ("pid", pid), ("heartbeat", time.time())):
        trial.set_user_attr(key, value)
    if not check or in_budget(study.get_trials(deepcopy=False), trial.number, plan.n_trials):
        return trial
    set_trial_attr(study, trial, "lossbench_lost", True)
    trial.set_user_attr("status", "surplus")
    study.tell(trial, state=TrialState.FAIL)
    return None


def main(plan_path: str, index: int) -> int:
    plan = Plan.load(plan_path)
    os.chdir(plan.workdir)  # where the coordinator ran (relative paths)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    watch_parent()
    return work(plan, index)


def _exit(code: int) -> None:
    """Exit without the interpreter's teardown (numba's and MLflow's modules took a large
    part of a second after the last trial, which the coordinator waits for): every trial
    is told and every file written by now; closing stdin ends the MLflow side process."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    try:
        _exit(main(sys.argv[1], int(sys.argv[2])))
    except KeyboardInterrupt:
        _exit(130)
