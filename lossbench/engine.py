"""The training engine: one jitted call per epoch, hooks between epochs.

``train_epoch`` runs every minibatch of an epoch in compiled code: gather rows, forward, loss and
its gradient, backward, optimizer step. Its kernels arrive as first-class function values
(``lossbench.kernels.KernelRef``), so it compiles once per dtype per machine and is loaded from
numba's disk cache afterwards, whichever losses, optimizers and models a run combines. The
epoch loop stays in Python (``train``) so lifecycle hooks (progress, early stopping, tracking,
pruning) run between epochs. A run with a component that gives only a NumPy reference takes the
slow path instead: the same epoch in Python (``lossbench.reference.python_epoch``).
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from lossbench import config as config_mod
from lossbench.data import options_from, prepare
from lossbench.errors import ConfigError, LossbenchError
from lossbench.kernels import kernel_ref
from lossbench.reference import python_epoch, python_evaluate, python_parts
from lossbench.schedules import lr_at

# ---------------------------------------------------------------------------------------------
# compiled parts


@njit(cache=True, nogil=True)
def _count_correct(out, labels, start, order, use_order):
    """Correct predictions in ``out`` (argmax, or logit > 0 for one output column)."""
    m, c = out.shape
    correct = 0
    for i in range(m):
        label = labels[order[start + i]] if use_order else labels[start + i]
        if c == 1:
            pred = 1 if out[i, 0] > 0 else 0
        else:
            pred = 0
            best = out[i, 0]
            for j in range(1, c):
                if out[i, j] > best:
                    best = out[i, j]
                    pred = j
        if pred == label:
            correct += 1
    return correct


@njit(cache=True, nogil=True)
def train_epoch(
    forward, backward, loss, step, params, layout, model_hp, loss_hp, opt_hp, state, grads,
    X, Y, labels, order, batch_size, work, xb, yb, out, dout, t, lr,
):  # fmt: skip
    """One epoch of minibatch training; returns (sum of batch loss x batch size, samples seen,
    correct predictions, step count). Stops at the first non-finite batch loss."""
    n = order.shape[0]
    total = 0.0
    seen = 0
    correct = 0
    with_labels = labels.shape[0] > 0
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        xm = xb[:m]
        ym = yb[:m]
        om = out[:m]
        dm = dout[:m]
        for i in range(m):  # gather the minibatch into contiguous buffers
            r = order[start + i]
            xm[i, :] = X[r]
            ym[i, :] = Y[r]
        forward(params, layout, model_hp, xm, work, om)
        batch_loss = loss(om, ym, loss_hp, dm)
        total += batch_loss * m
        seen += m
        if not math.isfinite(batch_loss):
            break
        if with_labels:
            correct += _count_correct(om, labels, start, order, True)
        backward(params, layout, model_hp, xm, work, dm, grads)
        t += 1
        step(params, grads, state, opt_hp, t, lr)
    return total, seen, correct, t


@njit(cache=True, nogil=True)
def evaluate(
    forward, loss, params, layout, model_hp, loss_hp, X, Y, labels, chunk, work, out, dout
):
    """Loss and correct predictions on a whole set, in chunks of at most ``chunk`` rows;
    returns (sum of chunk loss x chunk size, correct)."""
    n = X.shape[0]
    total = 0.0
    correct = 0
    dummy = np.empty(0, np.int64)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        om = out[:m]
        forward(params, layout, model_hp, X[start : start + m], work, om)
        total += loss(om, Y[start : start + m], loss_hp, dout[:m]) * m
        if labels.shape[0] > 0:
            correct += _count_correct(om, labels, start, dummy, False)
    return total, correct


def warm_up(dtypes=("float32", "float64"), plugin_manager=None) -> list[dict]:
    """Compile, or load from numba's disk cache, what runs use: the fused epoch, the
    evaluation and every registered kernel, in each of ``dtypes``; one row per dtype with the
    seconds it took. After it, a new process starts training without compiling (the cache is
    per installation: ``__pycache__`` beside each module, or ``NUMBA_CACHE_DIR``)."""
    from lossbench.plugins import get_plugin_manager

    pm = plugin_manager or get_plugin_manager()
    rows = []
    for dtype in dtypes:
        t0 = time.perf_counter()
        overrides = ["data=iris", "trainer.epochs=1", "trainer.progress=false", "tracking=none",
                     f"trainer.dtype={dtype}"]  # fmt: skip
        train(overrides=overrides, plugin_manager=pm)
        for group in _KERNEL_GROUPS:
            for spec in pm.registry.components[group].values():
                if not spec.numpy_only:
                    _bind_one(group, spec, dtype)
        rows.append({"dtype": dtype, "seconds": time.perf_counter() - t0})
    return rows


def compile_stats() -> dict[str, dict[str, int]]:
    """Disk-cache hits and compilations of the fused epoch and evaluation in this process."""
    return {
        fn.__name__: {
            "cache_hits": sum(fn.stats.cache_hits.values()),
            "compiled": sum(fn.stats.cache_misses.values()),
        }
        for fn in (train_epoch, evaluate)
    }


# ---------------------------------------------------------------------------------------------
# a run


@dataclass
class Run:
    """A training run: what hooks receive and what ``train`` returns.

    ``history`` has one dict per epoch (epoch, train_loss, val_loss, accuracies for
    classification, lr, epoch_seconds). ``status`` is finished | stopped | diverged | failed |
    interrupted (rejected: bad input found before the first epoch; ``train`` raises then).
    ``params`` maps tensor names (W0, b0, ...) to arrays; ``flat_params`` is the
    flat vector. ``timings`` has setup_seconds, compile_seconds, train_seconds, total_seconds.
    """

    config: Any
    output_dir: Path | None
    specs: dict[str, Any]
    hparams: dict[str, Any]
    dataset: Any = None
    layout: Any = None
    flat_params: np.ndarray | None = None
    history: list[dict] = field(default_factory=list)
    status: str = "running"
    error: str | None = None
    stop_reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    plugin_state: dict[str, Any] = field(default_factory=dict)
    # group -> {"plugin": name, "distribution": "name version" or a file path}
    sources: dict[str, dict[str, str]] = field(default_factory=dict)
    # "fused" (the jitted epoch) or "numpy" (the slow path: a component has no numba kernel)
    path: str = "fused"
    # where the run is, or where it ended: setup, start (on_run_start hooks), compile, train
    phase: str = "setup"

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The model's outputs (logits or values) for the rows of ``X``, already scaled as the
        training data (e.g. ``run.dataset.X_val``), with the current parameters."""
        model = self.specs["model"]
        X = np.ascontiguousarray(X, dtype=self.flat_params.dtype)
        out = np.empty((len(X), self.dataset.n_outputs), dtype=X.dtype)
        work = np.empty(self.layout.workspace(len(X)), dtype=X.dtype)
        hp = np.asarray(self.layout.hp, dtype=X.dtype)
        if model.numpy_only:
            return model.reference_forward(self.flat_params, self.layout.layout, hp, X)
        model.forward(self.flat_params, self.layout.layout, hp, X, work, out)
        return out

    @property
    def params(self) -> dict[str, np.ndarray]:
        return self.layout.views(self.flat_params) if self.layout else {}

    @property
    def best_epoch(self) -> int | None:
        vals = [h["val_loss"] for h in self.history if math.isfinite(h["val_loss"])]
        if not vals:
            return None
        best = min(vals)
        return next(h["epoch"] for h in self.history if h["val_loss"] == best)

    def history_frame(self):
        import pandas as pd

        return pd.DataFrame(self.history)


