"""The documentation's code runs."""

import re
from pathlib import Path

import lossbench
from conftest import TINY
from lossbench.plugins import build_plugin_manager

ROOT = Path(__file__).resolve().parents[1]


def test_plugin_guide_example_trains(tmp_path):
    text = (ROOT / "docs" / "plugins.md").read_text()
    section = text.split("## A complete example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "sqhinge.py").write_text(code)
    pm = build_plugin_manager(str(tmp_path), entry_points=False)
    run = lossbench.train(
        overrides=[
            *TINY,
            "data=iris",
            "loss=sqhinge",
            "loss.margin=0.5",
            "trainer.epochs=8",
            "optimizer.lr=0.01",
        ],
        plugin_manager=pm,
    )
    assert run.status == "finished"
    assert run.history[-1]["val_loss"] < run.history[0]["val_loss"]
