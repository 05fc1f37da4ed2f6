"""What a sweep shows and leaves behind: the progress line, what the parent run is opened and
ended with (the run itself is its tracker's: ``tracking.base.ParentRun``), the results file,
the final table and the summary figures."""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

import yaml
from optuna.trial import TrialState
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from lossbench.files import atomic_write
from lossbench.sweep.compare import (
    best_per_category,
    categories,
    close_call_note,
    missing_categories,
    pruning_note,
    shown,
    value_text,
)
from lossbench.sweep.launchers import SummaryBusy, start_summary
from lossbench.sweep.plots import sweep_figures
from lossbench.sweep.study import (
    READ_FROM,
    RECORD_INCOMPLETE,
    counted,
    still_spooled,
    trained,
)
from lossbench.tracking.base import ParentRecord, SweepParent
from lossbench.tracking.store import http_retries_bounded
from lossbench.urls import mask_text, mask_url

RESULTS_FILE = "optimization_results.yaml"


# ---------------------------------------------------------------------------------------------
# progress


def tally(study, plan) -> dict:
    trials = study.get_trials(deepcopy=False)
    done = counted(trials)
    out = {
        "done": len(done),
        "complete": sum(t.state == TrialState.COMPLETE for t in done),
        "pruned": sum(t.state == TrialState.PRUNED for t in done),
        "failed": sum(t.state == TrialState.FAIL for t in done),
        "running": sum(t.state == TrialState.RUNNING for t in trials),
        "best": None,
    }
    if len(plan.directions) == 1 and out["complete"]:
        out["best"] = study.best_trial
    return out


class Progress:
    """One line: trials done of n_trials, pruned, failed, running, best so far."""

    def __init__(self, study, plan):
        self.study, self.plan = study, plan
        self.live = None
        self.last = ""

    def __enter__(self):
        if sys.stdout.isatty():
            self.live = Live("", refresh_per_second=4, transient=False)
            self.live.start()
        return self

    def text(self) -> str:
        t = tally(self.study, self.plan)
        line = (
            f"trials {t['done']}/{self.plan.n_trials} done ({t['pruned']} pruned, "
            f"{t['failed']} failed), {t['running']} running"
        )
        if t["best"] is not None:
            best = t["best"]
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
            line += (
                f"; best {self.plan.metrics[0]} {best.value:.5g} (trial {best.number}: {params})"
            )
        return line

    def update(self) -> None:
        line = self.text()
        if self.live is not None:
            self.live.update(line)
        elif line != self.last:
            print(line, flush=True)
        self.last = line

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()
        return False


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------------------------------
# the parent run (its tracker's: tracking.base.ParentRun; MLflow's in tracking.mlflow_parent)


def sweep_parent(plan) -> SweepParent:
    """What the study's parent run is opened with: its tags and the sweep's settings."""
    tags = {"lossbench.study": plan.study_name, "lossbench.role": "parent",
            "lossbench.storage": mask_url(plan.storage),
            "lossbench.sweep_dir": plan.sweep_dir}  # fmt: skip
    params = {f"search.{k}": v for k, v in plan.params.items()}
    params["sweep.fixed"] = mask_text(" ".join(plan.fixed)) or "-"
    for key in ("sampler", "pruner", "n_trials", "seed"):
        params[f"sweep.{key}"] = str(getattr(plan, key))
    params["sweep.metric"] = ",".join(plan.metrics)
    params["sweep.direction"] = ",".join(plan.directions)
    return SweepParent(plan.study_name, tags, params)


def parent_record(study, plan, status: str) -> ParentRecord:
    """What the study's parent run is ended with: the tally, the best trial (its value, number
    and values) and the best per category (e.g. ``best_val_accuracy.loss.mse``)."""
    t = tally(study, plan)
    metrics = {f"trials_{k}": float(t[k]) for k in ("complete", "pruned", "failed")}
    params, tags = {}, {"lossbench.status": status}
    if t["best"] is not None:
        best = t["best"]
        metrics[f"best_{plan.metrics[0]}"] = float(best.value)
        metrics["best_trial"] = float(best.number)
        params = {f"best.{k}": str(v) for k, v in best.params.items()}
        tags.update({f"best.{k}": str(v) for k, v in best.params.items()})
    for row in best_per_category(study, plan):
        if "best" in row:
            where = ".".join(f"{k}.{row[k]}" for k in categories(plan))
            metrics[f"best_{plan.metrics[0]}.{where}"] = float(row["best"])
    return ParentRecord(metrics, params, tags)


