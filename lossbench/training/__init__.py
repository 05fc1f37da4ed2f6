"""Training one run from a composed config to its history and parameters: ``setup`` resolves
the specs and options a config names and allocates what the epochs need, ``arrays`` checks
every array entering the engine, ``prepare`` splits and scales the data; ``groups`` turns a
model's parameter groups into the optimizer's segments; ``fused`` holds the
jitted epoch and evaluation that call the kernels through function pointers, ``slow`` the same
epoch in Python for components that give only NumPy references; ``metrics`` the metrics
every loss shares (macro F1; MSE, MAE, R^2 in the target's units); ``fit`` runs the loop and the
lifecycle hooks; ``schedules`` gives each epoch's learning rate; ``outputs`` writes a run's
files; ``run`` is the ``Run`` that hooks receive and ``train`` returns; ``predict`` is a
run's model and preprocessing as plain NumPy (its MLflow model's data); ``lr_find`` is the
learning-rate range test, a jitted ramp beside the epoch; ``explain`` shows one batch's loss
computation (the first minibatch a run trains on, by hand, by the reference and by the kernel);
``crash`` keeps the note a run that crashes in compiled code leaves (crash.log: the kernels that
were running)."""

from lossbench.training.fit import train, warm_up
from lossbench.training.fused import compile_stats, evaluate, train_epoch
from lossbench.training.run import Run, summary

__all__ = ["Run", "compile_stats", "evaluate", "summary", "train", "train_epoch", "warm_up"]