def _positive_int(value, key, example):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(
            f"{key}={value} is not allowed: it must be a positive integer. Fix: pass e.g. "
            f"{key}={example}."
        )


def _check_trainer(tc) -> None:
    _positive_int(tc.epochs, "trainer.epochs", 50)
    _positive_int(tc.batch_size, "trainer.batch_size", 32)
    if tc.dtype not in config_mod.DTYPES:
        raise ConfigError(
            f"trainer.dtype={tc.dtype!r} is not supported. Choices: "
            f"{', '.join(config_mod.DTYPES)}. Fix: pass trainer.dtype=float32."
        )
    if tc.lr_schedule not in config_mod.LR_SCHEDULES:
        raise ConfigError(
            f"trainer.lr_schedule={tc.lr_schedule!r} is not known. Choices: "
            f"{', '.join(config_mod.LR_SCHEDULES)} (combine any with trainer.warmup_epochs=N). "
            "Fix: pass e.g. trainer.lr_schedule=cosine."
        )
    if tc.warmup_epochs < 0:
        raise ConfigError(
            f"trainer.warmup_epochs={tc.warmup_epochs} must be >= 0. Fix: pass e.g. "
            "trainer.warmup_epochs=5 (0 disables warm-up)."
        )
    if tc.lr_schedule == "step":
        _positive_int(tc.step_size, "trainer.step_size", 10)
    if tc.early_stopping.enabled:
        _positive_int(tc.early_stopping.patience, "trainer.early_stopping.patience", 10)