def end_parent_run(parent, study, plan, status: str) -> None:
    """End the parent run with the study's record and its results file."""
    parent.end(status, parent_record(study, plan, status), [Path(plan.sweep_dir) / RESULTS_FILE])


# ---------------------------------------------------------------------------------------------
# results


def results_dict(study, plan) -> dict:
    t = tally(study, plan)
    out = {
        "name": plan.study_name,
        "storage": mask_url(plan.storage),
        "metric": plan.metrics if len(plan.metrics) > 1 else plan.metrics[0],
        "direction": plan.directions if len(plan.directions) > 1 else plan.directions[0],
        "trials": {k: t[k] for k in ("done", "complete", "pruned", "failed")},
    }

    def describe(trial):
        return {
            "number": trial.number,
            "value": list(trial.values) if len(trial.values) > 1 else trial.value,
            "params": dict(trial.params),
            "overrides": list(trial.user_attrs.get("overrides", [])),
        }

    incomplete = incomplete_records(study)
    if incomplete:  # trained and counted, their MLflow records spooled for a replay
        out["mlflow_records_incomplete"] = [t.number for t in incomplete]
    if plan.n_runs != plan.n_trials:
        out["runs"] = plan.n_runs  # each answers several epoch counts (read from trajectories)
    complete = [x for x in study.get_trials(deepcopy=False) if x.state == TrialState.COMPLETE]
    by_category = best_per_category(study, plan)
    if by_category:
        out["best_per_category"] = by_category
    notes = _answer_notes(study, plan)
    if plan.notes or notes:
        out["notes"] = [*plan.notes, *notes]
    if complete and len(plan.directions) == 1:
        best = study.best_trial
        out["best_value"] = best.value
        out["best_params"] = dict(best.params)
        out["best_overrides"] = list(best.user_attrs.get("overrides", []))
        out["rerun"] = "python -m lossbench " + shlex.join(
            [*plan.rerun_flags, *out["best_overrides"]])  # fmt: skip
        out["best_trial"] = best.number
    elif complete:
        out["pareto_front"] = [describe(x) for x in study.best_trials]
    return out


MAX_ROWS = 40  # the table's rows; every trial is in the study and optimization_results.yaml


def trial_table(study, plan):
    trials = shown(study)
    sign = 1 if plan.directions[0] == "minimize" else -1

    def key(t):
        v = (
            t.values[0]
            if t.values
            else (t.intermediate_values or {}).get(max(t.intermediate_values or {0: 0}), math.inf)
        )
        return (t.state.name != "COMPLETE", sign * v if v is not None else math.inf)

    answers = any(not trained(t) for t in trials)
    title = f"sweep {plan.study_name}: trials by {plan.metrics[0]} ({plan.directions[0]})"
    if len(trials) > MAX_ROWS:
        title += f", the first {MAX_ROWS} of {len(trials)}"
    table = Table(title=title)
    for col in ("trial", "state", *plan.metrics, "epochs", *plan.params):
        table.add_column(col)
    if answers:
        table.add_column("read from")
    for t in sorted(trials, key=key)[:MAX_ROWS]:
        values = [value_text(t, plan, i) for i in range(len(plan.metrics))]
        epochs = str(len(t.user_attrs.get("val_loss", [])))
        params = [_fmt(t.params.get(k, "-")) for k in plan.params]
        row = [str(t.number), t.user_attrs.get("status", t.state.name.lower()), *values, epochs,
               *params]  # fmt: skip
        if answers:
            origin = t.user_attrs.get(READ_FROM)
            row.append(f"trial {origin}" if origin is not None else "")
        table.add_row(*map(escape, row))
    return table


