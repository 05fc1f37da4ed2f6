"""The sweep's summary figures (matplotlib): every trial's train and validation curves coloured
by learning rate with pruned trials marked where they stopped, the final metric against the
learning rate, Optuna's optimization history and parameter importances."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from optuna.trial import TrialState

from lossbench.sweep.files import atomic_save


def _plt():
    # start-up: matplotlib (about a second) loads when the figures are drawn, at the end
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _trials(study):
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("val_loss") and not t.user_attrs.get("lossbench_lost")
    ]


def curves_figure(study, plan, path: Path) -> Path | None:
    plt = _plt()
    import matplotlib.colors as mcolors  # after _plt(): the Agg backend is chosen
    trials = _trials(study)
    if not trials:
        return None
    by_lr = "optimizer.lr" in plan.params
    values = [t.params.get("optimizer.lr", t.number) if by_lr else t.number for t in trials]
    if by_lr and min(values) > 0:
        norm = mcolors.LogNorm(min(values), max(values) * (1 + 1e-9))
    else:
        norm = mcolors.Normalize(min(values), max(values) + 1e-9)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110, sharey=True)
    for t, v in zip(trials, values, strict=True):
        color = cmap(norm(v))
        for ax, key in zip(axes, ("train_loss", "val_loss"), strict=True):
            ys = np.asarray(t.user_attrs[key], dtype=float)
            ax.plot(np.arange(len(ys)), ys, color=color, lw=1, alpha=0.8)
            if t.state.name == "PRUNED":
                ax.scatter([len(ys) - 1], [ys[-1]], marker="x", color=color, s=30, zorder=3)
    for ax, title in zip(axes, ("train loss", "validation loss"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (x: pruned here)")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=axes, label="learning rate" if by_lr else "trial")
    fig.suptitle(f"sweep {plan.study_name}: {len(trials)} trials")
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    """Save and close a figure; the file is complete or absent."""
    try:
        atomic_save(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path


def final_vs_lr_figure(study, plan, path: Path) -> Path | None:
    plt = _plt()
    if "optimizer.lr" not in plan.params:
        return None
    trials = [t for t in _trials(study) if "optimizer.lr" in t.params]
    if not trials:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=110)
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x"), ("FAIL", "s")):
        pts = [(t.params["optimizer.lr"], t.user_attrs["val_loss"][-1]) for t in trials
               if t.state.name == state]  # fmt: skip
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, ys, marker=marker, label=state.lower())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("val_loss at the last epoch run")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(plt, fig, path)


def optuna_figures(study, plan, folder: Path) -> list[Path]:
    plt = _plt()
    from optuna.visualization import matplotlib as ovm  # needs matplotlib, loaded by _plt()

    out = []
    if len(plan.directions) != 1:
        return out
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = [("optimization_history.png", ovm.plot_optimization_history)]
    if len(complete) >= 2 and plan.params:
        plots.append(("param_importances.png", ovm.plot_param_importances))
    for name, plot in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            try:
                ax = plot(study)
            except (ValueError, RuntimeError):
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        fig.set_dpi(110)
        out.append(_save(plt, fig, folder / name))
    return out


def sweep_figures(study, plan, folder: Path) -> list[Path]:
    made = [
        curves_figure(study, plan, folder / "curves.png"),
        final_vs_lr_figure(study, plan, folder / "final_vs_lr.png"),
    ]
    return [p for p in made if p is not None] + optuna_figures(study, plan, folder)
