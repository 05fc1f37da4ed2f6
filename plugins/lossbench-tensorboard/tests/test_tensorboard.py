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
