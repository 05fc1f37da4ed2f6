"""What a sweep trial pays besides training, kept small without changing what it records: its
attributes reach the study journal in one append (one flush to disk) instead of one per
attribute, and its config files are written by libyaml yet read back as OmegaConf wrote them
(``benchmarks/sweep_overhead.py`` measures the effect)."""

import io

import optuna
import yaml
from omegaconf import OmegaConf

from lossbench.config import compose, compose_multirun
from lossbench.config.text import to_yaml
from lossbench.sweep import study as study_mod
from lossbench.sweep.study import open_storage, set_trial_attrs
from lossbench.sweep.trial import write_hydra_files
from lossbench.tracking.worker import Worker


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


class _Store:
    """An MLflow client that records what the tracking side process asks of it."""

    def __init__(self):
        self.calls = []

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.calls.append(("log_batch", len(metrics), len(tags)))

    def log_artifact(self, run_id, path):
        self.calls.append(("log_artifact", path))

    def set_terminated(self, run_id, state, end_time=None):
        self.calls.append(("set_terminated", state))


def test_a_runs_last_metrics_and_its_end_tags_are_one_store_transaction():
    """On sqlite each transaction is a flush to disk: a run's end sends its last metrics and
    its end tags in one batch, then its files and its end."""
    worker = Worker(io.StringIO())
    worker.client, worker.run_id = _Store(), "run"
    worker.pending = [["train_loss", 0.5, 0, 0]]
    metrics = [["val_loss", 0.4, 0, 0], ["lr", 0.1, 0, 0]]
    tags = {"lossbench.status": "finished", "lossbench.best_epoch": "0"}
    worker.finish({"metrics": metrics, "tags": tags, "artifacts": ["h.csv"], "state": "FINISHED"})
    assert worker.client.calls == [("log_batch", 3, 2), ("log_artifact", "h.csv"),
                                   ("set_terminated", "FINISHED")]  # fmt: skip
    assert '"op": "finished"' in worker.out.getvalue()
