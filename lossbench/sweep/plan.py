"""The ``Plan``: everything a sweep's workers need, checked by the coordinator before any trial
and handed to each worker as plan.json (private: it may hold the storage URL's password)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from lossbench.sweep.files import atomic_write
from lossbench.urls import with_password

EXIT_WRITE_FAILED = 3  # a worker's exit code: a file or the study storage could not be written


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
    storage_password_env: str | None = None  # the storage's password comes from this variable

    def storage_url(self) -> str:
        """The storage URL to connect with (the password from the environment if so set)."""
        return with_password(self.storage, self.storage_password_env, "sweep.storage_password_env")

    def dump(self, path: Path) -> None:
        atomic_write(path, json.dumps(dataclasses.asdict(self), indent=2), private=True)

    @classmethod
    def load(cls, path: str) -> Plan:
        return cls(**json.loads(Path(path).read_text()))
