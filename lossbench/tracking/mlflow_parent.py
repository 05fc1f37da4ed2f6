"""MLflow's parent run of a sweep (``MlflowParentRun``, the ``ParentRun`` of the tracker protocol
in ``lossbench.tracking.base``): one per study, shared by every worker and every invocation,
its trials' runs nested under it (``mlflow.parentRunId``, set by ``MlflowTracker.as_child``).
The coordinator opens it before the trials and ends it with the study's tally; the summary
process logs the figures into it afterwards (MLflow takes artifacts into an ended run)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lossbench.tracking.base import ParentRun
from lossbench.tracking.models import register, registered_by
from lossbench.tracking.store import (
    bound_http_retries,
    experiment_id,
    open_client,
    precheck,
    resolve_uri,
)

_STUDY_ATTR = "mlflow_parent_run_id"  # the study's user attribute holding the run's id


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
        return cls(open_client(address.get("uri")), address["run_id"])

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
