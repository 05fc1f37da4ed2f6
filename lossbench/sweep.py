"""Optuna sweeps: ``python -m lossbench --multirun [sweep=PRESET] [SEARCH SPACE] [OVERRIDES]``.

The command (the coordinator) checks everything before any trial runs, opens or creates the
study, opens the MLflow parent run, starts ``sweep.n_jobs`` worker processes
(``lossbench.sweep_worker``) and shows progress until they end; then it writes
``optimization_results.yaml``, prints a table and logs the summary figures to the parent run.

Each worker runs its own ask/tell loop on the shared storage; no worker waits for another. More
machines: the same command with the same ``sweep.storage`` URL and ``sweep.study_name``. The same
command again resumes the study. ``sweep.n_trials`` is the total for the study: ended trials
(complete, pruned, failed) count; asking happens under a lock (a file lock next to a journal or
sqlite store, a PostgreSQL advisory lock for PostgreSQL), so K workers never overshoot.
A trial whose worker died is noticed by its heartbeat (or, on the same machine, its dead
process), marked failed, and retried with the same parameters: it does not count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lossbench.errors import ConfigError

HISTORY_METRICS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
SUMMARY_METRICS = ("best_val_loss", "train_seconds", "total_seconds")


@dataclass
class Plan:
    """Everything a worker needs, as JSON."""

    study_name: str
    storage: str
    sweep_dir: str
    fixed: list[str]
    params: dict[str, str]
    metrics: list[str]
    directions: list[str]
    n_trials: int
    seed: int
    sampler: str
    pruner: str
    pruner_warmup_epochs: int
    heartbeat_seconds: float
    grace_seconds: float
    tracking: bool
    parent_run_id: str | None = None
    plugins_dir: str | None = None
    grid: dict[str, list] = field(default_factory=dict)

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, path: str) -> Plan:
        return cls(**json.loads(Path(path).read_text()))


# ---------------------------------------------------------------------------------------------
# storage, sampler, pruner


def storage_url(setting: str | None, sweep_dir: Path) -> str:
    return setting or f"journal:{sweep_dir / 'journal.log'}"


def open_storage(url: str):
    """An Optuna storage: ``journal:PATH`` (the default) or any URL Optuna accepts."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url.startswith("journal:"):
        path = Path(url[len("journal:") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def make_sampler(plan: Plan, worker: int = 0):
    import optuna

    seed = plan.seed + 1000 * worker  # workers must not draw the same points
    name = plan.sampler
    if name == "grid":
        return optuna.samplers.GridSampler(plan.grid, seed=plan.seed)
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
    import optuna

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
        import fcntl

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
        import sqlalchemy

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
    from optuna.trial import TrialState

    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in trials if t.state in ended and not t.user_attrs.get("lossbench_lost")]


def recover_stale(study, grace_seconds: float) -> list[int]:
    """Fail RUNNING trials whose worker is gone, and enqueue each again; returns their numbers."""
    from optuna.trial import TrialState

    host, now, lost = socket.gethostname(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp())
        dead = t.user_attrs.get("host") == host and not _pid_alive(t.user_attrs.get("pid", -1))
        if not dead and now - beat < grace_seconds:
            continue
        study._storage.set_trial_user_attr(t._trial_id, "lossbench_lost", True)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        lost.append(t.number)
    return lost


def trial_seed(sweep_seed: int, number: int) -> int:
    """A trial's seed, from the sweep seed and the trial number (logged with the trial)."""
    import numpy as np

    return int(np.random.SeedSequence([sweep_seed, number]).generate_state(1)[0] % (2**31))


# ---------------------------------------------------------------------------------------------
# the coordinator


def _sweep_args(argv: list[str]) -> list[str]:
    """Command-line overrides, with ``hydra.sweeper.X=`` read as ``sweep.X=``."""
    out = []
    for arg in argv:
        if arg in ("-m", "--multirun"):
            continue
        if arg.startswith("-"):
            raise ConfigError(f"{arg} is not supported with --multirun.")
        if arg.startswith("hydra.sweeper."):
            arg = "sweep." + arg[len("hydra.sweeper.") :]
        out.append(arg)
    return out


def _list(value) -> list:
    from omegaconf import ListConfig

    return list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]


