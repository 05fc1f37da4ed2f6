"""The default command line, a run's: ``python -m lossbench [OVERRIDES]`` (one run, composed
once and run as ``hydra.main`` runs it), ``--multirun`` (an Optuna sweep, ``lossbench.sweep``)
and Hydra's own flags (``--cfg``, ``--help``, ``-cp``/``-cn``, ...), which go to
``hydra.main`` as they are. Around the run: ``RunDirGuard`` (the Hydra callback that keeps a run
out of another's folder and removes what a refused run created), the crash watcher, and the
summary printed at the end."""

from __future__ import annotations

import contextlib
import io
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

from lossbench.cli.commands import COMMANDS
from lossbench.cli.parser import fail
from lossbench.config import compose_run, config_dir, store_configs
from lossbench.config.source import config_source, read_config_flags, use_config, with_searchpath
from lossbench.errors import LossbenchError, PluginFailure
from lossbench.plugins import build_plugin_manager, set_plugin_manager
from lossbench.signals import ignore_interrupts
from lossbench.tracking.plugin import prestart
from lossbench.training import summary, train
from lossbench.training.crash import crash_reason
from lossbench.urls import has_credentials, mask_text


def _pop_plugins_dir(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--plugins-dir":
            if i + 1 >= len(argv):
                fail(LossbenchError("--plugins-dir needs a directory: --plugins-dir DIR"))
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if arg.startswith("--plugins-dir="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


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
        fail(exc)
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


def main(argv: list[str]) -> None:
    """A run (or a sweep, or Hydra's own flags) from the command line ``argv``."""
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
        fail(exc)
    store_configs(pm.registry)  # flags (--cfg, --help, ...): Hydra's own command line

    app = hydra.main(
        config_path=str(config_dir()), config_name="config", version_base="1.3"
    )(_task)
    sys.argv = [sys.argv[0], *argv]
    _hydra_errors(_masking_cfg(_with_subcommands(app, argv), argv))


def _with_subcommands(app, argv: list[str]):
    """``app``; after Hydra's ``--help``, the table of subcommands (``cli.commands``)."""
    if not any(a in ("--help", "-h") for a in argv):
        return app

    def helped():
        try:
            app()
        except SystemExit as exc:  # Hydra exits after its help: 0, unless it failed
            if exc.code not in (0, None):
                raise
        print("\n\nSubcommands (python -m lossbench COMMAND --help: its flags):")
        for name, command in COMMANDS.items():
            print(f"  {name:<14} {command.help}")

    return helped


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
        fail(LossbenchError(
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
        fail(LossbenchError(str(exc).strip().replace("\n", " ")))


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
