"""The tracking spool: every MLflow run's record, journaled in its run directory as it is
made, so that what a store did not receive (a server gone, a full store, the side process
killed) is never lost, and ``python -m lossbench replay RUN_DIR [--uri URI]`` sends it later.

Layout: ``RUN_DIR/mlflow-spool/SPOOL_ID/`` holds ``records.jsonl`` (the run, written by the
training process: it is the source, so nothing depends on the side process surviving),
``store.jsonl`` (what the store did, written by the MLflow side process) and, for a run whose
record is incomplete, ``artifacts/`` (copies of the files to upload) and ``model/`` (the
model's data). A run whose record
reached its store complete removes its spool folder (and ``mlflow-spool/`` if it created it
and it is empty).

Both files are append-only, one JSON object per line, each line written whole and flushed,
private (0600) once they hold a URL with a password (the store's, for the replay); a torn last
line (a crash while writing it) is skipped when read. The records, by ``op``:

in ``records.jsonl``
  ``start``      ``spool_id, uri, experiment, run_name, tags, params, start_time`` (ms),
                 ``datasets`` (the run's dataset inputs, ``lossbench.tracking.models``)
  ``metrics``    ``items``: ``[[key, value, timestamp_ms, step], ...]``
  ``finish``     ``state, tags, metrics, artifacts`` (paths relative to the spool folder),
                 ``end_time``: how the run ended (written only when the record is incomplete);
                 ``model``: the run's MLflow model (its data folder relative to the spool
                 folder, under ``model/``), or null
  ``replayed``   ``uri, run_id, time``: a replay completed the run's record in that store
in ``store.jsonl``
  ``created``    ``run_id, uri``: the run exists in that store
  ``offline``    ``error``: the store failed; nothing after this was sent
  ``abandoned``  ``reason, end_time, sent``: the training process went away without ending
                 the run (``sent``: the store has the run ended as KILLED)

Replaying is idempotent and atomic: replays of one spool take turns (a ``flock`` on its
folder); it uploads only files inside the spool folder (an edited spool naming others is
refused before anything is sent); it finds the run (by its ``run_id`` in the store it was
created in, else by the tag ``lossbench.spool_id``), creates it if missing, sends only the
params, tags, metric points (NaN equal to NaN) and artifacts the store does not have, and ends
the run with its true final state (``finish``; else KILLED with the reason of ``abandoned``,
or with "the record ends before the run did" when the training process died with its side
process). A replay into the store the run was meant for (no ``--uri``) removes the spool
once it is done: no spool is left once its data is recorded. ``replay SWEEP_DIR`` replays
every trial's spool (``replay_folder``: ``MlflowTracker.replay``, the tracker protocol's).

This module imports MLflow only inside ``replay``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from lossbench.errors import ConfigError, LossbenchError
from lossbench.tracking.base import Replayed
from lossbench.tracking.models import log_datasets, log_run_model
from lossbench.tracking.store import (
    MAX_KEY,
    MAX_NAME,
    MAX_PARAM,
    MAX_TAG,
    bound_http_retries,
    experiment_id,
    open_client,
    shorten,
)
from lossbench.urls import has_credentials, mask_text, mask_url

SPOOL_DIR = "mlflow-spool"
RECORDS = "records.jsonl"  # the run, from the training process
STORE_RECORDS = "store.jsonl"  # what the store did, from the side process
SPOOL_TAG = "lossbench.spool_id"
METRICS_PER_BATCH, PARAMS_PER_BATCH, TAGS_PER_BATCH = 1000, 100, 100


def new_spool_id() -> str:
    return uuid.uuid4().hex[:16]


def spool_folder(run_dir, spool_id: str) -> Path | None:
    return Path(run_dir) / SPOOL_DIR / spool_id if run_dir is not None else None


def now_ms() -> int:
    return int(time.time() * 1000)


class Spool:
    """The journal of one run (append-only). Never raises: a journal that cannot be written
    (no run directory, a full disk) notes why in ``broken`` and drops further records."""

    def __init__(self, folder: Path | None, name: str = RECORDS) -> None:
        self.folder = folder
        self.name = name
        self.broken: str | None = None if folder is not None else "the run has no directory"
        self._file = None
        self._created_parent = False
        self._private = False  # made 0600: it holds a URL with a password

    @property
    def path(self) -> Path | None:
        return self.folder / self.name if self.folder is not None else None

    def append(self, record: dict) -> None:
        if self.broken:
            return
        try:
            if self._file is None:
                parent = self.folder.parent
                self._created_parent = not parent.exists()
                self.folder.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab", buffering=0)  # one write() per line
            line = json.dumps(record, default=float) + "\n"
            if not self._private and has_credentials(line):  # the store's URL, for a replay
                os.chmod(self.path, 0o600)
                self._private = True
            self._file.write(line.encode())
        except (OSError, ValueError, TypeError) as exc:
            self.broken = f"the spool {self.path} could not be written ({exc})"

    def keep(self, paths: list[str]) -> list[str]:
        """Copy files into the spool (the trainer deletes its temporary copies); returns their
        paths relative to the spool folder."""
        kept = []
        for src in paths:
            if self.broken:
                break
            rel = Path("artifacts") / Path(src).name  # uploaded under this name
            try:
                (self.folder / "artifacts").mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, self.folder / rel)
                kept.append(str(rel))
            except OSError as exc:
                self.broken = f"the spool {self.folder} could not be written ({exc})"
        return kept

    def keep_folder(self, src: str) -> str | None:
        """Copy a folder (the run's model data) into the spool; its path relative to the
        spool folder, or None when the spool cannot be written."""
        rel = Path("model") / Path(src).name
        if self.broken:
            return None
        try:
            shutil.copytree(src, self.folder / rel, dirs_exist_ok=True)
        except OSError as exc:
            self.broken = f"the spool {self.folder} could not be written ({exc})"
            return None
        return str(rel)

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def discard(self) -> None:
        """The record reached the store complete: remove what this spool created."""
        self.close()
        if self.folder is None or not self.folder.exists():
            return
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._created_parent:
            try:
                self.folder.parent.rmdir()  # only if empty: another run's spool stays
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# reading and replaying


def read_records(path: Path) -> list[dict]:
    """The records of a journal; a torn or unreadable line (a crash mid-write) is skipped."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "op" in record:
                records.append(record)
    return records


def find_spools(target: Path) -> list[Path]:
    """The spool folders under a run directory, an ``mlflow-spool`` folder or one spool, or
    under a folder of runs (a sweep's: every trial's spool)."""
    target = Path(target)
    if (target / RECORDS).is_file():
        return [target]
    root = target / SPOOL_DIR if (target / SPOOL_DIR).is_dir() else target
    found = sorted(p.parent for p in root.glob(f"*/{RECORDS}"))
    if found or root != target:
        return found
    return sorted(p.parent for p in target.rglob(f"{SPOOL_DIR}/*/{RECORDS}"))


def read_spool(folder: Path) -> list[dict]:
    """The run's records followed by the store's (``records.jsonl``, ``store.jsonl``)."""
    store = folder / STORE_RECORDS
    return read_records(folder / RECORDS) + (read_records(store) if store.is_file() else [])


def _state(records: list[dict]) -> tuple[str, dict, int | None]:
    """The run's true final state, its final tags and end time, from its journal."""
    finish = next((r for r in reversed(records) if r["op"] == "finish"), None)
    if finish is not None:
        return finish["state"], finish.get("tags", {}), finish.get("end_time")
    abandoned = next((r for r in reversed(records) if r["op"] == "abandoned"), None)
    reason = (abandoned or {}).get(
        "reason", "the record ends before the run did (the training process or its MLflow "
        "process died)"
    )  # fmt: skip
    tags = {"lossbench.status": "interrupted", "lossbench.failure_reason": reason}
    return "KILLED", tags, (abandoned or {}).get("end_time")


def replay(folder: Path, uri: str | None = None) -> dict:
    """Send a spooled run to ``uri`` (default: the store it was meant for) and end it there;
    returns what was done. Replayed into the store it was meant for (no ``uri``), the record
    is whole there and the spool is removed; a copy into another store keeps it. Raises on a
    store that cannot be reached, and ``ConfigError`` for a spool naming files outside its
    folder (before anything is sent). Two replays of one spool at once take turns (a lock on
    the spool folder), so one creates the run, the other finds it (or that it is done)."""
    bound_http_retries(30.0)  # a store that does not answer: an error in bounded time
    records = read_spool(folder)
    start = next((r for r in records if r["op"] == "start"), None)
    if start is None:
        raise ValueError(f"{folder / RECORDS} has no start record: nothing to replay")
    finish = next((r for r in reversed(records) if r["op"] == "finish"), None)
    _check_paths(folder, finish)  # before anything is sent
    target = uri or start.get("uri") or os.environ.get("MLFLOW_TRACKING_URI") or None
    client = open_client(target)
    with _replay_lock(folder):  # two replays of one spool at once: the second finds the run
        if not (folder / RECORDS).is_file():  # the other one completed it and removed it
            return {"run_id": None, "uri": client.tracking_uri, "created": False,
                    "metrics_sent": 0, "metrics_present": 0, "artifacts_sent": 0,
                    "state": "already replayed", "removed": True}  # fmt: skip
        done = _replay(client, folder, records, start, finish)
        done["removed"] = uri is None  # into its own store: the record is whole, the spool goes
        if done["removed"]:
            remove_spool(folder)
        return done


def replay_folder(target: Path, uri: str | None) -> Replayed:
    """Every spool under ``target`` (``find_spools``) replayed, a line said for each; the
    store the first one was meant for, when ``uri`` names none (a sweep's settling follows)."""
    spools = find_spools(target)
    starts = [r for f in spools[:1] for r in read_spool(f) if r["op"] == "start"]
    failed = sum(not _replay_said(folder, uri) for folder in spools)  # each removed once in
    return Replayed(len(spools), failed, uri or (starts[0].get("uri") if starts else None))


def _replay_said(folder: Path, uri: str | None) -> bool:
    """Replay one spool, saying what was done; False when its store failed."""
    try:
        done = replay(folder, uri)
    except LossbenchError:  # an edited spool: refused before anything was sent
        raise
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


def remove_spool(folder: Path) -> None:
    """Remove a spool whose record its store has whole (and ``mlflow-spool/`` once empty)."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()  # only if empty: another run's spool stays


@contextlib.contextmanager
def _replay_lock(folder: Path):
    """An exclusive ``flock`` on the spool folder itself (no lock file left behind)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _check_paths(folder: Path, finish: dict | None) -> None:
    """Refuse (``ConfigError``) a spool whose files to upload are not inside its own folder
    (an edited spool naming ``../..``, an absolute path, a link pointing out)."""
    if finish is None:
        return
    model = finish.get("model") or {}
    named = [(rel, "file") for rel in finish.get("artifacts", [])]
    if model.get("data"):
        named.append((model["data"], "model folder"))
    own = folder.resolve()
    for rel, what in named:
        path = folder / str(rel)
        inside = [path, *(path.rglob("*") if path.is_dir() else [])]
        if Path(str(rel)).is_absolute() or not all(p.resolve().is_relative_to(own)
                                                   for p in inside):  # fmt: skip
            raise ConfigError(
                f"{folder / RECORDS} names the {what} {str(rel)!r} to upload, which is outside "
                f"the run directory it replays ({own}): replay uploads only the spool's own "
                "copies (artifacts/ and model/ in that folder), so the spool was edited or "
                "damaged, and nothing was sent. Fix: restore that entry (a path relative to the "
                "spool folder, inside it), or delete it from records.jsonl."
            )


def _replay(client, folder: Path, records: list[dict], start: dict, finish: dict | None):
    """``replay`` once the store is open and the spool locked."""
    from mlflow.entities import RunTag  # start-up: MLflow loads only for a replay

    run_id, made = _find_or_create(client, records, start)
    _send_params(client, run_id, start["params"])
    log_datasets(client, run_id, start.get("datasets") or [])  # MLflow keeps each one once
    state, final_tags, end_time = _state(records)
    items = [item for r in records if r["op"] == "metrics" for item in r["items"]]
    items += finish.get("metrics", []) if finish else []
    sent = _send_metrics(client, run_id, items)
    tags = [RunTag(shorten(k, MAX_KEY), shorten(v, MAX_TAG)) for k, v in final_tags.items()]
    for i in range(0, len(tags), TAGS_PER_BATCH):
        client.log_batch(run_id, tags=tags[i : i + TAGS_PER_BATCH])
    kept = finish.get("artifacts", []) if finish else []
    uploaded = _send_artifacts(client, run_id, folder, kept)
    model = (finish or {}).get("model")
    if model and model.get("data"):  # logged and registered once, whatever was sent before
        log_run_model(client, run_id, {**model, "data": str(folder / model["data"])})
    client.set_terminated(run_id, state, end_time=end_time)
    with open(folder / RECORDS, "a", encoding="utf-8") as f:
        f.write(json.dumps({"op": "replayed", "uri": client.tracking_uri, "run_id": run_id,
                            "time": now_ms()}) + "\n")  # fmt: skip
    return {
        "run_id": run_id,
        "uri": client.tracking_uri,
        "created": made,
        "metrics_sent": sent,
        "metrics_present": len(items) - sent,
        "artifacts_sent": uploaded,
        "state": state,
    }


def _find_or_create(client, records: list[dict], start: dict) -> tuple[str, bool]:
    """The spooled run in the client's store: by its run id where it was created, else by its
    spool tag; created (with its original start time and tags) when it is in neither."""
    from mlflow.exceptions import MlflowException  # loaded with the client

    created = next((r for r in records if r["op"] == "created"), None)
    if created is not None and created.get("uri") == client.tracking_uri:
        try:
            return client.get_run(created["run_id"]).info.run_id, False
        except MlflowException:
            pass
    exp_id = experiment_id(client, start["experiment"])
    spool_id = start["spool_id"]
    found = client.search_runs([exp_id], filter_string=f"tags.`{SPOOL_TAG}` = '{spool_id}'")
    if found:
        return found[0].info.run_id, False
    tags = {shorten(k, MAX_KEY): shorten(v, MAX_TAG) for k, v in start["tags"].items()}
    tags[SPOOL_TAG] = start["spool_id"]
    run = client.create_run(exp_id, start_time=start.get("start_time"), tags=tags,
                            run_name=shorten(start["run_name"], MAX_NAME))  # fmt: skip
    return run.info.run_id, True


def _send_params(client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param  # loaded with the client

    have = client.get_run(run_id).data.params
    missing = [Param(shorten(k, MAX_KEY), shorten(v, MAX_PARAM)) for k, v in params.items()
               if shorten(k, MAX_KEY) not in have]  # fmt: skip
    for i in range(0, len(missing), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=missing[i : i + PARAMS_PER_BATCH])


def _send_metrics(client, run_id: str, items: list) -> int:
    """Send the metric points the run lacks (same key, step, timestamp and value); how many."""
    from mlflow.entities import Metric  # loaded with the client

    existing = {
        key: {_point(m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)}
        for key in {k for k, *_ in items}
    }
    missing = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in items
               if _point(step, ts, v) not in existing[k]]  # fmt: skip
    for i in range(0, len(missing), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=missing[i : i + METRICS_PER_BATCH])
    return len(missing)


def _point(step, timestamp, value) -> tuple:
    """A metric point as the duplicate check compares it: NaN equal to NaN (NaN != NaN, so a
    point of value NaN was never found and was sent again by every replay), and an infinity
    equal to the largest float, which MLflow's database stores (and returns) instead."""
    value = float(value)
    if math.isnan(value):
        return int(step), int(timestamp), "nan"
    if math.isinf(value) or abs(value) == sys.float_info.max:
        return int(step), int(timestamp), "inf" if value > 0 else "-inf"
    return int(step), int(timestamp), value


def _send_artifacts(client, run_id: str, folder: Path, kept: list[str]) -> int:
    """Upload the spooled files the run lacks (by name); how many."""
    if not kept:
        return 0
    present = {a.path for a in client.list_artifacts(run_id)}
    uploaded = 0
    for rel in kept:
        path = folder / rel
        if path.name not in present and path.is_file():
            client.log_artifact(run_id, str(path))
            uploaded += 1
    return uploaded