def make_plan(argv: list[str], registry, plugins_dir: str | None = None):
    """Check the command and build the Plan (and the base config) before any trial runs."""
    from lossbench import config as config_mod
    from lossbench.sweep_space import build_space, split_overrides

    fixed, cli_space = split_overrides(_sweep_args(argv))
    base = config_mod.compose(fixed, registry=registry)
    sw = base.sweep
    preset_fixed = list(sw.overrides)
    if preset_fixed:
        base = config_mod.compose([*preset_fixed, *fixed], registry=registry)
    expressions = {**dict(sw.params), **cli_space}
    if not expressions:
        raise ConfigError(
            "--multirun needs a search space: a preset (sweep=lr, sweep=lr_epochs, "
            "sweep=loss_vs_optimizer) or overrides such as "
            "'optimizer.lr=tag(log, interval(1e-4, 1))' or loss=mse,cross_entropy."
        )
    space = build_space(expressions, base)
    from omegaconf import OmegaConf

    missing = object()
    for key in space:
        if key in config_mod.GROUPS:  # group choices must name real components
            for choice in space[key].discrete_values or []:
                registry.get(key, str(choice))
        elif OmegaConf.select(base, key, default=missing) is missing and not any(
            key.startswith(g + ".") for g in space if g in config_mod.GROUPS
        ):
            raise ConfigError(
                f"the search space names {key!r}, which is not a config key. Fix: use a key "
                "that `python -m lossbench --cfg job` shows, e.g. optimizer.lr."
            )
    if sw.sampler not in config_mod.SAMPLERS:
        raise ConfigError(
            f"sweep.sampler={sw.sampler!r} is not known. Choices: "
            f"{', '.join(config_mod.SAMPLERS)}. Fix: pass e.g. sweep.sampler=tpe."
        )
    if sw.pruner not in config_mod.PRUNERS:
        raise ConfigError(
            f"sweep.pruner={sw.pruner!r} is not known. Choices: {', '.join(config_mod.PRUNERS)}."
            " Fix: pass e.g. sweep.pruner=median."
        )
    grid = {}
    if sw.sampler == "grid":
        for key, p in space.items():
            if p.discrete_values is None:
                raise ConfigError(
                    f"sweep.sampler=grid needs discrete values, but {key}={p.expression} is a "
                    "continuous range. Fix: use choice(...) or range(start, stop, step=k), or "
                    "another sampler (tpe, random, ...)."
                )
            grid[key] = p.discrete_values
    directions = [str(d) for d in _list(sw.direction)]
    metrics = [str(m) for m in _list(sw.metric)]
    bad = [d for d in directions if d not in ("minimize", "maximize")]
    if bad or len(directions) != len(metrics):
        raise ConfigError(
            f"sweep.direction={directions} must be minimize or maximize, one per metric "
            f"(sweep.metric={metrics}). Fix: e.g. sweep.metric=[val_loss,train_seconds] "
            "sweep.direction=[minimize,minimize]."
        )
    _check_metrics(metrics, base, registry)
    for key, minimum in (("n_trials", 1), ("n_jobs", 1)):
        if int(sw[key]) < minimum:
            raise ConfigError(f"sweep.{key}={sw[key]} must be >= {minimum}.")
    n_trials = int(sw.n_trials)
    if grid:
        import math

        n_trials = min(n_trials, math.prod(len(v) for v in grid.values()))
    study_name = sw.study_name or _default_study_name(sw.name, expressions, fixed, preset_fixed)
    sweep_dir = Path("multirun") / study_name
    plan = Plan(
        study_name=study_name,
        storage=storage_url(sw.storage, sweep_dir.resolve()),
        sweep_dir=str(sweep_dir.resolve()),
        # sweep.* settings shape the study, not a trial: they stay out of trial overrides
        fixed=_trial_fixed([*preset_fixed, *fixed]),
        params=expressions,
        metrics=metrics,
        directions=directions,
        n_trials=n_trials,
        seed=int(sw.seed),
        sampler=str(sw.sampler),
        pruner=str(sw.pruner),
        pruner_warmup_epochs=int(sw.pruner_warmup_epochs),
        heartbeat_seconds=float(sw.heartbeat_seconds),
        grace_seconds=float(sw.grace_seconds),
        tracking=base.tracking.name == "mlflow",
        plugins_dir=plugins_dir,
        grid=grid,
    )
    return plan, base, space


