import fcntl
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from lossbench.plugins import build_plugin_manager, set_plugin_manager
from lossbench.testing import central_difference  # noqa: F401  (tests import it from here)
from lossbench.training import warm_up

# A suite started in the background (nohup, `make test &`) inherits an ignored SIGINT, and so
# would every process it starts; the tests that press Ctrl-C need runs it reaches.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Tests never load whatever plugins happen to be installed: built-ins only, unless a test
# registers its own.
os.environ.setdefault("LOSSBENCH_LOAD_PLUGINS", "")

TINY = ["trainer.progress=false", "trainer.epochs=3", "tracking=none"]

# The slowest test files first, slowest first (their tests' durations, `--durations=60`: about
# half of the suite's time). `make test` runs `-n 2 --dist loadfile`: pytest-xdist hands each
# file to the next free worker in collection order, so long files started last leave one
# worker running alone at the end.
SLOW_FIRST = (
    "test_sweep_faults.py",
    "test_sweep_service_faults.py",
    "test_sweep_cluster.py",
    "test_sweep.py",
    "test_sweep_parent_faults.py",
    "test_bad_input_cli.py",
    "test_models_mlflow.py",
    "test_faults_tracking.py",
    "test_cli.py",
    "test_sweep_answers.py",
)


def pytest_collection_modifyitems(items):
    """Put the files of ``SLOW_FIRST`` first, in its order; the others keep theirs (and every
    file the order of its tests: the sort is stable)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def wait_for_summaries(root) -> None:
    """Wait until the background summary process of every sweep under ``root`` has ended (it
    holds SWEEP_DIR/.summary.lock until the figures are logged and the parent run has ended)."""
    for lock in Path(root).rglob(".summary.lock"):
        with open(lock) as f:
            fcntl.flock(f, fcntl.LOCK_EX)


@pytest.fixture(scope="session")
def pm():
    manager = build_plugin_manager(entry_points=False)
    set_plugin_manager(manager)
    return manager


@pytest.fixture(scope="session", autouse=True)
def warm_numba_cache():
    """Compile (or load from the cache) the fused epoch and every built-in kernel in both dtypes
    once, before any test: the many processes the tests start then load them from numba's disk
    cache instead of each compiling them (on a fresh clone that is minutes of the suite)."""
    warm_up(plugin_manager=build_plugin_manager(entry_points=False))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}


def postgres_or_skip():
    """A psycopg2 connection to the local PostgreSQL server, or skip (fail under CI, where
    .ci/run sets LOSSBENCH_REQUIRE_SERVICES=1 so the test cannot silently skip)."""
    try:
        import psycopg2

        conn = psycopg2.connect(connect_timeout=3, **PG)
    except Exception as exc:
        reason = (
            f"PostgreSQL is not reachable at {PG['host']}:{PG['port']} (user {PG['user']}, "
            f"database {PG['dbname']}): {exc}".strip()
        )
        if os.environ.get("LOSSBENCH_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    conn.autocommit = True
    return conn


@pytest.fixture
def postgres_database():
    """A fresh, empty PostgreSQL database (dropped afterwards); yields its SQLAlchemy URL."""
    conn = postgres_or_skip()
    name = f"lossbench_test_{os.getpid()}_{np.random.default_rng().integers(1 << 30)}"
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()
