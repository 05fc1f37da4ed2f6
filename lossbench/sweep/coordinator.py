"""Optuna sweeps: ``python -m lossbench --multirun [sweep=PRESET] [SEARCH SPACE] [OVERRIDES]``.

The command (the coordinator) checks everything before any trial runs, opens or creates the
study, opens the parent run (its tracker's with parents: MLflow's), starts ``sweep.n_jobs``
worker processes (``lossbench.sweep.worker``) and shows progress until they end; then it writes
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
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from optuna.trial import TrialState

from lossbench.config import GROUPS, compose, compose_multirun
from lossbench.config.source import flag_args, is_searchpath, use_config, with_searchpath
from lossbench.errors import ConfigError, positive_int, require
from lossbench.files import atomic_write
from lossbench.launcher import EXIT_LOST
from lossbench.plugins import get_plugin_manager
from lossbench.sweep import design, habits
from lossbench.sweep.launchers import SummaryBusy, summary_lock
from lossbench.sweep.plan import EXIT_WRITE_FAILED, PARENT_FILE, Plan, trial_dir
from lossbench.sweep.records import end_running_trials, settle_study
from lossbench.sweep.report import Progress, finish, sweep_parent
from lossbench.sweep.space import build_space, dedupe_overrides, split_overrides
from lossbench.sweep.study import (
    RECORD_INCOMPLETE,
    budget_lock,
    check_question,
    open_study,
    recover_stale,
    repair_journal,
    storage_error_text,
    storage_gone,
    storage_url,
)
from lossbench.tracking.models import check_model_name
from lossbench.urls import mask_text, mask_url

STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")



def make_plan(argv: list[str], registry, plugins_dir: str | None = None):
    """Check the command and build the Plan (and the base config) before any trial runs; the
    Plan's ``multirun`` attribute holds the config Hydra would save as multirun.yaml, its
    ``notes`` what was decided to keep the comparison fair (``lossbench.sweep.design``)."""
    notes: list[str] = []
    args, flags = habits.read_flags(argv)
    args = with_searchpath(habits.translate(args, notes, registry.launchers), flags)
    use_config(flags["config_path"], flags["config_name"])
    hydra_args = [a for a in args if a.lstrip("+").startswith("hydra.") and not is_searchpath(a)]
    fixed, cli_space = split_overrides([a for a in args if a not in hydra_args])
    given = {a.partition("=")[0].lstrip("+~") for a in args}
    base = compose(fixed, registry=registry)
    implied = habits.implied_grid(cli_space, dict(base.sweep.params), given, notes)
    if implied:  # comma lists only: Hydra's basic sweep, a grid of each combination once
        fixed = [*fixed, *implied]
        base = compose(fixed, registry=registry)
    sw = base.sweep
    preset_fixed = list(sw.overrides)
    if preset_fixed:
        base = compose([*preset_fixed, *fixed], registry=registry)
    expressions = {**dict(sw.params), **cli_space}
    if not expressions:
        raise ConfigError(
            "--multirun needs a search space: a preset (sweep=lr, sweep=lr_epochs, "
            "sweep=loss_vs_optimizer) or overrides such as "
            "'optimizer.lr=tag(log, interval(1e-4, 1))' or loss=mse,cross_entropy."
        )
    launcher = _launcher(sw, registry)  # a name no plugin registers: refused before the data
    data = design.load_data(base, registry)
    expressions = design.fitting_losses(expressions, dict(sw.params), data, registry, notes)
    space = build_space(expressions, base)
    _check_keys(space, base, registry)
    chosen = "sweep.metric" in given or sw.name != "none"  # by the command or a preset
    plan = _new_plan(sw, base, space, expressions, (data.task, chosen), notes)
    plan.launcher, plan.launcher_options = launcher
    plan.config_path, plan.config_name = flags["config_path"], flags["config_name"]
    plan.rerun_flags = flag_args(flags)
    plan.fixed = _trial_fixed([*preset_fixed, *fixed])  # sweep.*, hydra.* shape the study
    plan.study_name = sw.study_name or _default_study_name(
        sw.name, expressions, fixed, preset_fixed)  # fmt: skip
    _check_study_name(plan.study_name)
    # a tracker with parent runs (MLflow's, the one so far: ParentRun) records the study; every
    # tracker records the trials (tag_child_run tells each which trial it records)
    parents = [name for name, cls, _ in registry.trackers_of(base.get("tracking")) if cls.parent]
    plan.tracking, plan.parent_tracker = bool(parents), (parents or [None])[0]
    plan.plugins_dir = plugins_dir
    plan.register_best = _register_best(sw, plan)
    _layout(plan, args, hydra_args, base, registry)
    plan.storage = storage_url(sw.storage, Path(plan.sweep_dir))
    plan.storage_url()  # the password's environment variable is set
    return plan, base, space


def _new_plan(sw, base, space, expressions: dict, metric_of, notes: list[str]) -> Plan:
    """The Plan's settings of the study (the comparison, the budget, the pruner, the seeds,
    the workers); names and places follow in ``make_plan``. ``metric_of`` is (the data's task,
    whether the command or a preset chose the metric)."""
    schedule = get_plugin_manager().registry.get("schedule", base.schedule.name)
    counts = design.epoch_counts(space, base, notes, schedule)
    grid = _grid({k: v for k, v in space.items() if k != design.EPOCHS or not counts}) if (
        sw.sampler == "grid") else {}  # fmt: skip
    task, chosen = metric_of
    metrics, directions = design.objectives(sw, task, notes, design.category_keys(space), chosen)
    if sw.n_jobs is not None:
        positive_int(sw.n_jobs, "sweep.n_jobs", 2)
    n_trials, n_runs = design.budget(sw, counts, grid)
    return Plan(
        study_name="", storage="", sweep_dir="", fixed=[], tracking=False,
        params=expressions, metrics=metrics, directions=directions, n_trials=n_trials,
        n_runs=n_runs, epoch_counts=counts, seed=int(sw.seed), sampler=str(sw.sampler),
        pruner=str(sw.pruner), **design.pruner_settings(sw, space, base, counts, notes),
        **design.seeds(sw, base, notes), heartbeat_seconds=float(sw.heartbeat_seconds),
        grace_seconds=float(sw.grace_seconds), grid=grid,
        summary_wait_seconds=_wait_seconds(sw.summary_wait_seconds),
        storage_password_env=sw.storage_password_env, n_jobs=sw.n_jobs,
        log_models=str(sw.log_models),
        notes=notes, categories=design.category_keys(space), subject=design.subject(base, space),
    )  # fmt: skip


def _launcher(sw, registry) -> tuple[str, dict]:
    """``sweep.launcher``, a registered launcher's name, and its options (``sweep.NAME``)."""
    spec = registry.launcher(str(sw.launcher))
    if spec.options is None:
        return spec.name, {}
    return spec.name, OmegaConf.to_container(sw[spec.name], enum_to_str=True)  # JSON, plan.json


