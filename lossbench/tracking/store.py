"""Where MLflow runs go, checked before training: ``tracking.uri``, else
``$MLFLOW_TRACKING_URI``, else MLflow's default (``./mlflow.db``); ``precheck`` fails fast on a
store that cannot be written, without importing MLflow; ``store_lock`` serialises the first
open of a sqlite store (MLflow creates and migrates it then: two processes doing so at once
leave it half-migrated); ``bound_http_retries`` bounds the time MLflow spends on a server
that does not answer (its ``MLFLOW_HTTP_REQUEST_*`` variables); ``light_commits`` lets a
sqlite store commit without flushing to disk every time (write-ahead log)."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import socket
import sqlite3
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse, urlsplit, urlunsplit

from lossbench.errors import ConfigError
from lossbench.process import before_exit_now
from lossbench.urls import mask_url


def resolve_uri(tracking) -> str | None:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else None (MLflow's own default)."""
    return tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or None


MAX_KEY, MAX_PARAM, MAX_TAG, MAX_NAME = 250, 6000, 8000, 250  # MLflow's limits
DEFAULT_SQLITE = "mlflow.db"  # MLflow's default store, in the working directory


def sqlite_path(uri: str | None) -> Path | None:
    """The database file of a sqlite store (MLflow's default when ``uri`` is None), or None."""
    if uri is None:
        return Path.cwd() / DEFAULT_SQLITE
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path).absolute()


@contextlib.contextmanager
def store_lock(uri: str | None):
    """Hold an exclusive lock on a sqlite store's folder (``flock`` on the folder itself, so no
    lock file is left behind) while MLflow opens it: the first process creates the tables and
    runs the migrations, the others wait and then find the store complete. Other stores (a
    server, PostgreSQL) and folders that cannot be locked pass through unlocked."""
    path = sqlite_path(uri)
    fd = None
    if path is not None:
        try:
            fd = os.open(path.parent, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            if fd is not None:
                os.close(fd)
            fd = None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


def _sqlite_writable(path: Path) -> str | None:
    """Why the sqlite store at ``path`` cannot be written, or None. Writes nothing: an existing
    database takes a write lock and rolls back, a new one's folder takes a scratch file."""
    folder = path.parent
    if not folder.is_dir():
        return f"its folder {folder} does not exist"
    if not path.exists():
        try:
            fd, scratch = tempfile.mkstemp(dir=folder, prefix=".lossbench-probe-")
            os.close(fd)
            os.unlink(scratch)
        except OSError as exc:
            return f"a file cannot be created in {folder} ({exc.strerror or exc})"
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=LOCK_WAIT_SECONDS)
        try:
            conn.execute("BEGIN IMMEDIATE")  # the write lock
            (version,) = conn.execute("PRAGMA user_version").fetchone()  # not a database?
            conn.execute(f"PRAGMA user_version = {int(version)}")  # a write, rolled back:
            conn.rollback()  # refused on a read-only file or filesystem
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) and _is_sqlite(path):
            _say_locked(path)  # busy, not broken: training goes on
            return None
        return f"{path}: {exc}"
    except sqlite3.Error as exc:
        return f"{path}: {exc}"
    return None


LOCK_WAIT_SECONDS = 2.0  # the pre-run check waits this long for another process's write lock


def _is_sqlite(path: Path) -> bool:
    """Whether ``path`` starts as a sqlite database does (read without taking its lock)."""
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _say_locked(path: Path) -> None:
    print(f"lossbench: the MLflow store {path} is locked by another process (still after "
          f"{LOCK_WAIT_SECONDS:g} s); training goes on, and what the store cannot take when "
          "the run is recorded is kept in the run's spool for `python -m lossbench replay`.",
          file=sys.stderr, flush=True)  # fmt: skip


def precheck(uri: str | None) -> None:
    """Fail fast, before training, when the store is obviously unusable."""
    fix = (
        "Fix: start the server or correct tracking.uri / MLFLOW_TRACKING_URI, or train without "
        "tracking (tracking=none), or keep training when tracking fails "
        "(tracking.required=false)."
    )
    path = sqlite_path(uri)
    if path is not None:
        why = _sqlite_writable(path)
        if why is not None:
            name = f"the MLflow store {mask_url(uri)}" if uri else "MLflow's default ./mlflow.db"
            raise ConfigError(f"{name} cannot be written: {why}. {fix}")
        return
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]  # postgresql+psycopg2 -> postgresql
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(health_request(uri), timeout=5) as r:
                r.read()
        except urllib.error.HTTPError as exc:
            if exc.code not in (401, 403):
                raise ConfigError(f"the MLflow tracking server {mask_url(uri)} answered "
                                  f"/health with HTTP {exc.code}. {fix}") from None  # fmt: skip
            raise ConfigError(
                f"the MLflow tracking server {mask_url(uri)} refused the credentials (HTTP "
                f"{exc.code}). Fix: correct the user and password in the URI (http://USER:"
                "PASSWORD@HOST:PORT) or in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD."
            ) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(
                f"the MLflow tracking server {mask_url(uri)} is not reachable ({reason}). {fix}"
            ) from None
    elif scheme in ("postgresql", "postgres", "mysql", "mssql") and parsed.hostname:
        port = parsed.port or {"mysql": 3306, "mssql": 1433}.get(scheme, 5432)
        try:
            socket.create_connection((parsed.hostname, port), timeout=5).close()
        except OSError as exc:
            raise ConfigError(
                f"the MLflow database {parsed.hostname}:{port} is not reachable ({exc}). {fix}"
            ) from None


