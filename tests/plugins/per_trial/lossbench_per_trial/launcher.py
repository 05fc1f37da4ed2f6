"""The per-trial launcher: each job is ``python -m lossbench.sweep.worker PLAN INDEX --trials 1``
holding a pipe to this process on its stdin (so it stops when the coordinator dies); when a job
ends, another starts while the budget needs one (``runs_left``). A job that crashed stops the
starting of new ones: the coordinator names it and its trial is retried by the next run."""

import subprocess
import sys
from pathlib import Path

import lossbench
from lossbench.sweep.launchers import close_pipes, runs_left, stop_processes


class PerTrialLauncher(lossbench.Launcher):
    shares_sweep_dir = True  # the jobs run on this machine and read SWEEP_DIR

    def __init__(self, plan, base, options):
        super().__init__(plan, base, options)
        self.jobs: list[subprocess.Popen] = []
        self.alive = 0
        self.stopping = False

    def start(self) -> None:
        self.logs = Path(self.plan.sweep_dir) / self.options.log_dir
        self.logs.mkdir(parents=True, exist_ok=True)
        self.worker_logs = f"{self.logs}/job-N.log"
        self._top_up()

    def _top_up(self) -> None:
        alive = [p.pid for p in self.jobs if p.poll() is None]
        crashed = any(p.returncode not in (None, 0) for p in self.jobs)
        if not self.stopping and not crashed:
            free = (self.plan.n_jobs or 1) - len(alive)
            for _ in range(min(free, runs_left(self.plan, alive))):
                self._start_job(len(self.jobs))
        self.alive = sum(p.poll() is None for p in self.jobs)

    def _start_job(self, index: int) -> None:
        plan = str(Path(self.plan.sweep_dir) / "plan.json")
        with open(self.logs / f"job-{index}.log", "w") as log:
            self.jobs.append(subprocess.Popen(
                [sys.executable, "-m", "lossbench.sweep.worker", plan, str(index), "--trials", "1"],
                stdin=subprocess.PIPE, stdout=log,
            ))  # fmt: skip

    def running(self) -> bool:
        if sum(p.poll() is None for p in self.jobs) != self.alive:  # a job ended
            self._top_up()
        return self.alive > 0

    def interrupt(self) -> None:
        self.stopping = True
        stop_processes(self.jobs)

    def codes(self) -> list[int | None]:
        return [p.returncode for p in self.jobs]

    def close(self) -> None:
        close_pipes(self.jobs)
