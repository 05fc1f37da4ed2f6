"""The learning-rate range test (``python -m lossbench lr_find``): one short run whose learning
rate rises exponentially every minibatch, the loss recorded at each step, on the fused path.

The ramp: ``lr_i = start * (end / start) ** (i / (steps - 1))`` for ``i = 0 .. steps-1``
(Smith, "Cyclical Learning Rates for Training Neural Networks", 2017, section 3.3; the
"LR range test" of fastai and PyTorch Lightning's ``Tuner.lr_find``). Step ``i`` computes the
minibatch loss ``L_i`` with the current weights, then takes one optimizer step with ``lr_i``.
Minibatches follow the run's shuffled epochs, as many epochs as ``steps`` needs.

Smoothing (an exponential moving average with bias correction, as Lightning's):
``a_i = beta * a_{i-1} + (1 - beta) * L_i``, ``S_i = a_i / (1 - beta ** (i + 1))``. The ramp
stops early once ``S_i > divergence * min(S_0 .. S_{i-1})`` or a loss is not finite.

The suggestion (``suggest``): the learning rate of the steepest descent of the smoothed loss
against ``log lr`` (``argmin dS / d log lr``, by central differences, as Lightning's default),
searched only below the lr of the smallest smoothed loss: the steepest fall is where the
network learns fastest while it is still stable, and it lies well below the point where the
loss turns up. ``min/10`` (a tenth of the lr of the smallest smoothed loss, fastai's old
rule) is reported beside it. Which one to trust is measured against sweeps in docs/sweeps.md.

Each step is a training step: forward in training mode, so a model's buffers (batch norm's
running statistics) are updated once per step, as in training. The ramp is a probe:
``run_ramp`` puts the run's flat vector, parameters and buffers alike, back as it was set up
(fastai's ``lr_find`` restores the model too), so the statistics of the diverging steps never
reach a model.

``lr_ramp`` takes the same first-class kernel values and grouped arguments as
``fused.train_epoch`` (built by ``fused.train_args``) and takes the same minibatch steps
(``fused.batch_loss``, ``fused.batch_update``), with a per-step learning-rate array, so the loop
is compiled once per dtype, not written in Python.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numba import njit

from lossbench.errors import ConfigError, DataError
from lossbench.files import atomic_save, pyplot, save_figure
from lossbench.training import outputs
from lossbench.training.fused import (
    KERNEL_ORDER,
    ROLES,
    batch_loss,
    batch_update,
    bind_all,
    kernel_watch,
    set_mode,
    train_args,
)
from lossbench.training.run import Run
from lossbench.training.setup import Setup, resolve, set_up


@njit(cache=True, nogil=True)
def lr_ramp(
    forward,
    backward,
    loss,
    step,
    model,
    loss_hp,
    optimizer,
    data,
    scratch,
    orders,
    batch_size,
    ramp,
    failed,
):
    """Minibatch steps with ``lrs[i]`` at step ``i`` over the epochs of ``orders`` (one row of
    row indices per epoch), ``ramp`` being ``(lrs, beta, divergence, losses)``; ``losses[i]``
    is step ``i``'s batch loss (before its update). The other arguments are
    ``fused.train_epoch``'s (``fused.train_args``). Returns the steps taken: ``len(lrs)``, or
    fewer when the smoothed loss diverged (see the module) or a loss was not finite (that
    step's loss is recorded, its update not taken), or at once when a kernel raised
    (``failed``, as in ``fused.train_epoch``)."""
    lrs, beta, divergence, losses = ramp
    n_steps = lrs.shape[0]
    n = orders.shape[1]
    avg = 0.0
    best = math.inf
    i = 0
    for e in range(orders.shape[0]):
        order = orders[e]
        for start in range(0, n, batch_size):
            if i >= n_steps:
                return i
            m = min(batch_size, n - start)
            set_mode(model[2], 1.0, i + 1)
            value = batch_loss(
                forward, loss, model, loss_hp, data, scratch, order, start, m, failed
            )
            if failed[0]:
                return i
            losses[i] = value
            if not math.isfinite(value):
                return i + 1
            avg = beta * avg + (1.0 - beta) * value
            smoothed = avg / (1.0 - beta ** (i + 1))
            if smoothed > divergence * best:
                return i + 1
            best = min(best, smoothed)
            batch_update(backward, step, model, optimizer, m, scratch, i + 1, lrs[i], failed)
            if failed[0]:
                return i
            i += 1
    return i


MAX_STEPS = 1_000_000  # lr_find --steps: the arrays it allocates grow with it


@dataclass
class LRFindOptions:
    """The range test's settings (``python -m lossbench lr_find --help``)."""

    start_lr: float = 1e-6
    end_lr: float = 1.0
    steps: int = 200  # digits at batch 32: 4.5 epochs
    divergence: float = 4.0
    beta: float = 0.9  # 0.98 (Lightning's) lagged the loss by tens of steps: suggestions 3-6x high

    def check(self) -> None:
        """Bad values raise a ConfigError naming the option, the rule and a fix."""
        rules = [
            ("--start-lr", self.start_lr, self.start_lr > 0, "it must be > 0", "1e-6"),
            ("--end-lr", self.end_lr, self.end_lr > self.start_lr,
             f"it must be larger than --start-lr ({self.start_lr:g})", "1"),
            # a range test is a few hundred minibatches; a billion asked for terabytes
            ("--steps", self.steps, 10 <= self.steps <= MAX_STEPS,
             f"it must be between 10 and {MAX_STEPS}", "200"),
            ("--divergence", self.divergence, self.divergence > 1,
             "it must be > 1 (stop once the smoothed loss exceeds this times its minimum)", "4"),
            ("--beta", self.beta, 0 <= self.beta < 1, "it must lie in [0, 1)", "0.98"),
        ]  # fmt: skip
        for flag, value, ok, rule, example in rules:
            if not ok or not math.isfinite(value):
                raise ConfigError(f"lr_find {flag} {value} is not allowed: {rule}. Fix: pass "
                                  f"e.g. {flag} {example}.")  # fmt: skip

    def ramp(self) -> np.ndarray:
        """The learning rate of every step (float64)."""
        i = np.arange(self.steps, dtype=np.float64)
        return self.start_lr * (self.end_lr / self.start_lr) ** (i / (self.steps - 1))


@dataclass
class LRFindResult:
    """What the range test measured and suggests."""

    lrs: np.ndarray  # the steps taken
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float | None
    min_over_10: float | None
    diverged: bool
    rule: str = field(default="steepest descent of the smoothed loss against log(lr), below "
                      "the lr of its minimum")  # fmt: skip


def smooth(losses: np.ndarray, beta: float) -> np.ndarray:
    """The bias-corrected moving average of the module (what ``lr_ramp`` compares)."""
    out, avg = np.empty(len(losses)), 0.0
    for i, value in enumerate(losses):
        avg = beta * avg + (1.0 - beta) * value
        out[i] = avg / (1.0 - beta ** (i + 1))
    return out


SKIP = 10  # the first steps' average is a few noisy batches: its slope means nothing


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float | None, float | None]:
    """(steepest-descent lr, min/10 lr), see the module; None when too few steps."""
    finite = np.isfinite(smoothed)
    lrs, smoothed = lrs[finite], smoothed[finite]
    if len(smoothed) <= SKIP:
        return None, None
    low = int(np.argmin(smoothed))
    min_over_10 = float(lrs[low] / 10)
    if low < SKIP + 3:
        return None, min_over_10
    slope = np.gradient(smoothed[SKIP : low + 1], np.log(lrs[SKIP : low + 1]))
    return float(lrs[SKIP + int(np.argmin(slope))]), min_over_10


