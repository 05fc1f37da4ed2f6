"""A sweep worker: ``python -m lossbench.sweep.worker PLAN.json INDEX [--trials N]``.

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
``--trials N`` ends the worker (exit code 0) after N trials, for a launcher that starts one
worker per trial or a batch job per few (``lossbench.sweep.launchers.runs_left``).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from lossbench.config import compose
from lossbench.config.source import use_config
from lossbench.errors import LossbenchError
from lossbench.plugins import build_plugin_manager, set_plugin_manager
from lossbench.process import exit_now
from lossbench.signals import StopOnSignal
from lossbench.sweep.answers import Trajectory, answer_epoch_counts, curves
from lossbench.sweep.design import EPOCHS
from lossbench.sweep.plan import EXIT_STORAGE_GONE, EXIT_WRITE_FAILED, Plan, trial_dir
from lossbench.sweep.space import build_space
from lossbench.sweep.study import (
    RECORD_INCOMPLETE,
    budget_lock,
    counted_runs,
    in_budget,
    make_sampler,
    open_study,
    recover_stale,
    retry,
    set_trial_attr,
    set_trial_attrs,
    storage_error_text,
    storage_gone,
)
from lossbench.sweep.trial import (
    BestModelsOnly,
    Composer,
    Pruning,
    objective_values,
    seeds_of,
    suggest,
    tag_child_run,
    trial_overrides,
    write_hydra_files,
)
from lossbench.tracking.mlflow_run import MlflowRun
from lossbench.training import train
from lossbench.urls import mask_text

STATUS_TO_STATE = {"finished": "COMPLETE", "stopped": "COMPLETE"}
# Ctrl-C / SIGTERM, or the coordinator's pipe closing: the first one raises, later ones only
# keep STOPPING set (lossbench.signals has the diagram); with it set, any exception means
# "interrupted", not "the trial failed".
STOP = StopOnSignal()
STOPPING = STOP.stopping


class WriteFailed(Exception):
    """A trial's files could not be written; the worker stops."""


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
    attrs = {"lossbench_lost": True, "status": status}
    if error:
        attrs["error"] = error[:2000]
    set_trial_attrs(study, trial, attrs)
    study.tell(trial, state=TrialState.FAIL)
    retry(study, trial)


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


@dataclass
class Repeat:
    """One trained run of a trial (one seed, with ``sweep.repeats``): its Run, folder,
    overrides, whether the pruner stopped it, and its trajectory (``sweep.answers``)."""

    run: object
    out: Path
    overrides: list[str]
    pruned: bool
    trajectory: Trajectory | None


def run_trial(study, plan: Plan, space, pm, trial, composer: Composer) -> bool:
    """Train one trial (each of its repeats) and tell Optuna, after answering the epoch counts
    read from its run; False when the worker should stop (interrupted)."""
    values = suggest(trial, space)
    seeds = seeds_of(plan, trial.number, values)
    # written with the first seed's output_dir (one flush to the journal)
    start = {"overrides": [mask_text(o) for o in trial_overrides(plan, values, seeds[0])],
             "seed": seeds[0]}  # fmt: skip
    repeats: list[Repeat] = []
    for r, seed in enumerate(seeds):
        done = _train_repeat(study, plan, pm, trial, (composer, values, seed, r, start))
        if not isinstance(done, Repeat):
            return done
        repeats.append(done)
        if done.pruned or done.run.status not in STATUS_TO_STATE:
            break  # a pruned or failed seed ends the configuration
    if plan.epoch_counts:
        answer_epoch_counts(study, plan, trial, repeats, (composer, values), STOPPING)
    _tell(study, plan, trial, repeats)
    return True


