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
from trackers_helpers import (
    FILE_TRACKER,
    Recording,
    RecordingParent,
    file_calls,
    recording_plugin,
)

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


def test_an_unselected_tracker_leaves_no_key_and_stays_out_of_mlflows_params():
    from lossbench.tracking.mlflow_run import flatten  # the MLflow params a run would log

    pm = _pm(Recording)
    cfg = compose([], registry=pm.registry)
    assert "recording" not in cfg.tracking and "???" not in OmegaConf.to_yaml(cfg)
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    assert "tracking.experiment" in params and not any("recording" in k for k in params)
    assert OmegaConf.is_struct(cfg.tracking), "open only while composing"


@pytest.mark.parametrize("override,key", [("tracking.uir=1", "tracking.uir"),
                                          ("+tracking.recording.x=1", "tracking.recording")])
def test_keys_beside_mlflows_options_are_only_selected_trackers_nodes(override, key):
    pm = _pm(Recording)
    with pytest.raises(ConfigError, match=re.escape(f"{key} is not an option of tracking")):
        compose([override], registry=pm.registry)


def test_cfg_job_and_the_runs_saved_config_show_each_trackers_options_under_its_node(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "jsonl_tracker.py").write_text(JSONL_TRACKER)
    plugins = ["--plugins-dir", str(tmp_path / "plugins")]
    env = {**os.environ, "LOSSBENCH_LOAD_PLUGINS": ""}
    shown = subprocess.run([sys.executable, "-m", "lossbench", *plugins, "--cfg", "job"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    tracking = OmegaConf.create(shown.stdout).tracking
    assert "???" not in shown.stdout and "jsonl" not in tracking
    both = ["tracking=[jsonl,mlflow]", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    done = subprocess.run(
        [sys.executable, "-m", "lossbench", *plugins, *QUICK, *both, "hydra.run.dir=run"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    saved = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "???" not in saved
    assert OmegaConf.to_container(OmegaConf.create(saved).tracking.jsonl) == {"name": "jsonl"}


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


def _plugins(tmp_path):
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / "filerec.py").write_text(FILE_TRACKER)
    return ["--plugins-dir", str(tmp_path / "plugins")]


def _cli(tmp_path, *args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "lossbench", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path,
                          env={**env, "LOSSBENCH_LOAD_PLUGINS": ""})  # fmt: skip


def test_lr_find_goes_to_every_tracker_through_the_protocol(tmp_path):
    from lossbench.tracking.plugin import record_lr_find  # what lr_find's command calls
    from lossbench.training.lr_find import LRFindOptions, find_lr

    pm = _pm(Recording, Other)
    cfg = compose(["data=iris", "tracking=[recording,other]"], registry=pm.registry)
    run, result, files = find_lr(cfg, LRFindOptions(steps=40), tmp_path, pm)
    record_lr_find(run, result, files, pm.registry)
    (first,), (second,) = Recording.made, Other.made
    summary = {"suggested_lr": result.suggestion} if result.suggestion is not None else {}
    assert first.calls == second.calls == [
        ("start",),
        ("steps", ["lr_find_loss", "lr_find_lr", "lr_find_smoothed_loss"], len(result.lrs),
         summary),
        ("artifacts", ["lr_find.csv", "lr_find.json", "lr_find.png"]),
        ("end", "finished"),
    ]  # fmt: skip


def test_lr_find_with_mlflow_and_another_tracker_records_it_in_both(tmp_path):
    from mlflow.tracking import MlflowClient  # start-up: MLflow for this test only

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = _cli(tmp_path, "lr_find", *_plugins(tmp_path), "--steps", "30", "--output-dir", "out",
             "data=iris", "tracking=[mlflow,filerec]", f"tracking.uri={uri}")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    steps = json.loads((tmp_path / "out" / "lr_find.json").read_text())["steps"]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("lossbench").experiment_id])
    assert run.info.run_name.startswith("lr_find-") and run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "lr_find_lr")) == steps
    calls = [c[2:] for c in file_calls(tmp_path / "calls.jsonl")]
    assert [c[0] for c in calls] == ["as_probe", "start", "steps", "artifacts", "end"]
    assert calls[0] == ["as_probe", "lr_find"] and calls[-1] == ["end", "finished"]
    series, summary = calls[2][1:]
    assert series == dict.fromkeys(["lr_find_lr", "lr_find_loss", "lr_find_smoothed_loss"],
                                   steps)  # fmt: skip
    assert summary == {"suggested_lr": pytest.approx(run.data.metrics["suggested_lr"])}


