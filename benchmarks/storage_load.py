"""How many sweep workers one study storage serves, without a cluster: N simulated workers
(processes running lossbench's worker loop - budget lock, lost-trial recovery, count, ask,
a report per epoch, tell - with the training left out) against PostgreSQL directly and
through Optuna's gRPC storage proxy (``python -m lossbench storage-proxy``).

    python benchmarks/storage_load.py [--workers 2,8,32,64] [--trials-per-worker 6]
                                      [--epochs 5] [--modes direct,proxy]

Needs the local PostgreSQL (127.0.0.1:5432, user postgres, trust auth). For each mode and N it
creates a fresh database, starts N workers, waits until all have opened the storage, lets them
run N x trials-per-worker trials, and prints the trials per second the storage sustained, the
storage calls per second, the median and 95th-percentile time of one trial's storage work,
and the most database connections held at once (pg_stat_activity, sampled every 50 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/"


def worker(storage: str, name: str, n_trials: int, epochs: int, go: str, out: str) -> None:
    """One simulated worker: lossbench's loop (lossbench.sweep.worker._loop) without training."""
    import optuna
    from optuna.trial import TrialState

    from lossbench.sweep.plan import Plan
    from lossbench.sweep.study import budget_lock, counted, in_budget, open_study, recover_stale

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan = Plan(study_name=name, storage=storage, sweep_dir=tempfile.gettempdir(), fixed=[],
                params={}, metrics=["val_loss"], directions=["minimize"], n_trials=n_trials,
                seed=0, sampler="random", pruner="none", pruner_warmup_epochs=0,
                heartbeat_seconds=5, grace_seconds=600, tracking=False)  # fmt: skip
    study = open_study(plan)
    Path(out + ".ready").touch()
    deadline = time.time() + 900  # never outlive a benchmark that died before saying go
    while not os.path.exists(go):
        if time.time() > deadline or os.getppid() == 1:
            raise SystemExit("the benchmark that started this worker is gone")
        time.sleep(0.01)
    times = []
    while True:
        t0 = time.perf_counter()
        with budget_lock(plan) as locked:
            recover_stale(study, plan.grace_seconds)
            trials = study.get_trials(deepcopy=False)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            done = len(counted(trials))
            if done >= n_trials:
                break
            trial = None
            if done + running < n_trials:
                trial = study.ask()
                trial.set_user_attr("pid", os.getpid())
                trials = study.get_trials(deepcopy=False) if not locked else None
                if not locked and not in_budget(trials, trial.number, n_trials):
                    trial.set_user_attr("lossbench_lost", True)
                    study.tell(trial, state=TrialState.FAIL)
                    trial = None
        if trial is None:
            time.sleep(0.05)
            continue
        x = trial.suggest_float("optimizer.lr", 1e-4, 1, log=True)
        for epoch in range(epochs):
            trial.report(x * (epochs - epoch), epoch)
            trial.should_prune()
        study.tell(trial, x)
        times.append(time.perf_counter() - t0)
    Path(out).write_text(json.dumps(times))


def _psql(sql: str, db: str = "test") -> str:
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-Atc", sql],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sample_connections(db: str, stop: threading.Event, peak: list[int]) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="test")
    conn.autocommit = True
    with conn.cursor() as cur:
        while not stop.wait(0.05):
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (db,))
            peak[0] = max(peak[0], cur.fetchone()[0])
    conn.close()


