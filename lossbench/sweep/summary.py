"""The sweep's summary figures, in a background process: ``python -m lossbench.sweep.summary``
(request as one JSON object on stdin).

Drawing the figures (matplotlib, Optuna's plots) and logging them took seconds after the last
trial, longer than most trials. So when the workers have ended, the coordinator writes the
results file, prints the table and ends the parent run itself (MLflow's) (FINISHED or FAILED, with
the tally and the results file: a summary process that is killed, or a container that ends,
never leaves it RUNNING), then starts this process in its own session and returns; this
process draws ``curves.png``, ``final_vs_lr.png``, ``optimization_history.png`` and
``param_importances.png`` and logs them into the ended parent run (MLflow takes artifacts
into an ended run). When the command could not end the run (its store failed), this process
ends it.

``SWEEP_DIR/.summary.lock`` is held (``flock``) from before this process starts until it ends
(``lossbench.sweep.launchers.start_summary`` starts it holding the lock and writes its pid into
the file): a later invocation of the same sweep waits for it (at most
``sweep.summary_wait_seconds``, then goes on and says so), and anyone who needs the figures (a
script, a test) can wait by taking the lock. This process ends itself after
``LIMIT_SECONDS`` (its tracebacks go to the log), so a hung store never holds the lock for
good. Its output goes to ``SWEEP_DIR/summary.log``.

request: ``{"plan": PLAN_JSON, "status": "finished"|"failed", "tracker": NAME, "parent":
ADDRESS, "ended": BOOL}`` (the tracker whose parent run it is, the run's ``address()``, and
whether the command ended it; ``parent`` null: no parent run, figures only)
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
from pathlib import Path

LIMIT_SECONDS = 600  # the figures take seconds: a summary still going after this hangs


def run(request: dict) -> int:
    """Draw the figures and log them to the parent run (ending it if the command could not);
    the exit code."""
    # start-up: this process exists to load these (Optuna, matplotlib, MLflow) off the
    # command's critical path
    from lossbench.plugins import build_plugin_manager
    from lossbench.sweep.plan import Plan
    from lossbench.sweep.plots import sweep_figures
    from lossbench.sweep.report import end_parent_run
    from lossbench.sweep.study import open_study

    plan = Plan.load(request["plan"])
    sweep_dir = Path(plan.sweep_dir)
    study = open_study(plan)
    code = 0
    figures = []
    try:
        figures = sweep_figures(study, plan, sweep_dir)
    except Exception as exc:  # figures are a summary; the parent run still ends
        print(f"lossbench: could not draw the sweep figures: {exc}", file=sys.stderr)
        code = 1
    if request.get("parent"):  # the parent run's tracker: MLflow, or a plugin's
        trackers = build_plugin_manager(plan.plugins_dir).registry.trackers
        parent = trackers[request["tracker"]].parent.connect(request["parent"])
        parent.add_files(figures)
        if not request.get("ended"):  # the command could not end it
            end_parent_run(parent, study, plan, request["status"])
    print(f"summary of {plan.study_name}: {len(figures)} figures", flush=True)
    return code


def main() -> int:
    # a hung store or plot never holds the sweep's summary lock for good: tracebacks to
    # summary.log, then exit 1
    faulthandler.dump_traceback_later(LIMIT_SECONDS, exit=True)
    request = json.loads(sys.stdin.read())
    try:
        os.nice(5)  # the user's next command comes first
    except OSError:
        pass
    return run(request)


if __name__ == "__main__":
    sys.exit(main())
