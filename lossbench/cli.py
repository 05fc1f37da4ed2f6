"""Command line: ``python -m lossbench [OVERRIDES]``, ``python -m lossbench --multirun ...``
(an Optuna sweep, see ``lossbench.sweep``), ``python -m lossbench plugins``,
``python -m lossbench warmup``, ``python -m lossbench replay RUN_DIR [--uri URI]``,
``python -m lossbench lr_find [OPTIONS] [OVERRIDES]`` (the learning-rate range test),
``python -m lossbench explain [--rows N] [OVERRIDES]`` (one batch's loss computation, shown),
``python -m lossbench storage-proxy`` (a sweep's gRPC storage proxy, see
``lossbench.sweep.proxy``), and for plugin authors ``python -m lossbench new-plugin NAME`` and
``python -m lossbench check PLUGIN`` (``lossbench.authoring``).

Plugins are loaded first (built-ins, entry points, ``--plugins-dir``), so their components are
config options before Hydra composes. Overrides are checked before Hydra creates a run
directory; a user mistake prints one paragraph and exits with code 2, never a traceback.

Exit codes: 0 finished (or stopped early by a hook), 1 diverged or failed (also: a file of
the run could not be written, or its MLflow record is incomplete), 2 bad input, 130
interrupted.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks  # what Hydra.run builds around run_job
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import run_job
from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from hydra.types import HydraContext
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

from lossbench.config import DTYPES, compose, compose_run, config_dir, run_token, store_configs
from lossbench.config.source import config_source, read_config_flags, use_config, with_searchpath
from lossbench.errors import LossbenchError, PluginFailure
from lossbench.plugins import build_plugin_manager, describe, set_plugin_manager
from lossbench.process import exit_now
from lossbench.signals import ignore_interrupts, sigterm_as_ctrl_c_unless_handled
from lossbench.tracking.plugin import prestart
from lossbench.training import summary, train, warm_up
from lossbench.training.crash import crash_reason
from lossbench.training.explain import explain, render
from lossbench.urls import has_credentials, mask_text, mask_url


def _fail(exc: LossbenchError) -> None:
    print(f"lossbench: error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


def _pop_plugins_dir(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--plugins-dir":
            if i + 1 >= len(argv):
                _fail(LossbenchError("--plugins-dir needs a directory: --plugins-dir DIR"))
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if arg.startswith("--plugins-dir="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def plugins_command(argv: list[str]) -> None:
    """``python -m lossbench plugins [--json]``: loaded plugins, versions, hooks, components."""
    plugins_dir = _pop_plugins_dir(argv)
    try:
        pm = build_plugin_manager(plugins_dir)
    except LossbenchError as exc:
        _fail(exc)
    rows = describe(pm)
    if "--json" in argv:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="lossbench plugins")
    for col in ("plugin", "version", "source", "registers", "hooks"):
        table.add_column(col)
    for r in rows:
        slow = r["numpy_only"]
        comps = "\n".join(
            f"{g}: "
            + ", ".join(f"{n} (numpy only: slow path)" if n in slow.get(g, ()) else n for n in c)
            for g, c in r["components"].items()
        )
        table.add_row(r["name"], r["version"], r["source"], comps, ", ".join(r["hooks"]))
    console = Console()
    if not console.is_terminal:  # piped: don't squeeze the table to 80 columns
        console = Console(width=200)
    console.print(table)


def warmup_command(argv: list[str]) -> None:
    """``python -m lossbench warmup [--dtype float32|float64]``: compile (or load from the disk
    cache) the fused epoch and every installed kernel, so later runs start without compiling."""
    plugins_dir = _pop_plugins_dir(argv)
    dtypes = DTYPES
    if argv[:1] == ["--dtype"] and len(argv) == 2 and argv[1] in DTYPES:
        dtypes = (argv[1],)
    elif argv:
        _fail(LossbenchError(
            f"warmup does not take {' '.join(argv)!r}. Usage: python -m lossbench warmup "
            f"[--dtype {'|'.join(DTYPES)}] [--plugins-dir DIR]."
        ))  # fmt: skip
    try:
        rows = warm_up(dtypes, build_plugin_manager(plugins_dir))
    except LossbenchError as exc:
        _fail(exc)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: numba keeps what it compiled
        how = exc.args[0] if exc.args else "Ctrl-C"
        print(f"lossbench: warmup interrupted ({how}); what it compiled is cached. Run "
              "python -m lossbench warmup again to finish.", file=sys.stderr)  # fmt: skip
        sys.exit(130)
    for row in rows:
        print(f"{row['dtype']}: ready in {row['seconds']:.1f} s")


def replay_command(argv: list[str]) -> None:
    """``python -m lossbench replay RUN_DIR|SWEEP_DIR [--uri URI]``: send a run's spooled MLflow
    record (what its store did not receive) to its store, or to ``URI``, and end the run there
    with its true final state; a sweep's folder: every trial's spool, then the study's child
    runs and its parent run settled. Safe to repeat: only what the store lacks is sent."""
    usage = "Usage: python -m lossbench replay RUN_DIR|SWEEP_DIR [--uri URI]"
    uri, rest = None, list(argv)
    if "--uri" in rest:
        i = rest.index("--uri")
        if i + 1 >= len(rest):
            _fail(LossbenchError(f"--uri needs a tracking URI. {usage}"))
        uri = rest[i + 1]
        del rest[i : i + 2]
    if len(rest) != 1 or rest[0].startswith("-"):
        _fail(LossbenchError(f"replay takes one run directory. {usage}"))
    from lossbench.tracking.spool import find_spools, read_spool  # start-up: MLflow for replay

    target = Path(rest[0])
    if not target.exists():
        _fail(LossbenchError(
            f"replay {rest[0]}: no such folder (looked in {Path.cwd()}). Fix: pass the run "
            f"directory a run's error named (it holds mlflow-spool/). {usage}"
        ))  # fmt: skip
    spools = find_spools(target)
    sweep = (target / "plan.json").is_file()
    if not spools and not sweep:
        _fail(LossbenchError(
            f"{rest[0]} holds no MLflow spool (mlflow-spool/*/records.jsonl): its record "
            f"reached the store complete, or this is not a run directory. {usage}"
        ))  # fmt: skip
    starts = [r for f in spools[:1] for r in read_spool(f) if r["op"] == "start"]
    failed = sum(not _replay_one(folder, uri) for folder in spools)  # each removed once in
    if sweep and not failed:
        _replay_sweep(target, uri or (starts[0].get("uri") if starts else None))
    if failed:
        sys.exit(1)


def _replay_one(folder: Path, uri: str | None) -> bool:
    """Replay one spool, saying what was done; False when its store failed."""
    from lossbench.tracking.spool import replay  # start-up: MLflow for replay only

    try:
        done = replay(folder, uri)
    except LossbenchError as exc:  # an edited spool: refused before anything was sent
        _fail(exc)
    except Exception as exc:  # the store: unreachable, refusing; the spool stays
        print(mask_text(f"lossbench: error: {folder} could not be replayed into "
                        f"{uri or 'its store'}: {type(exc).__name__}: {exc}"),
              file=sys.stderr)  # fmt: skip
        return False
    if done["run_id"] is None:
        print(f"{folder}: already replayed by another replay")
        return True
    print(
        f"{folder}: run {done['run_id']} in {mask_url(done['uri'])} "
        f"({'created' if done['created'] else 'found'}), {done['metrics_sent']} metric "
        f"points sent ({done['metrics_present']} already there), {done['artifacts_sent']} "
        f"artifacts, ended {done['state']}" + ("; spool removed" if done["removed"] else "")
    )
    return True


def _replay_sweep(sweep_dir: Path, uri: str | None) -> None:
    """A sweep's folder: its child runs and its parent run settled after the spools."""
    from lossbench.sweep.records import replay_sweep  # start-up: Optuna for a sweep only

    try:
        said = replay_sweep(sweep_dir, uri)
    except Exception as exc:  # the store or the study: the trials' records are in already
        print(mask_text(f"lossbench: error: the sweep {sweep_dir} could not be settled: "
                        f"{type(exc).__name__}: {exc}"), file=sys.stderr)  # fmt: skip
        sys.exit(1)
    if said:
        print(f"{sweep_dir}: {said}")


