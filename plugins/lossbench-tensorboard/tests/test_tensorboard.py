"""The TensorBoard tracker: a run's event file read back with TensorBoard's own reader holds
every epoch's metrics at step = epoch, the config and the status; a run without a folder and
without tracking.tensorboard.logdir is refused before training."""

import lossbench
import pytest
from lossbench.errors import ConfigError
from lossbench.plugins import build_plugin_manager
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import lossbench_tensorboard

QUICK = ["data=iris", "trainer.epochs=4", "trainer.progress=false", "tracking=[tensorboard]"]


def _events(folder):
    (event_file,) = folder.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _pm():
    return build_plugin_manager(entry_points=False, extra=[lossbench_tensorboard])


def test_a_runs_event_file_holds_its_curves_by_epoch(tmp_path):
    run = lossbench.train(overrides=QUICK, output_dir=tmp_path / "run", plugin_manager=_pm())
    acc = _events(tmp_path / "run" / "tensorboard")
    for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
        points = acc.Scalars(key)
        assert [p.step for p in points] == [h["epoch"] for h in run.history]
        assert [p.value for p in points] == pytest.approx([h[key] for h in run.history],
                                                          rel=1e-6)  # fmt: skip
    tags = acc.Tags()["tensors"]
    assert "config/text_summary" in tags and "status/text_summary" in tags


def test_a_logdir_gets_one_folder_per_run(tmp_path):
    overrides = [*QUICK, f"tracking.tensorboard.logdir={tmp_path / 'tb'}"]
    for _ in range(2):
        lossbench.train(overrides=overrides, plugin_manager=_pm())
    folders = sorted((tmp_path / "tb").iterdir())
    assert len(folders) == 2
    assert all(len(_events(f).Scalars("val_loss")) == 4 for f in folders)


def test_a_run_without_a_folder_or_a_logdir_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="tracking.tensorboard.logdir is not set.*Fix:"):
        lossbench.train(overrides=QUICK, plugin_manager=_pm())


def test_lr_find_writes_its_curves_by_step_and_the_suggestion(tmp_path):
    from lossbench.config import compose
    from lossbench.tracking.plugin import record_lr_find
    from lossbench.training.lr_find import LRFindOptions, find_lr

    pm = _pm()
    cfg = compose(["data=iris", "tracking=[tensorboard]"], registry=pm.registry)
    run, result, files = find_lr(cfg, LRFindOptions(steps=40), tmp_path / "lrf", pm)
    record_lr_find(run, result, files, pm.registry)
    acc = _events(tmp_path / "lrf" / "tensorboard")
    for key, values in (("lr_find_lr", result.lrs), ("lr_find_loss", result.losses)):
        points = acc.Scalars(key)
        finite = [i for i, v in enumerate(values) if v == v and abs(v) != float("inf")]
        assert [p.step for p in points] == finite
        assert [p.value for p in points] == pytest.approx([values[i] for i in finite], rel=1e-6)
    if result.suggestion is not None:
        assert acc.Scalars("suggested_lr")[0].value == pytest.approx(result.suggestion, rel=1e-6)


def test_an_answered_epoch_count_is_a_run_of_its_own(tmp_path):
    import dataclasses

    from lossbench.tracking.plugin import record_ended

    pm = _pm()
    run = lossbench.train(overrides=QUICK, output_dir=tmp_path / "run", plugin_manager=pm)
    short = dataclasses.replace(run, history=run.history[:2], output_dir=tmp_path / "epochs-2",
                                plugin_state={}, record_errors=[])  # fmt: skip
    (tmp_path / "epochs-2").mkdir()
    record_ended([short], pm.registry)
    points = _events(tmp_path / "epochs-2" / "tensorboard").Scalars("val_loss")
    assert [p.step for p in points] == [0, 1] and short.record_errors == []