def _wait_seconds(value) -> float:
    """``sweep.summary_wait_seconds``: a finite number of seconds, 0 or more."""
    require(math.isfinite(value) and value >= 0, "sweep.summary_wait_seconds", value,
            "it must be a number of seconds, 0 or more", 60)  # fmt: skip
    return float(value)


def _register_best(sw, plan: Plan) -> str | None:
    """``sweep.register_best``, checked: a model name, a tracked single-objective sweep."""
    name = check_model_name("sweep.register_best", sw.get("register_best"))
    if name is not None and not plan.tracking:
        raise ConfigError(
            f"sweep.register_best={name!r} registers the best trial's MLflow model, but this "
            "sweep has tracking=none. Fix: drop tracking=none, or drop sweep.register_best."
        )
    if name is not None and len(plan.metrics) > 1:
        raise ConfigError(
            f"sweep.register_best={name!r} needs one best trial, but this study has "
            f"{len(plan.metrics)} objectives ({', '.join(plan.metrics)}) and a Pareto front. "
            "Fix: sweep on one sweep.metric, or register a trial's run with "
            "tracking.register_model."
        )
    return name


def _layout(plan: Plan, args: list[str], hydra_args: list[str], base, registry) -> None:
    """Where the sweep writes: ``hydra.sweep.dir`` (default ``multirun/STUDY``) and, per trial,
    ``hydra.sweep.subdir`` (default the trial number), as Hydra's sweepers do; and the config
    Hydra saves as multirun.yaml."""
    multirun = compose_multirun(args, registry)
    with open_dict(multirun):
        multirun.sweep.study_name = plan.study_name
        multirun.hydra.mode = "MULTIRUN"
    try:
        sweep_dir = Path(str(multirun.hydra.sweep.dir))
    except OmegaConfBaseException as exc:
        raise ConfigError(
            f"hydra.sweep.dir cannot be resolved: {exc}. Fix: use a path, ${{now:...}} or "
            "${sweep.study_name} in it."
        ) from None
    plan.workdir = str(Path.cwd())
    plan.sweep_dir = str(sweep_dir.resolve())
    plan.subdir = OmegaConf.to_container(multirun.hydra.sweep, resolve=False)["subdir"]
    plan.hydra_overrides = hydra_args
    trial_dir(plan, base, 0, plan.fixed)  # the subdir resolves, and stays in the sweep dir
    plan.multirun = multirun
    plan.hydra = OmegaConf.to_container(multirun.hydra, resolve=False, enum_to_str=True)


