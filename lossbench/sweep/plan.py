"""The ``Plan``: everything a sweep's workers need, checked by the coordinator before any trial
and handed to each worker as plan.json (private: it may hold the storage URL's password), or
with each Ray task; and ``trial_dir``, where a trial writes (``hydra.sweep.subdir``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lossbench.errors import ConfigError
from lossbench.files import atomic_write
from lossbench.urls import with_password

JOB_NUM = "${hydra.job.num}"

EXIT_WRITE_FAILED = 3  # a worker's exit code: a file or the study storage could not be written
EXIT_STORAGE_GONE = 4  # a worker's exit code: the study storage stopped answering
PARENT_FILE = "parent_run.json"  # {"run_id": ID or null, "error": why it is null}


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
    tracking: bool  # a tracker with parent runs (MLflow) records the study: its ParentRun
    parent_run_id: str | None = None
    # local workers start before the coordinator has the parent run: its id follows in
    # SWEEP_DIR/parent_run.json (``parent_run_id`` below)
    parent_pending: bool = False
    parent_tracker: str | None = None  # the tracker whose parent run it is (MLflow's)
    plugins_dir: str | None = None
    grid: dict[str, list] = field(default_factory=dict)
    storage_password_env: str | None = None  # the storage's password comes from this variable
    workdir: str = "."  # where the coordinator ran (relative paths in overrides)
    subdir: str = JOB_NUM  # hydra.sweep.subdir, resolved per trial
    hydra_overrides: list[str] = field(default_factory=list)
    launcher: str = "local"  # a registered launcher (sweep.launcher)
    n_jobs: int | None = None
    launcher_options: dict = field(default_factory=dict)  # its node sweep.NAME (sweep.ray)
    plugin_sources: dict[str, str] = field(default_factory=dict)  # for workers on other nodes
    register_best: str | None = None  # the registered model the best trial's model goes to
    log_models: str = "best"  # best: trials that beat every completed trial log a model; all
    # training seeds: "shared" (every trial train_seed, train_seed + 1, ... per repeat) or
    # "per_trial"; repeats: runs per configuration, with consecutive seeds
    seeds: str = "shared"
    train_seed: int = 0
    repeats: int = 1
    pruner_startup_trials: int = 5
    pruner_groups: list[str] = field(default_factory=list)  # prune only within equal values
    # trainer.epochs answered from one run per configuration: the epoch counts read from each
    # run (the largest is the run's own); empty: each trial trains its own epochs
    epoch_counts: list[int] = field(default_factory=list)
    n_runs: int = 0  # the budget in trained runs (n_trials / len(epoch_counts), rounded up)
    notes: list[str] = field(default_factory=list)  # what the coordinator decided, and why
    categories: list[str] = field(default_factory=list)  # swept keys whose values are names
    subject: str = ""  # what every trial trains, for titles: "mlp, adam on digits, 30 epochs"
    # the primary config (-cp/--config-path, -cn/--config-name): None is lossbench's own
    config_path: str | None = None
    config_name: str | None = None
    rerun_flags: list[str] = field(default_factory=list)  # "-cp DIR -cn NAME" for a rerun
    hydra: dict = field(default_factory=dict)  # the hydra node each trial's hydra.yaml holds
    summary_wait_seconds: float = 60.0  # the longest a rerun waits for an earlier summary

    def storage_url(self) -> str:
        """The storage URL to connect with (the password from the environment if so set)."""
        return with_password(self.storage, self.storage_password_env, "sweep.storage_password_env")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def dump(self, path: Path) -> None:
        atomic_write(path, json.dumps(self.to_dict(), indent=2), private=True)

    @classmethod
    def load(cls, path: str) -> Plan:
        return cls(**json.loads(Path(path).read_text()))


def trial_dir(plan: Plan, cfg, number: int, overrides: list[str]) -> Path:
    """The trial's output folder: ``hydra.sweep.dir/hydra.sweep.subdir``, the subdir resolved as
    Hydra resolves it for job ``number`` (``${hydra.job.num}``, ``${hydra.job.override_dirname}``,
    ``${now:...}`` or any key of the trial's config)."""
    if plan.subdir == JOB_NUM:
        return Path(plan.sweep_dir) / str(number)
    dirname = ",".join(sorted(o for o in overrides if not o.startswith("hydra.")))
    job = {"num": number, "id": str(number), "name": "lossbench", "override_dirname": dirname}
    node = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    hydra = {"job": job, "sweep": {"dir": plan.sweep_dir, "subdir": plan.subdir}}
    OmegaConf.update(node, "hydra", hydra, force_add=True)
    try:
        sub = str(node.hydra.sweep.subdir)
    except OmegaConfBaseException as exc:
        raise ConfigError(
            f"hydra.sweep.subdir={plan.subdir} cannot be resolved: {exc}. Fix: use "
            "${hydra.job.num} (the default), ${hydra.job.override_dirname} or config keys."
        ) from None
    path = Path(sub)
    if path.is_absolute() or ".." in path.parts or not sub.strip():
        raise ConfigError(
            f"hydra.sweep.subdir={plan.subdir} gives {sub!r}, which is not a folder inside "
            "hydra.sweep.dir. Fix: a relative path without '..', e.g. ${hydra.job.num}."
        )
    return Path(plan.sweep_dir) / path


def parent_run_id(plan: Plan, stop) -> str | None:
    """The parent run's id: the plan's, or, when the workers were started before the
    coordinator had opened it (``plan.parent_pending``), the one the coordinator writes to
    SWEEP_DIR/parent_run.json, waited for (``stop``: a ``threading.Event`` that ends the
    wait). None when the coordinator could not open it (it then stops the workers)."""
    if plan.parent_run_id or not plan.parent_pending:
        return plan.parent_run_id
    path = Path(plan.sweep_dir) / PARENT_FILE
    while not path.is_file():
        if stop.wait(0.02):
            return None
    plan.parent_run_id = json.loads(path.read_text()).get("run_id")
    plan.parent_pending = False
    return plan.parent_run_id