LR_FIND_USAGE = (
    "Usage: python -m lossbench lr_find [--start-lr 1e-6] [--end-lr 1] [--steps 200] "
    "[--divergence 4] [--beta 0.9] [--output-dir DIR] [--plugins-dir DIR] [OVERRIDES]"
)
LR_FIND_FLAGS = {"--start-lr": ("start_lr", float), "--end-lr": ("end_lr", float),
                 "--steps": ("steps", int), "--divergence": ("divergence", float),
                 "--beta": ("beta", float), "--output-dir": ("output_dir", str)}  # fmt: skip


def _command_args(command: str, argv: list[str], known: dict, usage: str, about: str):
    """A subcommand's arguments: (``--plugins-dir``, its flags as {name: value}, the config
    overrides). ``known`` maps each flag (``--steps 200`` or ``--steps=200``) to (name, type);
    ``--help`` prints ``usage`` and ``about`` and exits 0."""
    if argv[:1] in (["--help"], ["-h"]):
        print(f"{usage}\n{about}")
        sys.exit(0)
    plugins_dir = _pop_plugins_dir(argv)
    flags, overrides, rest = {}, [], list(argv)
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("-"):
            overrides.append(arg)
            continue
        flag, _, value = arg.partition("=")
        if flag not in known:
            _fail(LossbenchError(f"{command} does not take {arg!r}; its options are "
                                 f"{', '.join(known)}, then any override a run takes. Fix: "
                                 f"leave it out or use one of those. {usage}"))  # fmt: skip
        if not value:
            if not rest:
                _fail(LossbenchError(f"{command} {flag} needs a value. Fix: give it one, "
                                     f"{flag} VALUE. {usage}"))  # fmt: skip
            value = rest.pop(0)
        name, kind = known[flag]
        try:
            flags[name] = kind(value)
        except ValueError:
            _fail(LossbenchError(f"{command} {flag} {value!r} is not a valid {kind.__name__}. "
                                 f"Fix: pass {flag} and a{'n' if kind is int else ''} "
                                 f"{kind.__name__}. {usage}"))  # fmt: skip
    return plugins_dir, flags, overrides