def _check_study_name(name: str) -> None:
    if not STUDY_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"sweep.study_name={name!r} is not allowed: it names the study and its folder "
            "multirun/NAME, so it must be letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (no '/', no '..'). Fix: pass e.g. sweep.study_name=lr_study."
        )


def _check_keys(space, base, registry) -> None:
    """Group choices name real components; other keys exist in the config."""
    missing = object()
    for key in space:
        if key in GROUPS:
            for choice in space[key].discrete_values or []:
                registry.get(key, str(choice))
        elif OmegaConf.select(base, key, default=missing) is missing and not any(
            key.startswith(g + ".") for g in space if g in GROUPS
        ):
            raise ConfigError(
                f"the search space names {key!r}, which is not a config key. Fix: use a key "
                "that `python -m lossbench --cfg job` shows, e.g. optimizer.lr."
            )


def _grid(space) -> dict[str, list]:
    """Every value of every parameter, for the grid sampler."""
    grid = {}
    for key, p in space.items():
        if p.discrete_values is None:
            raise ConfigError(
                f"sweep.sampler=grid needs discrete values, but {key}={p.expression} is a "
                "continuous range. Fix: use choice(...) or range(start, stop, step=k), or "
                "another sampler (tpe, random, ...)."
            )
        grid[key] = p.discrete_values
    return grid


def _trial_fixed(overrides: list[str]) -> list[str]:
    """The overrides every trial gets, each key once (its last value, as Hydra applies them):
    sweep.* settings shape the study, not a trial, and trials skip the per-run plots (the
    parent run draws every trial's curves) unless asked."""
    fixed = [o for o in dedupe_overrides(overrides) if not o.lstrip("+~").startswith("sweep")]
    if not any(o.startswith("trainer.plots=") for o in fixed):
        fixed.append("trainer.plots=false")
    return fixed


