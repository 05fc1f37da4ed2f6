"""A sweep's records made whole after a fault, through the parent run of its tracker
(``tracking.base.ParentRun``): this module reads the study (which trials are still in progress,
which were lost and what retries them, which hold a spooled record) into ``ChildTrial``s, and
the parent run settles its child runs with them (``ParentRun.settle``; MLflow's: runs a dead
worker or a killed coordinator left RUNNING ended with their true state, lost attempts marked,
spools replayed, ``tracking.mlflow_parent``).

The coordinator runs ``settle_study`` when it resumes a study (before any new trial) and at its
end when a trial was lost or spooled, and ``end_running_trials`` when the workers' cluster is
gone; ``python -m lossbench replay SWEEP_DIR`` runs ``replay_sweep`` after it has replayed every
trial's spool, which also ends a parent run the summary process could not end (its store was
gone). The tracker's own modules are loaded by the caller.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from optuna.trial import TrialState

from lossbench.plugins import build_plugin_manager
from lossbench.sweep.plan import PARENT_FILE, Plan
from lossbench.sweep.report import RESULTS_FILE, end_parent_run
from lossbench.sweep.study import READ_FROM, RECORD_INCOMPLETE, open_study
from lossbench.tracking.base import ChildTrial


def children(study) -> dict[int, ChildTrial]:
    """The study's trials as their parent run settles them (``ChildTrial`` by number): in
    progress (running, or an epoch count answered from a run still running: added to the study
    before its record), lost and retried as, spooled in (when the record is incomplete)."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    retried_as = {t.user_attrs["retry_of"]: t.number for t in trials.values()
                  if "retry_of" in t.user_attrs}  # fmt: skip
    running = (TrialState.RUNNING, TrialState.WAITING)
    out = {}
    for number, t in trials.items():
        source = trials.get(t.user_attrs.get(READ_FROM, -1))
        out[number] = ChildTrial(
            number,
            in_progress=any(x is not None and x.state in running for x in (t, source)),
            lost=bool(t.user_attrs.get("lossbench_lost")),
            retried_as=retried_as.get(number),
            spooled_in=list(t.user_attrs.get("spooled_in", []))
            if t.user_attrs.get(RECORD_INCOMPLETE) else [],
        )  # fmt: skip
    return out


def settle_study(parent, study) -> dict:
    """The study's child runs made whole by ``parent`` (``ParentRun.settle``), the trials read
    after it has listed them; returns counts ``{"ended", "lost", "replayed"}``."""
    return parent.settle(study.study_name, lambda: children(study))


def end_running_trials(parent, study_name: str, reason: str) -> int:
    """Every child run of the study still running ended by ``parent`` with ``reason``."""
    return parent.end_children(study_name, reason)


def replay_sweep(sweep_dir: Path, uri: str | None) -> str | None:
    """After ``replay SWEEP_DIR`` replayed the trials' spools: settle the study's child runs
    and end a parent run left running; what was done, or None (not a sweep folder, or no
    parent run). ``uri``: the store to reach it in (MLflow's), else its own."""
    sweep_dir = Path(sweep_dir)
    plan_file, parent_file = sweep_dir / "plan.json", sweep_dir / PARENT_FILE
    if not plan_file.is_file():
        return None
    plan = Plan.load(str(plan_file))
    run_id = plan.parent_run_id
    if run_id is None and parent_file.is_file():
        run_id = json.loads(parent_file.read_text()).get("run_id")
    if run_id is None or plan.parent_tracker is None:
        return None
    study = open_study(plan)
    tracker = build_plugin_manager(plan.plugins_dir).registry.trackers[plan.parent_tracker]
    parent = tracker.parent.connect({"uri": uri, "run_id": run_id})
    done = settle_study(parent, study)
    said = f"{done['ended']} child run(s) ended, {done['lost']} lost attempt(s) marked"
    results = sweep_dir / RESULTS_FILE
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if parent.is_running() and results.is_file() and not running:
        status = (yaml.safe_load(results.read_text()) or {}).get("status", "failed")
        parent.add_files(sorted(sweep_dir.glob("*.png")))
        end_parent_run(parent, study, plan, status)
        said += f", the parent run ended ({status})"
    return said
