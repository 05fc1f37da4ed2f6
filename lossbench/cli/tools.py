"""The subcommands around runs: ``plugins`` (what is loaded), ``warmup`` (compile ahead) and
``replay`` (send a spooled record, MLflow's, to its store). Each is a parser builder and a handler
of its parsed arguments, listed in ``lossbench.cli.commands``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lossbench.cli.parser import CommandParser
from lossbench.config import DTYPES
from lossbench.errors import LossbenchError
from lossbench.plugins import build_plugin_manager, describe
from lossbench.training import warm_up
from lossbench.urls import mask_text


def plugins_parser() -> CommandParser:
    parser = CommandParser("plugins", "The loaded plugins: versions, hooks, components.")
    parser.add_argument("--json", action="store_true", help="print them as JSON")
    return parser


def plugins_command(args) -> None:
    """``python -m lossbench plugins [--json]``: loaded plugins, versions, hooks, components."""
    rows = describe(build_plugin_manager(args.plugins_dir))
    if args.json:
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


def warmup_parser() -> CommandParser:
    parser = CommandParser("warmup", "Compile (or load from the disk cache) the fused epoch and "
                           "every installed kernel, so later runs start without compiling.")
    parser.choice("--dtype", DTYPES, "only this dtype (default: all)")
    return parser


def warmup_command(args) -> None:
    """``python -m lossbench warmup [--dtype float32|float64]``: compile (or load from the disk
    cache) the fused epoch and every installed kernel, so later runs start without compiling."""
    dtypes = (args.dtype,) if args.dtype else DTYPES
    try:
        rows = warm_up(dtypes, build_plugin_manager(args.plugins_dir))
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: numba keeps what it compiled
        how = exc.args[0] if exc.args else "Ctrl-C"
        print(f"lossbench: warmup interrupted ({how}); what it compiled is cached. Run "
              "python -m lossbench warmup again to finish.", file=sys.stderr)  # fmt: skip
        sys.exit(130)
    for row in rows:
        print(f"{row['dtype']}: ready in {row['seconds']:.1f} s")


def replay_parser() -> CommandParser:
    parser = CommandParser("replay", "Send what a run's store did not receive, kept in its "
                           "spool, to its store, or to URI, and end the run there with its true "
                           "final state; a sweep's folder: every trial's spool, then the study's "
                           "runs settled. Safe to repeat. The spool is MLflow's (RUN_DIR/"
                           "mlflow-spool/): other trackers have nothing to replay unless their "
                           "plugin declares it (Tracker.replays).")  # fmt: skip
    parser.add_argument("target", nargs="?", metavar="RUN_DIR|SWEEP_DIR",
                        help="the run directory a run's error named, or a sweep's folder")
    parser.add_argument("--uri", help="the tracking URI to send to (default: the run's own)")
    return parser


def replay_command(args) -> None:
    """``python -m lossbench replay RUN_DIR|SWEEP_DIR [--uri URI]``: every tracker that keeps
    a spool (``Tracker.replays``; MLflow's: ``lossbench.tracking.spool``) sends what its store
    did not receive to that store, or to ``URI``, and ends the run there with its true final
    state; a sweep's folder: every trial's spool, then the study's child runs and its parent
    run settled (``ParentRun.settle``). Safe to repeat: only what the store lacks is sent."""
    usage = replay_parser().usage_line()
    if args.target is None or args.target.startswith("-"):
        raise LossbenchError(f"replay takes one run directory. Fix: pass it. {usage}")
    target, uri = Path(args.target), args.uri
    if not target.exists():
        raise LossbenchError(
            f"replay {args.target}: no such folder (looked in {Path.cwd()}). Fix: pass the run "
            f"directory a run's error named (it holds mlflow-spool/). {usage}"
        )
    trackers = {name: cls for name, cls in build_plugin_manager(args.plugins_dir)
                .registry.trackers.items() if cls.replays}  # fmt: skip
    sweep = (target / "plan.json").is_file()
    done = [cls.replay(target, uri) for cls in trackers.values()]
    if not any(d.found for d in done) and not sweep:
        raise LossbenchError(
            f"{args.target} holds no spool to replay (MLflow's: mlflow-spool/*/records.jsonl; "
            f"the trackers that keep one: {', '.join(trackers) or 'none'}): its record reached "
            f"the store complete, or this is not a run directory. Fix: pass the run directory "
            f"a run's error named. {usage}"
        )
    failed = sum(d.failed for d in done)
    if sweep and not failed:
        _replay_sweep(target, uri or next((d.store for d in done if d.store), None))
    if failed:
        sys.exit(1)


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


def storage_proxy_parser() -> CommandParser:
    parser = CommandParser("storage-proxy", "Optuna's gRPC storage proxy in front of a study "
                           "database, for sweeps with very many workers (sweep.storage="
                           "grpc://HOST:PORT); needs pip install 'lossbench[grpc]'. Runs until "
                           "Ctrl-C or SIGTERM.", plugins=False)  # fmt: skip
    parser.add_argument("--storage", metavar="URL", help="the study database's URL (required), "
                        "e.g. postgresql+psycopg2://USER@HOST/DB")  # fmt: skip
    parser.add_argument("--password-env", metavar="NAME",
                        help="an environment variable holding its password")
    parser.add_argument("--host", default="localhost", help="address to listen on")
    parser.flag("--port", int, "the port to listen on (default 13000)", default=13000)
    parser.flag("--threads", int, "requests served at once (default 16)", default=16)
    return parser


def storage_proxy_command(args) -> None:
    """``python -m lossbench storage-proxy --storage URL ...`` (``lossbench.sweep.proxy``)."""
    if args.storage is None:  # checked here, so that a mistyped flag is named first
        raise LossbenchError(
            "storage-proxy: the following arguments are required: --storage. Fix: pass the "
            "study database's URL, --storage postgresql+psycopg2://USER@HOST/DB. "
            f"{storage_proxy_parser().usage_line()}"
        )
    from lossbench.sweep.proxy import main as proxy  # start-up: Optuna for the proxy only

    sys.exit(proxy(args.storage, args.password_env, args.host, args.port, args.threads))