def _default_study_name(preset, expressions, fixed, preset_fixed) -> str:
    text = json.dumps([preset, sorted(expressions.items()), sorted(fixed)], sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{preset}-{digest}" if preset != "none" else f"sweep-{digest}"


def run_sweep(argv: list[str], plugins_dir: str | None = None) -> int:
    """The coordinator; returns the exit code."""
    plan, base, space = make_plan(argv, get_plugin_manager().registry, plugins_dir)
    if plan.tracking:  # e.g. MLflow: a store gone mid-sweep costs this process bounded time
        kind, options = _parent_kind(plan, base)
        kind.prepare(options)
    launcher = make_launcher(plan, base, get_plugin_manager().registry)
    try:
        launcher.prepare()  # connect to the cluster and check it: errors before any trial
        repaired = repair_journal(plan.storage_url())
        if repaired:
            print(f"lossbench: {repaired}; resuming", file=sys.stderr)
        study = open_study(plan)
        check_question(study, plan)
        resumed = bool(study.get_trials(deepcopy=False))
        ok, parent = _start(study, plan, base, space, defer=launcher.shares_sweep_dir)
        if not ok:
            return 1
        launcher.start()
        if plan.parent_pending:  # MLflow imports here while the workers start
            parent = _open_parent(study, plan, base, launcher)
            if parent is None:
                return 1
        launcher.watch(lambda why: _cluster_gone(why, parent, plan))
        if resumed:  # runs an earlier invocation's processes left RUNNING, ended now
            _settle(parent, study, plan)
        status = _watch(study, plan, launcher)
        if status == STORAGE_GONE:
            return _storage_gone(plan, parent, launcher)
        crashed = _crashed(study, plan, launcher.codes())
        if any(t.user_attrs.get("lossbench_lost") or t.user_attrs.get(RECORD_INCOMPLETE)
               for t in study.get_trials(deepcopy=False)):  # fmt: skip
            _settle(parent, study, plan)  # lost attempts marked, spools replayed if it is back
        return finish(study, plan, parent, status, crashed, launcher.worker_logs)
    finally:
        launcher.close()


def _start(study, plan: Plan, base, space, defer: bool):
    """The sweep folder, multirun.yaml, the parent run (``defer``: only its tracker's store
    checked, the run is opened once the workers are starting), plan.json; returns (False,
    None) when a write failed (and says why), else (True, the parent run or None)."""
    sweep_dir = Path(plan.sweep_dir)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(sweep_dir / "multirun.yaml", mask_text(OmegaConf.to_yaml(plan.multirun)))
        lost = recover_stale(study, plan.grace_seconds)
        (sweep_dir / PARENT_FILE).unlink(missing_ok=True)  # an earlier invocation's
        parent = None
        with _after_summary(sweep_dir, plan.summary_wait_seconds):
            if plan.tracking and defer:
                kind, options = _parent_kind(plan, base)
                kind.check(options)  # a store that cannot be written: exit 2
                plan.parent_pending = True
            elif plan.tracking:
                parent = _open(plan, base, study)
        plan.parent_run_id = parent.run_id if parent else None
        plan.dump(sweep_dir / "plan.json")
    except OSError as exc:
        print(
            f"lossbench: error: the sweep could not start: {exc}. Fix: free space (or make "
            f"{sweep_dir} writable) and run the same command again.",
            file=sys.stderr,
        )
        return False, None
    runs = f" from {plan.n_runs} runs" if plan.n_runs != plan.n_trials else ""
    print(
        f"sweep {plan.study_name}: {len(space)} parameter(s), {plan.n_trials} trials{runs}, "
        f"{plan.sampler} sampler, {plan.pruner} pruner, {plan.metrics[0]} "
        f"({plan.directions[0]}), storage {mask_url(plan.storage)}, outputs {sweep_dir}"
        + (f"; retrying lost trials {lost}" if lost else "")
    )
    for note in plan.notes:
        print(f"  {note}")
    joining = _running_elsewhere(study)
    if joining:
        print(f"  another invocation of this study is running {joining}: this one joins it (the "
              f"two share the budget of {plan.n_trials} trials, and neither ends before the "
              "other's trials have ended)", flush=True)  # fmt: skip
    return True, parent


def _running_elsewhere(study) -> str:
    """The trials another live invocation runs now ("trial 3 (pid 123 on host)"), or ""."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return ", ".join(
        f"trial {t.number} (pid {t.user_attrs.get('pid', '?')} on {t.user_attrs.get('host', '?')})"
        for t in running
    )


@contextlib.contextmanager
def _after_summary(sweep_dir: Path, wait: float):
    """Hold the summary lock once an earlier invocation's summary process has ended; if it
    still holds it after ``wait`` seconds (hung), go on without it and say so: that process
    only adds figures to a parent run its command has ended already."""
    try:
        with summary_lock(sweep_dir, wait):
            yield
            return
    except SummaryBusy as exc:
        print(f"lossbench: warning: the summary process of an earlier invocation is not "
              f"ending: {exc}. Going on without waiting for it (it only draws figures; this "
              f"invocation draws them again). If it hangs, end it: kill {exc.pid or 'it'}.",
              file=sys.stderr)  # fmt: skip
    yield


def _parent_kind(plan: Plan, base):
    """The class of the study's parent run (``plan.parent_tracker``'s, a
    ``tracking.base.ParentRun``) and that tracker's options."""
    trackers = get_plugin_manager().registry.trackers_of(base.get("tracking"))
    return next((cls.parent, options) for name, cls, options in trackers
                if name == plan.parent_tracker)  # fmt: skip


