"""Trackers are a kind: several at once (``tracking=[mlflow,NAME]``), each with its own
options, MLflow's options where they were, unknown names and bad registrations refused, every
tracker ended whatever another one does."""

import json
import os
import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from trackers_helpers import Recording, recording_plugin

import lossbench
from conftest import TINY
from lossbench.config import compose
from lossbench.config.schemas import MlflowTrackingConfig
from lossbench.errors import ConfigError, PluginError
from lossbench.plugins import build_plugin_manager

QUICK = [*TINY[:2], "data=iris"]


class Other(Recording):
    name = "other"
    made: list = []


def _pm(*trackers):
    return build_plugin_manager(entry_points=False, extra=[recording_plugin(*trackers)])


def test_two_trackers_record_one_run_each_with_its_own_options():
    pm = _pm(Recording, Other)
    run = lossbench.train(overrides=[*QUICK, "tracking=[recording,other]",
                                     "tracking.recording.label=a", "tracking.other.label=b"],
                          plugin_manager=pm)  # fmt: skip
    (first,), (second,) = Recording.made, Other.made
    assert (first.config.label, second.config.label) == ("a", "b")
    assert first.calls == second.calls and first.calls[-1] == ("end", "finished")
    assert ("artifacts", ["config.yaml", "confusion_matrix.png", "history.csv",
                          "loss_curve.png", "model.npz"]) in first.calls  # fmt: skip
    assert len([c for c in first.calls if c[0] == "epoch"]) == len(run.history) == 3


def test_the_order_of_the_list_does_not_matter():
    pm = _pm(Recording)
    for listed in ("[mlflow,recording]", "[recording,mlflow]"):
        cfg = compose([f"tracking={listed}", "tracking.recording.label=z"],
                                registry=pm.registry)  # fmt: skip
        names = [name for name, _, _ in pm.registry.trackers_of(cfg.tracking)]
        assert names == ["mlflow", "recording"], listed
        assert cfg.tracking.recording.label == "z" and cfg.tracking.experiment == "lossbench"


def test_mlflow_and_none_keep_their_config_as_before():
    pm = _pm()
    cfg = compose(["tracking.uri=sqlite:///x.db"], registry=pm.registry)
    assert set(cfg.tracking) == {f for f in MlflowTrackingConfig.__dataclass_fields__}
    assert cfg.tracking.uri == "sqlite:///x.db"
    assert [n for n, _, _ in pm.registry.trackers_of(cfg.tracking)] == ["mlflow"]
    cfg = compose(["tracking=none"], registry=pm.registry)
    assert OmegaConf.to_container(cfg.tracking) == {"name": "none"}
    assert pm.registry.trackers_of(cfg.tracking) == []


def test_an_unselected_trackers_node_is_unset_and_stays_out_of_mlflows_params():
    from lossbench.tracking.mlflow_run import flatten  # the MLflow params a run would log

    pm = _pm(Recording)
    cfg = compose([], registry=pm.registry)
    assert OmegaConf.is_missing(cfg.tracking, "recording")
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    assert "tracking.experiment" in params and not any("recording" in k for k in params)


def test_an_unknown_tracker_is_refused_with_the_choices_and_the_fix():
    pm = _pm(Recording)
    with pytest.raises(ConfigError, match=re.escape(
            "tracking=[mlflow,recordin]: 'recordin' is not a tracker. Choices: mlflow, none, "
            "recording. Did you mean recording? Fix:")):  # fmt: skip
        lossbench.train(overrides=[*QUICK, "tracking=[mlflow,recordin]"], plugin_manager=pm)


