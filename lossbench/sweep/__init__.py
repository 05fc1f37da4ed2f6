"""Optuna sweeps (``python -m lossbench --multirun``): the coordinator checks the command and
starts the workers (``coordinator``) through a launcher, processes on this machine
(``launchers``) or Ray tasks on a cluster (``ray_launcher``); each worker runs an ask/tell loop
on the shared study and trains its trials in-process (``worker``); ``proxy`` serves a study
database to very many workers through Optuna's gRPC proxy; ``space`` turns Hydra's sweep grammar
into Optuna distributions, ``habits`` reads a Hydra user's habits (config folders, Hydra's
sweeper and launcher choices, comma lists as a grid) as they mean it, ``design`` decides how the
comparison is kept fair (metric, losses that fit the data, epoch counts read from one run, the
pruner's warm-up and categories, seeds), ``trial`` holds one trial's pieces, ``answers`` the
epoch counts answered from a longer run, ``compare`` what the trials say together (the best of
each category, the spread over seeds, the pruner's share), ``study`` holds storage, sampler,
pruner, budget lock, lost-trial recovery and the journal's repair, ``plan`` what workers are
handed, ``report`` and ``plots`` what a sweep shows and leaves (written whole through
``lossbench.files``), ``summary`` the background process that draws the figures and ends the
parent run after the command has returned, ``records`` the trackers' records made whole
after a fault (through the parent run: runs left RUNNING ended, lost attempts marked, spools
replayed)."""

from lossbench.sweep.coordinator import run_sweep

__all__ = ["run_sweep"]