def category_table(study, plan):
    """The best trial of each category (loss, optimizer, ...), or None."""
    rows = best_per_category(study, plan)
    if not rows:
        return None
    keys = categories(plan)
    table = Table(title=f"best {plan.metrics[0]} of each {', '.join(keys)}")
    for col in (*keys, plan.metrics[0], "trial", "completed", "pruned", "failed", "its values"):
        table.add_column(col)
    for r in rows:
        value = "-" if "best" not in r else f"{r['best']:.4g}" + (
            f" ± {r['spread']:.2g}" if "spread" in r else "")  # fmt: skip
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in r.get("params", {}).items()
                           if k not in keys)  # fmt: skip
        cells = (*(str(r[k]) for k in keys), value, str(r.get("trial", "-")),
                 str(r["completed"]), str(r["pruned"]), str(r["failed"]), params)
        table.add_row(*map(escape, cells))
    return table


def finish(study, plan, parent, status: str, crashed: dict[int, str], logs: str = "") -> int:
    """Results file, table, figures and the parent run's end; returns the exit code. ``logs``:
    where the workers' output is (``Launcher.worker_logs``), named when one crashed."""
    sweep_dir = Path(plan.sweep_dir)
    t = tally(study, plan)
    if status == "finished" and (crashed or t["done"] < plan.n_trials):
        status = "failed"  # never "finished" while trials of the budget did not end
    results = sweep_dir / RESULTS_FILE
    data = results_dict(study, plan)
    data["status"] = status
    try:
        atomic_write(results, yaml.safe_dump(data, sort_keys=False))
    except OSError as exc:
        print(f"lossbench: error: could not write {results}: {exc}", file=sys.stderr)
        crashed = {**crashed, -1: "the results could not be written"}
    # piped or in a log: don't squeeze the tables to 80 columns
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    console.print(trial_table(study, plan))
    by_category = category_table(study, plan)
    if by_category is not None:
        console.print(by_category)
    for note in _answer_notes(study, plan):
        console.print(f"note: {note}", markup=False)
    if parent is not None and plan.register_best and t["best"] is not None:
        _register(parent, plan, t["best"])
    _summarize(study, plan, parent, status)
    if "best_overrides" in data:
        console.print(
            f"best {plan.metrics[0]} {data['best_value']:.6g} (trial {data['best_trial']}); "
            f"rerun it with:\n  {data['rerun']}",
            markup=False,  # an override's [..] (model.hidden=[64,32]) is not rich markup
        )
    if results.is_file():
        console.print(f"results: {results}", markup=False)
    return _exit_code(study, plan, status, (crashed, logs), t)


def _answer_notes(study, plan) -> list[str]:
    """What a careful reader should know about this answer: the pruner decided much of it,
    or a category has no completed trial."""
    notes = []
    pruned = pruning_note(study, plan)
    if pruned:
        notes.append(pruned)
    close = close_call_note(study, plan)
    if close:
        notes.append(close)
    missing = missing_categories(study, plan)
    if missing:
        notes.append(f"no trial of {'; '.join(missing)} completed: their best is a pruned or "
                     "failed curve, not an answer. Run more trials (sweep.n_trials) or prune "
                     "later (sweep.pruner_warmup_epochs).")  # fmt: skip
    return notes


def _register(parent, plan, best) -> None:
    """``sweep.register_best``, here rather than in the summary process: the registered version
    exists when the command returns (a script may serve ``models:/NAME@best`` next)."""
    try:
        parent.register_best(plan.register_best, plan.study_name, plan.metrics[0], best)
    except Exception as exc:  # the trials' records are complete; say what is missing
        print(f"lossbench: warning: could not register the best trial's model as "
              f"{plan.register_best!r}: {exc}. Fix the store and run the same command again "
              "(a finished study registers its best trial without training).",
              file=sys.stderr)  # fmt: skip