def _load_init(path: str, layout, params: np.ndarray) -> None:
    """Fill ``params`` from an NPZ weight file holding W0, b0, W1, b1, ... (x @ W + b)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"model.init_from={path!r}: no such file. Fix: pass the model.npz of an earlier run "
            "or a file saved with np.savez(path, W0=..., b0=..., ...)."
        )
    with np.load(p, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    expected = {name: shape for name, (_, shape) in layout.tensors.items()}
    if set(arrays) != set(expected):
        raise ConfigError(
            f"model.init_from={path!r} holds {sorted(arrays)}, but this model needs "
            f"{sorted(expected)}. Fix: use weights saved from a model with the same layers."
        )
    bad = [
        f"{k}: file {arrays[k].shape}, model {shape}"
        for k, shape in expected.items()
        if tuple(arrays[k].shape) != tuple(shape)
    ]
    if bad:
        raise ConfigError(
            f"model.init_from={path!r} has the wrong shapes ({'; '.join(bad)}). Fix: match "
            "model.hidden and the dataset's features/classes to the saved model."
        )
    views = layout.views(params)
    for k, a in arrays.items():
        views[k][...] = a


_KERNEL_GROUPS = ("model", "loss", "optimizer")


@dataclass
class _Kernels:
    forward: Any
    backward: Any
    loss: Any
    step: Any


def _owner(group, spec):
    return f"{group} {spec.name!r} from plugin {spec.plugin!r}"


# which spec attribute holds the kernel of which role
_ROLES = {
    "model": (("forward", "forward"), ("backward", "backward")),
    "loss": (("kernel", "loss"),),
    "optimizer": (("kernel", "optimizer"),),
}


def _bind_one(group, spec, dtype) -> dict:
    """The spec's kernels as KernelRefs (compiled or loaded from the cache), by role."""
    owner = _owner(group, spec)
    return {
        role: kernel_ref(getattr(spec, attr), role, dtype, owner=owner)
        for attr, role in _ROLES[group]
    }


def _bind_kernels(specs, dtype) -> _Kernels:
    refs = {}
    for group in _KERNEL_GROUPS:
        refs.update(_bind_one(group, specs[group], dtype))
    return _Kernels(refs["forward"], refs["backward"], refs["loss"], refs["optimizer"])


class _SigtermAsInterrupt:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only)."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


