"""Tracking: the tracker protocol every tracker implements and the run's files it is offered
(``base``), the lifecycle plugin that runs every tracker the config selects (also for a sweep's
answered epoch counts and lr_find) and registers MLflow (``plugin``), MLflow's tracker and run
(``mlflow_run``) and a sweep's MLflow parent run, which settles its child runs after a fault
(``mlflow_parent``), the side process that imports MLflow and writes the runs (``worker``),
the trainer's client of that process (``client``), where runs go and the lock their store is
opened under (``store``), and the spool that journals every run's record so a store that
failed can be sent it later (``spool``, ``python -m lossbench replay``), the run's MLflow
model, dataset inputs and registered versions (``models``) and the model's loader module
(``pyfunc``). The training process never imports MLflow."""