def _summarize(study, plan, parent, status: str) -> None:
    """The parent run's end, here, before the command returns: a summary process that is
    killed or hangs can then never leave it RUNNING. Then the figures: drawn and logged into
    the ended run by the background summary process (the command does not wait for it; it
    also ends the run if that failed here), or here when it cannot be started; none for an
    interrupted sweep."""
    sweep_dir = Path(plan.sweep_dir)
    ended = parent is None or _end_parent(parent, study, plan, status)
    if status == "interrupted" and ended:
        return
    if status != "interrupted":
        request = {"status": status, "ended": ended, "tracker": plan.parent_tracker,
                   "parent": parent.address() if parent else None}  # fmt: skip
        try:
            start_summary(sweep_dir / "plan.json", sweep_dir, request, plan.summary_wait_seconds)
            return
        except SummaryBusy as exc:  # a hung summary process: say so, never wait forever
            run = f" and the {plan.parent_tracker} parent run" if parent is not None else ""
            print(f"lossbench: warning: the sweep's figures are not drawn: {exc}. The results"
                  f"{run} are complete. Fix: end that process (kill {exc.pid or 'it'}) and run "
                  "the same command again to draw them.", file=sys.stderr)  # fmt: skip
            return
        except OSError as exc:  # e.g. no process or file can be made: do it here
            print(f"lossbench: drawing the figures here ({exc})", file=sys.stderr)
    figures = []
    try:
        if status != "interrupted":
            figures = sweep_figures(study, plan, sweep_dir)
    except Exception as exc:  # figures are a summary; never lose the results over them
        print(f"lossbench: could not draw the sweep figures: {exc}", file=sys.stderr)
    if parent is not None:
        parent.add_files(figures)
        if not ended:
            end_parent_run(parent, study, plan, status)


def _end_parent(parent, study, plan, status: str) -> bool:
    """End the parent run with the sweep's state; False (and why, said) if the store failed."""
    try:
        with http_retries_bounded(parent.retry_seconds):  # a server gone: bounded time
            end_parent_run(parent, study, plan, status)
        return True
    except Exception as exc:  # the summary process (or the next invocation) tries again
        print(f"lossbench: warning: could not end the {plan.parent_tracker} parent run "
              f"{parent.run_id}: {exc}; the summary process tries again",
              file=sys.stderr)  # fmt: skip
        return False


def _exit_code(study, plan, status: str, how_crashed, t: dict) -> int:
    crashed, logs = how_crashed
    if status == "interrupted":
        print("lossbench: sweep interrupted; run the same command to resume", file=sys.stderr)
        return 130
    workers = {i: why for i, why in crashed.items() if i >= 0}
    if workers:
        print(
            f"lossbench: worker(s) {sorted(workers)} ended unexpectedly "
            f"({'; '.join(sorted(set(workers.values())))}{f'; see {logs}' if logs else ''}); "
            "run the same command to resume",
            file=sys.stderr,
        )
    incomplete = incomplete_records(study)
    if incomplete:
        numbers = ", ".join(str(x.number) for x in incomplete[:20])
        more = f" and {len(incomplete) - 20} more" if len(incomplete) > 20 else ""
        first = incomplete[0]
        print(
            f"lossbench: error: {len(incomplete)} trial(s) ({numbers}{more}) trained and count, "
            f"but their MLflow records are incomplete (trial {first.number}: "
            f"{first.user_attrs[RECORD_INCOMPLETE]}). Fix: once the store is back, send what "
            f"it lacks, for every trial and the parent run: python -m lossbench replay "
            f"{plan.sweep_dir}",
            file=sys.stderr,
        )
    if crashed or incomplete:
        return 1
    if t["done"] < plan.n_trials:
        print(f"lossbench: error: {t['done']} of {plan.n_trials} trials ended; run the same "
              "command to resume", file=sys.stderr)  # fmt: skip
        return 1
    if t["failed"] and not t["complete"] and not t["pruned"]:
        print(
            f"lossbench: error: every trial failed ({t['failed']} of {t['done']}); the first, "
            f"{first_failure(study)}. Fix: change what makes it fail (see the trials' "
            "summary.json), then use a new sweep.study_name.",
            file=sys.stderr,
        )
        return 1
    return 0


def incomplete_records(study) -> list:
    """The counted trials whose MLflow record is incomplete (spooled for a replay)."""
    return [x for x in counted(study.get_trials(deepcopy=False)) if still_spooled(x)]


def first_failure(study) -> str:
    """``trial N: why it failed``, for the lowest-numbered failed trial that counted."""
    failed = [x for x in counted(study.get_trials(deepcopy=False)) if x.state == TrialState.FAIL]
    first = min(failed, key=lambda x: x.number)
    why = first.user_attrs.get("error") or "no reason recorded"
    status = first.user_attrs.get("status", "failed")
    return f"trial {first.number}: {status}: {why}"