def train(cfg=None, *, overrides=(), output_dir=None, plugin_manager=None) -> Run:
    """Train once and return the ``Run`` (history, parameters, timings, status).

    ``cfg`` is a composed config (e.g. from ``lossbench.compose``); without it the config is
    composed from ``overrides`` as on the command line. ``output_dir`` receives history.csv,
    model.npz, loss_curve.png and summary.json (None: nothing is written). Raises
    ``LossbenchError`` for bad input, before any file is written.

    Once the config is accepted the run has started: whatever ends it (bad input found while
    loading the data, Ctrl-C or SIGTERM while loading, compiling, training or writing outputs,
    a failing plugin), ``on_run_end`` is called exactly once, so the outputs and the tracking
    record say how it ended and in which phase (``run.phase``).
    """
    from lossbench.plugins import get_plugin_manager

    t_start = time.perf_counter()
    pm = plugin_manager or get_plugin_manager()
    if cfg is None:
        cfg = config_mod.compose(overrides, registry=pm.registry)
    specs, hps = _resolve(cfg, pm.registry)
    run = Run(
        config=cfg,
        output_dir=Path(output_dir) if output_dir is not None else None,
        specs=specs,
        hparams=hps,
        sources={g: pm.source_of(specs[g].plugin) for g in config_mod.GROUPS},
        path="numpy" if any(specs[g].numpy_only for g in _KERNEL_GROUPS) else "fused",
    )
    status = None
    try:
        with _SigtermAsInterrupt():
            setup = _set_up(run)
            run.timings["setup_seconds"] = time.perf_counter() - t_start
            # hooks start before compiling so that slow set-up (e.g. the tracking side process)
            # overlaps the compile-or-cache-load of the kernels and the first epochs
            run.phase = "start"
            pm.hook.on_run_start(run=run)
            run.phase = "compile"
            t_compile = time.perf_counter()
            runner = _runner(run, setup)  # compiles or cache-loads the kernels and the epoch
            run.timings["compile_seconds"] = time.perf_counter() - t_compile
            run.phase = "train"
            status = _fit(run, setup, runner, pm)
    except KeyboardInterrupt:
        status = "interrupted"
        run.error = f"interrupted by the user (Ctrl-C or SIGTERM) during {PHASES[run.phase]}"
        raise
    except LossbenchError as exc:
        # bad input found before any epoch ran: the run is refused and leaves no record
        status = "rejected" if not run.history else "failed"
        run.error = str(exc)
        raise
    except BaseException as exc:
        status = "failed"
        run.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        run.status = status or "failed"
        run.timings.setdefault("compile_seconds", 0.0)
        run.timings["train_seconds"] = sum(h["epoch_seconds"] for h in run.history)
        run.timings["total_seconds"] = time.perf_counter() - t_start
        _run_end_hooks(pm, run)
    return run


# what a run is doing, for messages: "interrupted during compiling the kernels"
PHASES = {
    "setup": "set-up (loading the data, building the model)",
    "start": "the on_run_start hooks",
    "compile": "compiling (or loading from the cache) the kernels",
    "train": "training",
}


def _resolve(cfg, registry) -> tuple[dict, dict]:
    """The specs and hyperparameters the config names, checked (bad input raises here)."""
    specs, hps = {}, {}
    for group in config_mod.GROUPS:
        specs[group] = registry.get(group, cfg[group].name)
        hps[group] = config_mod.hparams(specs[group], cfg[group])
    _check_trainer(cfg.trainer)
    for group in ("loss", "optimizer"):
        if specs[group].check is not None:
            specs[group].check(hps[group])
    return specs, hps


@dataclass
class _Setup:
    """Everything the epochs need besides the kernels: arrays in the run's dtype."""

    dtype: np.dtype
    state: np.ndarray
    grads: np.ndarray
    model_hp: np.ndarray
    loss_hp: np.ndarray
    opt_hp: np.ndarray
    base_lr: float
    batch: int
    chunk: int
    order: np.ndarray
    rng: np.random.Generator