def lr_find_command(argv: list[str]) -> None:
    """``python -m lossbench lr_find [OPTIONS] [OVERRIDES]``: the learning-rate range test
    (``lossbench.training.lr_find``); prints the suggestion, its rule and the command to train
    with it. Exit 2 for bad input, 1 when its MLflow record is incomplete."""
    from datetime import datetime  # start-up: the lr_find modules load for lr_find only

    from lossbench.tracking.mlflow_run import default_run_name, record_lr_find
    from lossbench.training.lr_find import LRFindOptions, find_lr

    plugins_dir, flags, overrides = _command_args(
        "lr_find", argv, LR_FIND_FLAGS, LR_FIND_USAGE,
        "The learning-rate range test: an exponential lr ramp, the smoothed loss against lr "
        "(lr_find.png), a suggested lr and the command to train with it. See docs/sweeps.md, "
        "'Finding a learning rate'.",
    )  # fmt: skip
    stamp = f"{datetime.now():%Y-%m-%d_%H-%M-%S}-{run_token()}"  # new for every run
    out = flags.pop("output_dir", None) or str(Path("outputs") / "lr_find" / stamp)
    _check_lr_find_target(out, overrides)
    try:
        pm = build_plugin_manager(plugins_dir)
        set_plugin_manager(pm)
        cfg = compose(overrides, registry=pm.registry)
        if cfg.tracking.get("name") == "mlflow" and not cfg.tracking.get("run_name"):
            cfg.tracking.run_name = f"lr_find-{default_run_name(cfg)}"
        run, result, files = find_lr(cfg, LRFindOptions(**flags), out, pm)
        record_lr_find(run, result, files)
    except (LossbenchError, PluginFailure) as exc:  # bad input: 2; a plugin's bug: 1
        _fail(exc)
    _print_lr_find(run, result, overrides, files)
    for message in run.record_errors:
        print(f"lossbench: error: {message}", file=sys.stderr)
    if run.record_errors:
        sys.exit(1)


