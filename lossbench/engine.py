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
    interrupted. ``params`` maps tensor names (W0, b0, ...) to arrays; ``flat_params`` is the
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


def _bind_kernels(specs, dtype) -> _Kernels:
    model, loss, opt = specs["model"], specs["loss"], specs["optimizer"]
    return _Kernels(
        forward=kernel_ref(model.forward, "forward", dtype, owner=_owner("model", model)),
        backward=kernel_ref(model.backward, "backward", dtype, owner=_owner("model", model)),
        loss=kernel_ref(loss.kernel, "loss", dtype, owner=_owner("loss", loss)),
        step=kernel_ref(opt.kernel, "optimizer", dtype, owner=_owner("optimizer", opt)),
    )


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
    """
    from lossbench.plugins import get_plugin_manager

    t_start = time.perf_counter()
    pm = plugin_manager or get_plugin_manager()
    if cfg is None:
        cfg = config_mod.compose(overrides, registry=pm.registry)
    specs, hps = {}, {}
    for group in config_mod.GROUPS:
        specs[group] = pm.registry.get(group, cfg[group].name)
        hps[group] = config_mod.hparams(specs[group], cfg[group])
    tc = cfg.trainer
    _check_trainer(tc)
    for group in ("loss", "optimizer"):
        if specs[group].check is not None:
            specs[group].check(hps[group])
    dtype = np.dtype(tc.dtype)
    seed = int(cfg.seed)
    split_ss, init_ss, shuffle_ss, data_ss = np.random.SeedSequence(seed).spawn(4)
    data_seed = int(data_ss.generate_state(1)[0])
    dataset = specs["data"].load(hps["data"], data_seed)
    loss_spec = specs["loss"]
    prep = prepare(
        dataset, options_from(hps["data"]), loss_spec.target, loss_spec.name, dtype,
        np.random.default_rng(split_ss),
    )  # fmt: skip

    model_spec = specs["model"]
    layout = model_spec.build(hps["model"], prep.X_train.shape[1], prep.n_outputs)
    params = np.empty(layout.n_params, dtype=np.float64)
    layout.init(np.random.default_rng(init_ss), params)
    init_from = getattr(hps["model"], "init_from", None)
    if init_from:
        _load_init(init_from, layout, params)
    params = params.astype(dtype)
    opt_spec = specs["optimizer"]
    state = np.zeros((opt_spec.state_rows, layout.n_params), dtype=dtype)
    if opt_spec.init_state is not None:
        opt_spec.init_state(state, hps["optimizer"])
    grads = np.zeros(layout.n_params, dtype=dtype)
    vec = lambda values: np.asarray(values, dtype=dtype).reshape(-1)  # noqa: E731
    model_hp, loss_hp = vec(layout.hp), vec(loss_spec.pack(hps["loss"]))
    opt_hp = vec(opt_spec.pack(hps["optimizer"]))
    base_lr = float(hps["optimizer"].lr) if hasattr(hps["optimizer"], "lr") else 1.0

    n_train, n_out = len(prep.X_train), prep.n_outputs
    batch = min(int(tc.batch_size), n_train)
    chunk = min(max(batch, 1024), max(len(prep.X_val), 1))
    buf = lambda rows, cols: np.empty((rows, cols), dtype=dtype)  # noqa: E731
    work = np.empty(layout.workspace(batch), dtype=dtype)
    xb, yb = buf(batch, prep.X_train.shape[1]), buf(batch, prep.Y_train.shape[1])
    out, dout = buf(batch, n_out), buf(batch, n_out)
    work_val = np.empty(layout.workspace(chunk), dtype=dtype)
    out_val, dout_val = buf(chunk, n_out), buf(chunk, n_out)

    run = Run(
        config=cfg,
        output_dir=Path(output_dir) if output_dir is not None else None,
        specs=specs,
        hparams=hps,
        dataset=prep,
        layout=layout,
        flat_params=params,
        sources={g: pm.source_of(specs[g].plugin) for g in config_mod.GROUPS},
        path="numpy" if any(specs[g].numpy_only for g in _KERNEL_GROUPS) else "fused",
    )
    t_setup = time.perf_counter()
    rng = np.random.default_rng(shuffle_ss)
    order = np.arange(n_train, dtype=np.int64)
    # The one place that picks how epochs run: the fused jitted epoch, or the slow path (a
    # Python epoch over NumPy references) when a component has no numba kernel.
    if run.path == "fused":
        kernels = _bind_kernels(specs, tc.dtype)  # compiles or cache-loads each kernel
        epoch_args = (
            kernels.forward, kernels.backward, kernels.loss, kernels.step, params, layout.layout,
            model_hp, loss_hp, opt_hp, state, grads, prep.X_train, prep.Y_train,
            prep.labels_train, order, batch, work, xb, yb, out, dout, 0, dtype.type(base_lr),
        )  # fmt: skip
        eval_args = (
            kernels.forward, kernels.loss, params, layout.layout, model_hp, loss_hp, prep.X_val,
            prep.Y_val, prep.labels_val, chunk, work_val, out_val, dout_val,
        )  # fmt: skip

        def run_epoch(t, lr):
            return train_epoch(*epoch_args[:-2], t, lr)

        def run_eval():
            return evaluate(*eval_args)

        def compile_epoch():
            _ensure_compiled(train_epoch, epoch_args)
            _ensure_compiled(evaluate, eval_args)

    else:
        parts = python_parts(specs, layout, n_out)

        def run_epoch(t, lr):
            return python_epoch(
                parts, params, layout.layout, model_hp, loss_hp, opt_hp, state, prep.X_train,
                prep.Y_train, prep.labels_train, order, batch, t, lr,
            )  # fmt: skip

        def run_eval():
            return python_evaluate(
                parts, params, layout.layout, model_hp, loss_hp, prep.X_val, prep.Y_val,
                prep.labels_val, chunk,
            )  # fmt: skip

        def compile_epoch():
            pass

    bind_seconds = time.perf_counter() - t_setup
    run.timings["setup_seconds"] = t_setup - t_start

    status = None
    train_seconds = 0.0
    classification = prep.task == "classification"
    try:
        with _SigtermAsInterrupt():
            # hooks start first so that slow set-up (e.g. a tracking client) overlaps the
            # compile-or-cache-load of the epoch and the first epochs
            pm.hook.on_run_start(run=run)
            t_compile = time.perf_counter()
            compile_epoch()
            run.timings["compile_seconds"] = bind_seconds + time.perf_counter() - t_compile
            t = 0
            for epoch in range(int(tc.epochs)):
                lr = lr_at(epoch, base_lr, tc)
                if tc.shuffle:
                    rng.shuffle(order)
                t0 = time.perf_counter()
                total, seen, correct, t = run_epoch(t, dtype.type(lr))
                val_total, val_correct = run_eval()
                seconds = time.perf_counter() - t0
                train_seconds += seconds
                metrics = {
                    "epoch": epoch,
                    "train_loss": total / seen,
                    "val_loss": val_total / len(prep.X_val),
                }
                if classification:
                    metrics["train_accuracy"] = correct / seen
                    metrics["val_accuracy"] = val_correct / len(prep.X_val)
                metrics["lr"] = lr
                metrics["epoch_seconds"] = seconds
                run.history.append(metrics)
                if not (
                    math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])
                ):
                    status = "diverged"
                    run.error = (
                        f"the loss became non-finite in epoch {epoch} (train_loss="
                        f"{metrics['train_loss']}, val_loss={metrics['val_loss']}) with "
                        f"lr={lr:g}; training stopped. Try a smaller optimizer.lr."
                    )
                    break
                reasons = [
                    r for r in pm.hook.on_epoch_end(run=run, epoch=epoch, metrics=metrics) if r
                ]
                if reasons:
                    status = "stopped"
                    run.stop_reason = "; ".join(map(str, reasons))
                    break
        status = status or "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        run.error = "interrupted by the user (Ctrl-C or SIGTERM)"
        raise
    except BaseException as exc:
        status = "failed"
        run.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        run.status = status or "failed"
        run.timings["train_seconds"] = train_seconds
        run.timings["total_seconds"] = time.perf_counter() - t_start
        _run_end_hooks(pm, run)
    return run


def _ensure_compiled(dispatcher, args) -> None:
    """Compile (or load from the disk cache) ``dispatcher`` for ``args`` before timing epochs."""
    from numba import typeof

    sig = tuple(typeof(a) for a in args)
    if sig not in dispatcher.overloads:
        dispatcher.compile(sig)


def _run_end_hooks(pm, run) -> None:
    """Call every on_run_end implementation; one failing does not skip the others."""
    import warnings

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
    if run.error:
        out["error"] = run.error
    if run.stop_reason:
        out["stop_reason"] = run.stop_reason
    return out


__all__ = ["Run", "train", "train_epoch", "evaluate", "compile_stats", "summary"]