def _set_up(run: Run) -> _Setup:
    """Load and prepare the data, build and initialise the model and the optimizer state."""
    cfg, specs, hps = run.config, run.specs, run.hparams
    tc = cfg.trainer
    dtype = np.dtype(tc.dtype)
    split_ss, init_ss, shuffle_ss, data_ss = np.random.SeedSequence(int(cfg.seed)).spawn(4)
    data_seed = int(data_ss.generate_state(1)[0])
    dataset = specs["data"].load(hps["data"], data_seed)
    loss_spec = specs["loss"]
    prep = prepare(
        dataset, options_from(hps["data"]), loss_spec.target, loss_spec.name, dtype,
        np.random.default_rng(split_ss),
    )  # fmt: skip
    run.dataset = prep

    layout = specs["model"].build(hps["model"], prep.X_train.shape[1], prep.n_outputs)
    params = np.empty(layout.n_params, dtype=np.float64)
    layout.init(np.random.default_rng(init_ss), params)
    init_from = getattr(hps["model"], "init_from", None)
    if init_from:
        _load_init(init_from, layout, params)
    run.layout, run.flat_params = layout, params.astype(dtype)
    opt_spec = specs["optimizer"]
    state = np.zeros((opt_spec.state_rows, layout.n_params), dtype=dtype)
    if opt_spec.init_state is not None:
        opt_spec.init_state(state, hps["optimizer"])
    vec = lambda values: np.asarray(values, dtype=dtype).reshape(-1)  # noqa: E731
    n_train = len(prep.X_train)
    batch = min(int(tc.batch_size), n_train)
    return _Setup(
        dtype=dtype,
        state=state,
        grads=np.zeros(layout.n_params, dtype=dtype),
        model_hp=vec(layout.hp),
        loss_hp=vec(loss_spec.pack(hps["loss"])),
        opt_hp=vec(opt_spec.pack(hps["optimizer"])),
        base_lr=float(hps["optimizer"].lr) if hasattr(hps["optimizer"], "lr") else 1.0,
        batch=batch,
        chunk=min(max(batch, 1024), max(len(prep.X_val), 1)),
        order=np.arange(n_train, dtype=np.int64),
        rng=np.random.default_rng(shuffle_ss),
    )


@dataclass
class _Runner:
    """How this run's epochs run: ``epoch(t, lr) -> (loss sum, seen, correct, t)`` and
    ``evaluate() -> (loss sum, correct)``, on the fused path or the slow path."""

    epoch: Any
    evaluate: Any


def _runner(run: Run, s: _Setup) -> _Runner:
    """The one place that picks how epochs run: the fused jitted epoch, or the slow path (a
    Python epoch over NumPy references) when a component has no numba kernel."""
    prep, layout, params = run.dataset, run.layout, run.flat_params
    n_out, dtype = prep.n_outputs, s.dtype
    if run.path == "numpy":
        parts = python_parts(run.specs, layout, n_out)

        def epoch(t, lr):
            return python_epoch(
                parts, params, layout.layout, s.model_hp, s.loss_hp, s.opt_hp, s.state,
                prep.X_train, prep.Y_train, prep.labels_train, s.order, s.batch, t, lr,
            )  # fmt: skip

        def evaluate_():
            return python_evaluate(
                parts, params, layout.layout, s.model_hp, s.loss_hp, prep.X_val, prep.Y_val,
                prep.labels_val, s.chunk,
            )  # fmt: skip

        return _Runner(epoch, evaluate_)

    buf = lambda rows, cols: np.empty((rows, cols), dtype=dtype)  # noqa: E731
    kernels = _bind_kernels(run.specs, str(dtype))  # compiles or cache-loads each kernel
    epoch_args = (
        kernels.forward, kernels.backward, kernels.loss, kernels.step, params, layout.layout,
        s.model_hp, s.loss_hp, s.opt_hp, s.state, s.grads, prep.X_train, prep.Y_train,
        prep.labels_train, s.order, s.batch, np.empty(layout.workspace(s.batch), dtype=dtype),
        buf(s.batch, prep.X_train.shape[1]), buf(s.batch, prep.Y_train.shape[1]),
        buf(s.batch, n_out), buf(s.batch, n_out),
    )  # fmt: skip
    eval_args = (
        kernels.forward, kernels.loss, params, layout.layout, s.model_hp, s.loss_hp, prep.X_val,
        prep.Y_val, prep.labels_val, s.chunk, np.empty(layout.workspace(s.chunk), dtype=dtype),
        buf(s.chunk, n_out), buf(s.chunk, n_out),
    )  # fmt: skip
    _ensure_compiled(train_epoch, (*epoch_args, 0, dtype.type(s.base_lr)))
    _ensure_compiled(evaluate, eval_args)
    return _Runner(lambda t, lr: train_epoch(*epoch_args, t, lr), lambda: evaluate(*eval_args))