def _train_repeat(study, plan: Plan, pm, trial, how) -> Repeat | bool:
    """Train one seed of a trial: a Repeat, or True (the trial failed and was told so) or
    False (interrupted: the worker stops)."""
    composer, values, seed, r, start = how
    overrides = trial_overrides(plan, values, seed)
    try:
        cfg = composer(values, seed)
        out = trial_dir(plan, cfg, trial.number, overrides)
        if plan.repeats > 1:
            out = out / f"seed-{seed}"
        if r == 0:
            set_trial_attrs(study, trial, {**start, "output_dir": str(out)})
    except (LossbenchError, ValueError, KeyError) as exc:
        _fail(study, trial, str(exc), start if r == 0 else {})
        return True
    tag_child_run(cfg, plan, trial.number, STOPPING, repeat=r if plan.repeats > 1 else None)
    try:
        write_hydra_files(out, cfg, overrides, plan, trial.number)
    except OSError as exc:
        _write_failed(study, trial, out, f"its .hydra files: {exc}")
    hooks = _trial_hooks(study, plan, trial, first=r == 0)
    for hook in hooks.values():
        pm.register(hook)
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
        _fail(study, trial, f"{type(exc).__name__}: {exc}")
        return True
    finally:
        for hook in hooks.values():
            pm.unregister(hook)
    if not (out / "summary.json").is_file():  # the outputs plugin writes it last
        why = "; ".join(problems) or run.error or "unknown"  # run.error: which file, and why
        _write_failed(study, trial, out, f"its outputs: {why}")
    pruned = "pruning" in hooks and hooks["pruning"].pruned_at is not None
    return Repeat(run, out, overrides, pruned, hooks.get("trajectory"))


def _trial_hooks(study, plan: Plan, trial, first: bool) -> dict:
    """The plugins a trial's run trains with: the pruner's reports (the first seed only:
    Optuna prunes single-objective studies, and with sweep.pruner=none nothing can prune, so
    nothing is reported; each report is an fsynced journal append), which runs log a model,
    and the weights of the epoch counts answered from the run."""
    hooks = {}
    if first and len(plan.directions) == 1 and plan.pruner != "none":
        hooks["pruning"] = Pruning(trial, plan.metrics[0])
    if plan.tracking and plan.log_models == "best" and len(plan.directions) == 1:
        hooks["models"] = BestModelsOnly(study, plan)
    if plan.epoch_counts:
        hooks["trajectory"] = Trajectory(plan.epoch_counts)
    return hooks


def _fail(study, trial, error: str, attrs: dict | None = None) -> None:
    set_trial_attrs(study, trial, {**(attrs or {}), "status": "failed", "error": error[:2000]})
    study.tell(trial, state=TrialState.FAIL)


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


def _tell(study, plan: Plan, trial, repeats: list[Repeat]) -> None:
    """The trial's curves and result into the study: complete (the mean over its seeds with
    ``sweep.repeats``), pruned or failed; its attributes in one journal append, then the tell."""
    first, last = repeats[0].run, repeats[-1]
    attrs = dict(curves(first, plan))
    attrs["train_seconds"] = first.timings.get("train_seconds", 0.0)
    attrs["epochs_planned"] = int(first.config.trainer.epochs)
    if first.dataset is not None:
        attrs["val_rows"] = len(first.dataset.X_val)
    attrs.update(_incomplete_records(trial, repeats))
    status = "pruned" if last.pruned else last.run.status
    attrs["status"] = status
    if last.run.error:
        attrs["error"] = last.run.error[:2000]
    per_seed = []
    if status in STATUS_TO_STATE:
        per_seed = [objective_values(x.run, plan.metrics) for x in repeats]
        if len(per_seed) > 1:
            attrs["seeds"] = [x.run.config.seed for x in repeats]
            attrs["repeat_values"] = [v[0] for v in per_seed]
    set_trial_attrs(study, trial, attrs)
    if status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    elif status in STATUS_TO_STATE:
        try:
            study.tell(trial, [float(np.mean(col)) for col in zip(*per_seed, strict=True)])
        except (ValueError, optuna.exceptions.OptunaError) as exc:  # e.g. a NaN objective
            trial.set_user_attr("error", str(exc))
            study.tell(trial, state=TrialState.FAIL)
    else:  # diverged or failed: recorded, and the sweep goes on
        study.tell(trial, state=TrialState.FAIL)


