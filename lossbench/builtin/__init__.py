"""The built-in plugins, each an ordinary plugin module registered through the same hooks as a
third-party one (``lossbench.plugins.DEFAULT_PLUGINS``): ``losses``, ``optimizers``, ``models``,
``datasets`` and ``schedules`` register components, ``launchers`` the sweep launchers (local
processes, Ray); ``progress`` (the progress bar),
``early_stopping`` and ``outputs`` (the run's files) are lifecycle plugins. MLflow tracking,
also a default plugin, lives with its side process in ``lossbench.tracking``."""
