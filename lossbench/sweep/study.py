"""The Optuna side of a sweep: storage, sampler, pruner, the study, the budget lock that keeps
K workers from overshooting ``n_trials``, and lost-trial recovery. Every Optuna internal lossbench
needs is reached in ``set_trial_attr`` and nowhere else."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import time
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from lossbench.errors import ConfigError
from lossbench.sweep.plan import Plan


def set_trial_attr(study, trial, key: str, value) -> None:
    """Set a user attribute on any trial of ``study``, also one this process did not ask for
    (a lost trial, a heartbeat from another thread). Optuna has no public call for that; this is
    the one place lossbench reaches into Optuna's private ``study._storage``/``trial._trial_id``."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def storage_url(setting: str | None, sweep_dir: Path) -> str:
    return setting or f"journal:{sweep_dir / 'journal.log'}"


def open_storage(url: str):
    """An Optuna storage: ``journal:PATH`` (the default) or any URL Optuna accepts."""
    if url.startswith("journal:"):
        path = Path(url[len("journal:") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` once the grid is used up: stopping
    works only inside ``study.optimize``, and lossbench's workers ask and tell (a RuntimeError
    after the last trial); the budget ends them instead (n_trials is capped at the grid's
    size)."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def make_sampler(plan: Plan, worker: int = 0):
    seed = plan.seed + 1000 * worker  # workers must not draw the same points
    name = plan.sampler
    if name == "grid":
        return _GridSampler(plan.grid, seed=plan.seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=plan.seed)  # one sequence shared by workers
    multi = len(plan.directions) > 1
    return (
        optuna.samplers.TPESampler(seed=seed)
        if not multi
        else optuna.samplers.NSGAIISampler(seed=seed)
    )


def make_pruner(plan: Plan):
    p, warm = plan.pruner, plan.pruner_warmup_epochs
    if p == "none" or len(plan.directions) > 1:
        return optuna.pruners.NopPruner()
    if p == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warm)
    if p == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=2, n_warmup_steps=warm)
    if p == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(warm, 1))
    if p == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(warm, 1))
    if p == "patient":
        return optuna.pruners.PatientPruner(None, patience=max(warm, 1))
    raise AssertionError(p)


@contextlib.contextmanager
def budget_lock(plan: Plan):
    """Serialise 'count the trials, then ask' across the workers of one study."""
    if plan.storage.startswith("journal:") or plan.storage.startswith("sqlite"):
        lock_path = Path(plan.sweep_dir) / ".budget.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    if plan.storage.split("+")[0].split(":")[0] in ("postgresql", "postgres"):
        key = int(hashlib.sha256(plan.study_name.encode()).hexdigest()[:15], 16)
        engine = sqlalchemy.create_engine(plan.storage, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        engine.dispose()
        return
    yield  # other databases: no cross-machine lock (K workers may overshoot by K - 1)


# ---------------------------------------------------------------------------------------------
# counting and recovering trials


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def counted(trials) -> list:
    """Trials that used up the budget: ended, except the lost ones that were retried."""
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in trials if t.state in ended and not t.user_attrs.get("lossbench_lost")]


def recover_stale(study, grace_seconds: float) -> list[int]:
    """Fail RUNNING trials whose worker is gone, and enqueue each again; returns their numbers."""
    host, now, lost = socket.gethostname(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp())
        dead = t.user_attrs.get("host") == host and not _pid_alive(t.user_attrs.get("pid", -1))
        if not dead and now - beat < grace_seconds:
            continue
        set_trial_attr(study, t, "lossbench_lost", True)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        lost.append(t.number)
    return lost


def trial_seed(sweep_seed: int, number: int) -> int:
    """A trial's seed, from the sweep seed and the trial number (logged with the trial)."""
    return int(np.random.SeedSequence([sweep_seed, number]).generate_state(1)[0] % (2**31))


def open_study(plan: Plan):
    """Create or load the study; errors for an unreachable storage or other directions."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = open_storage(plan.storage)
        study = optuna.create_study(
            storage=storage,
            study_name=plan.study_name,
            directions=plan.directions,
            sampler=make_sampler(plan),
            pruner=make_pruner(plan),
            load_if_exists=True,
        )
    except Exception as exc:
        raise ConfigError(
            f"the Optuna storage {plan.storage} cannot be used: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]}. Fix: check sweep.storage (a reachable database "
            "URL), or leave it unset for a journal file in the sweep directory."
        ) from None
    have = [d.name.lower() for d in study.directions]
    if have != plan.directions:
        raise ConfigError(
            f"the study {plan.study_name!r} in {plan.storage} exists with direction(s) {have}, "
            f"not {plan.directions}. Fix: pass the same sweep.direction, or a new "
            "sweep.study_name."
        )
    return study