def _fit(run: Run, s: _Setup, runner: _Runner, pm) -> str:
    """The epoch loop: one epoch (forward, loss, backward, step for every minibatch), one
    validation pass, the metrics into the history, the on_epoch_end hooks; returns the status."""
    tc, prep = run.config.trainer, run.dataset
    n_val = len(prep.X_val)
    t = 0
    for epoch in range(int(tc.epochs)):
        lr = lr_at(epoch, s.base_lr, tc)
        if tc.shuffle:
            s.rng.shuffle(s.order)
        t0 = time.perf_counter()
        total, seen, correct, t = runner.epoch(t, s.dtype.type(lr))
        val_total, val_correct = runner.evaluate()
        metrics = {"epoch": epoch, "train_loss": total / seen, "val_loss": val_total / n_val}
        if prep.task == "classification":
            metrics["train_accuracy"] = correct / seen
            metrics["val_accuracy"] = val_correct / n_val
        metrics["lr"] = lr
        metrics["epoch_seconds"] = time.perf_counter() - t0
        run.history.append(metrics)
        if not (math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])):
            run.error = (
                f"the loss became non-finite in epoch {epoch} (train_loss="
                f"{metrics['train_loss']}, val_loss={metrics['val_loss']}) with lr={lr:g}; "
                "training stopped. Try a smaller optimizer.lr."
            )
            return "diverged"
        reasons = [r for r in pm.hook.on_epoch_end(run=run, epoch=epoch, metrics=metrics) if r]
        if reasons:
            run.stop_reason = "; ".join(map(str, reasons))
            return "stopped"
    return "finished"


def _ensure_compiled(dispatcher, args) -> None:
    """Compile (or load from the disk cache) ``dispatcher`` for ``args`` before timing epochs."""
    from numba import typeof

    sig = tuple(typeof(a) for a in args)
    if sig not in dispatcher.overloads:
        dispatcher.compile(sig)


def _run_end_hooks(pm, run) -> None:
    """Call every on_run_end implementation; one failing does not skip the others.

    A first Ctrl-C or SIGTERM while they run (writing the outputs, ending the MLflow run) is
    held until they are done, so the run's record is complete, and then raised; a second one
    interrupts at once."""
    import warnings

    with _HoldInterrupts() as held:
        for impl in reversed(pm.hook.on_run_end.get_hookimpls()):
            try:
                impl.function(run=run, status=run.status)
            except LossbenchError as exc:
                warnings.warn(f"on_run_end of {impl.plugin_name}: {exc}", stacklevel=2)
            except Exception as exc:  # a plugin bug must not hide the run's own outcome
                warnings.warn(
                    f"on_run_end of plugin {impl.plugin_name!r} raised {type(exc).__name__}: {exc}",
                    stacklevel=2,
                )
    if held.signal is not None and sys.exc_info()[0] is None:
        raise KeyboardInterrupt(held.signal)


class _HoldInterrupts:
    """Within the block (main thread only), the first SIGINT or SIGTERM is noted, not raised;
    a second one raises KeyboardInterrupt at once. ``signal`` names the first one held."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.signal, self.old = None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._note)
        return self

    def _note(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.signal = signal.Signals(signum).name
        print(
            f"lossbench: {self.signal} received while the run's outputs are written; "
            "finishing them (press Ctrl-C again to abort now)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        return False


def summary(run: Run) -> dict:
    """The numbers a person wants at the end of a run."""
    last = run.history[-1] if run.history else {}
    best = run.best_epoch
    out = {
        "status": run.status,
        "epochs": len(run.history),
        "best_epoch": best,
        "best_val_loss": run.history[best]["val_loss"] if best is not None else None,
        "final": {k: v for k, v in last.items() if k not in ("epoch",)},
        "timings": dict(run.timings),
        "output_dir": str(run.output_dir) if run.output_dir else None,
    }
    if run.status not in ("finished", "stopped"):
        out["phase"] = run.phase  # where it ended: setup, start, compile or train
    if run.error:
        out["error"] = run.error
    if run.stop_reason:
        out["stop_reason"] = run.stop_reason
    return out


__all__ = ["Run", "train", "train_epoch", "evaluate", "compile_stats", "summary"]
