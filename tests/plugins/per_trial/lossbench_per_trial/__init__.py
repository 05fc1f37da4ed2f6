"""``sweep.launcher=per_trial``: one worker process per trial, at most ``sweep.n_jobs`` at a
time, the shape of a batch-queue launcher (a SLURM array job per trial). Its options are
``sweep.per_trial.*``. The class is named by its import path, so that loading this plugin
(every ``python -m lossbench``) does not import the sweep machinery; ``launcher`` holds it."""

from dataclasses import dataclass

import lossbench


@dataclass
class PerTrialOptions:
    log_dir: str = "jobs"  # the jobs' logs, inside the sweep folder


@lossbench.hookimpl
def register_launchers(register):
    register(lossbench.LauncherSpec(
        name="per_trial", launcher="lossbench_per_trial.launcher:PerTrialLauncher",
        options=PerTrialOptions, description="one worker process per trial",
    ))  # fmt: skip
