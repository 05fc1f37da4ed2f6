"""The sweep's summary figures (matplotlib), each in the sweep's own metric and titled with what
every trial trains (``Plan.subject``):

- ``curves.png``: every trained trial's training loss and its validation metric per epoch, one
  colour per category when the sweep compares categories (a loss, an optimizer), else coloured
  by learning rate; an x where the pruner stopped a trial (and only then a legend for it);
- ``final_vs_lr.png``: the metric each trial ended with against its learning rate;
- ``categories.png`` (when the sweep compares categories): each category's completed trials
  and its best, in the sweep's metric: the answer to "which loss fits the task";
- ``epochs.png`` (when ``trainer.epochs`` is swept): the metric against epochs, one line per
  configuration, its best epoch marked: the answer to "how many epochs are enough";
- ``optimization_history.png``: each trial's value in the order they ran (pruned ones at the
  value they were stopped at), with the best so far;
- ``param_importances.png``: Optuna's parameter importances, drawn only when they carry
  information (at least ``MIN_IMPORTANCE_TRIALS`` completed trials, two parameters or more).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from lossbench.config.schemas import MAXIMIZED
from lossbench.files import pyplot, save_figure
from lossbench.sweep.compare import categories, shown
from lossbench.sweep.study import trained

MIN_IMPORTANCE_TRIALS = 10
LR = "optimizer.lr"


def _runs(study) -> list:
    """Trained trials with curves (answers read from a run repeat its curve: left out)."""
    return [t for t in shown(study) if t.user_attrs.get("val_loss") and trained(t)]


def curve_metric(plan) -> str:
    """The per-epoch curve the figures draw: the sweep's metric when it is per-epoch."""
    metric = plan.metrics[0]
    return metric if metric.startswith(("val_", "train_")) else "val_loss"


class Colours:
    """One colour per category (tab10, with a legend), or a colour scale over the learning
    rate (log) or the trial number."""

    def __init__(self, plt, plan, trials):
        import matplotlib.colors as mcolors  # after pyplot(): the Agg backend is chosen

        self.keys = categories(plan)
        self.by = "category" if self.keys else ("lr" if LR in plan.params else "trial")
        if self.by == "category":
            names = sorted({self.name(t) for t in trials})
            cmap = plt.get_cmap("tab10")
            self.table = {n: cmap(i % 10) for i, n in enumerate(names)}
            return
        values = [self.value(t) for t in trials] or [1.0]
        lo, hi = min(values), max(values)
        self.norm = (mcolors.LogNorm(lo, hi * (1 + 1e-9)) if self.by == "lr" and lo > 0
                     else mcolors.Normalize(lo, hi + 1e-9))  # fmt: skip
        self.cmap = plt.get_cmap("viridis")

    def name(self, t) -> str:
        return ", ".join(str(t.params.get(k)) for k in self.keys)

    def value(self, t) -> float:
        return float(t.params.get(LR, t.number)) if self.by == "lr" else float(t.number)

    def __call__(self, t):
        if self.by == "category":
            return self.table[self.name(t)]
        return self.cmap(self.norm(self.value(t)))

    def finish(self, plt, fig, axes, label_axis) -> None:
        """The legend of the categories, or the colour bar."""
        if self.by == "category":
            handles = [plt.Line2D([], [], color=c, lw=2, label=n) for n, c in self.table.items()]
            label_axis.legend(handles=handles, title=", ".join(self.keys), fontsize=8)
            return
        sm = plt.cm.ScalarMappable(norm=self.norm, cmap=self.cmap)
        fig.colorbar(sm, ax=axes, label="learning rate" if self.by == "lr" else "trial")


def _title(plan, what: str) -> str:
    return f"sweep {plan.study_name}: {what}\n{plan.subject}"