def _check_lr_find_target(out: str, overrides: list[str]) -> None:
    """lr_find's folder is ``--output-dir`` (a folder, or a new path), never a Hydra setting."""
    hydra_args = [o for o in overrides if o.lstrip("+~").startswith("hydra.")]
    if hydra_args:
        _fail(LossbenchError(
            f"lr_find does not take {hydra_args[0]}: it is not a Hydra run, so Hydra's settings "
            "would be ignored. Fix: drop it; choose lr_find's folder with --output-dir DIR. "
            f"{LR_FIND_USAGE}"
        ))  # fmt: skip
    if Path(out).exists() and not Path(out).is_dir():
        _fail(LossbenchError(
            f"lr_find --output-dir {out!r} is a file, not a folder: lr_find writes lr_find.png, "
            ".csv and .json into a folder. Fix: pass a folder, or a path that does not exist "
            "yet."
        ))  # fmt: skip


def _print_lr_find(run, result, overrides: list[str], files: list) -> None:
    console = Console(soft_wrap=True)  # the command line must stay copy-pasteable
    end = "diverged, stopped early" if result.diverged else "ran every step"
    console.print(f"lr range test: {len(result.lrs)} steps from lr {result.lrs[0]:.3g} to "
                  f"{result.lrs[-1]:.3g} ({end}); plot: {files[-1]}")  # fmt: skip
    if result.suggestion is None:
        console.print("[red]no suggestion: the loss did not fall over the range[/red]; try "
                      "another --start-lr/--end-lr or more --steps")  # fmt: skip
        return
    console.print(f"suggested lr [bold]{result.suggestion:.3g}[/bold]: the {result.rule} "
                  f"(a tenth of the lr of the minimum, the other usual rule: "
                  f"{result.min_over_10:.3g})")  # fmt: skip
    keep = [o for o in overrides if not o.lstrip("+").startswith("optimizer.lr=")]
    console.print("train with it:\n  python -m lossbench "
                  + " ".join([*keep, f"optimizer.lr={result.suggestion:.3g}"]))


EXPLAIN_USAGE = "Usage: python -m lossbench explain [--rows N] [--plugins-dir DIR] [OVERRIDES]"


def explain_command(argv: list[str]) -> None:
    """``python -m lossbench explain [--rows N] [OVERRIDES]``: the first minibatch a run with
    those overrides trains on, at the initial weights: the loss's formula and reduction, rows of
    predictions and targets, the value by hand and by the kernel, the gradient
    (``lossbench.training.explain``). Writes nothing, tracks nothing; exit 2 for bad input."""
    plugins_dir, flags, overrides = _command_args(
        "explain", argv, {"--rows": ("rows", int)}, EXPLAIN_USAGE,
        "One batch's loss computation, shown: the first minibatch of epoch 0 at the initial "
        "weights, as a run with the same overrides trains on it. See docs/losses.md.",
    )  # fmt: skip
    rows = flags.get("rows", 4)
    if rows < 1:
        _fail(LossbenchError(
            f"explain --rows {rows} is not allowed: it must be a positive integer, how many of "
            f"the batch's rows to print (default 4). Fix: pass e.g. --rows 4. {EXPLAIN_USAGE}"
        ))  # fmt: skip
    try:
        pm = build_plugin_manager(plugins_dir)
        set_plugin_manager(pm)
        result = explain(compose(overrides, registry=pm.registry), pm)
    except LossbenchError as exc:
        _fail(exc)
    print(render(result, rows))


def _print_summary(run) -> None:
    s = summary(run)
    console = Console(soft_wrap=True)  # paths must stay copy-pasteable
    final = s["final"]
    lines = [f"[bold]{run.status}[/bold] after {s['epochs']} epochs"]
    if run.stop_reason:
        lines[0] += f" ({run.stop_reason})"
    if s["best_epoch"] is not None:
        best = run.history[s["best_epoch"]]
        line = f"best epoch {s['best_epoch']}: val_loss {best['val_loss']:.5f}"
        if run.monitor != "val_loss":
            line += f", {run.monitor} {best[run.monitor]:.5f}"
        if s["weights"]["epoch"] == s["best_epoch"] and run.keep_weights == "best":
            line += " (its weights are the ones kept: trainer.keep_weights=best)"
        lines.append(line)
    if final:
        acc = ""
        if "val_accuracy" in final:
            acc = (
                f", accuracy train {final['train_accuracy']:.4f} / val {final['val_accuracy']:.4f}"
                f", val_macro_f1 {final['val_macro_f1']:.4f}"
            )
        elif "val_r2" in final:
            acc = (f", val_r2 {final['val_r2']:.4f} (val_mse {final['val_mse']:.5g}, val_mae "
                   f"{final['val_mae']:.5g}, in the target's units)")  # fmt: skip
        lines.append(
            f"final train_loss {final['train_loss']:.5f}, val_loss {final['val_loss']:.5f}{acc}"
        )
    t = s["timings"]
    lines.append(
        f"time {t.get('total_seconds', 0):.2f} s (compile/cache {t.get('compile_seconds', 0):.2f} "
        f"s, training {t.get('train_seconds', 0):.2f} s)"
    )
    if run.path == "numpy":
        slow = [f"{g} {sp.name}" for g, sp in run.specs.items() if getattr(sp, "numpy_only", 0)]
        lines.append(f"slow path (NumPy only, no numba kernel): {', '.join(slow)}")
    if s["output_dir"]:
        lines.append(f"outputs: {s['output_dir']}")
    if run.error and run.status != "finished":
        lines.append(f"[red]{run.error}[/red]")
    console.print("\n".join(lines))


