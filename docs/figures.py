"""Remake the README's figures of the four questions from the README's own commands, each run
in an empty folder as a user runs it (no tracking, so nothing else is needed):

    python docs/figures.py            # writes docs/q_*.png and prints each command's answer

- how does the learning rate change training: ``--multirun experiment=learning_rate``
  (curves.png);
- how many epochs are enough: ``experiment=how_many_epochs`` (loss_curve.png) and
  ``--multirun sweep=lr_epochs`` (epochs.png);
- which loss fits the task: ``--multirun experiment=which_loss`` on digits and on diabetes
  (categories.png).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent

FIGURES = [
    # (command, figure it makes, where it goes)
    (["--multirun", "experiment=learning_rate"], "curves.png", "q_learning_rate.png"),
    (["experiment=how_many_epochs"], "loss_curve.png", "q_how_many_epochs.png"),
    (["--multirun", "sweep=lr_epochs"], "epochs.png", "q_lr_epochs.png"),
    (["--multirun", "experiment=which_loss", "data=digits", "sweep.repeats=3"], "categories.png",
     "q_which_loss_digits.png"),
    (["--multirun", "experiment=which_loss", "data=diabetes"], "categories.png",
     "q_which_loss_diabetes.png"),
]


def make(args: list[str], figure: str, target: str) -> None:
    with tempfile.TemporaryDirectory(prefix="lossbench-figures-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        r = subprocess.run([sys.executable, "-m", "lossbench", *args, "tracking=none",
                            "trainer.progress=false"], cwd=tmp, env=env, capture_output=True,
                           text=True)  # fmt: skip
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        for lock in Path(tmp).rglob(".summary.lock"):  # the sweep's figures are drawn after
            with open(lock) as f:
                fcntl.flock(f, fcntl.LOCK_EX)
        (found,) = list(Path(tmp).rglob(figure))
        shutil.copyfile(found, DOCS / target)
        tail = r.stdout.strip().splitlines()[-12:]
        print(f"python -m lossbench {' '.join(args)} -> docs/{target}\n  " + "\n  ".join(tail))


def main() -> None:
    for args, figure, target in FIGURES:
        make(args, figure, target)


if __name__ == "__main__":
    main()
