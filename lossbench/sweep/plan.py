"""The ``Plan``: everything a sweep's workers need, checked by the coordinator before any trial
and handed to each worker as plan.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


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