class RunDirGuard(Callback):
    """Notes what of the run directory exists before Hydra creates it (a Hydra callback, set
    in conf/config.yaml), so that a run refused as bad input removes only what it created; and
    refuses a directory that holds another run's files (exit 2), claiming it atomically (its
    ``.hydra`` folder made with ``mkdir``, which only one process can do) so that two runs
    started into one folder never both write there."""

    before: dict | None = None  # {"dir", "created_root", "entries"} of the current run

    def on_run_start(self, config, **kwargs) -> None:
        RunDirGuard.before = None
        try:  # the same resolution run_job does next (Hydra caches ${now:...} per config)
            run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir"))).absolute()
            subdir = OmegaConf.select(config, "hydra.output_subdir")
        except Exception:  # cannot tell: nothing will be removed
            return
        created_root = None
        for path in (run_dir, *run_dir.parents):
            if path.exists():
                break
            created_root = path  # the topmost folder this run will create
        entries = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
        _refuse_another_runs(run_dir, entries & set(RUN_FILES))
        RunDirGuard.before = {"dir": run_dir, "created_root": created_root, "entries": entries}
        if subdir:
            _claim(run_dir, str(subdir))


    def on_job_start(self, config, **kwargs) -> None:
        """Hydra has just saved ``.hydra/``: a URL's password (``tracking.uri``) becomes ***
        there, as everywhere lossbench stores one (``urls.mask_text``)."""
        subdir = OmegaConf.select(config, "hydra.output_subdir")
        if subdir:
            mask_saved_configs(Path(str(config.hydra.runtime.output_dir)) / str(subdir))


MASKED_NOTE = ("# a URL's password is shown as ***, never stored: to rerun from this file, give "
               "it again (e.g. in MLFLOW_TRACKING_URI; PGPASSWORD for PostgreSQL)\n")  # fmt: skip


def mask_saved_configs(folder: Path) -> None:
    """Mask the passwords in the YAML files Hydra saved in ``folder``, with a note on top."""
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        path = folder / name
        try:
            text = path.read_text()
            if has_credentials(text):
                path.write_text(MASKED_NOTE + mask_text(text))
        except OSError:  # not there, or a full disk: the run meets it and says so
            continue


# what a run leaves in its directory: any of them means the folder is another run's
RUN_FILES = (".hydra", "summary.json", "history.csv", "model.npz", "loss_curve.png",
             "mlflow-spool")  # fmt: skip


def _refuse_another_runs(run_dir: Path, found) -> None:
    """Exit 2 (SystemExit: Hydra's callbacks turn exceptions into warnings) when ``found``,
    the run files already in ``run_dir``, is not empty."""
    if found:
        print(
            f"lossbench: error: the run directory {run_dir} already holds another run "
            f"({', '.join(sorted(found))}); a run never overwrites another, so this one did not "
            "start. Fix: pass a new folder with hydra.run.dir=DIR, or leave hydra.run.dir unset "
            "(the default outputs/DATE/TIME-TOKEN is new for every run).",
            file=sys.stderr,
        )  # fmt: skip
        sys.exit(2)