def run_ramp(run, s: Setup, options: LRFindOptions, restore: bool = True) -> LRFindResult:
    """The range test on a set-up run (``setup.set_up``): the ramp on the fused path; the
    run's parameters and buffers are put back afterwards (unless not ``restore``: the tests
    read the weights the ramp reached)."""
    if run.path != "fused":
        slow = [f"{g} {run.specs[g].name}" for g in ROLES if run.specs[g].numpy_only]
        raise ConfigError(
            f"lr_find runs on the fused path, but {', '.join(slow)} has no numba kernel (NumPy "
            "only). Fix: choose components with kernels, or give the plugin a kernel."
        )
    k = bind_all(run.specs, s.dtype)
    n_rows = len(s.epoch_order())  # a short last batch batch norm cannot take is left out
    orders = np.empty((math.ceil(options.steps / math.ceil(n_rows / s.batch)), n_rows), np.int64)
    for e in range(len(orders)):  # the epochs' orders, as training shuffles them
        orders[e] = s.next_epoch_order(bool(run.config.trainer.shuffle))[:n_rows]
    lrs = options.ramp()  # float64, as every kernel takes its lr (plugin interface 2)
    losses = np.full(options.steps, np.nan)
    watch = kernel_watch(run.specs)  # a kernel that raises: PluginFailure naming it
    ramp = (lrs, float(options.beta), float(options.divergence), losses)
    args = (*[k[r] for r in KERNEL_ORDER], *train_args(run, s), orders, s.batch, ramp)
    before = run.flat_params.copy()  # the parameters and the buffers (running statistics)
    try:
        done = watch.call(lr_ramp, *args, watch.flag)
    finally:  # the ramp is a probe: the run keeps the model it was set up with
        if restore:
            np.copyto(run.flat_params, before)
    lrs64, losses = lrs[:done], losses[:done]
    smoothed = smooth(losses, options.beta)
    steepest, min_over_10 = suggest(lrs64, smoothed)
    return LRFindResult(lrs64, losses, smoothed, steepest, min_over_10, done < options.steps)