def _incomplete_records(trial, repeats: list[Repeat]) -> dict:
    """A trial whose MLflow record is incomplete (the store went away) still counts: its run
    trained and is told as it ended; the trial notes (the attributes returned) why the record
    is incomplete and where the rest is spooled, for the coordinator's exit code and
    ``python -m lossbench replay``."""
    errors = [m for x in repeats for m in x.run.record_errors]
    if not errors:
        return {}
    why = mask_text(errors[0].split("; what it did not receive")[0])
    say(f"trial {trial.number}: {mask_text(errors[0])}")
    return {RECORD_INCOMPLETE: why if len(why) < 400 else why[:397] + "...",
            "spooled_in": [str(x.out) for x in repeats if x.run.record_errors]}  # fmt: skip


def work(plan: Plan, index: int, quiet: bool = False, trials: int | None = None) -> int:
    """The ask/tell loop until the budget is used up (or, with ``trials``, until this worker
    ran that many); returns the exit code. Every launcher runs it: a worker process of this
    machine, or a Ray task (``quiet``: errors only, since Ray sends a task's output to the
    coordinator's terminal)."""
    use_config(plan.config_path, plan.config_name)
    MlflowRun.spool_when_unreachable = True  # a store gone mid-sweep: trials train on, spooled
    study = open_study(plan)
    study.sampler = make_sampler(plan, worker=index)
    pm = build_plugin_manager(plan.plugins_dir)
    set_plugin_manager(pm)
    base = compose(plan.fixed, registry=pm.registry)
    space = build_space(plan.params, base)
    composer = Composer(plan, pm.registry)
    try:
        return _loop(study, plan, index, (space, pm, composer), (quiet, trials))
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
    except Exception as exc:
        if not storage_gone(exc):
            raise
        say(f"lossbench: error: worker {index} stopped: the study storage "
            f"{mask_text(plan.storage)} stopped answering ({storage_error_text(exc)}). Its "
            "trial is retried by the next run. Fix: start the storage again and run the same "
            "command to resume.", err=True)  # fmt: skip
        return EXIT_STORAGE_GONE
    return EXIT_WRITE_FAILED


def _loop(study, plan: Plan, index: int, parts, how) -> int:
    host, pid, waiting = socket.gethostname(), os.getpid(), False
    quiet, max_trials = how
    ran = 0
    while not STOPPING.is_set():
        if max_trials is not None and ran >= max_trials:
            return 0
        with budget_lock(plan) as locked:
            recover_stale(study, plan.grace_seconds)
            trials = study.get_trials(deepcopy=False)
            running = [t.number for t in trials if t.state == TrialState.RUNNING]
            done = len(counted_runs(trials))  # answered epoch counts are not runs: not counted
            if done >= plan.n_runs:
                return 0
            trial = None
            if done + len(running) < plan.n_runs:
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
        ran += 1
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
    without the budget lock (``check``) asked one too many. With epoch counts answered from
    trajectories, the trial trains the largest count (fixed before the sampler draws the rest),
    unless it is a lost trial's retry, which has all its values."""
    if plan.epoch_counts and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.enqueue_trial({EPOCHS: plan.epoch_counts[-1]}, skip_if_exists=False)
    trial = study.ask()
    set_trial_attrs(study, trial, {"host": host, "pid": pid, "heartbeat": time.time()})
    if not check or in_budget(study.get_trials(deepcopy=False), trial.number, plan.n_runs):
        return trial
    set_trial_attrs(study, trial, {"lossbench_lost": True, "status": "surplus"})
    study.tell(trial, state=TrialState.FAIL)
    return None


def main(plan_path: str, index: int, trials: int | None = None) -> int:
    plan = Plan.load(plan_path)
    os.chdir(plan.workdir)  # where the coordinator ran (relative paths)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    STOP.install()
    STOP.watch_pipe()
    return work(plan, index, trials=trials)


def _trials_arg(args: list[str]) -> int | None:
    """``--trials N`` (N >= 1) after PLAN.json INDEX, or None."""
    if not args:
        return None
    if len(args) != 2 or args[0] != "--trials" or not args[1].isdigit() or int(args[1]) < 1:
        raise SystemExit(f"usage: python -m lossbench.sweep.worker PLAN.json INDEX [--trials N]"
                         f" (N >= 1); got {' '.join(args)}")  # fmt: skip
    return int(args[1])


if __name__ == "__main__":
    try:
        exit_now(main(sys.argv[1], int(sys.argv[2]), _trials_arg(sys.argv[3:])))
    except KeyboardInterrupt:
        exit_now(130)