def _claim(run_dir: Path, subdir: str) -> None:
    """Make the run's ``.hydra`` folder, failing if another process made it first."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        os.mkdir(run_dir / subdir)
    except FileExistsError:
        _refuse_another_runs(run_dir, {subdir})
    except OSError:  # a full disk, a read-only folder: run_job meets it and says so
        pass


def _hydras_own(name: str) -> bool:
    return name == ".hydra" or name.endswith(".log")


def remove_created_run_dir(output_dir: str) -> None:
    """After a run refused as bad input: remove what Hydra created for it (the run directory,
    the folders above it that it had to create, or in a directory that existed before only the
    ``.hydra`` folder and log file it added), provided the run wrote nothing else. A path that
    existed before the run is never removed."""
    before, path = RunDirGuard.before, Path(output_dir).absolute()
    if before is None or before["dir"] != path or not path.is_dir():
        return
    added = [p for p in path.iterdir() if p.name not in before["entries"]]
    if not all(_hydras_own(p.name) for p in added):
        return  # the run wrote something of its own: keep everything
    if before["created_root"] is None:
        for p in added:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        return
    shutil.rmtree(path, ignore_errors=True)
    for parent in path.parents:  # the folders above it that this run created, if now empty
        if not parent.is_relative_to(before["created_root"]):
            break
        try:
            parent.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def _crash_watch(output_dir: str):
    """Within the block, a forked watcher (7 ms) waits on a pipe: if this process dies without
    closing the block (a fatal signal in compiled code, which nothing in Python outlives), it
    prints the note of the run's crash.log (``training.crash``: the kernels that were running
    and what to run), then exits; a SIGKILL leaves no note, so it prints nothing."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the watcher: only raw reads and writes, no threads, no imports
        try:
            ignore_interrupts()  # Ctrl-C is for the run, not for it
            os.closerange(3, read)  # the run's pipes (MLflow's side process) stay theirs
            os.closerange(read + 1, os.sysconf("SC_OPEN_MAX"))
            if not os.read(read, 1):  # end of file: the run died
                reason = crash_reason(output_dir)
                if reason:
                    os.write(2, f"lossbench: error: {reason}\n".encode())
        finally:
            os._exit(0)
    os.close(read)
    try:
        yield
    finally:
        os.write(write, b"k")
        os.close(write)
        os.waitpid(pid, 0)


