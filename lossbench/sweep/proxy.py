"""``python -m lossbench storage-proxy --storage URL [--host HOST] [--port PORT]``: Optuna's gRPC
storage proxy in front of a study database, for sweeps with very many workers: the proxy holds
a few database connections and caches the studies, the workers (``sweep.storage=grpc://HOST:PORT``)
hold none. Needs ``pip install 'lossbench[grpc]'``. Runs until Ctrl-C or SIGTERM."""

from __future__ import annotations

import socket

import optuna

from lossbench.errors import ConfigError
from lossbench.signals import sigterm_exits
from lossbench.urls import mask_url, with_password


def main(storage: str, password_env: str | None = None, host: str = "localhost",
         port: int = 13000, threads: int = 16) -> int:  # fmt: skip
    """Serve until Ctrl-C or SIGTERM (the arguments parsed by ``lossbench.cli``); 0 then."""
    url = with_password(storage, password_env, "--password-env")
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
    _check_port(host, port)
    try:
        storage = optuna.storages.get_storage(url)
    except Exception as exc:
        raise ConfigError(
            f"the study database {mask_url(url)} cannot be used: {type(exc).__name__}. Fix: "
            "check --storage (a reachable database URL)."
        ) from None
    sigterm_exits(0)
    print(f"storage proxy for {mask_url(url)} on {host}:{port}; workers use "
          f"sweep.storage=grpc://{host}:{port}", flush=True)  # fmt: skip
    try:
        run_grpc_proxy_server(storage, host=host, port=port,
                              thread_pool=ThreadPoolExecutor(threads))  # fmt: skip
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:  # gRPC could not bind (taken since the check): say so
        raise ConfigError(_taken(host, port, str(exc))) from None
    return 0


def _check_port(host: str, port: int) -> None:
    """``--port`` is free on every address ``host`` resolves to: gRPC binds what it can and
    listens on the rest (localhost's IPv6 address while IPv4's was taken), and shares a port
    with another gRPC server (SO_REUSEPORT), so a taken port would look like a proxy
    listening while workers reach another program."""
    if not 0 < port < 65536:
        raise ConfigError(f"storage-proxy: --port {port} is not a port. Fix: a number from 1 "
                          "to 65535, e.g. --port 13000.")  # fmt: skip
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"storage-proxy: --host {host} cannot be resolved ({exc}). Fix: an "
                          "address of this machine, e.g. --host 0.0.0.0.") from None  # fmt: skip
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address[:2] if family == socket.AF_INET else address)
            except OSError as exc:
                raise ConfigError(_taken(host, port, exc.strerror or str(exc))) from None


def _taken(host: str, port: int, why: str) -> str:
    return (f"storage-proxy: port {port} on {host} cannot be used ({why}): another program, "
            "or another storage proxy, listens there. Fix: stop it, or choose a free port "
            f"with --port (e.g. --port {port + 1}) and give workers the same one, "
            f"sweep.storage=grpc://{host}:PORT.")
