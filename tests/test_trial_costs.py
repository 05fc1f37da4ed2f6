"""What a sweep trial pays besides training, kept small without changing what it records: its
attributes reach the study journal in one append (one flush to disk) instead of one per
attribute, its config files are written by libyaml yet read back as OmegaConf wrote them, and
a sqlite MLflow store commits to its write-ahead log (``benchmarks/sweep_overhead.py``
measures the effect)."""

import shutil
import sqlite3

import optuna
import yaml
from omegaconf import OmegaConf

from lossbench.config import compose, compose_multirun
from lossbench.config.text import to_yaml
from lossbench.sweep import study as study_mod
from lossbench.sweep.study import open_storage, set_trial_attrs
from lossbench.sweep.trial import write_hydra_files
from lossbench.tracking.store import close_sqlite_stores, open_client


def test_a_trials_attributes_reach_the_journal_in_one_append(tmp_path, monkeypatch):
    url = f"journal:{tmp_path / 'journal.log'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    trial = study.ask()
    appends = []
    real = study_mod._JournalFile.append_logs
    def counted(self, logs):
        appends.append(len(logs))
        real(self, logs)

    monkeypatch.setattr(study_mod._JournalFile, "append_logs", counted)
    attrs = {"status": "finished", "train_loss": [0.9, 0.5], "val_rows": 30, "seed": 7}
    set_trial_attrs(study, trial, attrs)
    assert appends == [4]  # one append (and one fsync) holding the four records
    assert trial.user_attrs == attrs  # the trial object sees them, as after set_user_attr
    fresh = optuna.load_study(study_name="s", storage=open_storage(url))
    assert fresh.trials[0].user_attrs == attrs  # and so does another process reading the file


def test_set_trial_attrs_on_a_database_sets_each_attribute(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    trial = study.ask()
    set_trial_attrs(study, trial, {"a": 1, "b": [2, 3]})
    assert study.trials[0].user_attrs == {"a": 1, "b": [2, 3]}


def test_config_yaml_is_the_text_omegaconf_writes():
    cfg = compose(["data=iris", "optimizer.lr=1e-3", "tracking.uri=sqlite:///x.db"])
    assert to_yaml(cfg) == OmegaConf.to_yaml(cfg)
    strings = {"a": "1e-3", "b": "true", "c": "null", "d": "\u00fcml", "e": "x: y", "f": "",
               "g": None, "h": 1e-7, "i": "${x}", "k": [1, "2"], "n": "0x10"}  # fmt: skip
    assert to_yaml(strings) == OmegaConf.to_yaml(OmegaConf.create(strings))


def test_a_trials_hydra_files_read_back_to_what_omegaconf_would_write(tmp_path):
    """hydra.yaml holds long help strings that libyaml folds elsewhere than OmegaConf's
    emitter: the values read back are the same."""
    cfg = compose(["data=iris"])
    node = OmegaConf.to_container(compose_multirun(["data=iris"]).hydra)
    assert len(node["help"]["header"]) > 200  # a long string: folded by both emitters

    class Plan:
        hydra = node

    write_hydra_files(tmp_path, cfg, ["optimizer.lr=0.01"], Plan, 3)
    files = tmp_path / ".hydra"
    assert (files / "config.yaml").read_text() == OmegaConf.to_yaml(cfg)
    assert yaml.safe_load((files / "overrides.yaml").read_text()) == ["optimizer.lr=0.01"]
    written = yaml.safe_load((files / "hydra.yaml").read_text())["hydra"]
    assert written["job"]["num"] == 3 and written["mode"] == "MULTIRUN"
    expected = {**node, "job": written["job"], "overrides": written["overrides"],
                "runtime": written["runtime"], "mode": "MULTIRUN"}  # fmt: skip
    assert written == yaml.safe_load(OmegaConf.to_yaml(OmegaConf.create(expected)))


def test_a_sqlite_store_commits_to_its_log_and_the_db_file_alone_holds_every_run(tmp_path):
    """MLflow's sqlite store flushed to disk 8 times per commit (84 times per sweep trial);
    lossbench opens it in write-ahead-log mode, ``synchronous=NORMAL``, so a commit is an
    append. Closing the store (as every lossbench process does before it exits) writes the
    log into the database file: a copy of mlflow.db alone has every run."""
    db = tmp_path / "mlflow.db"
    client = open_client(f"sqlite:///{db}")
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "art"))
    for i in range(3):
        run = client.create_run(exp, run_name=f"r{i}")
        client.log_metric(run.info.run_id, "val_loss", 0.5 - i / 10)
        client.set_terminated(run.info.run_id)
    engine = client._tracking_client.store.engine
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    close_sqlite_stores()
    log = tmp_path / "mlflow.db-wal"
    assert not log.exists() or log.stat().st_size == 0  # written into the file
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(db, copy / "mlflow.db")  # the file alone, as a user would copy it
    with sqlite3.connect(copy / "mlflow.db") as conn:
        assert conn.execute("select count(*) from runs").fetchone()[0] == 3
