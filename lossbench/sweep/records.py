"""A sweep's MLflow records made whole after a fault: the child runs a dead worker or a killed
coordinator left RUNNING are ended with their true state (their spool replayed where it is on
this machine, else KILLED with the reason), a lost attempt is marked as such (KILLED, tagged
``lossbench.lost`` and ``lossbench.retried_as``), the spools of trials whose store went away
are replayed once it is back, and a spool is removed once its store has the record.

The coordinator runs ``settle_children`` when it resumes a study (before any new trial) and
at its end when a trial was lost or spooled; ``python -m lossbench replay SWEEP_DIR`` runs
``replay_sweep`` after it has replayed every trial's spool, which also ends a parent run the
summary process could not end (its store was gone). MLflow is loaded by the caller.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from optuna.trial import TrialState

from lossbench.sweep.plan import PARENT_FILE, Plan
from lossbench.sweep.report import RESULTS_FILE, end_parent_run
from lossbench.sweep.study import READ_FROM, RECORD_INCOMPLETE, open_study
from lossbench.tracking.mlflow_parent import MlflowParentRun
from lossbench.tracking.spool import SPOOL_DIR, SPOOL_TAG, find_spools, replay
from lossbench.tracking.store import precheck

LOST_TAG, RETRIED_AS_TAG = "lossbench.lost", "lossbench.retried_as"
STALE_REASON = (
    "its trial's worker ended without ending this run (the sweep's processes were killed); "
    "ended by the next invocation of the sweep"
)


def child_runs(client, experiment_id: str, study_name: str) -> list:
    """The MLflow child runs of a study's trials (every state)."""
    from mlflow.entities import ViewType  # loaded with the client

    found, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], max_results=1000, page_token=token, run_view_type=ViewType.ALL,
            filter_string=f"tags.`lossbench.study` = '{study_name}' AND "
            "tags.`lossbench.role` = 'trial'",
        )  # fmt: skip
        found += list(page)
        token = page.token
        if not token:
            return found


def _spool_of(run) -> Path | None:
    """The run's spool folder, when it is on this machine."""
    out, spool_id = run.data.tags.get("lossbench.output_dir"), run.data.tags.get(SPOOL_TAG)
    if not out or not spool_id:
        return None
    folder = Path(out) / SPOOL_DIR / spool_id
    return folder if (folder / "records.jsonl").is_file() else None


def _replay(folder: Path) -> bool:
    """Replay a spool into its own store (removing it); False when the store failed."""
    try:
        replay(folder)
    except Exception as exc:  # the store still failing, or an edited spool: it stays
        print(f"lossbench: {folder} could not be replayed yet ({type(exc).__name__}: {exc}); "
              f"python -m lossbench replay {folder.parents[1]} sends it later",
              file=sys.stderr)  # fmt: skip
        return False
    return True


def settle_children(client, experiment_id: str, study) -> dict:
    """End the study's child runs that nothing will end, mark lost attempts, replay spools of
    trials whose record is incomplete; returns counts of what was done."""
    from mlflow.entities import RunTag  # loaded with the client

    runs = child_runs(client, experiment_id, study.study_name)  # before the trials: a run
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}  # of a new trial is theirs
    retried_as = {t.user_attrs["retry_of"]: t.number for t in trials.values()
                  if "retry_of" in t.user_attrs}  # fmt: skip
    done = {"ended": 0, "lost": 0, "replayed": _replay_incomplete(trials.values())}
    for run in runs:
        trial = trials.get(int(run.data.tags.get("lossbench.trial", -1)))
        if trial is None or _in_progress(trial, trials):
            continue  # still training or being answered somewhere, or not this study's
        lost = bool(trial.user_attrs.get("lossbench_lost"))
        if lost and run.data.tags.get(LOST_TAG) == "true" and run.info.status != "RUNNING":
            continue  # settled by an earlier invocation
        folder = _spool_of(run)
        if folder is not None and (lost or run.info.status == "RUNNING"):
            done["replayed"] += _replay(folder)  # its true end, and what the store lacks
        status = client.get_run(run.info.run_id).info.status
        tags = []
        if lost:
            tags = [RunTag(LOST_TAG, "true"), RunTag("lossbench.status", "lost")]
            if trial.number in retried_as:
                tags.append(RunTag(RETRIED_AS_TAG, str(retried_as[trial.number])))
            done["lost"] += 1
        elif status == "RUNNING":
            tags = [RunTag("lossbench.status", "interrupted"),
                    RunTag("lossbench.failure_reason", STALE_REASON)]  # fmt: skip
        if tags:
            client.log_batch(run.info.run_id, tags=tags)
        if status == "RUNNING" or (lost and status != "KILLED"):
            client.set_terminated(run.info.run_id, "KILLED")  # a lost attempt's result is unused
            done["ended"] += 1
    return done