def curves_figure(study, plan, path: Path) -> Path | None:
    trials = _runs(study)
    if not trials:
        return None
    plt = pyplot()
    metric = curve_metric(plan)
    colours = Colours(plt, plan, trials)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110, layout="constrained")
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    for t in trials:
        for ax, key in zip(axes, ("train_loss", metric), strict=True):
            ys = np.asarray(t.user_attrs.get(key, []), dtype=float)
            ax.plot(np.arange(len(ys)), ys, color=colours(t), lw=1, alpha=0.8)
            if t.state == TrialState.PRUNED and len(ys):
                ax.scatter([len(ys) - 1], [ys[-1]], marker="x", color=colours(t), s=30, zorder=3)
    axes[0].set_title("training loss (each loss on its own scale)" if "loss" in colours.keys
                      else "training loss")  # fmt: skip
    axes[1].set_title(f"validation: {metric}")
    for ax, key in zip(axes, ("train_loss", metric), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        if key not in MAXIMIZED:
            _log_axis(ax)
        ax.grid(alpha=0.3)
    if pruned:
        axes[1].scatter([], [], marker="x", color="black", label=f"pruned here ({len(pruned)})")
        axes[1].legend(loc="lower right", fontsize=8)
    _focus(axes[1], metric, [_ended_value(t, plan) for t in trials if t.values])
    fig.suptitle(_title(plan, f"{len(trials)} trials"), fontsize=10)
    colours.finish(plt, fig, axes, axes[0])
    return save_figure(fig, path)


def _log_axis(ax) -> None:
    """A log-scaled y axis labelled with plain numbers (0.2, 0.5, 1), not 2 x 10^-1."""
    from matplotlib.ticker import FuncFormatter  # after pyplot(): the Agg backend is chosen

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < 30:  # a narrow range has few major ticks: label the minor ones
        ax.yaxis.set_minor_formatter(plain)


def _focus(ax, metric: str, finals: list) -> None:
    """Zoom the axis to where the trials ended (the early epochs of a curve, and hopeless
    trials, would squeeze the differences that decide the answer into a few pixels): for a
    metric to maximise, from a bit below the tenth percentile of the final values to the best;
    for a loss, up to 20 times the best."""
    finals = [v for v in finals if v is not None and math.isfinite(v)]
    if not finals:
        return
    if metric in MAXIMIZED:
        lo, hi = float(np.percentile(finals, 10)), max(finals)
        margin = max((hi - lo) * 0.15, 0.005)
        ax.set_ylim(lo - margin, hi + margin)
    elif min(finals) > 0:
        ax.set_ylim(top=min(ax.get_ylim()[1], 20 * min(finals)))


def _ended_value(t, plan) -> float | None:
    """The value a trial ended with: its objective, or for a pruned trial its last curve
    point of the metric."""
    if t.values:
        return float(t.values[0])
    curve = t.user_attrs.get(curve_metric(plan))
    return float(curve[-1]) if curve and plan.metrics[0] == curve_metric(plan) else None


def final_vs_lr_figure(study, plan, path: Path) -> Path | None:
    if LR not in plan.params:
        return None
    trials = [t for t in _runs(study) if LR in t.params and _ended_value(t, plan) is not None]
    if not trials:
        return None
    plt = pyplot()
    colours = Colours(plt, plan, trials)
    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=110, layout="constrained")
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        pts = [t for t in trials if t.state.name == state]
        if pts:
            ax.scatter([t.params[LR] for t in pts], [_ended_value(t, plan) for t in pts],
                       marker=marker, c=[colours(t) for t in pts],
                       label="completed" if state == "COMPLETE" else "pruned (value when stopped)")
    for t in trials:  # the spread over seeds (sweep.repeats)
        per_seed = t.user_attrs.get("repeat_values")
        if per_seed and len(per_seed) > 1:
            ax.vlines(t.params[LR], min(per_seed), max(per_seed), color=colours(t), alpha=0.5)
    ax.set_xscale("log")
    if plan.metrics[0] not in MAXIMIZED:
        _log_axis(ax)
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"{plan.metrics[0]} at the end of the trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if colours.by == "category":
        colours.finish(plt, fig, ax, ax)
    ax.set_title(_title(plan, f"{plan.metrics[0]} against the learning rate"), fontsize=10)
    return save_figure(fig, path)


def epochs_figure(study, plan, path: Path) -> Path | None:
    """How many epochs are enough: the metric against epochs, one line per configuration (a
    trained trial), its best epoch marked."""
    if "trainer.epochs" not in plan.params:
        return None
    trials = _runs(study)
    if not trials:
        return None
    plt = pyplot()
    metric = curve_metric(plan)
    pick = np.argmax if metric in MAXIMIZED else np.argmin
    colours = Colours(plt, plan, trials)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110, layout="constrained")
    for t in trials:
        ys = np.asarray(t.user_attrs.get(metric, []), dtype=float)
        finite = np.where(np.isfinite(ys), ys, np.nan)
        if not np.isfinite(finite).any():
            continue
        epochs = np.arange(1, len(ys) + 1)  # after e epochs: a run of trainer.epochs=e
        ax.plot(epochs, finite, color=colours(t), lw=1.2, alpha=0.9)
        if t.state == TrialState.PRUNED:
            ax.scatter([epochs[-1]], [finite[-1]], marker="x", color=colours(t), s=30)
        best = int(pick(np.nan_to_num(finite, nan=np.inf if metric not in MAXIMIZED else -np.inf)))
        ax.scatter([epochs[best]], [finite[best]], color=colours(t), s=40, zorder=3,
                   edgecolors="black", linewidths=0.6)  # fmt: skip
    ax.scatter([], [], color="white", edgecolors="black", s=40, label="best epoch of the trial")
    ax.set_xlabel("epochs trained (trainer.epochs)")
    ax.set_ylabel(metric)
    if metric not in MAXIMIZED:
        _log_axis(ax)
    _focus(ax, metric, [float(np.nanmin(u)) if metric not in MAXIMIZED else float(np.nanmax(u))
                        for t in trials if len(u := np.asarray(t.user_attrs.get(metric, []),
                                                                 dtype=float))])  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    colours.finish(plt, fig, ax, ax)
    ax.set_title(_title(plan, f"how many epochs: {metric} after each epoch"), fontsize=10)
    return save_figure(fig, path)