def health_request(uri: str) -> urllib.request.Request:
    """The GET of a tracking server's ``/health``, with the credentials the way MLflow's
    client sends them: ``user:password@`` of the URI (or MLflow's ``MLFLOW_TRACKING_USERNAME``
    and ``MLFLOW_TRACKING_PASSWORD``) as basic auth, not as part of the host."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    user, password = parts.username, parts.password
    if user is None:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    headers = {}
    if user is not None:
        pair = f"{unquote(user)}:{unquote(password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    return urllib.request.Request(url, headers=headers)


def shorten(text, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def experiment_id(client, name: str) -> str:
    """The id of the experiment ``name``, created if it does not exist yet. The first call on
    a client opens its store: for sqlite under ``store_lock``, so concurrent first runs do not
    race in MLflow's migrations; two processes creating the experiment at once both get it."""
    from mlflow.exceptions import MlflowException  # loaded with the client

    with store_lock(client.tracking_uri):
        experiment = client.get_experiment_by_name(name)
        if experiment:
            return experiment.experiment_id
        try:
            return client.create_experiment(name)
        except MlflowException:  # created meanwhile by another process (a server's store)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


def open_client(uri: str | None):
    """An ``MlflowClient`` for ``uri`` (None: MLflow's default), its store opened under
    ``store_lock``: MLflow creates and migrates a sqlite store when the client is made; a
    sqlite store then commits without a flush to disk each time (``light_commits``)."""
    from mlflow.tracking import MlflowClient  # start-up: only the processes that write runs

    with store_lock(uri):
        path = sqlite_path(uri)
        if path is not None and not path.exists():  # a new store: its migrations commit to
            with contextlib.suppress(sqlite3.Error, OSError):  # the log (1084 -> 283 flushes)
                with contextlib.closing(sqlite3.connect(path)) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
        client = MlflowClient(uri) if uri else MlflowClient()
    light_commits(client)
    return client


_LIGHT_ENGINES: list = []  # the sqlite engines light_commits set up, for close_sqlite_stores


def light_commits(client) -> None:
    """A sqlite store in write-ahead-log mode with ``synchronous=NORMAL``: a commit appends to
    the log without flushing it to disk (only checkpoints flush), and the database stays
    whole after a crash or a power cut, which may lose the last commits but never corrupts
    it (sqlite.org/wal.html). MLflow's default (rollback journal, ``synchronous=FULL``)
    flushed 8 times per commit here, 84 times per sweep trial, and those flushes were most
    of a trial's MLflow time (``benchmarks/sweep_overhead.py``). Other stores: unchanged."""
    engine = getattr(getattr(getattr(client, "_tracking_client", None), "store", None),
                     "engine", None)  # fmt: skip
    if engine is None or engine.dialect.name != "sqlite" or engine in _LIGHT_ENGINES:
        return
    from sqlalchemy import event  # start-up: loaded by MLflow's store already

    def on_connect(connection, _record):
        cursor = connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # kept in the file: once is enough
            cursor.execute("PRAGMA synchronous=NORMAL")  # per connection
        finally:
            cursor.close()

    event.listen(engine, "connect", on_connect)
    engine.dispose()  # the connections MLflow opened before get the settings too
    _LIGHT_ENGINES.append(engine)
    before_exit_now(close_sqlite_stores)


def close_sqlite_stores() -> None:
    """Close the sqlite stores' connections: the last one to close writes the log into the
    database file and removes it, so the ``.db`` file alone holds every run (to copy it)."""
    for engine in _LIGHT_ENGINES:
        with contextlib.suppress(Exception):
            engine.dispose()


HTTP_RETRY_VARIABLES = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)
USER_SET = {k for k in HTTP_RETRY_VARIABLES if k in os.environ}  # the user's own settings win


def bound_http_retries(seconds: float) -> None:
    """Set MLflow's HTTP retry variables (those the user did not set) so that one request,
    with its retries, takes at most about ``seconds``: each attempt waits at most ``timeout``,
    and urllib3 sleeps 0, 2, 4, ... s between attempts (backoff factor 1)."""
    seconds = max(float(seconds), 1.0)
    timeout = max(1, int(seconds // 5))
    retries = 0
    while retries < 10 and (2 ** (retries + 1) - 2) + (retries + 2) * timeout <= seconds:
        retries += 1
    values = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": retries,
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": 1,
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": 0.2,
        "MLFLOW_HTTP_REQUEST_TIMEOUT": timeout,
    }
    for key, value in values.items():
        if key not in USER_SET:
            os.environ[key] = str(value)


@contextlib.contextmanager
def http_retries_bounded(seconds: float):
    """``bound_http_retries`` within the block only: the processes started after it (a
    sweep's summary process) see the environment as it was."""
    saved = {k: os.environ.get(k) for k in HTTP_RETRY_VARIABLES}
    bound_http_retries(seconds)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
