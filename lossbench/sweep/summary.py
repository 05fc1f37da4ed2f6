"""The sweep's summary figures and the end of its MLflow parent run, in a background process:
``python -m lossbench.sweep.summary`` (request as one JSON object on stdin).

Drawing the figures (matplotlib, Optuna's plots) and logging them took seconds after the last
trial, longer than most trials. So when the workers have ended, the coordinator writes the
results file and prints the table itself, then starts this process in its own session and
returns; this process draws ``curves.png``, ``final_vs_lr.png``, ``optimization_history.png``
and ``param_importances.png``, logs them and optimization_results.yaml to the parent run, and
only then ends the parent run (FINISHED or FAILED), so the parent run ends with its figures.

``SWEEP_DIR/.summary.lock`` is held (``flock``) from before this process starts until it ends
(``lossbench.sweep.launchers.start_summary`` starts it holding the lock): a later invocation of
the same sweep waits for it before touching the parent run, and anyone who needs the figures (a
script, a test) can wait by taking the lock. Its output goes to ``SWEEP_DIR/summary.log``.

request: ``{"plan": PLAN_JSON, "status": "finished"|"failed", "uri": TRACKING_URI, "run_id":
PARENT_RUN_ID}`` (the parent run and its store; ``run_id`` null: no tracking, figures only)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def run(request: dict) -> int:
    """Draw the figures, log them and the results to the parent run, end it; the exit code."""
    # start-up: this process exists to load these (Optuna, matplotlib, MLflow) off the
    # command's critical path
    from lossbench.sweep.plan import Plan
    from lossbench.sweep.plots import sweep_figures
    from lossbench.sweep.report import RESULTS_FILE, ParentRun
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
    if request.get("run_id"):
        parent = ParentRun.connect(request["uri"], request["run_id"])
        parent.end(study, plan, request["status"], figures, sweep_dir / RESULTS_FILE)
    print(f"summary of {plan.study_name}: {len(figures)} figures", flush=True)
    return code


def main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        os.nice(5)  # the user's next command comes first
    except OSError:
        pass
    return run(request)


if __name__ == "__main__":
    sys.exit(main())