def categories_figure(study, plan, path: Path) -> Path | None:
    """Which category wins: each category's completed trials (dots) and its best (a bar with
    its spread over seeds), in the sweep's metric."""
    keys = categories(plan)
    trials = [t for t in shown(study) if t.state == TrialState.COMPLETE and t.values]
    if not keys or not trials or len(plan.directions) != 1:
        return None
    plt = pyplot()
    colours = Colours(plt, plan, trials)
    pick = max if plan.directions[0] == "maximize" else min
    best_of = {n: pick(t.value for t in trials if colours.name(t) == n) for n in colours.table}
    names = sorted(best_of, key=lambda n: -best_of[n] if pick is max else best_of[n])
    fig, ax = plt.subplots(figsize=(max(6.5, 1.8 + 1.1 * len(names)), 4.5), dpi=110,
                           layout="constrained")
    for i, name in enumerate(names):
        members = [t for t in trials if colours.name(t) == name]
        best = pick(members, key=lambda t: t.value)
        spread = best.user_attrs.get("repeat_values")
        ax.bar(i, best.value, color=colours.table[name], alpha=0.35, width=0.6)
        if spread and len(spread) > 1:
            low, high = best.value - min(spread), max(spread) - best.value
            ax.errorbar(i, best.value, yerr=[[low], [high]], color="black", capsize=4)
        jitter = np.linspace(-0.2, 0.2, len(members)) if len(members) > 1 else [0.0]
        ax.scatter(i + np.asarray(jitter), [t.value for t in members], s=12,
                   color=colours.table[name], zorder=3)  # fmt: skip
        top = max(spread) if spread and len(spread) > 1 else best.value
        ax.text(i + 0.08, top, f"{best.value:.4g}", ha="left", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 4 else 0)
    ax.set_xlabel(", ".join(keys))
    ax.set_ylabel(f"{plan.metrics[0]} ({plan.directions[0]})")
    _focus(ax, plan.metrics[0], [t.value for t in trials])
    if plan.metrics[0] not in MAXIMIZED:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(_title(plan, f"best of each {', '.join(keys)} (bars) and every completed trial"),
                 fontsize=9)  # fmt: skip
    return save_figure(fig, path)


def history_figure(study, plan, path: Path) -> Path | None:
    """Each trained trial's value in the order the trials ran, with the best so far."""
    if len(plan.directions) != 1:
        return None
    points = [(t.number, _ended_value(t, plan), t.state) for t in _runs(study)]
    points = [p for p in points if p[1] is not None and math.isfinite(p[1])]
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110, layout="constrained")
    for state, marker, label in ((TrialState.COMPLETE, "o", "completed"),
                                 (TrialState.PRUNED, "x", "pruned (value when stopped)")):
        pts = [(n, v) for n, v, s in points if s == state]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, label=label, s=18)
    done = [(n, v) for n, v, s in points if s == TrialState.COMPLETE]
    if done:
        best = np.minimum.accumulate if plan.directions[0] == "minimize" else np.maximum.accumulate
        ax.step([n for n, _ in done], best([v for _, v in done]), where="post", color="red",
                label="best so far")  # fmt: skip
    ax.set_xlabel("trial")
    ax.set_ylabel(plan.metrics[0])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(_title(plan, f"{plan.metrics[0]} trial after trial"), fontsize=10)
    return save_figure(fig, path)


def importances_figure(study, plan, path: Path) -> Path | None:
    """Optuna's parameter importances (fANOVA), only where they say something: at least
    ``MIN_IMPORTANCE_TRIALS`` completed trials and two parameters or more."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(plan.directions) != 1 or len(plan.params) < 2 or len(complete) < MIN_IMPORTANCE_TRIALS:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scores = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError):
            return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.5 + 0.5 * len(scores)), dpi=110, layout="constrained")
    names = list(scores)[::-1]
    ax.barh(names, [scores[n] for n in names])
    ax.set_xlabel(f"importance for {plan.metrics[0]} (fANOVA, {len(complete)} completed trials)")
    ax.set_title(_title(plan, "which parameter matters"), fontsize=10)
    return save_figure(fig, path)


def sweep_figures(study, plan, folder: Path) -> list[Path]:
    made = [
        curves_figure(study, plan, folder / "curves.png"),
        final_vs_lr_figure(study, plan, folder / "final_vs_lr.png"),
        categories_figure(study, plan, folder / "categories.png"),
        epochs_figure(study, plan, folder / "epochs.png"),
        history_figure(study, plan, folder / "optimization_history.png"),
        importances_figure(study, plan, folder / "param_importances.png"),
    ]
    return [p for p in made if p is not None]
