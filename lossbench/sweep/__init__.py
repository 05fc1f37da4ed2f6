"""Optuna sweeps (``python -m lossbench --multirun``): the coordinator checks the command and
starts the workers (``coordinator``) through a launcher, processes on this machine
(``launchers``) or Ray tasks on a cluster (``ray_launcher``); each worker runs an ask/tell loop
on the shared study and trains its trials in-process (``worker``); ``proxy`` serves a study
database to very many workers through Optuna's gRPC proxy; ``space`` turns Hydra's sweep
grammar into Optuna distributions, ``study`` holds storage, sampler, pruner, budget lock,
lost-trial recovery and the journal's repair, ``plan`` what workers are handed, ``files`` writes
the sweep's files whole (and private when they hold credentials), ``report`` and ``plots`` what
a sweep shows and leaves, ``summary`` the background process that draws the figures and ends
the MLflow parent run after the command has returned."""

from lossbench.sweep.coordinator import run_sweep

__all__ = ["run_sweep"]
