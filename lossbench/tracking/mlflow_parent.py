"""MLflow's parent run of a sweep (``MlflowParentRun``, the ``ParentRun`` of the tracker protocol
in ``lossbench.tracking.base``): one per study, shared by every worker and every invocation,
its trials' runs nested under it (``mlflow.parentRunId``, set by ``MlflowTracker.as_child``).
The coordinator opens it before the trials and ends it with the study's tally; the summary
process logs the figures into it afterwards (MLflow takes artifacts into an ended run).

After a fault (``settle``): the child runs a dead worker or a killed coordinator left RUNNING
are ended with their true state (their spool replayed where it is on this machine, else KILLED
with the reason), a lost attempt is marked as such (KILLED, tagged ``lossbench.lost`` and
``lossbench.retried_as``), and the spools of trials whose store went away are replayed once it
is back (a spool is removed once its store has the record). ``end_children``: every child run
still RUNNING ended KILLED (the workers' cluster is gone)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lossbench.tracking.base import ChildTrial, ParentRun
from lossbench.tracking.models import register, registered_by
from lossbench.tracking.spool import SPOOL_DIR, SPOOL_TAG, find_spools, replay
from lossbench.tracking.store import (
    bound_http_retries,
    experiment_id,
    open_client,
    precheck,
    resolve_uri,
)

_STUDY_ATTR = "mlflow_parent_run_id"  # the study's user attribute holding the run's id
LOST_TAG, RETRIED_AS_TAG = "lossbench.lost", "lossbench.retried_as"
STALE_REASON = (
    "its trial's worker ended without ending this run (the sweep's processes were killed); "
    "ended by the next invocation of the sweep"
)


class MlflowParentRun(ParentRun):
    """The study's MLflow parent run."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id
        self.uri = None  # the store's URI, for the summary process
        self.retry_seconds = 30.0  # tracking.retry_seconds: the longest one request may take

    @classmethod
    def prepare(cls, options) -> None:
        # a store gone mid-sweep costs this process (and its summary) bounded time
        bound_http_retries(float(options.get("retry_seconds", 30.0)))

    @classmethod
    def check(cls, options) -> None:
        precheck(resolve_uri(options))  # a store that cannot be written: exit 2

    @classmethod
    def open(cls, options, sweep, study, lock):
        uri = resolve_uri(options)
        precheck(uri)
        client = open_client(uri)  # under the store's lock: a fresh sqlite store is migrated once
        exp_id = experiment_id(client, options.experiment)
        with lock:  # two invocations at once: the second finds the first's run
            parent = cls._find_or_create(client, uri, exp_id, sweep, study)
        parent.retry_seconds = float(options.get("retry_seconds", 30.0))
        return parent

    @classmethod
    def _find_or_create(cls, client, uri, exp_id, sweep, study):
        """The study's parent run, resumed (RUNNING again), or created; under the study's lock,
        so one study has one parent run however many invocations open it at once."""
        # start-up: MLflow (about a second) loads only for a tracked sweep
        from mlflow.entities import Param

        run_id = study.user_attrs.get(_STUDY_ATTR)
        if run_id is not None:
            try:
                client.get_run(run_id)
            except Exception:
                run_id = None
        if run_id is None:
            run = client.create_run(exp_id, run_name=f"sweep {sweep.study}", tags=sweep.tags)
            run_id = run.info.run_id
            study.set_user_attr(_STUDY_ATTR, run_id)
            params = [Param(k, v) for k, v in sweep.params.items()]
            client.log_batch(run_id, params=params[:100])
        else:
            client.update_run(run_id, status="RUNNING")  # a resumed sweep
        parent = cls(client, run_id)
        parent.uri = uri
        return parent

    @classmethod
    def connect(cls, address: dict):
        parent = cls(open_client(address.get("uri")), address["run_id"])
        parent.uri = address.get("uri") or os.environ.get("MLFLOW_TRACKING_URI") or None
        return parent

    def address(self) -> dict:
        return {"uri": self.uri, "run_id": self.run_id}

    def end(self, status: str, record, files: list[Path]) -> None:
        """The study's record (tally, best trial; a best trial's params once: MLflow's params
        never change) logged, ``files`` added, and the run ended with the sweep's state
        (FINISHED, KILLED when interrupted, else FAILED)."""
        from mlflow.entities import Metric, Param, RunTag  # loaded by open() already

        ts = int(time.time() * 1000)
        existing = self.client.get_run(self.run_id).data.params if record.params else {}
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), ts, 0) for k, v in record.metrics.items()],
            params=[Param(k, v) for k, v in record.params.items() if k not in existing][:100],
            tags=[RunTag(k, v) for k, v in record.tags.items()],
        )
        self.add_files(files)
        state = {"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, state)

    def add_files(self, paths: list[Path]) -> None:
        """Log these files (the figures) as artifacts; an ended run takes them too."""
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def fail(self, reason: str) -> None:
        from mlflow.entities import RunTag  # loaded with the parent run's client

        self.client.log_batch(self.run_id, tags=[
            RunTag("lossbench.status", "failed"), RunTag("lossbench.failure_reason", reason)])
        self.client.set_terminated(self.run_id, "FAILED")

    def register_best(self, name: str, study_name: str, metric: str, best) -> None:
        """The best trial's model as a version of ``name`` with the alias ``best``, tagged
        with the study and the trial; a resumed study whose best trial is already registered
        keeps that version, a better trial gets a new one and the alias."""
        from mlflow.entities import RunTag  # loaded by open() already

        client = self.client
        exp_id = client.get_run(self.run_id).info.experiment_id
        found = client.search_runs(
            [exp_id],
            filter_string=f"tags.`lossbench.study` = '{study_name}' AND "
            f"tags.`lossbench.trial` = '{best.number}' AND attributes.status = 'FINISHED'",
        )
        found = [r for r in found if r.data.tags.get("lossbench.repeat", "0") == "0"]  # seed 1
        if not found:
            print(f"lossbench: warning: sweep.register_best={name}: trial {best.number} has no "
                  "finished MLflow run; nothing registered", file=sys.stderr)  # fmt: skip
            return
        run_id = found[0].info.run_id
        version = registered_by(client, name, run_id)
        if version is None:
            tags = {"lossbench.study": study_name, "lossbench.trial": str(best.number),
                    f"lossbench.{metric}": f"{best.value:.6g}",
                    "lossbench.source": "sweep"}  # fmt: skip
            version = register(client, name, run_id, tags, alias="best")
        else:
            client.set_registered_model_alias(name, "best", version.version)
        client.log_batch(self.run_id, tags=[
            RunTag("lossbench.registered_model", f"{name}/{version.version}")])
        print(f"registered the best trial ({best.number}) as model {name!r} version "
              f"{version.version} (alias best): models:/{name}@best")

    def settle(self, study: str, trials) -> dict:
        """The study's child runs made whole (``ParentRun.settle``; the module); a store still
        gone is said at once (``precheck``), not after MLflow's retries."""
        precheck(self.uri)
        exp_id = self.client.get_run(self.run_id).info.experiment_id
        runs = child_runs(self.client, exp_id, study)  # before the trials: a run of a new
        return settle_children(self.client, runs, trials())  # trial is never taken as stale

    def end_children(self, study: str, reason: str) -> int:
        """Every RUNNING child run of the study ended KILLED with ``reason``; how many."""
        from mlflow.entities import RunTag  # loaded with the client

        exp_id = self.client.get_run(self.run_id).info.experiment_id
        ended = 0
        for run in child_runs(self.client, exp_id, study):
            if run.info.status == "RUNNING":
                self.client.log_batch(run.info.run_id, tags=[
                    RunTag("lossbench.status", "interrupted"),
                    RunTag("lossbench.failure_reason", reason)])  # fmt: skip
                self.client.set_terminated(run.info.run_id, "KILLED")
                ended += 1
        return ended

    def is_running(self) -> bool:
        return self.client.get_run(self.run_id).info.status == "RUNNING"


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


def settle_children(client, runs: list, trials: dict[int, ChildTrial]) -> dict:
    """End the child ``runs`` that nothing will end, mark lost attempts, replay spools of
    trials whose record is incomplete; returns counts of what was done."""
    from mlflow.entities import RunTag  # loaded with the client

    done = {"ended": 0, "lost": 0, "replayed": _replay_incomplete(trials.values())}
    for run in runs:
        trial = trials.get(int(run.data.tags.get("lossbench.trial", -1)))
        if trial is None or trial.in_progress:
            continue  # still training or being answered somewhere, or not this study's
        if trial.lost and run.data.tags.get(LOST_TAG) == "true" and run.info.status != "RUNNING":
            continue  # settled by an earlier invocation
        folder = _spool_of(run)
        if folder is not None and (trial.lost or run.info.status == "RUNNING"):
            done["replayed"] += _replay(folder)  # its true end, and what the store lacks
        status = client.get_run(run.info.run_id).info.status
        tags = []
        if trial.lost:
            tags = [RunTag(LOST_TAG, "true"), RunTag("lossbench.status", "lost")]
            if trial.retried_as is not None:
                tags.append(RunTag(RETRIED_AS_TAG, str(trial.retried_as)))
            done["lost"] += 1
        elif status == "RUNNING":
            tags = [RunTag("lossbench.status", "interrupted"),
                    RunTag("lossbench.failure_reason", STALE_REASON)]  # fmt: skip
        if tags:
            client.log_batch(run.info.run_id, tags=tags)
        if status == "RUNNING" or (trial.lost and status != "KILLED"):
            client.set_terminated(run.info.run_id, "KILLED")  # a lost attempt's result is unused
            done["ended"] += 1
    return done


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


def _replay_incomplete(trials) -> int:
    """Replay the spools (on this machine) of trials whose record is incomplete."""
    replayed = 0
    for trial in trials:
        for out in trial.spooled_in:
            for folder in find_spools(Path(out)) if Path(out).is_dir() else []:
                replayed += _replay(folder)
    return replayed
