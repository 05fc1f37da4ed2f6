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



class Metric(StrEnum):
    """The per-epoch metrics a run records: the losses always; accuracy and macro F1 on
    classification; MSE, MAE and R^2 in the target's original units on regression. They are
    computed the same way whatever loss trains the model, so runs of different losses compare
    on them."""

    train_loss = "train_loss"
    val_loss = "val_loss"
    train_accuracy = "train_accuracy"
    val_accuracy = "val_accuracy"
    val_macro_f1 = "val_macro_f1"
    val_mse = "val_mse"
    val_mae = "val_mae"
    val_r2 = "val_r2"


CLASSIFICATION_METRICS = ("train_accuracy", "val_accuracy", "val_macro_f1")
REGRESSION_METRICS = ("val_mse", "val_mae", "val_r2")
# metrics where higher is better (the rest: lower is better)
MAXIMIZED = ("train_accuracy", "val_accuracy", "val_macro_f1", "val_r2")


def metrics_for(task: str) -> tuple[str, ...]:
    """The per-epoch metrics a run on ``task`` records."""
    extra = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    return ("train_loss", "val_loss", *extra)


class KeepWeights(StrEnum):
    """Which weights a run keeps (model.npz, its MLflow model): the best epoch's by the
    monitored metric, or the last epoch's."""

    best = "best"
    last = "last"


class Seeds(StrEnum):
    """A sweep's training seeds: every trial the same (``seed``), or one per trial."""

    shared = "shared"
    per_trial = "per_trial"


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
SAMPLERS = tuple(Sampler)
PRUNERS = tuple(Pruner)


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    monitor: Metric = Metric.val_loss  # also what "the best epoch" is (trainer.keep_weights)
    patience: int = 10
    min_delta: float = 0.0


@dataclass
class TrainerConfig:
    """Training loop options (group ``trainer``, option ``default``)."""

    epochs: int = 50
    batch_size: int = 32
    shuffle: bool = True
    dtype: DType = DType.float32
    warmup_epochs: int = 0  # linear warm-up before the schedule (group ``schedule``)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    keep_weights: KeepWeights = KeepWeights.best  # best: the best epoch's (by the monitor)
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
    direction: Any = "auto"  # auto: the metric's own; a list makes the study multi-objective
    metric: Any = "val_loss"  # one per direction; auto: val_accuracy (classes), val_r2 (regression)
    n_trials: int = 20  # total for the study, across workers and restarts
    n_jobs: int | None = None  # workers; unset: 1 (local), the cluster's CPUs (ray)
    # a registered launcher's name (lossbench.launcher), checked when the sweep is planned; its
    # options are the node sweep.NAME, added by lossbench.config.store.sweep_schema (sweep.ray)
    launcher: str = "local"
    storage: str | None = None  # default: a journal file in the sweep directory
    storage_password_env: str | None = None  # an environment variable holding its password
    study_name: str | None = None  # default: the preset's name, or one made from the space
    seed: int = 0  # the sampler's seed (the training seed is the top-level seed)
    seeds: Seeds = Seeds.shared  # shared: every trial trains with `seed`; per_trial: its own
    repeats: int = 1  # each configuration trained with this many seeds (seed, seed+1, ...)
    epochs_from_one_run: bool = True  # trainer.epochs swept: answer every count from one run
    pruner_warmup_epochs: int | None = None  # epochs before pruning; unset: a third of them
    pruner_startup_trials: int = 5  # completed trials (per group) before any is pruned
    pruner_groups: Any = "auto"  # trials prune only against trials with the same values of
    # these keys; auto: the categorical parameters (a loss is never pruned by another loss)
    heartbeat_seconds: float = 5.0
    grace_seconds: float = 60.0  # a RUNNING trial silent this long is failed and retried
    summary_wait_seconds: float = 60.0  # longest wait for an earlier invocation's figures
    register_best: str | None = None  # register the best trial's MLflow model under this name
    log_models: LogModels = LogModels.best  # which trials log an MLflow model (~0.5 s each)


@dataclass
class RootConfig:
    """The top of the config (``base_config``, first in config.yaml's defaults list): the group
    nodes get their schemas from their options; ``seed`` and ``data_seed`` are typed here."""

    data: Any = None
    model: Any = None
    loss: Any = None
    optimizer: Any = None
    schedule: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: Any = None
    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 0  # the training: the weight initialisation and the shuffling
    data_seed: int = 0  # the data: the validation split and generated datasets
