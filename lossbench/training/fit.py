"""Training one run: ``train`` sets it up, starts the hooks, picks the fused or slow path, and
runs the fit loop (forward -> loss -> backward -> step for every minibatch, then evaluate, then
the hooks), with exactly one ``on_run_end`` whatever ends the run."""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path

from lossbench.config import GROUPS, compose
from lossbench.config.schemas import metrics_for
from lossbench.errors import ConfigError, LossbenchError, PluginFailure
from lossbench.kernels import compile_report
from lossbench.plugins import get_plugin_manager
from lossbench.signals import HoldInterrupts, KeepInterrupts, SigtermAsInterrupt
from lossbench.training import crash
from lossbench.training.fused import ROLES, bind, evaluate, fused_runner, train_epoch
from lossbench.training.metrics import common_metrics
from lossbench.training.run import PHASES, Run
from lossbench.training.schedules import schedule_of
from lossbench.training.setup import Runner, Setup, resolve, set_up
from lossbench.training.slow import slow_runner


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
    t_start = time.perf_counter()
    pm = plugin_manager or get_plugin_manager()
    if cfg is None:
        cfg = compose(overrides, registry=pm.registry)
    specs, options = resolve(cfg, pm.registry)
    run = Run(
        config=cfg,
        output_dir=Path(output_dir) if output_dir is not None else None,
        specs=specs,
        options=options,
        sources={g: pm.source_of(specs[g].plugin) for g in GROUPS},
        path="numpy" if any(specs[g].numpy_only for g in ROLES) else "fused",
        monitor=str(cfg.trainer.early_stopping.monitor),
        keep_weights=str(cfg.trainer.get("keep_weights", "best")),
        trackers=pm.registry.trackers_of(cfg.get("tracking")),
    )
    status = "failed"
    try:
        with SigtermAsInterrupt(), KeepInterrupts() as interrupts:
            status = _stages(run, pm, t_start, interrupts)
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
        run.error = str(exc) if isinstance(exc, PluginFailure) else f"{type(exc).__name__}: {exc}"
        raise
    finally:
        run.status = status
        run.restore_kept()  # the best epoch's weights (trainer.keep_weights), for the outputs
        run.timings.setdefault("compile_seconds", 0.0)
        run.timings["train_seconds"] = sum(h["epoch_seconds"] for h in run.history)
        run.timings["total_seconds"] = time.perf_counter() - t_start
        crash.disarm(run)
        failure = _run_end_hooks(pm, run)
    if failure is not None:  # the run ended well, then a plugin's on_run_end raised
        raise failure
    return run


def _stages(run: Run, pm, t_start: float, interrupts: KeepInterrupts) -> str:
    """Set-up, the on_run_start hooks, compiling, the fit loop; returns the status."""
    setup = set_up(run)
    check_monitor(run)
    run.timings["setup_seconds"] = time.perf_counter() - t_start
    # hooks start before compiling so that slow set-up (e.g. the tracking side process)
    # overlaps the compile-or-cache-load of the kernels and the first epochs
    run.phase = "start"
    pm.hook.on_run_start(run=run)
    run.phase = "compile"
    crash.arm(run)  # from here compiled code runs: RUN_DIR/crash.log names it if it crashes
    t_compile = time.perf_counter()
    kernels = [
        getattr(run.specs[g], attr) for g in ROLES for attr, _ in ROLES[g]
        if getattr(run.specs[g], attr) is not None
    ]  # fmt: skip
    epoch_functions = [train_epoch, evaluate] if run.path == "fused" else []
    with compile_report(epoch_functions + kernels) as run.compile:
        if run.path == "numpy":
            for group in ROLES:  # the kernels the slow path calls: compiled here, not in epoch 0
                if not run.specs[group].numpy_only:
                    bind(group, run.specs[group], str(setup.dtype))
            runner = slow_runner(run, setup)
        else:
            runner = fused_runner(run, setup)
    interrupts.raise_pending()  # one that numba's compiler callbacks dropped
    run.timings["compile_seconds"] = time.perf_counter() - t_compile
    run.phase = "train"
    return fit(run, setup, runner, pm)