def _task(cfg) -> None:
    output_dir = HydraConfig.get().runtime.output_dir
    try:
        with _crash_watch(output_dir):
            run = train(cfg, output_dir=output_dir)
    except LossbenchError as exc:
        remove_created_run_dir(output_dir)
        _fail(exc)
    except PluginFailure as exc:  # a plugin's bug: the run failed, its record says so
        print(f"lossbench: error: {exc} What the run did is in {output_dir}.", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(
            f"lossbench: interrupted; what the run did so far is in {output_dir} "
            "(summary.json says when it stopped)",
            file=sys.stderr,
        )
        sys.exit(130)
    _print_summary(run)
    for message in run.record_errors:
        print(f"lossbench: error: {message}", file=sys.stderr)
    if run.status in ("diverged", "failed") or run.record_errors:
        sys.exit(1)


def entry() -> None:
    """``python -m lossbench`` and the ``lossbench`` script: ``main``, then exit without the
    interpreter's teardown (``lossbench.process.exit_now``): every file of the run or sweep is
    written by then. An error that is not the user's (a traceback) leaves the usual way."""
    sigterm_as_ctrl_c_unless_handled()  # the script (__main__ sets it)
    try:
        main()
    except SystemExit as exc:
        exit_now(exc.code)
    exit_now(0)


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except KeyboardInterrupt as exc:  # before a run started (composing): nothing to keep
        how = f" by {exc.args[0]}" if exc.args else ""
        print(f"lossbench: interrupted{how} before a run started; nothing was recorded",
              file=sys.stderr)  # fmt: skip
        sys.exit(130)


def _main(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["plugins"]:
        plugins_command(argv[1:])
        return
    if argv[:1] == ["warmup"]:
        warmup_command(argv[1:])
        return
    if argv[:1] == ["storage-proxy"]:
        from lossbench.sweep.proxy import main as proxy  # start-up: Optuna for the proxy only

        try:
            sys.exit(proxy(argv[1:]))
        except LossbenchError as exc:
            _fail(exc)
    if argv[:1] == ["replay"]:
        replay_command(argv[1:])
        return
    if argv[:1] in (["new-plugin"], ["check"]):
        from lossbench.authoring import run  # start-up: the kit loads for these commands only

        sys.exit(run(argv))
    if argv[:1] == ["lr_find"]:
        lr_find_command(argv[1:])
        return
    if argv[:1] == ["explain"]:
        explain_command(argv[1:])
        return
    plugins_dir = _pop_plugins_dir(argv)
    try:
        pm = build_plugin_manager(plugins_dir)
        set_plugin_manager(pm)
        if any(a in ("-m", "--multirun") for a in argv):
            from lossbench.sweep import run_sweep  # start-up: Optuna loads for sweeps only

            sys.exit(run_sweep(argv, plugins_dir))
        rest, flags = read_config_flags(argv)
        if not any(a.startswith(("-", "hydra.mode=")) for a in rest):
            # the common case: composed once, run by run_job (with -cp/-cn/-cd as Hydra reads
            # them, lossbench's own groups kept on the search path)
            use_config(flags["config_path"], flags["config_name"])
            _run_once(with_searchpath(rest, flags), pm.registry)
            return
        if flags["config_path"]:  # Hydra's own command line: lossbench's groups stay found
            argv = with_searchpath(argv, {**flags, "config_dir": []})
    except LossbenchError as exc:
        _fail(exc)
    store_configs(pm.registry)  # flags (--cfg, --help, ...): Hydra's own command line

    app = hydra.main(
        config_path=str(config_dir()), config_name="config", version_base="1.3"
    )(_task)
    sys.argv = [sys.argv[0], *argv]
    _hydra_errors(_masking_cfg(app, argv))


def _masking_cfg(app, argv: list[str]):
    """``app``, printing what ``--cfg``/``-c``/``--info`` print with URL passwords as ***."""
    if not any(a in ("--cfg", "-c", "--info", "-i") or a.startswith("--cfg=") for a in argv):
        return app

    def masked():
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                app()
        finally:
            sys.stdout.write(mask_text(printed.getvalue()))

    return masked


def _hydra_errors(call) -> None:
    """``call()``, with what fails around the task (writing .hydra/ on a full disk, a Hydra
    error) said in one paragraph instead of Hydra's traceback."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        call()
    except MissingConfigException as exc:  # an OSError too: before the full-disk branch
        first = str(exc).strip().splitlines()[0]
        _fail(LossbenchError(
            f"{first} Fix: check --config-name/-cn and --config-path/-cp (or --config-dir): "
            "the config must be NAME.yaml in one of those folders; lossbench's own is config."
        ))  # fmt: skip
    except OSError as exc:
        before = RunDirGuard.before
        if before is not None:
            remove_created_run_dir(str(before["dir"]))
        where = exc.filename or (before["dir"] if before else "the run directory")
        print(
            f"lossbench: error: could not write {where}: {exc.strerror or exc}. The run did not "
            "start. Fix: free some space, or choose another folder with hydra.run.dir=DIR.",
            file=sys.stderr,
        )
        sys.exit(1)
    except (HydraException, OmegaConfBaseException) as exc:
        _fail(LossbenchError(str(exc).strip().replace("\n", " ")))


def _run_once(argv: list[str], registry) -> None:
    """One run as ``hydra.main`` runs it (run directory, ``.hydra/`` files, logging,
    callbacks, ``HydraConfig``) but composed once: ``hydra.main`` composes twice more (once
    to read the mode, once to run), about 0.1 s each on a run of a second."""
    folder = config_source().path or str(config_dir())
    with initialize_config_dir(config_dir=folder, job_name="lossbench",
                               version_base="1.3"):  # fmt: skip
        cfg = compose_run(argv, registry)
        prestart(registry.trackers_of(cfg.get("tracking")))  # MLflow's side process
        _hydra_errors(lambda: _run_job(cfg))


def _run_job(cfg) -> None:
    """What ``Hydra.run`` does with its composed config: callbacks around ``run_job``."""
    callbacks = Callbacks(cfg)
    callbacks.on_run_start(config=cfg, config_name=config_source().name)
    loader = GlobalHydra.instance().config_loader()
    ret = run_job(
        hydra_context=HydraContext(config_loader=loader, callbacks=callbacks),
        task_function=_task, config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None,
        configure_logging=True,
    )  # fmt: skip
    callbacks.on_run_end(config=cfg, config_name=config_source().name, job_return=ret)
    _ = ret.return_value  # raises what the task raised