def _open(plan: Plan, base, study):
    """The study's parent run, found or created under the study's lock."""
    kind, options = _parent_kind(plan, base)
    return kind.open(options, sweep_parent(plan), study, budget_lock(plan))


def _open_parent(study, plan: Plan, base, launcher):
    """Open the parent run while the workers start (importing MLflow here took a second
    or more before the first trial), and hand its id to them in SWEEP_DIR/parent_run.json;
    None (the workers stopped, the reason said) when it cannot be opened."""
    path = Path(plan.sweep_dir) / PARENT_FILE
    try:
        parent = _open(plan, base, study)
    except KeyboardInterrupt:
        launcher.interrupt()
        raise
    except Exception as exc:  # the store refused, or a write failed: no trial may run
        with contextlib.suppress(OSError):
            atomic_write(path, json.dumps({"run_id": None, "error": str(exc)}))
        launcher.interrupt()
        print(f"lossbench: error: the sweep could not open its {plan.parent_tracker} parent "
              f"run: {exc}. Fix the store (see above) and run the same command again.",
              file=sys.stderr)  # fmt: skip
        return None
    atomic_write(path, json.dumps({"run_id": parent.run_id}))
    return parent


STORAGE_GONE = "storage gone"  # _watch's status when the study storage stopped answering


def _cluster_gone(why: str, parent, plan: Plan) -> None:
    """The workers' cluster went away (the Ray head): say so, end the trials' runs KILLED and
    the parent run FAILED; the launcher then ends this process (exit 1)."""
    print(f"lossbench: error: {why}: its workers are gone, and their trials are retried by the "
          "next run. Fix: start the cluster again (see docs/scaling.md) and run the same "
          "command to resume.", file=sys.stderr)  # fmt: skip
    if parent is not None:
        try:
            end_running_trials(parent, plan.study_name,
                               f"{why}: the trial's Ray worker was lost with it")  # fmt: skip
        except Exception as exc:  # its store gone too: the next run ends them
            print(f"lossbench: the trials' {plan.parent_tracker} runs could not be ended "
                  f"({exc})", file=sys.stderr)  # fmt: skip
    _end_parent_failed(parent, plan, "its Ray cluster went away; run the same command to "
                       "resume")  # fmt: skip


def _end_parent_failed(parent, plan: Plan, reason: str) -> None:
    """End the parent run FAILED with the reason (without reading the study)."""
    if parent is None:
        return
    try:
        parent.fail(reason)
    except Exception as exc:  # its store gone too: the next run ends it
        print(f"lossbench: the {plan.parent_tracker} parent run could not be ended ({exc})",
              file=sys.stderr)  # fmt: skip


