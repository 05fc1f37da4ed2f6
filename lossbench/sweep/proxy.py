"""``python -m lossbench storage-proxy --storage URL [--host HOST] [--port PORT]``: Optuna's gRPC
storage proxy in front of a study database, for sweeps with very many workers: the proxy holds
a few database connections and caches the studies, the workers (``sweep.storage=grpc://HOST:PORT``)
hold none. Needs ``pip install 'lossbench[grpc]'``. Runs until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys

import optuna

from lossbench.errors import ConfigError
from lossbench.urls import mask_url, with_password

USAGE = (
    "python -m lossbench storage-proxy --storage postgresql+psycopg2://USER@HOST/DB "
    "[--password-env NAME] [--host 0.0.0.0] [--port 13000] [--threads 16]"
)


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lossbench storage-proxy", usage=USAGE)
    parser.add_argument("--storage", required=True, help="the study database's URL")
    parser.add_argument("--password-env", help="an environment variable holding its password")
    parser.add_argument("--host", default="localhost", help="address to listen on")
    parser.add_argument("--port", type=int, default=13000)
    parser.add_argument("--threads", type=int, default=16, help="requests served at once")

    def error(message: str):
        raise ConfigError(f"storage-proxy: {message}. Usage: {USAGE}.")

    parser.error = error  # one paragraph and exit code 2, as every lossbench command
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _args(argv)
    url = with_password(args.storage, args.password_env, "--password-env")
    if url.split("+")[0].split(":")[0] not in ("postgresql", "postgres", "mysql", "sqlite"):
        raise ConfigError(
            f"--storage {mask_url(url)} is not a database URL. Fix: the URL of the study "
            "database, e.g. --storage postgresql+psycopg2://USER@HOST/DB (Optuna's gRPC proxy "
            "does not serve journal files)."
        )
    try:
        from concurrent.futures import ThreadPoolExecutor  # start-up: only the proxy serves

        from optuna.storages import run_grpc_proxy_server
    except ImportError:
        raise ConfigError(
            "storage-proxy needs grpcio. Fix: pip install 'lossbench[grpc]'."
        ) from None
    try:
        storage = optuna.storages.get_storage(url)
    except Exception as exc:
        raise ConfigError(
            f"the study database {mask_url(url)} cannot be used: {type(exc).__name__}. Fix: "
            "check --storage (a reachable database URL)."
        ) from None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"storage proxy for {mask_url(url)} on {args.host}:{args.port}; workers use "
          f"sweep.storage=grpc://{args.host}:{args.port}", flush=True)  # fmt: skip
    try:
        run_grpc_proxy_server(storage, host=args.host, port=args.port,
                              thread_pool=ThreadPoolExecutor(args.threads))  # fmt: skip
    except KeyboardInterrupt:
        pass
    return 0