def _start_proxy(db_url: str, port: int) -> subprocess.Popen:
    proxy = subprocess.Popen(
        [sys.executable, "-m", "lossbench", "storage-proxy", "--storage", db_url,
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proxy
        if proxy.poll() is not None:
            raise SystemExit("the storage proxy did not start")
        time.sleep(0.1)


def measure(mode: str, n: int, per_worker: int, epochs: int, tmp: Path) -> dict:
    db = f"lossbench_load_{mode}_{n}_{os.getpid()}"
    _psql(f'CREATE DATABASE "{db}"')
    proxy = None
    try:
        url = PG + db
        import optuna  # the study exists before the workers start (no creation stampede)

        optuna.create_study(study_name="load", storage=url)
        if mode == "proxy":
            port = _free_port()
            proxy = _start_proxy(url, port)
            url = f"grpc://127.0.0.1:{port}"
        return _run_workers(mode, n, per_worker, epochs, tmp, db, url)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait()
        _psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _run_workers(mode, n, per_worker, epochs, tmp, db, url) -> dict:
    go, outs = tmp / f"go-{mode}-{n}", [tmp / f"w-{mode}-{n}-{i}.json" for i in range(n)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, __file__, "--worker", url, "load", str(n * per_worker), str(epochs)]
    logs = [open(str(o) + ".log", "w") for o in outs]
    procs = [subprocess.Popen([*argv, str(go), str(o)], env=env, stderr=log)
             for o, log in zip(outs, logs, strict=True)]  # fmt: skip
    while not all(Path(str(o) + ".ready").exists() for o in outs):
        if any(p.poll() not in (None, 0) for p in procs):
            go.touch()  # let the others go, and report what stopped this one
            [p.wait() for p in procs]
            return {"mode": mode, "n": n, "error": _first_error(outs)}
        time.sleep(0.1)
    peak, stop = [0], threading.Event()
    sampler = threading.Thread(target=_sample_connections, args=(db, stop, peak))
    sampler.start()
    t0 = time.perf_counter()
    go.touch()
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if any(codes):
        return {"mode": mode, "n": n, "error": _first_error(outs)}
    times = sorted(t for o in outs for t in json.loads(o.read_text()))
    calls = 8 + 2 * epochs  # lock, recover, count, ask, attr, budget, suggest, tell, reports
    return {
        "mode": mode, "n": n, "trials": len(times), "wall": wall,
        "trials_per_s": len(times) / wall, "calls_per_s": len(times) * calls / wall,
        "p50_ms": statistics.median(times) * 1e3,
        "p95_ms": times[int(0.95 * (len(times) - 1))] * 1e3, "connections": peak[0],
    }  # fmt: skip


def _first_error(outs) -> str:
    failed = [Path(str(o) + ".log").read_text() for o in outs]
    lines = [line for text in failed for line in text.splitlines() if "Error" in line]
    return f"{sum(1 for t in failed if t.strip())} of {len(outs)} workers failed: " + (
        lines[-1][:160] if lines else "?"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="2,8,32,64")
    ap.add_argument("--trials-per-worker", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--modes", default="direct,proxy")
    args = ap.parse_args()
    print(f"storage load: simulated workers (no training), {args.trials_per_worker} trials each, "
          f"{args.epochs} reports per trial, {os.cpu_count()} cores, PostgreSQL "
          f"{_psql('SHOW server_version')} (max_connections {_psql('SHOW max_connections')})")
    print(f"{'storage':10}{'N':>5}{'trials':>8}{'trials/s':>10}{'calls/s':>9}{'p50 ms':>9}"
          f"{'p95 ms':>9}{'db conns':>10}")
    with tempfile.TemporaryDirectory(prefix="lossbench-load-") as tmp:
        for mode in args.modes.split(","):
            for n in (int(x) for x in args.workers.split(",")):
                r = measure(mode, n, args.trials_per_worker, args.epochs, Path(tmp))
                if "error" in r:
                    print(f"{mode:10}{n:5d}  {r['error']}")
                    continue
                print(f"{mode:10}{n:5d}{r['trials']:8d}{r['trials_per_s']:10.1f}"
                      f"{r['calls_per_s']:9.0f}{r['p50_ms']:9.1f}{r['p95_ms']:9.1f}"
                      f"{r['connections']:10d}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        url, name, n_trials, epochs, go, out = sys.argv[2:8]
        worker(url, name, int(n_trials), int(epochs), go, out)
    else:
        main()
