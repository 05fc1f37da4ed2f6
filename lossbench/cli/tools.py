"""The subcommands around runs: ``plugins`` (what is loaded), ``warmup`` (compile ahead) and
``replay`` (send a spooled MLflow record to its store). Each is a parser builder and a handler
of its parsed arguments, listed in ``lossbench.cli.commands``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lossbench.cli.parser import CommandParser, fail
from lossbench.config import DTYPES
from lossbench.errors import LossbenchError
from lossbench.plugins import build_plugin_manager, describe
from lossbench.training import warm_up
from lossbench.urls import mask_text, mask_url


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
    parser = CommandParser("replay", "Send a run's spooled MLflow record (what its store did "
                           "not receive) to its store, or to URI, and end the run there with its "
                           "true final state; a sweep's folder: every trial's spool, then the "
                           "study's runs settled. Safe to repeat.", plugins=False)  # fmt: skip
    parser.add_argument("target", nargs="?", metavar="RUN_DIR|SWEEP_DIR",
                        help="the run directory a run's error named, or a sweep's folder")
    parser.add_argument("--uri", help="the tracking URI to send to (default: the run's own)")
    return parser


def replay_command(args) -> None:
    """``python -m lossbench replay RUN_DIR|SWEEP_DIR [--uri URI]``: send a run's spooled MLflow
    record (what its store did not receive) to its store, or to ``URI``, and end the run there
    with its true final state; a sweep's folder: every trial's spool, then the study's child
    runs and its parent run settled. Safe to repeat: only what the store lacks is sent."""
    usage = replay_parser().usage_line()
    if args.target is None or args.target.startswith("-"):
        raise LossbenchError(f"replay takes one run directory. Fix: pass it. {usage}")
    from lossbench.tracking.spool import find_spools, read_spool  # start-up: MLflow for replay

    target, uri = Path(args.target), args.uri
    if not target.exists():
        raise LossbenchError(
            f"replay {args.target}: no such folder (looked in {Path.cwd()}). Fix: pass the run "
            f"directory a run's error named (it holds mlflow-spool/). {usage}"
        )
    spools = find_spools(target)
    sweep = (target / "plan.json").is_file()
    if not spools and not sweep:
        raise LossbenchError(
            f"{args.target} holds no MLflow spool (mlflow-spool/*/records.jsonl): its record "
            f"reached the store complete, or this is not a run directory. Fix: pass the run "
            f"directory a run's error named. {usage}"
        )
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
        fail(exc)
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