def _storage_gone(plan: Plan, parent, launcher) -> int:
    """The study storage stopped answering: the workers stop (given a few seconds to notice it
    themselves; their trials are marked interrupted, so their trackers end them: MLflow's
    KILLED) and the parent run ends FAILED, saying why; nothing here reads the study. Exit
    code 1."""
    deadline = time.monotonic() + 10
    while launcher.running() and time.monotonic() < deadline:
        time.sleep(0.1)
    if launcher.running():
        launcher.interrupt()
    _end_parent_failed(parent, plan, "the study storage stopped answering; run the same "
                       "command to resume")  # fmt: skip
    return 1


def _settle(parent, study, plan) -> None:
    """The study's child runs made whole by the parent run (``records.settle_study``:
    ``ParentRun.settle``); a store that fails here costs the sweep nothing (``python -m
    lossbench replay SWEEP_DIR`` does it later)."""
    if parent is None:
        return
    try:
        done = settle_study(parent, study)
    except Exception as exc:  # the store is gone again: the records stay as they are
        why = str(exc).split(". Fix:")[0]
        print(f"lossbench: the {plan.parent_tracker} child runs could not be settled now "
              f"({why}); python -m lossbench replay {plan.sweep_dir} does it later",
              file=sys.stderr)  # fmt: skip
        return
    if done["ended"] or done["lost"] or done["replayed"]:
        print(f"lossbench: {plan.parent_tracker} records: {done['ended']} run(s) left "
              f"running ended, {done['lost']} lost attempt(s) marked, {done['replayed']} "
              "spool(s) replayed", file=sys.stderr)  # fmt: skip


def make_launcher(plan: Plan, base, registry):
    """The launcher ``plan.launcher`` names (``lossbench.launcher.Launcher``), with its options
    (an instance of its spec's options dataclass, or None); its class is imported now (Ray's
    only for ``sweep.launcher=ray``)."""
    spec = registry.launcher(plan.launcher)
    options = None
    if spec.options is not None:  # typed again: enums, nested dataclasses
        node = OmegaConf.merge(OmegaConf.structured(spec.options), plan.launcher_options)
        options = OmegaConf.to_object(node)
    return spec.load()(plan, base, options)


def _crashed(study, plan, codes: list[int | None]) -> dict[int, str]:
    """Workers that ended badly, by index, with why; their running trials are recovered now
    (their processes are gone) so none stays RUNNING."""
    crashed = {}
    for i, code in enumerate(codes):
        if code == EXIT_WRITE_FAILED:
            crashed[i] = "a write failed (see above)"
        elif code == EXIT_LOST:
            crashed[i] = "its cluster went away (see above)"
        elif code not in (0, None, 130, -2):
            crashed[i] = f"exit code {code}"
    if crashed:
        try:
            recover_stale(study, plan.grace_seconds)
        except OSError as exc:
            print(f"lossbench: could not mark the lost trials in the study: {exc}; the next "
                  "run marks them", file=sys.stderr)  # fmt: skip
    return crashed
def _watch(study, plan, launcher) -> str:
    """Show progress until the workers end; on Ctrl-C make sure they stop."""
    try:
        with Progress(study, plan) as progress:
            shown = 0.0
            while launcher.running():
                if time.monotonic() - shown >= 0.5:  # the study is read twice a second
                    progress.update()
                    shown = time.monotonic()
                time.sleep(0.05)  # but the workers' end is noticed at once
            progress.update()
        return "finished"
    except KeyboardInterrupt:
        launcher.interrupt()
        return "interrupted"
    except Exception as exc:
        if not storage_gone(exc):
            raise
        print(f"lossbench: error: the study storage {mask_url(plan.storage)} stopped answering "
              f"({storage_error_text(exc)}): the sweep stops; no finished trial is lost, and "
              "the trials that were running are retried by the next run. Fix: start the "
              "storage again (the database, or python -m lossbench storage-proxy), then run "
              "the same command to resume.", file=sys.stderr)  # fmt: skip
        return STORAGE_GONE