def test_an_unknown_tracker_on_the_command_line_exits_2_with_one_paragraph(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lossbench", "tracking=[mlflow,tensorbord]", *QUICK],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "'tensorbord' is not a tracker. Choices: mlflow, none" in done.stderr
    assert "Fix:" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_tracker_that_fails_at_its_end_does_not_keep_another_from_ending():
    pm = _pm(Recording, Other)
    with pytest.raises(Exception, match="the tracker's store is gone"):
        overrides = [*QUICK, "tracking=[recording,other]", "tracking.recording.fail_at_end=true"]
        lossbench.train(overrides=overrides, plugin_manager=pm)
    assert Recording.made[0].calls[-1] == ("end", "finished")
    assert Other.made[0].calls[-1] == ("end", "finished")


def test_a_run_interrupted_before_its_start_is_recorded_by_every_tracker(monkeypatch):
    import lossbench.training.fit as fit_module  # the set-up the test interrupts

    def interrupted(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "set_up", interrupted)
    pm = _pm(Recording)
    with pytest.raises(KeyboardInterrupt):
        lossbench.train(overrides=[*QUICK, "tracking=[recording]"], plugin_manager=pm)
    assert Recording.made[0].calls == [("start",), ("end", "interrupted")]


@pytest.mark.parametrize(
    "tracker,message",
    [
        ("not a class", "which is not a tracker class"),
        (type("Unnamed", (Recording,), {"name": "none"}), "an identifier other than 'none'"),
        (type("BadOptions", (Recording,), {"name": "bad", "options": dict}),
         "are not a dataclass"),
    ],
)
def test_bad_tracker_registrations_are_refused_naming_the_plugin(tracker, message):
    class Plugin:
        @lossbench.hookimpl
        def register_trackers(self, register):
            register(tracker)

    with pytest.raises(PluginError, match=re.escape(message)):
        build_plugin_manager(entry_points=False, extra=[("bad-trackers", Plugin())])


def test_two_trackers_with_one_name_are_refused_naming_both_plugins():
    with pytest.raises(PluginError, match="two plugins register a tracker named 'recording'"):
        twice = [recording_plugin(Recording), recording_plugin(Recording)]
        build_plugin_manager(entry_points=False, extra=twice)


JSONL_TRACKER = '''
"""A tracker writing each run's epochs as JSON lines into RUN_DIR/epochs.jsonl."""
import json
from pathlib import Path

import lossbench
from lossbench.tracking.base import Tracker


class JsonLines(Tracker):
    name = "jsonl"

    def start(self):
        self.file = open(Path(self.run.output_dir) / "epochs.jsonl", "w")

    def log_epoch(self, epoch, metrics):
        self.file.write(json.dumps({"epoch": epoch, "val_loss": metrics["val_loss"]}) + "\\n")

    def end(self, status):
        self.file.write(json.dumps({"status": status}) + "\\n")
        self.file.close()


@lossbench.hookimpl
def register_trackers(register):
    register(JsonLines)
'''


def _sweep(tmp_path, *args):
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / "jsonl_tracker.py").write_text(JSONL_TRACKER)
    done = subprocess.run(
        [sys.executable, "-m", "lossbench", "--multirun", "--plugins-dir",
         str(tmp_path / "plugins"), "optimizer.lr=tag(log, interval(1e-3, 0.1))", "data=iris",
         "trainer.epochs=4", "sweep.n_trials=3", "sweep.pruner=none", *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "LOSSBENCH_LOAD_PLUGINS": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def _jsonl(folder):
    return [json.loads(line) for line in (folder / "epochs.jsonl").read_text().splitlines()]


def test_a_sweep_gives_a_tracker_without_parents_its_child_runs_beside_mlflows(tmp_path):
    from mlflow.tracking import MlflowClient  # start-up: MLflow for this test only

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _sweep(tmp_path, "tracking=[mlflow,jsonl]", f"tracking.uri={uri}", "sweep.study_name=both")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("lossbench").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("lossbench.role") == "parent"]
    children = {int(r.data.tags["lossbench.trial"]): r for r in runs
                if r.data.tags.get("lossbench.role") == "trial"}  # fmt: skip
    assert sorted(children) == [0, 1, 2]
    assert {c.data.tags["mlflow.parentRunId"] for c in children.values()} == {parent.info.run_id}
    for number, child in children.items():
        lines = _jsonl(tmp_path / "multirun" / "both" / str(number))
        logged = sorted((m.step, m.value) for m in client.get_metric_history(
            child.info.run_id, "val_loss"))  # fmt: skip
        assert [(x["epoch"], x["val_loss"]) for x in lines[:-1]] == logged
        assert lines[-1] == {"status": "finished"}


def test_a_sweep_with_only_a_tracker_without_parents_opens_no_parent_run(tmp_path):
    _sweep(tmp_path, "tracking=[jsonl]", "sweep.study_name=alone")
    for number in range(3):
        lines = _jsonl(tmp_path / "multirun" / "alone" / str(number))
        assert len(lines) == 5 and lines[-1] == {"status": "finished"}
    assert not (tmp_path / "mlflow.db").exists()
