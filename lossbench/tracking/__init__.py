"""MLflow tracking: the ``tracking=mlflow`` lifecycle plugin (``plugin``), the side process that
imports MLflow and writes the runs (``worker``), the trainer's client of that process
(``client``), and where runs go (``store``). The training process never imports MLflow."""