def find_lr(cfg, options: LRFindOptions, output_dir, pm) -> tuple:
    """Set up the run ``cfg`` describes, run the ramp, write ``lr_find.csv``,
    ``lr_find.json`` and ``lr_find.png`` into ``output_dir``; returns (run, result, files).
    Bad input raises a ConfigError before anything is written."""
    options.check()
    specs, hp = resolve(cfg, pm.registry)
    run = Run(config=cfg, output_dir=Path(output_dir), specs=specs, options=hp,
              sources={g: pm.source_of(specs[g].plugin) for g in specs},
              path="numpy" if any(specs[g].numpy_only for g in ROLES) else "fused")  # fmt: skip
    s = set_up(run)
    t0 = time.perf_counter()
    result = run_ramp(run, s, options)
    run.timings["train_seconds"] = time.perf_counter() - t0
    if not math.isfinite(result.losses[0]):  # before any update: not the learning rate
        raise DataError(
            f"the loss was not finite at the first step of lr_find (loss={result.losses[0]}), "
            "before any update, so no learning rate is to blame: the data or the model are "
            "(values too large for the run's arithmetic, or a plugin's loss). Nothing was "
            "written. Fix: standardise the data (data.standardize=true), rescale huge columns, "
            "or check the loss with a short run (python -m lossbench trainer.epochs=1 ...)."
        )
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files = [write_table(folder / "lr_find.csv", result),
             write_result(folder / "lr_find.json", result, options),
             plot(folder / "lr_find.png", result, outputs.run_title(run))]  # fmt: skip
    return run, result, files


def write_table(path: Path, r: LRFindResult) -> Path:
    """step, lr, loss, smoothed_loss: one row per step taken."""
    rows = ["step,lr,loss,smoothed_loss"] + [
        f"{i},{lr!r},{loss!r},{sm!r}" for i, (lr, loss, sm) in
        enumerate(zip(r.lrs.tolist(), r.losses.tolist(), r.smoothed.tolist(), strict=True))
    ]  # fmt: skip
    atomic_save(path, lambda tmp: Path(tmp).write_text("\n".join(rows) + "\n"))
    return path


def write_result(path: Path, r: LRFindResult, options: LRFindOptions) -> Path:
    """The suggestion, the rule, the other rule's value and the settings, as JSON."""
    data = {"suggested_lr": r.suggestion, "rule": r.rule, "min_over_10_lr": r.min_over_10,
            "steps": len(r.lrs), "diverged": r.diverged, "options": asdict(options)}  # fmt: skip
    atomic_save(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))
    return path


def plot(path: Path, r: LRFindResult, title: str) -> Path:
    """The smoothed loss (and the raw batch losses, faint) against lr on a log axis, the
    suggestion marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.plot(r.lrs, r.losses, color="0.75", lw=0.8, label="batch loss")
    ax.plot(r.lrs, r.smoothed, lw=2, label="smoothed loss")
    if r.suggestion is not None:
        at = r.smoothed[int(np.argmin(np.abs(r.lrs - r.suggestion)))]
        ax.scatter([r.suggestion], [at], color="red", zorder=3,
                   label=f"suggested lr {r.suggestion:.3g} (steepest descent)")  # fmt: skip
    finite = r.smoothed[np.isfinite(r.smoothed)]
    if len(finite):
        ax.set_ylim(finite.min() - 0.05 * abs(finite.min()), 1.5 * finite[0] + 1e-12)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"lr range test: {title}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return path
