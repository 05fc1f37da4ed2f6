"""Where MLflow runs go, checked before training: ``tracking.uri``, else
``$MLFLOW_TRACKING_URI``, else MLflow's default (``./mlflow.db``); ``precheck`` fails fast on a
store that is obviously unusable, without importing MLflow."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from lossbench.errors import ConfigError
from lossbench.urls import mask_url


def resolve_uri(tracking) -> str | None:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else None (MLflow's own default)."""
    return tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def precheck(uri: str | None) -> None:
    """Fail fast, before training, when the store is obviously unusable."""
    fix = (
        "Fix: start the server or correct tracking.uri / MLFLOW_TRACKING_URI, or train without "
        "tracking (tracking=none), or keep training when tracking fails "
        "(tracking.required=false)."
    )
    if uri is None:
        folder = Path.cwd()
        if not os.access(folder, os.W_OK):
            raise ConfigError(
                f"MLflow's default store ./mlflow.db cannot be written: {folder} is not "
                f"writable. {fix}"
            )
        return
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]  # postgresql+psycopg2 -> postgresql
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                r.read()
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(
                f"the MLflow tracking server {mask_url(uri)} is not reachable ({reason}). {fix}"
            ) from None
    elif scheme == "sqlite":
        path = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
        if path is not None and str(path) not in ("", ":memory:"):
            folder = path.parent if str(path.parent) else Path.cwd()
            writable = os.access(path, os.W_OK) if path.exists() else os.access(folder, os.W_OK)
            if not folder.is_dir() or not writable:
                raise ConfigError(
                    f"the MLflow store {mask_url(uri)} cannot be written ({path} is not "
                    f"writable or its folder does not exist). {fix}"
                )
    elif scheme in ("postgresql", "postgres", "mysql", "mssql") and parsed.hostname:
        port = parsed.port or {"mysql": 3306, "mssql": 1433}.get(scheme, 5432)
        try:
            socket.create_connection((parsed.hostname, port), timeout=5).close()
        except OSError as exc:
            raise ConfigError(
                f"the MLflow database {parsed.hostname}:{port} is not reachable ({exc}). {fix}"
            ) from None
