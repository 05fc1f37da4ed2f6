"""The structured-config schemas of the groups lossbench itself defines: ``trainer``,
``tracking`` (``mlflow``) and ``sweep``. Component groups (data, model, loss, optimizer) get
theirs from the specs plugins register (``lossbench.config.store``).

Choice fields are ``StrEnum``s, so Hydra rejects a value outside the choices when it composes,
before anything loads; a member compares equal to its string (``DType.float32 == "float32"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class DType(StrEnum):
    float32 = "float32"
    float64 = "float64"


class LRSchedule(StrEnum):
    constant = "constant"
    step = "step"
    cosine = "cosine"


class Metric(StrEnum):
    """The per-epoch metrics a run records (accuracies on classification only)."""

    train_loss = "train_loss"
    val_loss = "val_loss"
    train_accuracy = "train_accuracy"
    val_accuracy = "val_accuracy"


class Sampler(StrEnum):
    tpe = "tpe"
    random = "random"
    grid = "grid"
    cmaes = "cmaes"
    gp = "gp"
    qmc = "qmc"


class LogModels(StrEnum):
    best = "best"  # a trial logs its model when it beats every trial completed so far
    all = "all"


class Pruner(StrEnum):
    none = "none"
    median = "median"
    percentile = "percentile"
    successive_halving = "successive_halving"
    hyperband = "hyperband"
    patient = "patient"


DTYPES = tuple(DType)
LR_SCHEDULES = tuple(LRSchedule)
SAMPLERS = tuple(Sampler)
PRUNERS = tuple(Pruner)


class Launcher(StrEnum):
    """Where a sweep's workers run: processes on this machine, or Ray tasks on a cluster."""

    local = "local"
    ray = "ray"


@dataclass
class RaySweepConfig:
    """``sweep.ray.*``: the cluster a ``sweep.launcher=ray`` sweep runs on."""

    address: str | None = None  # auto, ray://HOST:10001, HOST:PORT; unset: a local Ray instance
    cpus_per_trial: float = 1.0  # CPUs Ray reserves for each worker
    shared_filesystem: bool = False  # the sweep folder is mounted at the same path on every node


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    monitor: Metric = Metric.val_loss
    patience: int = 10
    min_delta: float = 0.0


@dataclass
class TrainerConfig:
    """Training loop options (group ``trainer``, option ``default``)."""

    epochs: int = 50
    batch_size: int = 32
    shuffle: bool = True
    dtype: DType = DType.float32
    lr_schedule: LRSchedule = LRSchedule.constant
    warmup_epochs: int = 0
    step_size: int = 10
    gamma: float = 0.1
    min_lr: float = 0.0
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    progress: bool = True
    plots: bool = True  # loss_curve.png (and the MLflow confusion matrix); sweeps turn it off


@dataclass
class MlflowTrackingConfig:
    """Options of ``tracking=mlflow``."""

    name: str = "mlflow"
    uri: str | None = None  # else $MLFLOW_TRACKING_URI, else MLflow's default (./mlflow.db)
    experiment: str = "lossbench"
    run_name: str | None = None  # default: model-loss-optimizer-lr
    tags: dict[str, str] = field(default_factory=dict)
    required: bool = True  # False: a tracking failure warns and training goes on
    flush_seconds: float = 2.0
    retry_seconds: float = 30.0  # at most this long on a store that does not answer, then spool
    register_model: str | None = None  # register the run's MLflow model under this name


@dataclass
class SweepConfig:
    """Sweep settings (group ``sweep``; presets from sweeps/*.yaml). Names follow Hydra's Optuna
    sweeper where they overlap; ``hydra.sweeper.X=...`` is accepted as ``sweep.X=...``."""

    name: str = "none"
    params: dict[str, str] = field(default_factory=dict)  # key -> search-space expression
    overrides: list[str] = field(default_factory=list)  # fixed for every trial
    sampler: Sampler = Sampler.tpe
    pruner: Pruner = Pruner.median
    direction: Any = "minimize"  # a list makes the study multi-objective
    metric: Any = "val_loss"  # one per direction
    n_trials: int = 20  # total for the study, across workers and restarts
    n_jobs: int | None = None  # workers; unset: 1 (local), the cluster's CPUs (ray)
    launcher: Launcher = Launcher.local
    ray: RaySweepConfig = field(default_factory=RaySweepConfig)
    storage: str | None = None  # default: a journal file in the sweep directory
    storage_password_env: str | None = None  # an environment variable holding its password
    study_name: str | None = None  # default: the preset's name, or one made from the space
    seed: int = 0
    pruner_warmup_epochs: int = 3  # epochs a trial always runs before it can be pruned
    heartbeat_seconds: float = 5.0
    grace_seconds: float = 60.0  # a RUNNING trial silent this long is failed and retried
    register_best: str | None = None  # register the best trial's MLflow model under this name
    log_models: LogModels = LogModels.best  # which trials log an MLflow model (~0.5 s each)


@dataclass
class RootConfig:
    """The top of the config (``base_config``, first in config.yaml's defaults list): the group
    nodes get their schemas from their options; ``seed`` is typed here."""

    data: Any = None
    model: Any = None
    loss: Any = None
    optimizer: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: Any = None
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 0  # drives the validation split, the initialisation and the shuffling
