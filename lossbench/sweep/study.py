"""The Optuna side of a sweep: storage, sampler, pruner, the study, the budget lock that keeps
K workers from overshooting ``n_trials``, lost-trial recovery, the journal file kept whole (a
failed append is undone; a record torn by a crash is repaired with a backup, or refused), and
the question a study answers (a study name reused for another search space is refused). Every
Optuna internal lossbench needs is reached here: ``set_trial_attr``, ``set_trial_attrs`` and
``_JournalFile``."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import TrialState

from lossbench.errors import ConfigError
from lossbench.sweep.plan import Plan
from lossbench.tracking.spool import find_spools
from lossbench.urls import mask_text, mask_url


def set_trial_attr(study, trial, key: str, value) -> None:
    """Set a user attribute on any trial of ``study``, also one this process did not ask for
    (a lost trial, a heartbeat from another thread). Optuna has no public call for that; this is
    the one place lossbench reaches into Optuna's private ``study._storage``/``trial._trial_id``."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def set_trial_attrs(study, trial, attrs: dict) -> None:
    """Set several user attributes of ``trial`` at once. On a journal file they are one
    append and one flush to disk (Optuna writes one record per attribute, each flushed: at
    4 ms a flush, a trial's dozen attributes were a quarter of its overhead); elsewhere one
    call each. Either way the trial object sees them, as after ``trial.set_user_attr``."""
    storage = study._storage
    if isinstance(storage, JournalStorage) and len(attrs) > 1:
        op = JournalOperation.SET_TRIAL_USER_ATTR
        with storage._thread_lock:
            worker = storage._replay_result.worker_id
            storage._backend.append_logs([
                {"op_code": op, "worker_id": worker, "trial_id": trial._trial_id,
                 "user_attr": {key: value}} for key, value in attrs.items()
            ])  # fmt: skip
            storage._sync_with_backend()
    else:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial._trial_id, key, value)
    cached = getattr(trial, "_cached_frozen_trial", None)
    if cached is not None:
        cached.user_attrs.update(attrs)


def storage_url(setting: str | None, sweep_dir: Path) -> str:
    return setting or f"journal:{sweep_dir / 'journal.log'}"


class _JournalFile(JournalFileBackend):
    """Optuna's journal file whose append is all or nothing: a write that fails (a full disk)
    is cut back to where it started, so the file never ends in half a record. This is Optuna's
    ``append_logs`` (under its lock) plus the undo."""

    def append_logs(self, logs: list[dict]) -> None:
        self._lock.acquire()
        try:
            data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
            with open(self._file_path, "ab") as f:
                start = f.tell()
                try:
                    f.write(data.encode("utf-8"))
                    f.flush()
                    os.fsync(f.fileno())
                except BaseException:
                    with contextlib.suppress(OSError):
                        f.truncate(start)
                    raise
        finally:
            self._lock.release()


def open_storage(url: str):
    """An Optuna storage: ``journal:PATH`` (the default), ``grpc://HOST:PORT`` (a storage
    proxy, ``python -m lossbench storage-proxy``) or any database URL Optuna accepts."""
    if url.startswith("journal:"):
        path = Path(url[len("journal:") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(_JournalFile(str(path)))
    if url.startswith("grpc://"):
        host, _, port = url[len("grpc://") :].rstrip("/").rpartition(":")
        return optuna.storages.GrpcStorageProxy(host=host or "localhost", port=int(port))
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def repair_journal(url: str) -> str | None:
    """Check a journal file before a sweep resumes on it, under Optuna's journal lock. A last
    record cut short (a crash or a full disk mid-write) is cut off, after a backup of the whole
    file; returns what was done, for the user. A damaged record with complete ones after it is
    refused (ConfigError) and the file left as it is."""
    if not url.startswith("journal:"):
        return None
    path = Path(url[len("journal:") :])
    if not path.is_file():
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        lines = data.split(b"\n")  # the last item is what follows the last newline
        for number, line in enumerate(lines[:-1], start=1):
            _check_record(path, number, line)
        if not lines[-1]:
            return None
        backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, backup)
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(lines[-1]))
            os.fsync(f.fileno())
    finally:
        lock.release()
    return (
        f"the study journal {path} ended in a torn record ({len(lines[-1])} bytes of a write "
        f"that never finished: a crash or a full disk); it was cut off, and the file as it was "
        f"is kept as the backup {backup.name}"
    )