def fit(run: Run, s: Setup, runner: Runner, pm) -> str:
    """The epoch loop: one epoch (forward, loss, backward, step for every minibatch), one
    validation pass, the metrics into the history, the on_epoch_end hooks; returns the status."""
    trainer, prep = run.config.trainer, run.dataset
    n_val, t = len(prep.X_val), 0
    # the options read every epoch, read once: an OmegaConf attribute read costs ~5 us, and
    # they were most of the Python work between two epochs (benchmarks/epoch_breakdown.py)
    schedule = schedule_of(run.specs, run.options, trainer)
    shuffle, classification = bool(trainer.shuffle), prep.task == "classification"
    for epoch in range(int(trainer.epochs)):
        lr = schedule.lr(epoch, s.base_lr)
        s.next_epoch_order(shuffle)
        t0 = time.perf_counter()
        total, seen, correct, t = runner.epoch(t, float(lr))
        val_total, val_correct = runner.evaluate()
        metrics = {"epoch": epoch, "train_loss": total / seen, "val_loss": val_total / n_val}
        if classification:
            metrics["train_accuracy"] = correct / seen
            metrics["val_accuracy"] = val_correct / n_val
        metrics.update(common_metrics(s.tally, n_val))
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
        run.note_epoch(metrics)
        try:
            reasons = [r for r in pm.hook.on_epoch_end(run=run, epoch=epoch, metrics=metrics) if r]
        except LossbenchError:  # a hook saying the input is wrong: as before
            raise
        except Exception as exc:  # a plugin bug: the run failed, naming the plugin
            raise hook_failure(pm, "on_epoch_end", exc) from exc
        if reasons:
            run.stop_reason = "; ".join(map(str, reasons))
            return "stopped"
    return "finished"


def check_monitor(run: Run) -> None:
    """``trainer.early_stopping.monitor`` picks the best epoch (whose weights the run keeps,
    and where early stopping counts from): it must be a metric this run records."""
    es, task = run.config.trainer.early_stopping, run.dataset.task
    if (es.enabled or run.keep_weights == "best") and run.monitor not in metrics_for(task):
        uses = "early stopping and the kept weights" if es.enabled else "the kept weights"
        raise ConfigError(
            f"trainer.early_stopping.monitor={run.monitor} picks the best epoch ({uses}), but "
            f"a {task} run does not record it. Choices: {', '.join(metrics_for(task))}. Fix: "
            "pass trainer.early_stopping.monitor=val_loss (or trainer.keep_weights=last)."
        )


def warm_up(dtypes=("float32", "float64"), plugin_manager=None) -> list[dict]:
    """Compile, or load from numba's disk cache, what runs use: the fused epoch, the
    evaluation and every registered kernel, in each of ``dtypes``; one row per dtype with the
    seconds it took. After it, a new process starts training without compiling (the cache is
    per installation: ``__pycache__`` beside each module, or ``NUMBA_CACHE_DIR``)."""
    pm = plugin_manager or get_plugin_manager()
    rows = []
    for dtype in dtypes:
        t0 = time.perf_counter()
        overrides = ["data=iris", "trainer.epochs=1", "trainer.progress=false", "tracking=none",
                     f"trainer.dtype={dtype}"]  # fmt: skip
        train(overrides=overrides, plugin_manager=pm)
        for group in ROLES:
            for spec in pm.registry.components[group].values():
                if not spec.numpy_only:
                    bind(group, spec, dtype)
        rows.append({"dtype": dtype, "seconds": time.perf_counter() - t0})
    return rows


# ---------------------------------------------------------------------------------------------
# ending a run (its signals: lossbench.signals)


def hook_failure(pm, hook: str, exc: BaseException) -> PluginFailure:
    """The ``PluginFailure`` for a lifecycle hook that raised ``exc``: the plugin whose
    implementation is in the traceback, the exception and the fix."""
    impls = {i.function.__code__: i.plugin_name for i in getattr(pm.hook, hook).get_hookimpls()}
    tb, plugin = exc.__traceback__, None
    while tb is not None and plugin is None:
        plugin = impls.get(tb.tb_frame.f_code)
        tb = tb.tb_next
    plugin = plugin or "(unknown)"
    return PluginFailure(
        f"the {hook} hook of plugin {plugin!r} raised {type(exc).__name__}: {exc}; the run "
        f"failed. This is a bug in the plugin, not in the config. Fix: correct the plugin's "
        f"{hook}, or train without it (LOSSBENCH_DISABLE_PLUGINS={plugin})."
    )


def _run_end_hooks(pm, run) -> PluginFailure | None:
    """Call every on_run_end implementation; one failing does not skip the others. A plugin
    that raises fails the run (unless it was interrupted) and the hooks after it see that;
    returned, for ``train`` to raise once the run's own exception (if any) is not pending.

    A first Ctrl-C or SIGTERM while they run (writing the outputs, ending the MLflow run) is
    held until they are done, so the run's record is complete, and then raised; a second one
    interrupts at once."""
    failure = None
    with HoldInterrupts() as held:
        for plugin_name, call in pm.each_implementation("on_run_end"):
            try:
                call(run=run, status=run.status)
            except LossbenchError as exc:
                warnings.warn(f"on_run_end of {plugin_name}: {exc}", stacklevel=2)
            except Exception as exc:  # a plugin bug: the run failed, the others still run
                this = hook_failure(pm, "on_run_end", exc)
                failure = failure or this
                if run.status not in ("interrupted", "rejected"):
                    run.status = "failed"
                run.error = f"{run.error}; {this}" if run.error else str(this)
    if held.signal is not None and sys.exc_info()[0] is None:
        raise KeyboardInterrupt(held.signal)
    return failure if sys.exc_info()[0] is None else None
