"""What a sweep's trials say together, for its table, results file, parent run and
figures: the best trial of each category (each loss, each optimizer, ...: a sweep asking
"which loss" answers with one best per loss), each value with its spread over seeds
(``sweep.repeats``), and how much the pruner decided (a note when most trials were pruned
before they could answer)."""

from __future__ import annotations

import math
from itertools import groupby

import numpy as np
from optuna.trial import TrialState

from lossbench.sweep.study import counted, trained


def categories(plan) -> list[str]:
    """The swept keys whose values are categories (names, not numbers): loss, optimizer, ..."""
    return list(plan.categories)


def shown(study) -> list:
    """The trials a person sees (lost ones, retried under another number, are left out)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("lossbench_lost")]


def value_text(t, plan, index: int = 0) -> str:
    """A trial's objective, ``0.9652 ± 0.0041 (3 seeds)`` with repeats."""
    if not t.values:
        return "-"
    value = f"{t.values[index]:.4g}"
    per_seed = t.user_attrs.get("repeat_values")
    if index == 0 and per_seed and len(per_seed) > 1:
        value += f" ± {float(np.std(per_seed)):.2g} ({len(per_seed)} seeds)"
    return value


def _better(plan):
    return min if plan.directions[0] == "minimize" else max


def best_per_category(study, plan) -> list[dict]:
    """For each combination of category values, its best completed trial: one row each with
    the values, the best value (and its spread over seeds), the trial, and how many of the
    category's trials completed, were pruned or failed. Empty without categories or with
    several objectives."""
    keys = categories(plan)
    if not keys or len(plan.directions) != 1:
        return []
    rows = []

    def group(t):
        return tuple(str(t.params.get(k)) for k in keys)

    trials = sorted(counted(shown(study)), key=group)
    for values, members in groupby(trials, key=group):
        members = list(members)
        done = [t for t in members if t.state == TrialState.COMPLETE]
        row = {**dict(zip(keys, values, strict=True)), "completed": len(done),
               "pruned": sum(t.state == TrialState.PRUNED for t in members),
               "failed": sum(t.state == TrialState.FAIL for t in members)}  # fmt: skip
        if done:
            best = _better(plan)(done, key=lambda t: t.value)
            row.update(best=best.value, trial=best.number, params=dict(best.params))
            if best.user_attrs.get("repeat_values"):
                row["spread"] = float(np.std(best.user_attrs["repeat_values"]))
        rows.append(row)
    return sorted(rows, key=lambda r: (r.get("best") is None, _rank(plan, r.get("best"))))


def _rank(plan, value):
    if value is None or not math.isfinite(value):
        return math.inf
    return value if plan.directions[0] == "minimize" else -value


def pruning_note(study, plan) -> str | None:
    """Said when more than half of the trained trials were pruned in the first half of their
    epochs: the comparison is then mostly between short curves, decided by the pruner."""
    runs = [t for t in counted(shown(study)) if trained(t)]
    early = []
    for t in runs:
        if t.state != TrialState.PRUNED:
            continue
        ran = len(t.user_attrs.get("val_loss", []))
        planned = int(t.params.get("trainer.epochs", 0)) or t.user_attrs.get("epochs_planned")
        if planned and ran <= planned / 2:
            early.append(ran)
    if not runs or len(early) * 2 <= len(runs):
        return None
    return (
        f"{len(early)} of {len(runs)} trials were pruned in the first half of their epochs "
        f"(most after {int(np.median(early))} epochs): the ranking compares mostly short "
        "curves, decided by the pruner. For a comparison no pruner decides: sweep.pruner=none, "
        "or a later start, e.g. sweep.pruner_warmup_epochs=20."
    )


def close_call_note(study, plan) -> str | None:
    """Said when the best category is not clearly ahead (or when nothing measures that): the
    others whose best lies within the
    noise of the comparison, i.e. the spread of the best trials over seeds (``sweep.repeats``),
    or, for accuracy on one seed, its standard error on the validation rows,
    sqrt(p (1 - p) / n)."""
    rows = [r for r in best_per_category(study, plan) if "best" in r]
    if len(rows) < 2:
        return None
    first = rows[0]
    noise, how = None, ""
    if "spread" in first:
        noise = max(r.get("spread", 0.0) for r in rows)
        how = "the spread of the best trials over seeds"
    elif plan.metrics[0] in ("val_accuracy", "train_accuracy"):
        n = study.trials[first["trial"]].user_attrs.get("val_rows")
        if n:
            p = first["best"]
            noise = math.sqrt(max(p * (1 - p), 1.0 / n) / n)
            how = f"the standard error of an accuracy on {n} validation rows"
    if noise is None:
        return (
            f"with one seed per trial the spread of {plan.metrics[0]} over seeds is unknown, so "
            "how far apart the categories' best are is not measured: sweep.repeats=3 measures "
            "it (the table then shows mean ± spread)."
        )
    tied = [r for r in rows if abs(r["best"] - first["best"]) < noise]
    if len(tied) < 2:
        return None
    names = [", ".join(f"{k}={r[k]}" for k in categories(plan)) for r in tied]
    return (
        f"{' and '.join([', '.join(names[:-1]), names[-1]])} are within {noise:.2g} of each "
        f"other's best {plan.metrics[0]} ({how}): this sweep cannot tell them apart. Run more "
        f"seeds (sweep.repeats={max(3, 2 * plan.repeats)}) or use more validation rows."
    )


def missing_categories(study, plan) -> list[str]:
    """Categories of which no trial completed (their best is a pruned or failed curve)."""
    return [", ".join(f"{k}={r[k]}" for k in categories(plan))
            for r in best_per_category(study, plan) if "best" not in r]  # fmt: skip