def test_answered_epoch_counts_reach_every_tracker_as_runs_of_their_own(tmp_path):
    from mlflow.tracking import MlflowClient  # start-up: MLflow for this test only

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    r = _cli(tmp_path, "--multirun", *_plugins(tmp_path), "data=iris", "sweep.pruner=none",
             "optimizer.lr=tag(log, interval(1e-3, 0.1))", "trainer.epochs=range(2, 6, 2)",
             "sweep.n_trials=4", "sweep.study_name=ans", "tracking=[mlflow,filerec]",
             f"tracking.uri={uri}", f"tracking.filerec.log={tmp_path / 'calls.jsonl'}")
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lossbench").experiment_id
    answered = {r.data.tags["lossbench.output_dir"]: r for r in client.search_runs([exp])
                if "lossbench.read_from_trial" in r.data.tags}  # fmt: skip
    assert len(answered) == 2 and all(d.endswith("epochs-2") for d in answered)
    runs: dict[str, list] = {}
    for _, out, *call in file_calls(tmp_path / "calls.jsonl"):
        if out is not None:
            runs.setdefault(out, []).append(call)
    for out, mlflow_run in answered.items():
        calls = runs[out]
        assert calls[0][0] == "start" and "epochs of trial" in calls[0][1]
        epochs = [c[2] for c in calls if c[0] == "epoch"]
        logged = sorted(m.value for m in client.get_metric_history(mlflow_run.info.run_id,
                                                                   "val_loss"))  # fmt: skip
        assert len(epochs) == 2 and sorted(epochs) == pytest.approx(logged)
        assert calls[-1] == ["end", "finished"]
        with_model = bool(client.search_logged_models(
            [exp], filter_string=f"source_run_id = '{mlflow_run.info.run_id}'"))  # fmt: skip
        assert (["model"] in calls) == with_model, (out, calls)


def test_a_parent_run_other_than_mlflows_is_asked_to_settle_a_resumed_study(tmp_path):
    log = tmp_path / "calls.jsonl"
    for n_trials in (2, 3):
        r = _cli(tmp_path, "--multirun", *_plugins(tmp_path), "data=iris", "trainer.epochs=2",
                 "optimizer.lr=tag(log, interval(1e-3, 0.1))", f"sweep.n_trials={n_trials}",
                 "sweep.study_name=fr", "tracking=[filerec]", f"tracking.filerec.log={log}")
        assert r.returncode == 0, r.stderr[-3000:]
    parent = [c[2:] for c in file_calls(log) if c[1] is None]
    (settle,) = [c for c in parent if c[0] == "parent.settle"]  # the resume's, not the first's
    assert settle[1] == "fr" and sorted(settle[2]) == ["0", "1"]
    assert all(t["in_progress"] is False and t["lost"] is False for t in settle[2].values())
    assert [c[0] for c in parent].count("parent.open") == 2


def _study_of(*trials):
    import optuna

    study = optuna.create_study(study_name="s")
    for state, attrs in trials:
        study.add_trial(optuna.trial.create_trial(state=state, user_attrs=attrs,
                        value=None if state != optuna.trial.TrialState.COMPLETE else 1.0))
    return study


def test_settling_hands_the_parent_run_each_trials_state_read_from_the_study(tmp_path):
    from optuna.trial import TrialState as S

    from lossbench.sweep.records import end_running_trials, settle_study
    from lossbench.tracking.base import ChildTrial

    study = _study_of(
        (S.COMPLETE, {}),
        (S.FAIL, {"lossbench_lost": True}),
        (S.COMPLETE, {"retry_of": 1}),
        (S.RUNNING, {}),
        (S.COMPLETE, {"read_from": 3}),  # answered from a run still running
        (S.COMPLETE, {"record_incomplete": "gone", "spooled_in": [str(tmp_path)]}),
        (S.COMPLETE, {"spooled_in": [str(tmp_path)]}),  # its record reached the store since
    )
    parent = RecordingParent()
    assert settle_study(parent, study) == {"ended": 7, "lost": 1, "replayed": 0}
    assert parent.calls == [("settle", "s", {
        0: ChildTrial(0), 1: ChildTrial(1, lost=True, retried_as=2), 2: ChildTrial(2),
        3: ChildTrial(3, in_progress=True), 4: ChildTrial(4, in_progress=True),
        5: ChildTrial(5, spooled_in=[str(tmp_path)]), 6: ChildTrial(6)})]  # fmt: skip
    assert end_running_trials(parent, "s", "the cluster is gone") == 1
    assert parent.calls[-1] == ("end_children", "s", "the cluster is gone")


def test_replay_asks_every_tracker_that_declares_it_and_names_them_when_none_has_a_spool(
        tmp_path):  # fmt: skip
    (tmp_path / "run" / "filerec-spool" / "abc").mkdir(parents=True)
    r = _cli(tmp_path, "replay", *_plugins(tmp_path), "run", "--uri", "file:///x")
    assert r.returncode == 0, r.stderr
    assert "filerec: abc sent to file:///x" in r.stdout
    (tmp_path / "empty").mkdir()
    r = _cli(tmp_path, "replay", *_plugins(tmp_path), "empty")
    assert r.returncode == 2 and "the trackers that keep one: mlflow, filerec" in r.stderr
    assert "Fix:" in r.stderr and "Traceback" not in r.stderr