def _check_record(path: Path, number: int, line: bytes) -> None:
    try:
        json.loads(line)
    except ValueError:
        raise ConfigError(
            f"the study journal {path} is damaged at line {number}: {line[:80]!r} is not a "
            "complete record, and complete records follow it (a record torn by a crash, then "
            "appended to). lossbench leaves the file as it is. Fix: keep a copy, delete that "
            "line (the records after it are intact) and run the same command again; or start "
            "a new study with another sweep.study_name."
        ) from None


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` once the grid is used up: stopping
    works only inside ``study.optimize``, and lossbench's workers ask and tell (a RuntimeError
    after the last trial); the budget ends them instead (n_trials is capped at the grid's
    size)."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def make_sampler(plan: Plan, worker: int = 0):
    seed = plan.seed + 1000 * worker  # workers must not draw the same points
    name = plan.sampler
    if name == "grid":
        return _GridSampler(plan.grid, seed=plan.seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=plan.seed)  # one sequence shared by workers
    if len(plan.directions) > 1:
        return optuna.samplers.NSGAIISampler(seed=seed)
    # Optuna's 10 random trials before TPE models the space, counted in runs: each run answers
    # len(epoch_counts) trials, and 10 answers of one run would end the exploration at once
    return optuna.samplers.TPESampler(seed=seed,
                                      n_startup_trials=10 * max(len(plan.epoch_counts), 1))


# a trial answered from a longer run's trajectory (sweep.epochs from one run per configuration)
# carries the number of the trial whose run it was read from in this user attribute
READ_FROM = "read_from"
# a trial's user attribute: why its MLflow record is incomplete (the store went away); the rest
# is spooled in its folders (``spooled_in``) for ``python -m lossbench replay SWEEP_DIR``
RECORD_INCOMPLETE = "record_incomplete"


def still_spooled(trial) -> bool:
    """Whether a trial whose record was incomplete still has it in a spool (or in a folder
    this machine cannot see): replayed into its store, the spool is gone."""
    if not trial.user_attrs.get(RECORD_INCOMPLETE):
        return False
    folders = [Path(p) for p in trial.user_attrs.get("spooled_in", [])]
    return any(not p.is_dir() or find_spools(p) for p in folders) or not folders


def trained(t) -> bool:
    """Whether trial ``t`` trained a run of its own (not answered from a longer run)."""
    return t.user_attrs.get(READ_FROM) is None


class _ComparableTrials:
    """A study as a pruner sees it: only the trials ``keep`` accepts (``get_trials`` filtered),
    everything else the study's own."""

    def __init__(self, study, keep):
        self._study, self._keep = study, keep

    def get_trials(self, deepcopy: bool = True, states=None):
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states)
                if self._keep(t)]  # fmt: skip

    @property
    def trials(self):
        return self.get_trials()

    def __getattr__(self, name):
        return getattr(self._study, name)


class ComparablePruner(optuna.pruners.BasePruner):
    """A pruner that compares a trial only with comparable trials: those that trained a run of
    their own (not those answered from a longer run, whose curves would count their run many
    times), not lost, and with the same values of ``groups`` (e.g. the same loss: a
    cross-entropy trial is never pruned because mse trials did better, on another scale)."""

    def __init__(self, base, groups: list[str]):
        self.base, self.groups = base, list(groups)

    def prune(self, study, trial) -> bool:
        key = [trial.params.get(k) for k in self.groups]

        def keep(t) -> bool:
            if not trained(t) or t.user_attrs.get("lossbench_lost"):
                return False
            return [t.params.get(k) for k in self.groups] == key

        return self.base.prune(_ComparableTrials(study, keep), trial)


def make_pruner(plan: Plan):
    """The plan's pruner: ``n_startup_trials`` completed trials (of the trial's group) before
    any is pruned, none pruned in its first ``pruner_warmup_epochs`` epochs, and compared only
    within its group (``ComparablePruner``)."""
    p, warm, startup = plan.pruner, plan.pruner_warmup_epochs, plan.pruner_startup_trials
    if p == "none" or len(plan.directions) > 1:
        return optuna.pruners.NopPruner()
    if p == "median":
        base = optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warm)
    elif p == "percentile":
        base = optuna.pruners.PercentilePruner(25.0, n_startup_trials=startup,
                                               n_warmup_steps=warm)  # fmt: skip
    elif p == "successive_halving":
        base = optuna.pruners.SuccessiveHalvingPruner(min_resource=max(warm, 1))
    elif p == "hyperband":  # its brackets read the storage directly: no grouping
        return optuna.pruners.HyperbandPruner(min_resource=max(warm, 1))
    elif p == "patient":
        base = optuna.pruners.PatientPruner(None, patience=max(warm, 1))
    else:
        raise AssertionError(p)
    return ComparablePruner(base, plan.pruner_groups)


@contextlib.contextmanager
def budget_lock(plan: Plan):
    """Serialise 'count the trials, then ask' across the workers of one study; yields whether
    a lock is held (none for a gRPC proxy or MySQL: ``in_budget`` checks after asking)."""
    url = plan.storage_url()
    if url.startswith("journal:") or url.startswith("sqlite"):
        lock_path = Path(plan.sweep_dir) / ".budget.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    if url.split("+")[0].split(":")[0] in ("postgresql", "postgres"):
        key = int(hashlib.sha256(plan.study_name.encode()).hexdigest()[:15], 16)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield True
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        engine.dispose()
        return
    yield False  # gRPC proxy, other databases: in_budget gives back a trial asked too many


# ---------------------------------------------------------------------------------------------
# counting and recovering trials


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def counted(trials) -> list:
    """Trials that ended and count, the lost ones (retried) excepted."""
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in trials if t.state in ended and not t.user_attrs.get("lossbench_lost")]


def counted_runs(trials) -> list:
    """The counted trials that trained a run of their own: what the budget (``n_runs``) counts."""
    return [t for t in counted(trials) if trained(t)]


def recover_stale(study, grace_seconds: float) -> list[int]:
    """Fail RUNNING trials whose worker is gone, and enqueue each again; returns their numbers."""
    host, now, lost = socket.gethostname(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp())
        dead = t.user_attrs.get("host") == host and not _pid_alive(t.user_attrs.get("pid", -1))
        if not dead and now - beat < grace_seconds:
            continue
        set_trial_attr(study, t, "lossbench_lost", True)  # first: never counted once failed
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
            continue  # another worker recovered it first (and retried it)
        retry(study, t)
        lost.append(t.number)
    _lose_answers(study, lost)
    return lost


def _lose_answers(study, lost: list[int]) -> None:
    """Trials answered from the run of a trial that was lost (its worker died after adding
    them, before telling it) are lost with it: its retry answers them again."""
    if not lost:
        return
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(READ_FROM) in lost and not t.user_attrs.get("lossbench_lost"):
            set_trial_attr(study, t, "lossbench_lost", True)


def in_budget(trials, number: int, n_runs: int) -> bool:
    """Whether trial ``number`` is within the budget: fewer than ``n_runs`` trials that count
    or may count (not lost, trained) were created before it. Where no lock serialises asking (a
    gRPC proxy, MySQL, a journal on a shared filesystem), two workers may ask at once at the
    end of the budget; the later trial is then given back."""
    ahead = [t for t in trials if t.number < number and not t.user_attrs.get("lossbench_lost")
             and trained(t)]  # fmt: skip
    return len(ahead) < n_runs


def add_answer(study, frozen) -> int:
    """Add a finished trial (``optuna.trial.create_trial``) and return its number, which
    Optuna's ``study.add_trial`` does not: the same checks, then its storage call."""
    frozen._validate()
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=frozen)
    return study._storage.get_trial_number_from_id(trial_id)


def retry(study, trial) -> None:
    """Enqueue a lost trial again with the same parameters (it did not count)."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)


def trial_seed(seed: int, number: int) -> int:
    """A trial's own training seed (``sweep.seeds=per_trial``), from the run's ``seed`` and the
    trial number (logged with the trial)."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0] % (2**31))


def trial_seeds(plan: Plan, number: int) -> list[int]:
    """The training seeds of trial ``number``: one per repeat. ``shared`` (the default): every
    trial the same, ``seed``, ``seed + 1``, ...; ``per_trial``: its own, from ``seed`` and the
    trial number."""
    first = plan.train_seed if plan.seeds == "shared" else trial_seed(plan.train_seed, number)
    return [first + r for r in range(plan.repeats)]


def storage_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is the study storage failing (a database or gRPC proxy that stopped
    answering), not a bug: Optuna's own storage error, or the driver's (SQLAlchemy, psycopg2,
    gRPC), also when Optuna wrapped it."""
    for e in (exc, exc.__cause__, exc.__context__):
        if e is None:
            continue
        if isinstance(e, optuna.exceptions.StorageInternalError):
            return True
        if type(e).__module__.split(".")[0] in ("sqlalchemy", "psycopg2", "grpc", "pymysql"):
            return True
    return False


def storage_error_text(exc: BaseException) -> str:
    """What a storage that stopped answering raised, for a message: type, first 300 characters
    on one line, credentials masked."""
    return f"{type(exc).__name__}: {mask_text(' '.join(str(exc).split())[:300])}"


def _storage_fix(exc: BaseException) -> str:
    """The fix for a storage that cannot be opened: the driver to install when it is missing."""
    if isinstance(exc, ImportError) and "psycopg2" in str(exc):
        return ("install the PostgreSQL driver: pip install 'lossbench[postgres]' (it installs "
                "psycopg2-binary), then run the same command again.")  # fmt: skip
    return ("check sweep.storage (a reachable database URL), or leave it unset for a journal "
            "file in the sweep directory.")  # fmt: skip


def open_study(plan: Plan):
    """Create or load the study; errors for an unreachable storage or other directions."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = plan.storage_url()
    try:
        storage = open_storage(url)
        sampler, pruner = make_sampler(plan), make_pruner(plan)
        try:  # an existing study is only read (create_study would append to a journal)
            study = optuna.load_study(
                study_name=plan.study_name, storage=storage, sampler=sampler, pruner=pruner
            )
        except KeyError:
            study = optuna.create_study(
                storage=storage,
                study_name=plan.study_name,
                directions=plan.directions,
                sampler=sampler,
                pruner=pruner,
                load_if_exists=True,
            )
    except Exception as exc:
        root = exc.__cause__ or exc.__context__ or exc  # Optuna wraps the driver's error
        lines = [line.strip() for line in str(root).splitlines() if line.strip()]
        reason = mask_text(" ".join(lines)[:300])
        exc = root
        raise ConfigError(
            f"the Optuna storage {mask_url(plan.storage)} cannot be used: "
            f"{type(exc).__name__}: {reason}. Fix: {_storage_fix(exc)}"
        ) from None
    have = [d.name.lower() for d in study.directions]
    if have != plan.directions:
        raise ConfigError(
            f"the study {plan.study_name!r} in {mask_url(plan.storage)} exists with direction(s) "
            f"{have}, not {plan.directions}. Fix: pass the same sweep.direction, or a new "
            "sweep.study_name."
        )
    return study


# overrides that change how a trial is shown or recorded, not what it answers
_NOT_THE_QUESTION = ("tracking", "trainer.progress", "trainer.plots", "hydra")


def question(plan: Plan) -> dict:
    """What a study answers: its search space and the fixed overrides that shape a trial (the
    last value of a key wins, as in Hydra)."""
    fixed = {}
    for o in plan.fixed:
        key, _, value = o.partition("=")
        if not key.lstrip("+~").startswith(_NOT_THE_QUESTION):
            fixed[key] = value
    asked = {"search space": dict(sorted(plan.params.items())),
             "fixed": dict(sorted(fixed.items()))}  # fmt: skip
    if plan.seeds != "shared" or plan.repeats != 1:  # how trials are seeded changes the answer
        asked["seeds"] = f"{plan.seeds} x{plan.repeats}"
    return asked


def check_question(study, plan: Plan) -> None:
    """Refuse a study name reused for another question (its best trial would be reported as
    this command's answer); a study without the record (new, or from an older lossbench)
    gets it."""
    asked = question(plan)
    had = study.user_attrs.get("lossbench_question")
    if had is None:
        study.set_user_attr("lossbench_question", asked)
        return
    if had == asked:
        return
    raise ConfigError(
        f"sweep.study_name={plan.study_name} names a study that answers another question: it "
        f"was created for {_describe(had)}, this command asks {_describe(asked)}, and its "
        "trials would be reported as this command's answer. Fix: pass a new sweep.study_name "
        "(or leave it unset: the default name is made from the search space and the "
        "overrides), or run the study's own command to resume it."
    )


def _describe(q: dict) -> str:
    space = ", ".join(f"{k}={v}" for k, v in q["search space"].items())
    fixed = " ".join(f"{k}={v}" for k, v in q["fixed"].items()) or "none"
    return mask_text(f"search space {space} with fixed overrides {fixed}")