def _in_progress(trial, trials: dict) -> bool:
    """A trial still running, or an epoch count answered from a run that is still running
    (added to the study before its MLflow run is recorded)."""
    source = trials.get(trial.user_attrs.get(READ_FROM, -1))
    return any(t is not None and t.state in (TrialState.RUNNING, TrialState.WAITING)
               for t in (trial, source))  # fmt: skip


def end_running_children(client, experiment_id: str, study_name: str, reason: str) -> int:
    """End every RUNNING child run of the study KILLED with ``reason`` (the cluster its
    workers ran on is gone); how many."""
    from mlflow.entities import RunTag  # loaded with the client

    ended = 0
    for run in child_runs(client, experiment_id, study_name):
        if run.info.status == "RUNNING":
            client.log_batch(run.info.run_id, tags=[
                RunTag("lossbench.status", "interrupted"),
                RunTag("lossbench.failure_reason", reason)])  # fmt: skip
            client.set_terminated(run.info.run_id, "KILLED")
            ended += 1
    return ended


def _replay_incomplete(trials) -> int:
    """Replay the spools (on this machine) of trials whose record is incomplete."""
    replayed = 0
    for trial in trials:
        if trial.user_attrs.get(RECORD_INCOMPLETE):
            for out in trial.user_attrs.get("spooled_in", []):
                for folder in find_spools(Path(out)) if Path(out).is_dir() else []:
                    replayed += _replay(folder)
    return replayed


def settle_study(parent, study) -> dict:
    """``settle_children`` for the study of the MLflow parent run ``parent``; a store still
    gone is said at once (``precheck``), not after MLflow's retries."""
    precheck(parent.uri)
    exp_id = parent.client.get_run(parent.run_id).info.experiment_id
    return settle_children(parent.client, exp_id, study)


def end_running_trials(parent, study_name: str, reason: str) -> None:
    """``end_running_children`` for the study of the MLflow parent run ``parent``."""
    exp_id = parent.client.get_run(parent.run_id).info.experiment_id
    end_running_children(parent.client, exp_id, study_name, reason)


def replay_sweep(sweep_dir: Path, uri: str | None) -> str | None:
    """After ``replay SWEEP_DIR`` replayed the trials' spools: settle the study's child runs
    and end a parent run left RUNNING; what was done, or None (not a sweep folder, or no
    parent run)."""

    sweep_dir = Path(sweep_dir)
    plan_file, parent_file = sweep_dir / "plan.json", sweep_dir / PARENT_FILE
    if not plan_file.is_file():
        return None
    plan = Plan.load(str(plan_file))
    run_id = plan.parent_run_id
    if run_id is None and parent_file.is_file():
        run_id = json.loads(parent_file.read_text()).get("run_id")
    if run_id is None:
        return None
    study = open_study(plan)
    parent = MlflowParentRun.connect({"uri": uri, "run_id": run_id})
    exp_id = parent.client.get_run(run_id).info.experiment_id
    done = settle_children(parent.client, exp_id, study)
    said = f"{done['ended']} child run(s) ended, {done['lost']} lost attempt(s) marked"
    results = sweep_dir / RESULTS_FILE
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if parent.client.get_run(run_id).info.status == "RUNNING" and results.is_file() and (
        not running
    ):  # fmt: skip
        status = (yaml.safe_load(results.read_text()) or {}).get("status", "failed")
        parent.add_files(sorted(sweep_dir.glob("*.png")))
        end_parent_run(parent, study, plan, status)
        said += f", the parent run ended ({status})"
    return said