def _trial_fixed(overrides: list[str]) -> list[str]:
    """The overrides every trial gets: sweep.* settings shape the study, not a trial, and
    trials skip the per-run plots (the parent run draws every trial's curves) unless asked."""
    fixed = [o for o in overrides if not o.lstrip("+~").startswith("sweep")]
    if not any(o.startswith("trainer.plots=") for o in fixed):
        fixed.append("trainer.plots=false")
    return fixed


def _check_metrics(metrics, base, registry) -> None:
    from lossbench.config import hparams

    spec = registry.get("data", base.data.name)
    task = spec.load(hparams(spec, base.data), 0).task  # which metrics exist depends on it
    available = [*HISTORY_METRICS, *SUMMARY_METRICS]
    if task != "classification":
        available = [m for m in available if "accuracy" not in m]
    for m in metrics:
        if m not in available:
            raise ConfigError(
                f"sweep.metric={m!r} is not a metric these runs produce. Available: "
                f"{', '.join(available)}. Fix: pass e.g. sweep.metric=val_loss."
            )


def _default_study_name(preset, expressions, fixed, preset_fixed) -> str:
    text = json.dumps([preset, sorted(expressions.items()), sorted(fixed)], sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{preset}-{digest}" if preset != "none" else f"sweep-{digest}"


def open_study(plan: Plan):
    """Create or load the study; errors for an unreachable storage or other directions."""
    import optuna

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


def run_sweep(argv: list[str], plugins_dir: str | None = None) -> int:
    """The coordinator; returns the exit code."""
    from lossbench.plugins import get_plugin_manager

    registry = get_plugin_manager().registry
    plan, base, space = make_plan(argv, registry, plugins_dir)
    sweep_dir = Path(plan.sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(plan)
    lost = recover_stale(study, plan.grace_seconds)
    parent = None
    if plan.tracking:
        from lossbench.sweep_report import ParentRun

        parent = ParentRun.open(plan, base, study)
        plan.parent_run_id = parent.run_id
    plan_path = sweep_dir / "plan.json"
    plan.dump(plan_path)
    print(
        f"sweep {plan.study_name}: {len(space)} parameter(s), {plan.n_trials} trials, "
        f"{plan.sampler} sampler, {plan.pruner} pruner, storage {plan.storage}, "
        f"outputs {sweep_dir}" + (f"; retrying lost trials {lost}" if lost else "")
    )
    n_jobs = int(base.sweep.n_jobs)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lossbench.sweep_worker", str(plan_path), str(i)],
            stdout=open(sweep_dir / f"worker-{i}.log", "a"),
            stderr=subprocess.STDOUT,
        )
        for i in range(n_jobs)
    ]
    from lossbench.sweep_report import Progress, finish

    status = "finished"
    try:
        with Progress(study, plan) as progress:
            while any(p.poll() is None for p in procs):
                progress.update()
                time.sleep(0.5)
            progress.update()
    except KeyboardInterrupt:
        status = "interrupted"
        for p in procs:  # they got the SIGINT too; make sure they stop
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
    crashed = [i for i, p in enumerate(procs) if p.returncode not in (0, None, 130, -2)]
    if crashed and status == "finished":
        status = "failed"
    return finish(study, plan, parent, status, crashed)
